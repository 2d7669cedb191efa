//! The per-run scratch directory: a host directory holding the script and the caller's files,
//! preopened as the guest's working directory and emptied with the run's store.
//!
//! Emptied directories go back to a small per-sandbox [`ScratchDirs`] pool and are reused: every
//! run used to `mkdir` and `rmdir` a directory in the system temp dir, and on this machine's
//! ext4 (mounted with `discard`) each `rmdir` waited for a synchronous discard of the
//! directory's block, and every `mkdir`/`rmdir` took the temp dir's lock. A reused directory
//! holds nothing of its previous run: it is emptied completely before it goes back, and one that
//! cannot be emptied is deleted instead.

use crate::limits::human_bytes;
use crate::sandbox::{Program, RunRequest};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Emptied scratch directories kept for reuse: this many at most.
const POOLED_DIRS: usize = 64;

/// The parent of a sandbox's scratch directories (removed with its last user), and the emptied
/// ones waiting for reuse.
#[derive(Debug)]
pub struct ScratchDirs {
    root: tempfile::TempDir,
    free: Mutex<Vec<PathBuf>>,
}

impl ScratchDirs {
    /// A parent directory in the system temp dir (`$TMPDIR`).
    pub fn new() -> std::io::Result<Arc<Self>> {
        let root = tempfile::Builder::new().prefix("weir-scratch-").tempdir()?;
        Ok(Arc::new(ScratchDirs {
            root,
            free: Mutex::new(Vec::with_capacity(POOLED_DIRS)),
        }))
    }

    /// An empty directory: a pooled one, else a new one.
    fn take(&self) -> std::io::Result<PathBuf> {
        if let Some(dir) = self.free_list().pop() {
            return Ok(dir);
        }
        Ok(tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(self.root.path())?
            .keep())
    }

    /// Empties `dir` and keeps it for reuse, or deletes it when it cannot be emptied or the pool
    /// is full.
    fn give_back(&self, dir: PathBuf) {
        if empty_dir(&dir).is_ok() {
            let mut free = self.free_list();
            if free.len() < POOLED_DIRS {
                free.push(dir);
                return;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Directories waiting for reuse (for tests).
    pub fn pooled(&self) -> usize {
        self.free_list().len()
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes everything inside `dir` (never following symbolic links) and checks it is empty.
fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    match std::fs::read_dir(dir)?.next() {
        None => Ok(()),
        Some(_) => Err(std::io::Error::other("scratch dir not empty")),
    }
}

/// A run's scratch directory, emptied (and pooled or removed) when dropped.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    dirs: Arc<ScratchDirs>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.dirs.give_back(std::mem::take(&mut self.dir));
    }
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
    /// Takes an empty directory from `dirs` and writes the script and files into it.
    pub fn create(
        dirs: &Arc<ScratchDirs>,
        req: &RunRequest,
        limit: u64,
    ) -> Result<Self, ScratchError> {
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
        // From here on, dropping `scratch` empties the directory again.
        let scratch = Scratch {
            dir: dirs.take()?,
            dirs: dirs.clone(),
        };
        let mut written = Vec::with_capacity(entries.len());
        for (rel, data) in entries {
            let path = scratch.dir.join(&rel);
            // The scratch dir itself exists: only subdirectories need creating.
            if let Some(parent) = path.parent().filter(|_| rel.components().count() > 1) {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, data)?;
            written.push(path);
        }
        if req.deterministic.is_some() {
            fix_times(&scratch.dir, &written)?;
        }
        Ok(scratch)
    }

    pub fn path(&self) -> &Path {
        &self.dir
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
        let dirs = ScratchDirs::new().unwrap();
        let s = Scratch::create(&dirs, &req, 1024).unwrap();
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
        assert_eq!(
            std::fs::read_dir(&path).unwrap().count(),
            0,
            "files survive their run"
        );
        assert!(matches!(
            Scratch::create(&dirs, &req, 4),
            Err(ScratchError::TooLarge { .. })
        ));
    }

    #[test]
    fn reused_directories_hold_nothing_of_the_previous_run() {
        use std::os::unix::fs::symlink;
        let dirs = ScratchDirs::new().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.txt"), b"x").unwrap();
        let first = Scratch::create(&dirs, &RunRequest::script("a"), 1024).unwrap();
        let path = first.path().to_path_buf();
        // What a run might leave: nested dirs, a secret, a link out of the directory.
        std::fs::create_dir_all(path.join("deep/er")).unwrap();
        std::fs::write(path.join("deep/er/secret.txt"), b"secret").unwrap();
        symlink(outside.path(), path.join("link")).unwrap();
        drop(first);
        assert_eq!(dirs.pooled(), 1);
        let second = Scratch::create(&dirs, &RunRequest::script("b"), 1024).unwrap();
        assert_eq!(second.path(), path, "the emptied directory is reused");
        let names: Vec<_> = std::fs::read_dir(second.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["main.py"]);
        assert!(
            outside.path().join("keep.txt").exists(),
            "emptying followed a link"
        );
        drop(second);
        let root = dirs.root.path().to_path_buf();
        drop(dirs);
        assert!(!root.exists(), "the scratch root survives its sandbox");
    }
}
