//! The embedded CPython guest component, its identity, and its on-disk precompile cache.
//!
//! `build.rs` builds the component from `guests/python/` with componentize-py and embeds it.
//! Compiling it to machine code takes 10–20 s, so the result is cached in a file keyed by the
//! guest's sha256, the wasmtime version and the engine's compile settings, and loaded with mmap
//! (which also lets the pooling allocator map its memory image copy-on-write).

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use wasmtime::component::Component;
use wasmtime::Engine;

/// The guest component's bytes.
pub static GUEST_WASM: &[u8] = include_bytes!(env!("WEIR_GUEST_WASM"));

/// sha256 of [`GUEST_WASM`]: these exact bytes (the precompile cache is keyed by it).
pub const GUEST_SHA256: &str = env!("WEIR_GUEST_SHA256");

/// The guest build's identity: a hash of its sources, the build recipe and the componentize-py
/// version. Builds are deterministic (see `build.rs`), so two builds with the same identity run
/// every script the same way; transcripts name it.
pub const GUEST_BUILD: &str = env!("WEIR_GUEST_BUILD");

/// The Python version inside the guest.
pub const PYTHON_VERSION: &str = "3.14.0";

/// The wasmtime version weir is pinned to (Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The cache file for this guest on this engine.
pub fn cache_path(engine: &Engine, dir: &Path) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut key = Sha256::new();
    key.update(GUEST_SHA256.as_bytes());
    key.update(WASMTIME_VERSION.as_bytes());
    key.update(hasher.finish().to_le_bytes());
    let key = hex::encode(&key.finalize()[..12]);
    dir.join(format!("python-{key}.cwasm"))
}

/// Loads the guest for `engine`, compiling and caching it the first time.
pub fn load_component(engine: &Engine, cache_dir: &Path) -> anyhow::Result<Component> {
    let path = cache_path(engine, cache_dir);
    if let Some(component) = try_deserialize(engine, &path) {
        return Ok(component);
    }
    std::fs::create_dir_all(cache_dir)
        .map_err(|e| anyhow::anyhow!("cannot create cache dir {}: {e}", cache_dir.display()))?;
    // One process compiles; others wait on the lock and then find the file.
    let _lock = FileLock::acquire(&path.with_extension("lock"))?;
    if let Some(component) = try_deserialize(engine, &path) {
        return Ok(component);
    }
    eprintln!(
        "weir: compiling the Python guest for this machine (once; 10-20 s), caching it in {}",
        path.display()
    );
    let started = Instant::now();
    let compiled = engine
        .precompile_component(GUEST_WASM)
        .map_err(|e| anyhow::anyhow!("cannot compile the guest: {e:#}"))?;
    write_atomically(&path, &compiled)?;
    eprintln!(
        "weir: compiled the guest in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    try_deserialize(engine, &path)
        .ok_or_else(|| anyhow::anyhow!("cannot load the freshly compiled guest {}", path.display()))
}

fn try_deserialize(engine: &Engine, path: &Path) -> Option<Component> {
    if !path.exists() {
        return None;
    }
    // SAFETY: the file was written by `precompile_component` of this same wasmtime version
    // with matching settings (the file name encodes both); wasmtime checks its header too.
    match unsafe { Component::deserialize_file(engine, path) } {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!(
                "weir: ignoring unusable cached guest {}: {e:#}",
                path.display()
            );
            None
        }
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

/// An exclusive advisory lock on a file, released on drop.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> anyhow::Result<Self> {
        use std::os::fd::AsRawFd;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(FileLock(file))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking the descriptor we locked.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}
