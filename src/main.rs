//! The `weir` command line.

use clap::{Parser, Subcommand};
use weir::cli::RunArgs;
use weir::EngineSettings;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Run untrusted Python scripts in a WebAssembly sandbox"
)]
struct Cli {
    /// Directory for the precompiled guest cache (default: ~/.cache/weir).
    #[arg(long, env = "WEIR_CACHE_DIR", global = true)]
    cache_dir: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Python script in the sandbox with this terminal's stdin/stdout/stderr.
    Run(Box<RunArgs>),
    /// Measure the sandbox on this machine and print a table (docs/benchmarks.md).
    Bench {
        /// Samples for the latency percentiles.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut settings = EngineSettings::default();
    if let Some(dir) = cli.cache_dir {
        settings.cache_dir = dir;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            std::process::exit(70);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => weir::cli::run(*args, settings).await,
            Command::Bench { samples } => weir::bench::run(settings, samples).await.map(|()| 0),
        }
    });
    let code = code.unwrap_or_else(|e| {
        eprintln!("weir: {e:#}");
        2
    });
    // Stdin may still be held by a blocking read; exit without waiting for it.
    std::process::exit(code);
}
