//! Packages chosen by the operator (`weir packages`): pure-Python wheels installed into a site
//! directory per runtime, `<dir>/<runtime>/`, which runs of that runtime see read-only at
//! `/packages` and import from (`weir_sandbox::RunRequest::packages`).
//!
//! A package is named with its version pinned (`NAME==VERSION`, fetched from PyPI by the host's
//! `pip download --no-deps --only-binary=:all:`) or given as a wheel file. Only wheels tagged
//! `none-any` are installed: the guests cannot load native extension modules, so a package that
//! only exists as a native wheel is refused with a message naming it. Each installed wheel is
//! recorded with its version and sha256 in `weir-packages.json`, and its modules are compiled to
//! bytecode by the runtime's own guest (`compileall`, the site mounted read-write just for that),
//! so runs load them without compiling.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use weir_sandbox::{Mount, Program, RunRequest, Sandbox};

/// The manifest of a site: what is installed, by version and sha256.
pub const MANIFEST: &str = "weir-packages.json";

/// One installed wheel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Installed {
    pub name: String,
    pub version: String,
    pub wheel: String,
    pub sha256: String,
}

/// Why a package was not installed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{0:?}: name a wheel file or pin a version, NAME==VERSION")]
    Unpinned(String),
    #[error(
        "{spec}: only a native wheel exists ({wheel}); weir's guests run pure-Python packages only"
    )]
    Native { spec: String, wheel: String },
    #[error("{spec}: {reason}")]
    Fetch { spec: String, reason: String },
    #[error("{0:?} is not a wheel file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl)")]
    NotAWheel(String),
    #[error("compiling the site's modules failed: {0}")]
    Compile(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The default root of the package sites: `$XDG_DATA_HOME/weir/packages`.
pub fn default_root() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("weir").join("packages"))
}

/// A wheel file name's parts: name, version, and whether it is pure Python (`none-any`).
fn wheel_tags(file: &str) -> Result<(String, String, bool), PackageError> {
    let stem = file
        .strip_suffix(".whl")
        .ok_or_else(|| PackageError::NotAWheel(file.into()))?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return Err(PackageError::NotAWheel(file.into()));
    }
    let n = parts.len();
    let (python, abi, platform) = (parts[n - 3], parts[n - 2], parts[n - 1]);
    let pure =
        abi == "none" && platform == "any" && python.split('.').any(|t| t.starts_with("py3"));
    Ok((parts[0].to_string(), parts[1].to_string(), pure))
}

/// The installed wheels of a site (none if it has no manifest).
pub fn installed(site: &Path) -> Vec<Installed> {
    std::fs::read(site.join(MANIFEST))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The host's Python, which fetches and unpacks wheels: `$WEIR_PIP_PYTHON`, else `python3`.
fn host_python() -> String {
    std::env::var("WEIR_PIP_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Downloads `spec` (`NAME==VERSION`) with the host's pip into `dest`; returns the wheel.
fn download(spec: &str, dest: &Path) -> Result<PathBuf, PackageError> {
    if !spec.contains("==") {
        return Err(PackageError::Unpinned(spec.into()));
    }
    let out = Command::new(host_python())
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(dest)
        .arg(spec)
        .output()
        .map_err(|e| PackageError::Fetch {
            spec: spec.into(),
            reason: format!("cannot run pip: {e}"),
        })?;
    if !out.status.success() {
        let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(PackageError::Fetch {
            spec: spec.into(),
            reason,
        });
    }
    std::fs::read_dir(dest)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| PackageError::Fetch {
            spec: spec.into(),
            reason: "pip downloaded no wheel".into(),
        })
}

/// Unpacks a wheel (a zip) into `site`, with the host's Python (its `zipfile` keeps every
/// member inside the target directory).
fn unpack(wheel: &Path, site: &Path) -> Result<(), PackageError> {
    let out = Command::new(host_python())
        .args([
            "-c",
            "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])",
        ])
        .arg(wheel)
        .arg(site)
        .output()?;
    if !out.status.success() {
        return Err(PackageError::Fetch {
            spec: wheel.display().to_string(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Installs those of `specs` the default runtime's site under `root` lacks (a `NAME==VERSION`
/// installed at that version, or a wheel file installed by that name); returns what it added.
pub async fn ensure(
    sandbox: &Sandbox,
    root: &Path,
    specs: &[String],
) -> Result<Vec<Installed>, PackageError> {
    let runtime = sandbox
        .runtime(None)
        .map_err(|e| PackageError::Compile(e.to_string()))?
        .name
        .clone();
    let have = installed(&root.join(&runtime));
    let missing: Vec<String> = specs
        .iter()
        .filter(|spec| {
            !have.iter().any(|i| {
                **spec == format!("{}=={}", i.name, i.version)
                    || Path::new(spec.as_str()).file_name() == Some(i.wheel.as_ref())
            })
        })
        .cloned()
        .collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    add(sandbox, root, Some(&runtime), &missing).await
}

/// Installs each of `specs` (`NAME==VERSION` or a `.whl` path) into `root/<runtime>`, then
/// compiles the site with the runtime's guest. Stops at the first refusal, installing nothing
/// of it.
pub async fn add(
    sandbox: &Sandbox,
    root: &Path,
    runtime: Option<&str>,
    specs: &[String],
) -> Result<Vec<Installed>, PackageError> {
    let runtime = sandbox
        .runtime(runtime)
        .map_err(|e| PackageError::Compile(e.to_string()))?
        .name
        .clone();
    let site = root.join(&runtime);
    std::fs::create_dir_all(&site)?;
    let mut manifest = installed(&site);
    let mut added = Vec::new();
    for spec in specs {
        let tmp = tempfile::tempdir()?;
        let wheel = match Path::new(spec).extension().is_some_and(|x| x == "whl") {
            true => PathBuf::from(spec),
            false => download(spec, tmp.path())?,
        };
        let file = wheel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (name, version, pure) = wheel_tags(&file)?;
        if !pure {
            return Err(PackageError::Native {
                spec: spec.clone(),
                wheel: file,
            });
        }
        let bytes = std::fs::read(&wheel)?;
        unpack(&wheel, &site)?;
        let entry = Installed {
            name,
            version,
            wheel: file,
            sha256: hex::encode(Sha256::digest(&bytes)),
        };
        manifest.retain(|i| i.name != entry.name);
        manifest.push(entry.clone());
        added.push(entry);
    }
    compile(sandbox, &site, &runtime).await?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    std::fs::write(site.join(MANIFEST), json)?;
    Ok(added)
}

/// The compile run's program. A WASI file write may be short, and `py_compile` writes a `.pyc`
/// with one `os.write`, failing on a short one: this writes it through a buffered file, which
/// writes on until done.
const COMPILE: &str = "\
import compileall, importlib._bootstrap_external as bootstrap, sys
def write(path, data, mode=0o666):
    with open(path, 'wb') as f:
        f.write(data)
bootstrap._write_atomic = write
sys.exit(0 if compileall.compile_dir('/packages', quiet=1) else 1)
";

/// Compiles every module of `site` to the runtime's bytecode, in its own guest.
async fn compile(sandbox: &Sandbox, site: &Path, runtime: &str) -> Result<(), PackageError> {
    let mut req = RunRequest::script(Vec::new());
    req.program = Program::Code(COMPILE.into());
    req.runtime = Some(runtime.into());
    req.close_stdin = true;
    req.limits.wall_ms = 300_000;
    req.mounts.push(Mount {
        host: site.to_path_buf(),
        guest: weir_sandbox::sandbox::SITE_DIR.into(),
        read_only: false,
    });
    let handle = sandbox
        .start(req)
        .await
        .map_err(|e| PackageError::Compile(e.to_string()))?;
    let out = handle.collect().await;
    match out.outcome() {
        weir_sandbox::Outcome::Exited { code: 0 } => Ok(()),
        other => Err(PackageError::Compile(format!(
            "{}: {}{}",
            other.kind(),
            out.stdout_text().trim(),
            out.stderr_text().trim()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pure_python_wheels_pass() {
        let pure = wheel_tags("tabulate-0.9.0-py3-none-any.whl").unwrap();
        assert_eq!(pure, ("tabulate".into(), "0.9.0".into(), true));
        assert!(wheel_tags("six-1.17.0-py2.py3-none-any.whl").unwrap().2);
        assert!(
            !wheel_tags("numpy-2.3.0-cp311-cp311-manylinux_2_28_x86_64.whl")
                .unwrap()
                .2
        );
        assert!(!wheel_tags("x-1.0-cp314-abi3-any.whl").unwrap().2);
        assert!(wheel_tags("x.tar.gz").is_err());
    }
}
