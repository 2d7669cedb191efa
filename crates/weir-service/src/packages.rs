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
//!
//! An install is all or nothing: the wheels are unpacked into a copy of the site, compiled there,
//! and the copy replaces the site only once everything succeeded, so a refused or broken wheel
//! leaves the site as it was. A wheel is checked before anything of it is written: at most
//! [`MAX_WHEEL_MEMBERS`] members and [`MAX_WHEEL_BYTES`] unpacked, no native extension module,
//! no member named like the manifest, and no top-level module that would shadow one of the
//! standard library's.

use crate::error::Error;
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

/// The default root of the package sites: `$XDG_DATA_HOME/weir/packages`.
pub fn default_root() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("weir").join("packages"))
}

/// A wheel file name's parts: name, version, and whether it is pure Python (`none-any`).
fn wheel_tags(file: &str) -> Result<(String, String, bool), Error> {
    let stem = file
        .strip_suffix(".whl")
        .ok_or_else(|| Error::NotAWheel(file.into()))?;
    let parts: Vec<&str> = stem.split('-').collect();
    if parts.len() < 5 {
        return Err(Error::NotAWheel(file.into()));
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
fn download(spec: &str, dest: &Path) -> Result<PathBuf, Error> {
    if !spec.contains("==") {
        return Err(Error::Unpinned(spec.into()));
    }
    let out = Command::new(host_python())
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--quiet", "--dest"])
        .arg(dest)
        .arg(spec)
        .output()
        .map_err(|e| Error::PackageFailed {
            spec: spec.into(),
            reason: format!("cannot run pip: {e}"),
        })?;
    if !out.status.success() {
        let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::PackageFailed {
            spec: spec.into(),
            reason,
        });
    }
    std::fs::read_dir(dest)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| Error::PackageFailed {
            spec: spec.into(),
            reason: "pip downloaded no wheel".into(),
        })
}

/// Most members a wheel may have.
pub const MAX_WHEEL_MEMBERS: usize = 10_000;
/// Most bytes a wheel may unpack to.
pub const MAX_WHEEL_BYTES: u64 = 256 << 20;

/// The unpacking program (host Python): checks the whole member list first, then extracts with
/// `zipfile`, which keeps every member inside the target directory and makes no links; a member
/// larger than its declared size is never written past it. Exit status 3: refused, the reason
/// on stderr.
const UNPACK: &str = r#"
import sys, zipfile
wheel, site, max_members, max_bytes, manifest = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
def refuse(reason):
    print(reason, file=sys.stderr)
    sys.exit(3)
try:
    z = zipfile.ZipFile(wheel)
except zipfile.BadZipFile as e:
    refuse("not a zip archive: %s" % e)
members = z.infolist()
if len(members) > max_members:
    refuse("%d members, more than %d" % (len(members), max_members))
total = sum(m.file_size for m in members)
if total > max_bytes:
    refuse("unpacks to %d bytes, more than %d" % (total, max_bytes))
native = (".so", ".pyd", ".dylib", ".dll")
for m in members:
    name = m.filename
    top = name.split("/")[0]
    if name.lower().endswith(native) or ".so." in name.lower():
        refuse("%s is a native extension module; weir's guests load pure Python only" % name)
    if top == manifest:
        refuse("%s would overwrite the site's manifest" % name)
    module = top[:-3] if top.endswith(".py") else top
    if not top.endswith((".dist-info", ".data")) and module in sys.stdlib_module_names:
        refuse("%s would shadow the standard library's %s" % (name, module))
z.extractall(site)
"#;

/// Unpacks a wheel (a zip) into `site`, with the host's Python, after checking it ([`UNPACK`]).
fn unpack(wheel: &Path, site: &Path) -> Result<(), Error> {
    let out = Command::new(host_python())
        .args(["-c", UNPACK])
        .arg(wheel)
        .arg(site)
        .arg(MAX_WHEEL_MEMBERS.to_string())
        .arg(MAX_WHEEL_BYTES.to_string())
        .arg(MANIFEST)
        .output()?;
    let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let name = || {
        wheel.file_name().map_or_else(
            || wheel.display().to_string(),
            |f| f.to_string_lossy().into(),
        )
    };
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(Error::WheelRefused {
            wheel: name(),
            reason,
        }),
        _ => Err(Error::PackageFailed {
            spec: name(),
            reason,
        }),
    }
}

/// Copies the directory tree at `from` into `to` (regular files and directories: a site holds
/// nothing else).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            std::fs::create_dir(&target)?;
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Puts the staged site `staged` in place of `site` (two renames in one directory; the old site
/// is then removed).
fn replace_site(site: &Path, staged: &Path) -> std::io::Result<()> {
    let parent = site.parent().unwrap_or(Path::new("."));
    let old = tempfile::Builder::new()
        .prefix(".old-site-")
        .tempdir_in(parent)?;
    let had_site = site.exists();
    if had_site {
        std::fs::rename(site, old.path().join("site"))?;
    }
    if let Err(e) = std::fs::rename(staged, site) {
        if had_site {
            let _ = std::fs::rename(old.path().join("site"), site);
        }
        return Err(e);
    }
    Ok(())
}

/// Installs those of `specs` the default runtime's site under `root` lacks (a `NAME==VERSION`
/// installed at that version, or a wheel file installed by that name); returns what it added.
pub async fn ensure(
    sandbox: &Sandbox,
    root: &Path,
    specs: &[String],
) -> Result<Vec<Installed>, Error> {
    let runtime = sandbox
        .runtime(None)
        .map_err(|e| Error::PackageCompile(e.to_string()))?
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
/// compiles the site with the runtime's guest: all or nothing. Everything happens in a copy of
/// the site, which replaces it only once every wheel is unpacked and compiled; at the first
/// refusal or failure the site is left exactly as it was.
pub async fn add(
    sandbox: &Sandbox,
    root: &Path,
    runtime: Option<&str>,
    specs: &[String],
) -> Result<Vec<Installed>, Error> {
    let runtime = sandbox
        .runtime(runtime)
        .map_err(|e| Error::PackageCompile(e.to_string()))?
        .name
        .clone();
    let site = root.join(&runtime);
    std::fs::create_dir_all(root)?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{runtime}-staging-"))
        .tempdir_in(root)?;
    let staged = staging.path().join("site");
    std::fs::create_dir(&staged)?;
    if site.is_dir() {
        copy_tree(&site, &staged)?;
    }
    let added = stage(sandbox, &staged, &runtime, specs).await?;
    replace_site(&site, &staged)?;
    Ok(added)
}

/// Unpacks `specs` into the staged site `site` and compiles it; writes its manifest.
async fn stage(
    sandbox: &Sandbox,
    site: &Path,
    runtime: &str,
    specs: &[String],
) -> Result<Vec<Installed>, Error> {
    let mut manifest = installed(site);
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
            return Err(Error::NativeWheel {
                spec: spec.clone(),
                wheel: file,
            });
        }
        let bytes = std::fs::read(&wheel)?;
        unpack(&wheel, site)?;
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
    compile(sandbox, site, runtime).await?;
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
async fn compile(sandbox: &Sandbox, site: &Path, runtime: &str) -> Result<(), Error> {
    let mut req = RunRequest::script(Vec::new());
    req.program = Program::Code(COMPILE.into());
    req.runtime = Some(runtime.into());
    req.close_stdin = true;
    req.limits.wall_ms = 300_000;
    req.mounts.push(Mount {
        host: site.to_path_buf(),
        guest: weir_sandbox::SITE_DIR.into(),
        read_only: false,
    });
    let handle = sandbox
        .start(req)
        .await
        .map_err(|e| Error::PackageCompile(e.to_string()))?;
    let out = handle.collect().await;
    match out.outcome() {
        weir_sandbox::Outcome::Exited { code: 0 } => Ok(()),
        other => Err(Error::PackageCompile(format!(
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
