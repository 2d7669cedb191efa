//! The per-run scratch directory: a host directory holding the script and the caller's files,
//! preopened as the guest's working directory and emptied with the run's store.
//!
//! Emptied directories go back to a small per-sandbox [`ScratchDirs`] pool and are reused: every
//! run used to `mkdir` and `rmdir` a directory in the system temp dir, and on this machine's
//! ext4 (mounted with `discard`) each `rmdir` waited for a synchronous discard of the
//! directory's block, and every `mkdir`/`rmdir` took the temp dir's lock. A reused directory
//! holds nothing of its previous run: it is emptied completely before it goes back, and one that
//! cannot be emptied is deleted instead.
//!
//! One file survives the emptying: the last run's top-level script, a regular file with no other
//! link, which the next run overwrites in place when its script has the same name (and deletes
//! otherwise) before the guest starts, and leaves alone when it already holds the same bytes and
//! the previous run had the same owner (compile scope): a stranger's run always rewrites it, so
//! its modification time cannot tell them whether they guessed another tenant's exact script.
//!
//! Directories are created 0700 and the caller's files 0600: other users of the host cannot
//! read tenants' scripts in the temp dir.
//! Creating and deleting that file on every run made ext4 allocate and free an inode each time,
//! and inode allocation scans recently deleted inodes: about 15 % of the server's CPU time under
//! 100 WebSocket clients running hello.

/// Where the scratch directory appears inside the guest (also its working directory).
pub const GUEST_DIR: &str = "/sandbox";
/// Where a run sees the operator's package site for its runtime (read-only).
pub const SITE_DIR: &str = "/packages";

use crate::error::{Error, Result};
use crate::files::{relative_path, FileEntry};
use crate::limits::human_bytes;

pub use crate::files::{exceeds, MAX_SCRATCH_ENTRIES};

/// A relative path that stays inside the scratch dir.
fn checked_path(name: &str) -> Result<PathBuf> {
    relative_path(name).ok_or_else(|| Error::BadPath(name.to_string()))
}
use crate::request::{Program, RunRequest};
use std::ffi::{OsStr, OsString};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Emptied scratch directories kept for reuse: this many at most.
const POOLED_DIRS: usize = 64;

/// The parent of a sandbox's scratch directories (removed with its last user), and the emptied
/// ones waiting for reuse.
#[derive(Debug)]
pub struct ScratchDirs {
    root: tempfile::TempDir,
    free: Mutex<Vec<Pooled>>,
}

/// An emptied directory, holding at most its last run's script (named here) and whose run it
/// was.
#[derive(Debug)]
struct Pooled {
    dir: PathBuf,
    kept: Option<OsString>,
    owner: Option<String>,
}

/// Directories only this process's user may enter.
fn private_dir() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o700)
}

impl ScratchDirs {
    /// A parent directory in the system temp dir (`$TMPDIR`).
    pub fn new() -> std::io::Result<Arc<Self>> {
        let root = tempfile::Builder::new()
            .prefix("weir-scratch-")
            .permissions(private_dir())
            .tempdir()?;
        Ok(Arc::new(ScratchDirs {
            root,
            free: Mutex::new(Vec::with_capacity(POOLED_DIRS)),
        }))
    }

    /// A directory holding nothing but, perhaps, a script file to reuse: a pooled one, else a
    /// new one.
    fn take(&self) -> std::io::Result<Pooled> {
        if let Some(pooled) = self.free_list().pop() {
            return Ok(pooled);
        }
        let dir = tempfile::Builder::new()
            .prefix("run-")
            .permissions(private_dir())
            .tempdir_in(self.root.path())?
            .keep();
        Ok(Pooled {
            dir,
            kept: None,
            owner: None,
        })
    }

    /// Empties `dir` (but for the file named `keep`, if it may be reused) and keeps it for
    /// reuse, or deletes it when it cannot be emptied or the pool is full.
    fn give_back(&self, dir: PathBuf, keep: Option<&OsStr>, owner: Option<String>) {
        if let Ok(kept) = empty_dir(&dir, keep) {
            let mut free = self.free_list();
            if free.len() < POOLED_DIRS {
                free.push(Pooled { dir, kept, owner });
                return;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Removes the root and everything in it now, even while runs still hold directories in
    /// it (a server stopping with sessions that did not end): no tenant's file outlives the
    /// process in the temp dir.
    pub fn remove_all(&self) {
        self.free_list().clear();
        let _ = std::fs::remove_dir_all(self.root.path());
    }

    /// Directories waiting for reuse.
    #[cfg(test)]
    fn pooled(&self) -> usize {
        self.free_list().len()
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, Vec<Pooled>> {
        self.free.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes everything inside `dir` (never following symbolic links) but the file named `keep`,
/// when that is a regular file with no other link (so overwriting it later cannot write through
/// to a file elsewhere); checks nothing else is left. Returns the name kept, if any.
fn empty_dir(dir: &Path, keep: Option<&OsStr>) -> std::io::Result<Option<OsString>> {
    let mut kept = None;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else if kept.is_none()
            && Some(entry.file_name().as_os_str()) == keep
            && file_type.is_file()
            && entry.metadata()?.nlink() == 1
        {
            kept = Some(entry.file_name());
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    match std::fs::read_dir(dir)?.nth(usize::from(kept.is_some())) {
        None => Ok(kept),
        Some(_) => Err(std::io::Error::other("scratch dir not empty")),
    }
}

/// Overwrites the regular, singly linked file at `path` with `data`, in place (same inode), or
/// leaves it alone when it holds `data` already and `may_skip`: a script run again unchanged by
/// the same owner writes nothing.
/// Every write to an ext4 file starts a journal handle (its times change), and one started while
/// the journal commits waits for the commit: tens of milliseconds on this machine's disk, during
/// which the thread that wrote is blocked (a `weir serve` worker, with every session on it).
fn overwrite(path: &Path, data: &[u8], may_skip: bool) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(std::io::Error::other("not a file of its own"));
    }
    if may_skip && meta.len() == data.len() as u64 && holds(&mut file, data)? {
        return Ok(());
    }
    file.seek(std::io::SeekFrom::Start(0))?;
    file.write_all(data)?;
    // Shrinks within the last block for a script of about the same size: no block is freed.
    file.set_len(data.len() as u64)
}

/// Whether `file`, read from its start, holds exactly `data` (whose length it has).
fn holds(file: &mut std::fs::File, data: &[u8]) -> std::io::Result<bool> {
    let mut buf = [0u8; 8192];
    for chunk in data.chunks(buf.len()) {
        let got = &mut buf[..chunk.len()];
        file.read_exact(got)?;
        if got != chunk {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A run's scratch directory, emptied (and pooled or removed) when dropped. The run's store
/// holds it in an `Arc`; whoever works on the directory from outside the guest (a session's file
/// transfers) holds a [`LiveDir`], so the directory is emptied and handed to another run only
/// once nothing refers to it.
#[derive(Debug)]
pub struct Scratch {
    dir: PathBuf,
    dirs: Arc<ScratchDirs>,
    /// The run's top-level script: the file the next run in this directory may reuse.
    script: Option<OsString>,
    /// The run's compile scope, if it has one: whose script that file holds.
    owner: Option<String>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let dir = std::mem::take(&mut self.dir);
        self.dirs
            .give_back(dir, self.script.as_deref(), self.owner.take());
    }
}

/// Writes `data` to `path` (a caller's file may replace the script of the same name), created
/// readable by this process's user only; never through a symbolic link.
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(data)
}

/// Files and the directories they need, counted as the scratch dir's entry limit counts them.
fn entry_count(files: &[(PathBuf, &[u8])]) -> usize {
    let dirs: std::collections::HashSet<&Path> = files
        .iter()
        .flat_map(|(rel, _)| rel.ancestors().skip(1))
        .filter(|d| !d.as_os_str().is_empty())
        .collect();
    files.len() + dirs.len()
}

impl Scratch {
    /// Takes an empty directory from `dirs` and writes the script and files into it.
    pub fn create(dirs: &Arc<ScratchDirs>, req: &RunRequest, limit: u64) -> Result<Self> {
        let mut entries: Vec<(PathBuf, &[u8])> = Vec::with_capacity(req.files.len() + 1);
        if let Program::Script { filename, source } = &req.program {
            entries.push((checked_path(filename)?, source));
        }
        for (name, data) in &req.files {
            entries.push((checked_path(name)?, data));
        }
        let count = entry_count(&entries);
        if count > MAX_SCRATCH_ENTRIES {
            return Err(Error::TooManyFiles {
                count,
                max: MAX_SCRATCH_ENTRIES,
            });
        }
        let total: u64 = entries.iter().map(|(_, d)| d.len() as u64).sum();
        if total > limit {
            return Err(Error::FilesTooLarge {
                total,
                limit: human_bytes(limit),
            });
        }
        // A top-level script, whose file the next run in this directory may reuse.
        let script = match (&req.program, entries.first()) {
            (Program::Script { .. }, Some((rel, _))) if rel.components().count() == 1 => {
                rel.file_name().map(OsStr::to_os_string)
            }
            _ => None,
        };
        // From here on, dropping `scratch` empties the directory again.
        let pooled = dirs.take().map_err(Error::ScratchDir)?;
        let owner = req.compile_scope.name().map(str::to_owned);
        let same_owner = owner.is_some() && pooled.owner == owner;
        let scratch = Scratch {
            dir: pooled.dir,
            dirs: dirs.clone(),
            script: script.clone(),
            owner,
        };
        let mut reuse = pooled.kept.is_some() && pooled.kept == script;
        if let Some(stale) = pooled.kept.filter(|_| !reuse) {
            std::fs::remove_file(scratch.dir.join(stale)).map_err(Error::ScratchDir)?;
        }
        let mut written = Vec::with_capacity(entries.len());
        for (rel, data) in entries {
            let path = scratch.dir.join(&rel);
            if std::mem::take(&mut reuse) {
                if overwrite(&path, data, same_owner).is_ok() {
                    written.push(path);
                    continue;
                }
                std::fs::remove_file(&path).map_err(Error::ScratchDir)?; // and create it afresh
            }
            // The scratch dir itself exists: only subdirectories need creating.
            if let Some(parent) = path.parent().filter(|_| rel.components().count() > 1) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(Error::ScratchDir)?;
            }
            write_private(&path, data).map_err(Error::ScratchDir)?;
            written.push(path);
        }
        if req.deterministic.is_some() {
            fix_times(&scratch.dir, &written).map_err(Error::ScratchDir)?;
        }
        Ok(scratch)
    }

    /// The directory on the host.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// A live run's scratch directory, held: while a `LiveDir` exists, the directory is neither
/// emptied nor handed to another run, even if its own run ends meanwhile. Obtained only while the
/// run lives ([`crate::RunControl::live_dir`]), so whoever holds one works on that run's files
/// and no other's.
#[derive(Debug, Clone)]
pub struct LiveDir(Arc<Scratch>);

impl LiveDir {
    pub(crate) fn new(scratch: Arc<Scratch>) -> Self {
        LiveDir(scratch)
    }

    /// The directory on the host.
    pub fn path(&self) -> &Path {
        self.0.path()
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

/// A live run's files, reached through its directory ([`crate::RunControl::live_dir`]), which
/// stays the run's while the [`LiveDir`] is held. Blocking: call these off the async threads.
impl LiveDir {
    /// The files in the directory ([`crate::files::list`]).
    pub fn list(&self) -> Result<Vec<FileEntry>> {
        crate::files::list(self.path())
    }

    /// One file, if it holds at most `max` bytes ([`crate::files::read`]).
    pub fn read(&self, rel: &str, max: u64) -> Result<Vec<u8>> {
        crate::files::read(self.path(), rel, max)
    }

    /// Every file and its bytes, in name order (a session's snapshot keeps them; empty
    /// directories are not kept).
    pub(crate) fn read_all(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let mut files = Vec::new();
        for entry in self.list()? {
            let bytes = self.read(&entry.path, entry.size)?;
            files.push((entry.path, bytes));
        }
        Ok(files)
    }

    /// Writes one file, the directory staying within `scratch_limit` bytes ([`crate::files::write`]).
    pub fn write(&self, rel: &str, data: &[u8], scratch_limit: u64) -> Result<()> {
        crate::files::write(self.path(), rel, data, scratch_limit)
    }
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
        let left: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left,
            ["main.py"],
            "only the script's file is kept for reuse"
        );
        assert!(matches!(
            Scratch::create(&dirs, &req, 4),
            Err(Error::FilesTooLarge { .. })
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

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_kept_script_file_is_overwritten_in_place_or_removed() {
        let dirs = ScratchDirs::new().unwrap();
        let first = Scratch::create(&dirs, &RunRequest::script("a longer first script"), 1024);
        let path = first.unwrap().path().to_path_buf();
        let inode = std::fs::metadata(path.join("main.py")).unwrap().ino();
        let second = Scratch::create(&dirs, &RunRequest::script("b"), 1024).unwrap();
        assert_eq!(second.path(), path);
        assert_eq!(std::fs::read(path.join("main.py")).unwrap(), b"b");
        assert_eq!(
            std::fs::metadata(path.join("main.py")).unwrap().ino(),
            inode
        );
        drop(second);
        let mut other = RunRequest::script("c");
        other.program = Program::Script {
            filename: "other.py".into(),
            source: b"c".to_vec(),
        };
        let third = Scratch::create(&dirs, &other, 1024).unwrap();
        assert_eq!(listing(third.path()), ["other.py"]);
        drop(third);
        let mut code = RunRequest::script("");
        code.program = Program::Code("print(1)".into());
        let fourth = Scratch::create(&dirs, &code, 1024).unwrap();
        assert_eq!(listing(fourth.path()), Vec::<String>::new());
    }

    /// Gives `path` an old modification time, which a write would move to now; returns it.
    fn mark_old(path: &Path) -> std::time::SystemTime {
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        old
    }

    #[test]
    fn a_script_run_again_unchanged_is_not_rewritten() {
        let dirs = ScratchDirs::new().unwrap();
        let first = Scratch::create(&dirs, &RunRequest::script("print('same')"), 1024).unwrap();
        let script = first.path().join("main.py");
        let old = mark_old(&script);
        drop(first);
        let again = Scratch::create(&dirs, &RunRequest::script("print('same')"), 1024).unwrap();
        let mtime = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
        assert_eq!(again.path().join("main.py"), script);
        assert_eq!(mtime(&script), old, "an unchanged script is left alone");
        drop(again);
        // The same length, other bytes: written.
        let other = Scratch::create(&dirs, &RunRequest::script("print('diff')"), 1024).unwrap();
        assert_eq!(std::fs::read(&script).unwrap(), b"print('diff')");
        assert_ne!(mtime(&script), old);
        drop(other);
    }

    #[test]
    fn another_tenants_unchanged_script_is_rewritten() {
        let dirs = ScratchDirs::new().unwrap();
        let run_as = |scope: &str| {
            let mut req = RunRequest::script("print('guess')");
            req.compile_scope = scope.into();
            Scratch::create(&dirs, &req, 1024).unwrap()
        };
        let first = run_as("user:ada");
        let script = first.path().join("main.py");
        let old = mark_old(&script);
        drop(first);
        // Bob guesses Ada's exact script: its time must not tell him he was right.
        let bob = run_as("user:bob");
        assert_eq!(bob.path().join("main.py"), script);
        let mtime = std::fs::metadata(&script).unwrap().modified().unwrap();
        assert_ne!(mtime, old, "a stranger's run left the file alone");
    }

    #[test]
    fn scratch_dirs_and_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let mut req = RunRequest::script("print(1)");
        req.files.push(("data/in.txt".into(), b"x".to_vec()));
        let dirs = ScratchDirs::new().unwrap();
        let s = Scratch::create(&dirs, &req, 1024).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(dirs.root.path()), 0o700);
        assert_eq!(mode(s.path()), 0o700);
        assert_eq!(mode(&s.path().join("data")), 0o700);
        assert_eq!(mode(&s.path().join("main.py")), 0o600);
        assert_eq!(mode(&s.path().join("data/in.txt")), 0o600);
    }

    #[test]
    fn too_many_files_are_refused_before_any_is_written() {
        let mut req = RunRequest::script("print(1)");
        // One directory per file: 2 x 5,001 entries with the script.
        req.files = (0..5_001)
            .map(|i| (format!("d{i}/f"), Vec::new()))
            .collect();
        let dirs = ScratchDirs::new().unwrap();
        let err = Scratch::create(&dirs, &req, 1 << 20).unwrap_err();
        assert!(
            matches!(err, Error::TooManyFiles { count: 10_003, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("10000 entries"), "{err}");
        assert_eq!(dirs.pooled(), 0, "no directory was taken");
    }

    #[test]
    fn a_script_file_linked_elsewhere_is_never_written_through() {
        use std::os::unix::fs::symlink;
        let dirs = ScratchDirs::new().unwrap();
        // On the scratch root's file system, so a hard link to it can be made.
        let outside = dirs.root.path().join("outside.txt");
        for link in [true, false] {
            std::fs::write(&outside, b"precious").unwrap();
            let run = Scratch::create(&dirs, &RunRequest::script("x"), 1024).unwrap();
            let script = run.path().join("main.py");
            std::fs::remove_file(&script).unwrap();
            if link {
                std::fs::hard_link(&outside, &script).unwrap();
            } else {
                symlink(&outside, &script).unwrap();
            }
            drop(run);
            let next = Scratch::create(&dirs, &RunRequest::script("overwritten?"), 1024).unwrap();
            assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
            assert_eq!(
                std::fs::read(next.path().join("main.py")).unwrap(),
                b"overwritten?"
            );
            assert_eq!(
                std::fs::symlink_metadata(next.path().join("main.py"))
                    .unwrap()
                    .nlink(),
                1
            );
        }
    }
}
