//! `weir kernel` and `weir kernelspec`: weir as a Jupyter kernel (docs/jupyter.md).

use std::path::{Path, PathBuf};
use weir_sandbox::EngineSettings;
use weir_service::ServerConfig;

/// `weir kernel`.
#[derive(Debug, clap::Args)]
pub struct KernelArgs {
    /// The connection file Jupyter wrote (its sockets and signing key).
    #[arg(short = 'f', long = "connection-file")]
    connection_file: PathBuf,
    /// The kernel's runtime, by name or alias.
    #[arg(long, default_value = "python")]
    runtime: String,
    /// TOML configuration file: `limits` (a cell's `wall_ms`, the session's memory, output…)
    /// and `[runtimes.NAME] memory_mb`, as for `weir serve`.
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
}

/// `weir kernelspec …`.
#[derive(Debug, clap::Subcommand)]
pub enum KernelspecAction {
    /// Write one kernelspec per runtime (or those named) where Jupyter finds them.
    Install {
        /// Into the user's Jupyter data directory (the default).
        #[arg(long, conflicts_with = "prefix")]
        user: bool,
        /// Into PREFIX/share/jupyter/kernels (a virtual environment's prefix, or /usr/local).
        #[arg(long)]
        prefix: Option<PathBuf>,
        /// Only this runtime (repeatable); every runtime when absent.
        #[arg(long)]
        runtime: Vec<String>,
        /// A configuration file the kernels read their limits from.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Serves one kernel until Jupyter shuts it down.
pub async fn kernel(args: KernelArgs) -> anyhow::Result<i32> {
    let connection = weir_kernel::read_connection_file(&args.connection_file)?;
    let config = match &args.config {
        Some(path) => ServerConfig::from_file(path)?,
        None => ServerConfig::default(),
    };
    let info = weir_kernel::runtime_info(&args.runtime)
        .ok_or_else(|| anyhow::anyhow!("unknown runtime {:?}", args.runtime))?;
    let kernel = weir_kernel::KernelConfig {
        runtime: info.name.clone(),
        limits: config.limits,
        memory_bytes: config.runtime_memory(info),
        settings: EngineSettings {
            // One session: no pool of warm instances to fill.
            max_instances: 4,
            warm_instances: 0,
            ..config.engine_settings()
        },
    };
    weir_kernel::run(connection, kernel).await?;
    Ok(0)
}

/// Installs kernelspecs; prints where each went.
pub fn kernelspec(action: KernelspecAction) -> anyhow::Result<i32> {
    let KernelspecAction::Install {
        user: _,
        prefix,
        runtime,
        config,
    } = action;
    let place = match prefix {
        Some(prefix) => weir_kernel::Place::Prefix(absolute(&prefix)?),
        None => weir_kernel::Place::User,
    };
    let dir = place.kernels_dir()?;
    let weir = std::env::current_exe()?;
    let config = config.map(|c| absolute(&c)).transpose()?;
    let infos = match runtime.is_empty() {
        true => weir_kernel::runtimes().collect(),
        false => (runtime.iter())
            .map(|name| {
                weir_kernel::runtime_info(name)
                    .ok_or_else(|| anyhow::anyhow!("unknown runtime {name:?}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    for info in infos {
        let written = weir_kernel::install(&dir, &weir, info, config.as_deref())?;
        println!(
            "{}: {} ({})",
            weir_kernel::spec_name(&info.name),
            written.display(),
            weir_kernel::display_name(info)
        );
    }
    Ok(0)
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
