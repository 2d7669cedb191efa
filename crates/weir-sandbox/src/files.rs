//! Files in and out of a run's scratch directory while it lives: listing, reading and writing
//! (a session's files) and collecting by glob when the program ends (`return_files`).
//!
//! Every path is resolved inside the directory with cap-std, whatever the guest made of it: a
//! symbolic link the guest created can point nowhere outside, and a listing or a glob never
//! follows one. Every answer is bounded: entries by [`MAX_SCRATCH_ENTRIES`], bytes by the
//! caller's cap.

use crate::error::{Error, Result};
use crate::limits::human_bytes;
use cap_std::fs::Dir;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

/// Most files and directories a scratch dir may hold.
pub const MAX_SCRATCH_ENTRIES: usize = 10_000;

/// `name` as a relative path that stays inside a directory: not empty, no NUL, no root, no `..`.
pub fn relative_path(name: &str) -> Option<PathBuf> {
    let path = Path::new(name);
    let ok = !name.is_empty()
        && !name.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
        && path.components().any(|c| matches!(c, Component::Normal(_)));
    ok.then(|| path.to_path_buf())
}

/// Deepest nesting of directories a scratch dir may hold: the size walk keeps one open handle
/// per level, and a tree deeper than this counts as over the limit.
pub const MAX_SCRATCH_DEPTH: usize = 128;

/// Whether the directory at `root` holds more than `limit` bytes, more than
/// [`MAX_SCRATCH_ENTRIES`] entries, or directories nested deeper than [`MAX_SCRATCH_DEPTH`].
/// Stops walking as soon as one is passed.
///
/// The walk goes from directory handle to directory handle (each entry opened relative to its
/// parent, never through a host path), so no depth of nesting or length of names hides a file
/// from it; and it fails closed: an entry it cannot read counts as over the limit. Only an entry
/// removed while it walks (the guest deleting files) is skipped.
pub fn exceeds(root: &Path, limit: u64) -> bool {
    walk_exceeds(root, limit).unwrap_or(true)
}

fn walk_exceeds(root: &Path, limit: u64) -> std::io::Result<bool> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut total = 0u64;
    let mut entries = 0usize;
    let mut stack = vec![open(root)?.entries()?];
    while let Some(level) = stack.last_mut() {
        let entry = match level.next() {
            None => {
                stack.pop();
                continue;
            }
            Some(Err(e)) if gone(&e) => continue,
            Some(entry) => entry?,
        };
        entries += 1;
        let meta = match entry.metadata() {
            Err(e) if gone(&e) => continue,
            meta => meta?,
        };
        if meta.is_dir() {
            if stack.len() > MAX_SCRATCH_DEPTH {
                return Ok(true);
            }
            match entry.open_dir() {
                Err(e) if gone(&e) => {}
                dir => stack.push(dir?.entries()?),
            }
        } else {
            total = total.saturating_add(meta.len());
        }
        if total > limit || entries > MAX_SCRATCH_ENTRIES {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One regular file in a listing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileEntry {
    /// Its path relative to the directory, `/`-separated.
    pub path: String,
    /// Its size, bytes.
    pub size: u64,
}

/// A file's contents, returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReturnedFile {
    /// Its path relative to the directory.
    pub path: String,
    /// Its bytes.
    pub data: Vec<u8>,
}

/// Files collected by glob: those that fit the byte cap, in path order, and the paths of those
/// that matched but did not fit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Returned {
    /// The files returned.
    pub files: Vec<ReturnedFile>,
    /// Matching files left out: past the byte cap or the count cap.
    pub omitted: Vec<String>,
}

/// Most files `return_files` returns.
pub const MAX_RETURNED_FILES: usize = 100;

fn open(root: &Path) -> std::io::Result<Dir> {
    Dir::open_ambient_dir(root, cap_std::ambient_authority())
}

fn checked(rel: &str) -> Result<PathBuf> {
    relative_path(rel).ok_or_else(|| Error::BadPath(rel.to_string()))
}

/// A host error on `rel` as the caller should see it: what a path's shape or a guest's link
/// causes is the caller's to fix (never a server failure); anything else is the host's.
fn on_path(rel: &str, e: std::io::Error) -> Error {
    let refused = |reason| Error::PathRefused {
        path: rel.to_string(),
        reason,
    };
    match e.raw_os_error() {
        Some(libc::ENAMETOOLONG) => refused("a name in it is too long"),
        Some(libc::ELOOP) => refused("it is a symbolic link"),
        Some(libc::EISDIR) => refused("it is a directory"),
        Some(libc::ENOTDIR) => refused("a part of it is not a directory"),
        Some(libc::EEXIST) => refused("a part of it is a file"),
        _ if e.kind() == std::io::ErrorKind::NotFound => Error::FileNotFound(rel.to_string()),
        // cap-std's refusal of a path that would leave the directory.
        _ if e.kind() == std::io::ErrorKind::PermissionDenied => {
            refused("it leads outside the directory")
        }
        _ => Error::Io(e),
    }
}

/// Every regular file under `root`, sorted by path; symbolic links are neither listed nor
/// followed. At most [`MAX_SCRATCH_ENTRIES`] entries are walked.
pub fn list(root: &Path) -> Result<Vec<FileEntry>> {
    let dir = open(root).map_err(Error::Io)?;
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    let mut walked = 0usize;
    while let Some(rel) = stack.pop() {
        let entries = match rel.as_os_str().is_empty() {
            true => dir.entries(),
            false => dir.read_dir(&rel),
        }
        .map_err(Error::Io)?;
        for entry in entries.flatten() {
            walked += 1;
            if walked > MAX_SCRATCH_ENTRIES {
                break;
            }
            let path = rel.join(entry.file_name());
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                files.push(FileEntry {
                    path: path.to_string_lossy().into_owned(),
                    size,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// The bytes of the regular file `rel`, if it holds at most `max` bytes.
pub fn read(root: &Path, rel: &str, max: u64) -> Result<Vec<u8>> {
    let path = checked(rel)?;
    let dir = open(root).map_err(Error::Io)?;
    let not_found = || Error::FileNotFound(rel.to_string());
    let meta = dir.symlink_metadata(&path).map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    if meta.len() > max {
        return Err(Error::FileTooLarge {
            path: rel.to_string(),
            size: meta.len(),
            limit: human_bytes(max),
        });
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    // The file may grow between the check and the read: read no more than `max`.
    dir.open(&path)
        .map_err(|_| not_found())?
        .take(max)
        .read_to_end(&mut data)
        .map_err(|e| on_path(rel, e))?;
    Ok(data)
}

/// Writes `data` to `rel` (creating its directories), if the directory then stays within
/// `scratch_limit` bytes and [`MAX_SCRATCH_ENTRIES`] entries.
pub fn write(root: &Path, rel: &str, data: &[u8], scratch_limit: u64) -> Result<()> {
    let path = checked(rel)?;
    let dir = open(root).map_err(Error::Io)?;
    let replaced = dir
        .symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len());
    let room = scratch_limit
        .saturating_add(replaced)
        .saturating_sub(data.len() as u64);
    if data.len() as u64 > scratch_limit || exceeds(root, room) {
        return Err(Error::ScratchFull {
            path: rel.to_string(),
            limit: human_bytes(scratch_limit),
        });
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        dir.create_dir_all(parent).map_err(|e| on_path(rel, e))?;
    }
    dir.write(&path, data).map_err(|e| on_path(rel, e))?;
    Ok(())
}

/// Parses `return_files` globs (`*`, `?`, `[...]`, `**` across directories).
pub fn patterns(globs: &[String]) -> Result<Vec<glob::Pattern>> {
    globs
        .iter()
        .map(|g| {
            glob::Pattern::new(g).map_err(|e| Error::BadPattern {
                pattern: g.clone(),
                reason: e.msg.to_string(),
            })
        })
        .collect()
}

/// The regular files under `root` that match any of `patterns`, in path order, up to
/// `max_bytes` in all and [`MAX_RETURNED_FILES`] files.
pub fn collect(root: &Path, patterns: &[glob::Pattern], max_bytes: u64) -> Returned {
    let mut out = Returned::default();
    if patterns.is_empty() {
        return out;
    }
    let options = glob::MatchOptions {
        require_literal_separator: true,
        ..Default::default()
    };
    let Ok(listing) = list(root) else { return out };
    let mut left = max_bytes;
    for entry in listing {
        if !patterns
            .iter()
            .any(|p| p.matches_with(&entry.path, options))
        {
            continue;
        }
        let fits = entry.size <= left && out.files.len() < MAX_RETURNED_FILES;
        match fits.then(|| read(root, &entry.path, entry.size)) {
            Some(Ok(data)) => {
                left -= data.len() as u64;
                out.files.push(ReturnedFile {
                    path: entry.path,
                    data,
                });
            }
            _ => out.omitted.push(entry.path),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pats(globs: &[&str]) -> Vec<glob::Pattern> {
        patterns(&globs.iter().map(|g| g.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn writes_reads_and_lists_inside_the_directory_only() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "data/in.csv", b"a,b\n", 1 << 20).unwrap();
        assert_eq!(read(root.path(), "data/in.csv", 100).unwrap(), b"a,b\n");
        assert!(matches!(
            read(root.path(), "../etc/passwd", 100),
            Err(Error::BadPath(_))
        ));
        assert!(matches!(
            write(root.path(), "/tmp/x", b"", 100),
            Err(Error::BadPath(_))
        ));
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("link")).unwrap();
        assert!(matches!(
            read(root.path(), "link", 1 << 20),
            Err(Error::FileNotFound(_))
        ));
        let listed: Vec<String> = list(root.path())
            .unwrap()
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(listed, ["data/in.csv"]);
    }

    #[test]
    fn caps_reads_and_the_directory_size() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "a", &[0; 60], 100).unwrap();
        assert!(matches!(
            write(root.path(), "b", &[0; 60], 100),
            Err(Error::ScratchFull { .. })
        ));
        write(root.path(), "a", &[0; 90], 100).unwrap(); // replacing frees its old size
        assert!(matches!(
            read(root.path(), "a", 10),
            Err(Error::FileTooLarge { size: 90, .. })
        ));
    }

    #[test]
    fn files_past_the_hosts_path_length_are_counted() {
        let root = tempfile::tempdir().unwrap();
        // 20 levels of 250-byte names: 5,020 bytes, past the host's PATH_MAX (made level by
        // level, as a guest can).
        let mut dir = open(root.path()).unwrap();
        for i in 0..20 {
            let name = format!("{i:0>250}");
            dir.create_dir(&name).unwrap();
            dir = dir.open_dir(&name).unwrap();
        }
        dir.write("big", vec![0u8; 2000]).unwrap();
        assert!(exceeds(root.path(), 1000), "a deep file escaped the walk");
        assert!(!exceeds(root.path(), 4000));
    }

    #[test]
    fn nesting_past_the_depth_bound_counts_as_over() {
        let root = tempfile::tempdir().unwrap();
        let dir = open(root.path()).unwrap();
        let deep: PathBuf = (0..MAX_SCRATCH_DEPTH).map(|_| "d").collect();
        dir.create_dir_all(&deep).unwrap();
        assert!(!exceeds(root.path(), 1 << 20));
        dir.create_dir(deep.join("d")).unwrap();
        assert!(exceeds(root.path(), 1 << 20));
    }

    #[test]
    fn collects_matching_files_up_to_the_cap() {
        let root = tempfile::tempdir().unwrap();
        for (name, size) in [
            ("out/a.txt", 10),
            ("out/b.txt", 10),
            ("out/c.png", 30),
            ("x.txt", 5),
        ] {
            write(root.path(), name, &vec![b'x'; size], 1 << 20).unwrap();
        }
        let got = collect(root.path(), &pats(&["out/*.txt", "**/*.png"]), 25);
        let names: Vec<&str> = got.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(names, ["out/a.txt", "out/b.txt"]);
        assert_eq!(got.omitted, ["out/c.png"]);
        assert!(collect(root.path(), &pats(&["*.txt"]), 100)
            .files
            .iter()
            .all(|f| f.path == "x.txt"));
        assert!(matches!(
            patterns(&["[".to_string()]),
            Err(Error::BadPattern { .. })
        ));
    }
}
