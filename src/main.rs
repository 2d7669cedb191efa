//! The `weir` command line.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
mod cli;
mod jupyter;
mod logging;
mod replay;

use cli::RunArgs;
use weir_sandbox::EngineSettings;
use weir_service::ServerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "Run untrusted Python scripts in a WebAssembly sandbox"
)]
struct Cli {
    /// Directory for the precompiled guest cache (default: ~/.cache/weir).
    #[arg(long, env = "WEIR_CACHE_DIR", global = true)]
    cache_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// Where a server's configuration comes from: `serve` and `mcp` share these.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    /// TOML configuration file (every field optional; see docs/protocol.md).
    #[arg(long, env = "WEIR_CONFIG")]
    config: Option<PathBuf>,
    /// The run-history SQLite database (default: ~/.local/share/weir/history.sqlite3).
    #[arg(long, env = "WEIR_HISTORY")]
    history: Option<PathBuf>,
}

impl ConfigArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut c = match &self.config {
            Some(path) => ServerConfig::from_file(path)?,
            None => ServerConfig::default(),
        };
        if let Some(path) = &self.history {
            c.history.path = path.clone();
        }
        Ok(c)
    }
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[command(flatten)]
    files: ConfigArgs,
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "WEIR_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Most WebSocket sessions at once.
    #[arg(long, env = "WEIR_MAX_SESSIONS")]
    max_sessions: Option<usize>,
    /// Secret for session tokens; without one, connections are anonymous.
    #[arg(long, env = "WEIR_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// Log JSON lines instead of text.
    #[arg(long, env = "WEIR_LOG_JSON")]
    log_json: bool,
    /// Cluster mode: the PostgreSQL database every node shares (`[cluster] database_url`).
    #[arg(long, env = "WEIR_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// This node's id in cluster mode (`[cluster] node_id`; default: the host name).
    #[arg(long, env = "WEIR_NODE_ID")]
    node_id: Option<String>,
}

impl ServeArgs {
    fn config(&self) -> anyhow::Result<ServerConfig> {
        let mut c = self.files.config()?;
        if let Some(listen) = self.listen {
            c.listen = listen;
        }
        if let Some(n) = self.max_sessions {
            c.max_sessions = n;
        }
        if self.secret.is_some() {
            c.secret = self.secret.clone();
        }
        c.log_json |= self.log_json;
        if self.database_url.is_some() {
            c.cluster.database_url = self.database_url.clone();
        }
        if self.node_id.is_some() {
            c.cluster.node_id = self.node_id.clone();
        }
        Ok(c)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a Python script in the sandbox with this terminal's stdin/stdout/stderr.
    Run(Box<RunArgs>),
    /// Serve the browser-IDE WebSocket protocol (the main job).
    Serve(ServeArgs),
    /// Mint a session token for a user (needs the server's secret).
    Token {
        #[arg(long)]
        user: String,
        /// How long the token is valid: "24h", "30m".
        #[arg(long, default_value = "24h", value_parser = weir_sandbox::parse_duration)]
        ttl: std::time::Duration,
        #[arg(long, env = "WEIR_SECRET", hide_env_values = true)]
        secret: String,
    },
    /// Re-run recorded transcripts and compare their output byte for byte (docs/transcripts.md).
    Replay {
        /// Re-record each transcript with this weir and guest instead of comparing.
        #[arg(long)]
        update: bool,
        /// Transcript files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Serve MCP (Model Context Protocol) on stdin/stdout: the `run_python` tool for AI agents
    /// (docs/mcp.md).
    Mcp(ConfigArgs),
    /// List the runtimes this weir hosts (the default first).
    Runtimes {
        /// Prepare every runtime first (python-sci: fetch, pre-initialize and compile, minutes
        /// the first time on a machine), so no run waits for it.
        #[arg(long)]
        prepare: bool,
    },
    /// Install pure-Python packages for runs to import, or list them (docs/sandbox.md).
    Packages {
        #[command(subcommand)]
        action: PackagesAction,
        /// The package sites' root (default: ~/.local/share/weir/packages).
        #[arg(long, env = "WEIR_PACKAGES", global = true)]
        dir: Option<PathBuf>,
        /// The runtime the packages are for (default: the default runtime).
        #[arg(long, global = true)]
        runtime: Option<String>,
    },
    /// Serve one Jupyter kernel on the sockets of a connection file: Jupyter starts it from a
    /// kernelspec (docs/jupyter.md).
    Kernel(jupyter::KernelArgs),
    /// Install the kernelspecs Jupyter starts `weir kernel` from.
    Kernelspec {
        #[command(subcommand)]
        action: jupyter::KernelspecAction,
    },
    /// Measure the sandbox on this machine and print a table (docs/benchmarks.md).
    Bench {
        /// Samples for the latency percentiles.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
}

#[derive(Debug, Subcommand)]
enum PackagesAction {
    /// Install wheels: `NAME==VERSION` (from PyPI, with the host's pip) or a `.whl` file.
    Add {
        #[arg(required = true)]
        specs: Vec<String>,
    },
    /// List what is installed, with versions and sha256.
    List,
}

async fn dispatch(command: Command, settings: EngineSettings) -> anyhow::Result<i32> {
    match command {
        Command::Run(args) => cli::run(*args, settings).await,
        Command::Serve(args) => {
            let config = args.config()?;
            logging::server(config.log_json);
            let listening = |addr| {
                eprintln!("weir: listening on http://{addr} (WebSocket at /ws)");
            };
            weir_service::serve(config, listening).await?;
            eprintln!("weir: stopped");
            Ok(0)
        }
        Command::Token { user, ttl, secret } => {
            let token = weir_service::auth::mint(secret.as_bytes(), &user, ttl)
                .map_err(|e| anyhow::anyhow!("--user {user:?}: {e}"))?;
            println!("{token}");
            Ok(0)
        }
        Command::Replay { update, files } => {
            let sandbox = weir_sandbox::Sandbox::load_async(settings).await?;
            Ok(replay::run(&sandbox, &files, update).await)
        }
        Command::Mcp(args) => {
            // stdout carries the protocol; logs go to stderr, as for every command.
            weir_service::mcp::serve_stdio(args.config()?)
                .await
                .map(|()| 0)
        }
        Command::Kernel(args) => jupyter::kernel(args).await,
        Command::Kernelspec { action } => jupyter::kernelspec(action),
        Command::Runtimes { prepare } => {
            let sandbox = weir_sandbox::Sandbox::load_async(settings).await?;
            if prepare {
                let names: Vec<String> = sandbox.runtimes().map(|r| r.name.clone()).collect();
                for name in names {
                    if let Err(e) = sandbox.prepare(&name).await {
                        eprintln!("weir: cannot prepare {name}: {e}");
                        return Ok(1);
                    }
                }
            }
            print!("{}", cli::runtimes_table(&sandbox));
            Ok(0)
        }
        Command::Packages {
            action,
            dir,
            runtime,
        } => {
            let root = dir
                .or_else(weir_service::packages::default_root)
                .ok_or_else(|| anyhow::anyhow!("no data directory: pass --dir"))?;
            cli::packages(action_specs(action), &root, runtime.as_deref(), settings).await
        }
        Command::Bench { samples } => weir_bench::run(settings, samples).await.map(|()| 0),
    }
}

/// The wheels to add, or `None` to list.
fn action_specs(action: PackagesAction) -> Option<Vec<String>> {
    match action {
        PackagesAction::Add { specs } => Some(specs),
        PackagesAction::List => None,
    }
}

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Serve(_)) {
        logging::command(); // `serve` starts logging once its config is read
    }
    if let Some(dir) = &cli.cache_dir {
        std::env::set_var("WEIR_CACHE_DIR", dir);
    }
    let settings = EngineSettings::default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir: cannot start the async runtime: {e}");
            std::process::exit(70);
        }
    };
    let code = runtime
        .block_on(dispatch(cli.command, settings))
        .unwrap_or_else(|e| {
            eprintln!("weir: {e:#}");
            2
        });
    // Stdin may still be held by a blocking read; exit without waiting for it.
    std::process::exit(code);
}
