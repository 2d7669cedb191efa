//! The per-run scratch directory: a fresh host temp dir holding the script and the caller's
//! files, preopened as the guest's working directory and deleted with the run's store.

use crate::limits::human_bytes;
use crate::sandbox::{Program, RunRequest};
use std::path::{Component, Path, PathBuf};

/// Why the caller's files cannot be placed.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error("invalid file name {0:?}: use a relative path without '..'")]
    BadPath(String),
    #[error("files total {total} bytes, above the scratch limit of {limit}")]
    TooLarge { total: u64, limit: String },
    #[error("cannot create the scratch directory: {0}")]
    Io(#[from] std::io::Error),
}

/// A scratch directory, removed when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: tempfile::TempDir,
}

/// A relative path that stays inside the scratch dir.
fn checked_path(name: &str) -> Result<PathBuf, ScratchError> {
    let path = Path::new(name);
    let ok = !name.is_empty()
        && !name.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(ScratchError::BadPath(name.to_string()))
    }
}

impl Scratch {
    /// Creates the directory and writes the script and files into it.
    pub fn create(req: &RunRequest, limit: u64) -> Result<Self, ScratchError> {
        let mut entries: Vec<(PathBuf, &[u8])> = Vec::with_capacity(req.files.len() + 1);
        if let Program::Script { filename, source } = &req.program {
            entries.push((checked_path(filename)?, source));
        }
        for (name, data) in &req.files {
            entries.push((checked_path(name)?, data));
        }
        let total: u64 = entries.iter().map(|(_, d)| d.len() as u64).sum();
        if total > limit {
            return Err(ScratchError::TooLarge {
                total,
                limit: human_bytes(limit),
            });
        }
        let dir = tempfile::Builder::new().prefix("weir-run-").tempdir()?;
        let mut written = Vec::with_capacity(entries.len());
        for (rel, data) in entries {
            let path = dir.path().join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, data)?;
            written.push(path);
        }
        if req.deterministic.is_some() {
            fix_times(dir.path(), &written)?;
        }
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Deterministic runs: the caller's files and their directories carry the virtual clock's start
/// as their times, so nothing the guest can stat depends on when the run was made.
fn fix_times(root: &Path, files: &[PathBuf]) -> std::io::Result<()> {
    let start =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(crate::determinism::WALL_START_SECS);
    let times = std::fs::FileTimes::new()
        .set_accessed(start)
        .set_modified(start);
    let mut dirs: Vec<&Path> = files
        .iter()
        .flat_map(|f| f.ancestors().skip(1))
        .filter(|d| d.starts_with(root))
        .chain(std::iter::once(root))
        .collect();
    // Deepest first (a child's times are set before its parent's), duplicates adjacent.
    dirs.sort_by(|a, b| (b.components().count(), b).cmp(&(a.components().count(), a)));
    dirs.dedup();
    for path in files.iter().map(PathBuf::as_path).chain(dirs) {
        std::fs::File::open(path)?.set_times(times)?;
    }
    Ok(())
}

/// Most files and directories a scratch dir may hold.
pub const MAX_SCRATCH_ENTRIES: usize = 10_000;

/// Whether the directory at `root` holds more than `limit` bytes or more than
/// [`MAX_SCRATCH_ENTRIES`] entries. Stops walking as soon as either is passed.
pub fn exceeds(root: &Path, limit: u64) -> bool {
    let mut total = 0u64;
    let mut entries = 0usize;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in list.flatten() {
            entries += 1;
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total = total.saturating_add(meta.len());
            }
            if total > limit || entries > MAX_SCRATCH_ENTRIES {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_paths_that_leave_the_directory() {
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "."] {
            assert!(checked_path(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["main.py", "pkg/mod.py", "./data.txt"] {
            assert!(checked_path(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn writes_files_and_enforces_the_size_cap() {
        let mut req = RunRequest::script("print(1)");
        req.files.push(("data/in.txt".into(), b"hello".to_vec()));
        let s = Scratch::create(&req, 1024).unwrap();
        assert_eq!(
            std::fs::read(s.path().join("data/in.txt")).unwrap(),
            b"hello"
        );
        assert_eq!(
            std::fs::read(s.path().join("main.py")).unwrap(),
            b"print(1)"
        );
        let path = s.path().to_path_buf();
        drop(s);
        assert!(!path.exists(), "scratch dir survives its run");
        assert!(matches!(
            Scratch::create(&req, 4),
            Err(ScratchError::TooLarge { .. })
        ));
    }
}
