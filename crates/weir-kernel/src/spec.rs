//! Kernelspecs: the `kernel.json` files Jupyter starts `weir kernel` from, one per runtime.

use crate::error::{Error, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// Where a kernelspec goes.
#[derive(Debug, Clone)]
pub enum Place {
    /// The user's Jupyter data directory (`$JUPYTER_DATA_DIR`, else `~/.local/share/jupyter`).
    User,
    /// `PREFIX/share/jupyter` (a virtual environment's, or `/usr/local`).
    Prefix(PathBuf),
}

impl Place {
    /// The `kernels` directory.
    pub fn kernels_dir(&self) -> Result<PathBuf> {
        let data = match self {
            Place::User => match std::env::var_os("JUPYTER_DATA_DIR") {
                Some(dir) => PathBuf::from(dir),
                None => dirs::data_dir()
                    .ok_or_else(|| Error::Io("no user data directory: pass --prefix".into()))?
                    .join("jupyter"),
            },
            Place::Prefix(prefix) => prefix.join("share/jupyter"),
        };
        Ok(data.join("kernels"))
    }
}

/// The kernelspec's name for a runtime: `weir-python`, `weir-python-sci`.
pub fn name(runtime: &str) -> String {
    format!("weir-{runtime}")
}

/// Its display name: "Python 3.14 (weir sandbox)".
pub fn display_name(runtime: &weir_sandbox::RuntimeInfo) -> String {
    match runtime.name.as_str() {
        "python-sci" => format!(
            "Python {} + scientific stack (weir sandbox)",
            short_version(&runtime.version)
        ),
        _ => format!("Python {} (weir sandbox)", short_version(&runtime.version)),
    }
}

/// `3.14` of `3.14.0`.
fn short_version(version: &str) -> String {
    version.split('.').take(2).collect::<Vec<_>>().join(".")
}

/// Writes the kernelspec of `runtime` under `dir` (its `kernels` directory); the directory it
/// wrote. `weir` is the binary Jupyter runs; `config`, a configuration file it reads limits
/// from.
pub fn install(
    dir: &Path,
    weir: &Path,
    runtime: &weir_sandbox::RuntimeInfo,
    config: Option<&Path>,
) -> Result<PathBuf> {
    let mut argv = vec![
        weir.to_string_lossy().into_owned(),
        "kernel".into(),
        "-f".into(),
        "{connection_file}".into(),
        "--runtime".into(),
        runtime.name.clone(),
    ];
    if let Some(config) = config {
        argv.push("--config".into());
        argv.push(config.to_string_lossy().into_owned());
    }
    let spec = json!({
        "argv": argv,
        "display_name": display_name(runtime),
        "language": "python",
        "interrupt_mode": "message",
        "metadata": {"weir": {"runtime": runtime.name, "build": runtime.build}},
    });
    let target = dir.join(name(&runtime.name));
    let io = |e: std::io::Error| Error::Io(format!("{}: {e}", target.display()));
    std::fs::create_dir_all(&target).map_err(io)?;
    let text = serde_json::to_string_pretty(&spec).map_err(|e| Error::Io(e.to_string()))?;
    std::fs::write(target.join("kernel.json"), text + "\n").map_err(io)?;
    Ok(target)
}
