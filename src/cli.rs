//! `weir run`: a script in the sandbox with the terminal's stdin, stdout and stderr.

use clap::Args;
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_sandbox::split_env;
use weir_sandbox::EngineSettings;
use weir_sandbox::LanePriority;
use weir_sandbox::Outcome;
use weir_sandbox::Seed;
use weir_sandbox::{parse_bytes, parse_duration, Limits};
use weir_sandbox::{Event, RunControl, RunResult, StreamKind};
use weir_sandbox::{Mount, Program, RunRequest, Sandbox};
use weir_sandbox::{OutputLog, Transcript};

/// Arguments of `weir run`.
#[derive(Debug, Args)]
#[command(trailing_var_arg = true)]
pub struct RunArgs {
    /// Run this code instead of a script file (like `python -c`).
    #[arg(short = 'c', value_name = "CODE", conflicts_with = "script")]
    pub code: Option<String>,
    /// Wall-time limit: "2s", "500ms", "1m".
    #[arg(long, env = "WEIR_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<std::time::Duration>,
    /// Memory limit: "64MiB", "1GiB".
    #[arg(long, env = "WEIR_MEMORY", value_parser = parse_bytes, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// CPU limit in fuel units (roughly wasm instructions); unmetered when absent.
    #[arg(long, env = "WEIR_FUEL", value_name = "N")]
    pub fuel: Option<u64>,
    /// Total stdout+stderr limit: "1MiB".
    #[arg(long, env = "WEIR_OUTPUT_LIMIT", value_parser = parse_bytes, value_name = "SIZE")]
    pub output_limit: Option<u64>,
    /// Longest output line kept; longer lines are cut with a marker.
    #[arg(long, env = "WEIR_LINE_LIMIT", value_parser = parse_bytes, value_name = "SIZE")]
    pub line_limit: Option<u64>,
    /// How long the REPL (or a wait for input) may sit idle: "5m".
    #[arg(long, env = "WEIR_IDLE_TIMEOUT", value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Option<std::time::Duration>,
    /// Start an interactive console after the script, keeping its variables (like `python -i`).
    #[arg(short = 'i', long)]
    pub repl: bool,
    /// Mount a host directory at the same path in the guest; append ":ro" for read-only.
    #[arg(long = "dir", value_name = "HOST_PATH[:ro]")]
    pub dirs: Vec<String>,
    /// Copy a host file into the scratch directory (as NAME, or under its own file name).
    #[arg(long = "file", value_name = "HOST_PATH[:NAME]")]
    pub files: Vec<String>,
    /// Set an environment variable in the guest (the host's environment is never passed).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Deterministic mode: seeded randomness, virtual clocks, fuel instead of wall time
    /// (docs/transcripts.md).
    #[arg(long)]
    pub deterministic: bool,
    /// The seed of deterministic mode (implies --deterministic; default 0).
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Record the run as a transcript in FILE (implies --deterministic).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// The runtime to run in, by name or alias (`weir runtimes` lists them); the default
    /// without one.
    #[arg(long, env = "WEIR_RUNTIME", value_name = "NAME")]
    pub runtime: Option<String>,
    /// The package sites' root (`weir packages`): the runtime's site is importable, read-only
    /// (default: ~/.local/share/weir/packages; recorded runs use none).
    #[arg(long, env = "WEIR_PACKAGES", value_name = "DIR")]
    pub packages: Option<PathBuf>,
    /// A host the program may reach with urllib.request / http.client, through weir (repeat
    /// for more): `api.github.com`, `*.example.org:443`; a loopback or private address only
    /// named exactly with its port (`127.0.0.1:8000`). No network without one.
    #[arg(long = "allow-net", value_name = "HOST[:PORT]")]
    pub allow_net: Vec<String>,
    /// A secret from this shell's environment variable NAME, sent only to HOST's requests in
    /// place of `weir-secret:NAME`; the program sees only that placeholder.
    #[arg(long = "secret", value_name = "NAME@HOST")]
    pub secrets: Vec<String>,
    /// The script to run.
    pub script: Option<PathBuf>,
    /// Arguments passed to the script as sys.argv[1:].
    #[arg(allow_hyphen_values = true)]
    pub args: Vec<String>,
}

impl RunArgs {
    /// The limits these flags ask for, on top of the defaults.
    pub fn limits(&self) -> Limits {
        let d = Limits::default();
        Limits {
            wall_ms: self
                .timeout
                .map(|t| t.as_millis() as u64)
                .unwrap_or(d.wall_ms),
            cpu_fuel: self.fuel.or(d.cpu_fuel),
            memory_bytes: self.memory.unwrap_or(d.memory_bytes),
            output_bytes: self.output_limit.unwrap_or(d.output_bytes),
            line_bytes: self.line_limit.unwrap_or(d.line_bytes),
            idle_ms: self
                .idle_timeout
                .map(|t| t.as_millis() as u64)
                .unwrap_or(d.idle_ms),
            ..d
        }
    }

    /// Builds the run request (reads the script file).
    pub fn request(&self) -> anyhow::Result<RunRequest> {
        let program = match (&self.code, &self.script) {
            (Some(code), _) => Program::Code(code.clone()),
            (None, Some(path)) => Program::Script {
                filename: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow::anyhow!("{} is not a file name", path.display()))?,
                source: std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
            },
            (None, None) => anyhow::bail!("give a script to run, or -c CODE"),
        };
        let mut req = RunRequest::script(Vec::new());
        req.program = program;
        req.args = self.args.clone();
        req.limits = self.limits();
        req.repl = self.repl;
        req.runtime = self.runtime.clone();
        if self.deterministic || self.seed.is_some() || self.record.is_some() {
            req.deterministic = Some(Seed(self.seed.unwrap_or(0)));
        }
        req.record_input = self.record.is_some();
        req.mounts = self
            .dirs
            .iter()
            .map(|d| parse_mount(d))
            .collect::<anyhow::Result<_>>()?;
        req.files = self
            .files
            .iter()
            .map(|f| read_file_arg(f))
            .collect::<anyhow::Result<_>>()?;
        req.env = self
            .env
            .iter()
            .map(|kv| {
                split_env(kv).ok_or_else(|| anyhow::anyhow!("--env takes KEY=VALUE, got {kv:?}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(req)
    }
}

/// "HOST_PATH" or "HOST_PATH:NAME": the file's bytes, placed in the scratch dir as NAME.
fn read_file_arg(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let (path, name) = match spec.split_once(':') {
        Some((p, n)) if !p.is_empty() && !n.is_empty() => (p, Some(n)),
        _ => (spec, None),
    };
    let path = std::path::Path::new(path);
    let name = match name {
        Some(n) => n.to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow::anyhow!("--file {spec}: not a file name"))?,
    };
    let data =
        std::fs::read(path).map_err(|e| anyhow::anyhow!("--file {}: {e}", path.display()))?;
    Ok((name, data))
}

/// "HOST_PATH" or "HOST_PATH:ro": mounted at the same absolute path inside the guest.
fn parse_mount(spec: &str) -> anyhow::Result<Mount> {
    let (path, read_only) = match spec.strip_suffix(":ro") {
        Some(p) => (p, true),
        None => (spec, false),
    };
    let host = std::fs::canonicalize(path).map_err(|e| anyhow::anyhow!("--dir {path}: {e}"))?;
    if !host.is_dir() {
        anyhow::bail!("--dir {path}: not a directory");
    }
    let guest = host.to_string_lossy().into_owned();
    Ok(Mount {
        host,
        guest,
        read_only,
    })
}

/// Where `weir run` writes the images a program shows: next to the script, named after it
/// (`plot.py` → `plot-1.png`, `plot-2.png`…), or `weir-figure-N.png` in the working directory
/// for `-c` code.
struct Figures {
    dir: std::path::PathBuf,
    stem: String,
    count: usize,
}

impl Figures {
    fn next_to(script: Option<&std::path::Path>) -> Self {
        let dir = script
            .and_then(|p| p.parent())
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| std::path::PathBuf::from("."), |p| p.to_path_buf());
        let stem = script.and_then(|p| p.file_stem()).map_or_else(
            || "weir-figure".into(),
            |s| s.to_string_lossy().into_owned(),
        );
        Figures {
            dir,
            stem,
            count: 0,
        }
    }

    /// Saves a display's image next to the script (the first format it has of PNG, JPEG, GIF,
    /// WebP and SVG); `None` when it has none.
    fn save(
        &mut self,
        bundle: &weir_sandbox::Bundle,
    ) -> Option<std::io::Result<std::path::PathBuf>> {
        use base64::Engine as _;
        let (mime, ext) = IMAGES
            .iter()
            .find(|(mime, _)| bundle.data.contains_key(*mime))?;
        let text = bundle.data.get(*mime)?.as_str()?;
        let bytes = match *mime {
            "image/svg+xml" => text.as_bytes().to_vec(),
            _ => base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()?,
        };
        self.count += 1;
        let path = self.dir.join(format!("{}-{}.{ext}", self.stem, self.count));
        Some(std::fs::write(&path, bytes).map(|()| path))
    }
}

/// Image formats `weir run` saves, in the order one is chosen, with their file extension.
const IMAGES: &[(&str, &str)] = &[
    ("image/png", "png"),
    ("image/jpeg", "jpg"),
    ("image/gif", "gif"),
    ("image/webp", "webp"),
    ("image/svg+xml", "svg"),
];

/// ` 640x480` from a PNG's metadata, or nothing.
fn size(bundle: &weir_sandbox::Bundle) -> String {
    let md = bundle.metadata.get("image/png");
    let dim = |k: &str| md.and_then(|m| m.get(k)).and_then(|v| v.as_u64());
    match (dim("width"), dim("height")) {
        (Some(w), Some(h)) => format!(" {w}x{h}"),
        _ => String::new(),
    }
}

/// Runs `weir run`; returns the process exit code. Its one run keeps the process's CPU priority
/// whatever `$WEIR_BACKGROUND_NICE` says: there are no other runs for it to give way to.
pub async fn run(args: RunArgs, mut settings: EngineSettings) -> anyhow::Result<i32> {
    settings.background_priority = LanePriority::Process;
    let mut req = run_request(&args)?;
    let sandbox = Sandbox::load_async(settings).await?;
    if args.memory.is_none() {
        runtime_default_memory(&sandbox, &mut req);
    }
    let mut handle = match sandbox.start(req.clone()).await {
        Ok(handle) => handle,
        // Naming a runtime this weir does not host is a usage error, like a bad flag.
        Err(e @ weir_sandbox::Error::UnknownRuntime { .. }) => {
            eprintln!("weir: {e}");
            return Ok(2);
        }
        Err(e) => return Err(e.into()),
    };
    let interrupter = forward_ctrl_c(handle.control());
    let feeder = feed_stdin(handle.control());
    let mut terminal = Terminal::new(args.script.as_deref(), args.record.is_some());
    while let Some(event) = handle.next_event().await {
        terminal.show(event).await;
    }
    feeder.abort();
    interrupter.abort();
    terminal.flush().await;
    if let Some(path) = &args.record {
        terminal.write_transcript(&sandbox, &req, path)?;
    }
    Ok(exit_code(terminal.outcome))
}

/// The run `args` ask for, with the package sites unless it is recorded: a transcript holds
/// the program and its files, not the packages it imported, so recorded runs import none and
/// replay anywhere.
fn run_request(args: &RunArgs) -> anyhow::Result<RunRequest> {
    let mut req = args.request()?;
    if args.record.is_none() {
        req.packages = args
            .packages
            .clone()
            .or_else(weir_service::packages::default_root);
    }
    if args.record.is_some() && !req.mounts.is_empty() {
        anyhow::bail!(
            "--record cannot be used with --dir: the transcript would not hold the mounted files"
        );
    }
    give_network(args, &mut req)?;
    Ok(req)
}

/// The network `--allow-net` and `--secret` ask for, if any.
fn give_network(args: &RunArgs, req: &mut RunRequest) -> anyhow::Result<()> {
    let mut secrets = std::collections::BTreeMap::new();
    for secret in &args.secrets {
        let Some((name, host)) = secret.split_once('@') else {
            anyhow::bail!("--secret {secret:?}: NAME@HOST, NAME an environment variable");
        };
        let config = weir_egress::SecretConfig {
            value: None,
            value_env: Some(name.to_string()),
            hosts: vec![host.to_string()],
        };
        secrets.insert(name.to_string(), config);
    }
    let config = weir_egress::NetworkConfig {
        allow: args.allow_net.clone(),
        ..Default::default()
    };
    let Some(network) = weir_egress::Network::new(&config, &secrets)? else {
        if !secrets.is_empty() {
            anyhow::bail!("--secret needs --allow-net: the secret's host must be reachable");
        }
        return Ok(());
    };
    network.for_run(None, Default::default())?.give(req);
    Ok(())
}

/// Gives a run that names no memory limit its runtime's own default (python-sci's 1 GiB), if
/// the runtime has one.
fn runtime_default_memory(sandbox: &Sandbox, req: &mut RunRequest) {
    let policy = sandbox
        .select(req)
        .and_then(|r| sandbox.policy(Some(&r.name)));
    if let Some(bytes) = policy.ok().and_then(|p| p.memory_bytes) {
        req.limits.memory_bytes = bytes;
    }
}

/// Ctrl-C interrupts the program as it would `python` (KeyboardInterrupt where it runs); a
/// second one, or one the runtime cannot deliver, ends the run.
fn forward_ctrl_c(control: RunControl) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut delivered = false;
        while tokio::signal::ctrl_c().await.is_ok() {
            if delivered || !control.interrupt() {
                control.stop();
            }
            delivered = true;
        }
    })
}

/// Copies the terminal's stdin to the run's until either ends, then closes the run's.
fn feed_stdin(control: RunControl) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !control.write_stdin(buf[..n].to_vec()).await {
                        return;
                    }
                }
            }
        }
        control.close_stdin();
    })
}

/// Where `weir run` shows a run: output on the terminal's stdout and stderr, figures saved to
/// files (`Figures`), the end's message on stderr unless the program exited by itself, and,
/// when recording, the log its transcript is made from.
struct Terminal {
    stdout: tokio::io::Stdout,
    stderr: tokio::io::Stderr,
    figures: Figures,
    record: bool,
    log: OutputLog,
    /// The recorded run's result (recording only).
    recorded: Option<RunResult>,
    /// How the run ended, once it has.
    outcome: Option<Outcome>,
}

impl Terminal {
    fn new(script: Option<&std::path::Path>, record: bool) -> Self {
        Terminal {
            stdout: tokio::io::stdout(),
            stderr: tokio::io::stderr(),
            figures: Figures::next_to(script),
            record,
            log: OutputLog::default(),
            recorded: None,
            outcome: None,
        }
    }

    /// Shows one event of the run.
    async fn show(&mut self, event: Event) {
        if self.record {
            self.recorded = self.log.observe(&event).or(self.recorded.take());
        }
        match event {
            Event::Output { stream, data } => self.write_output(stream, &data).await,
            // `weir run` declares no functions: no calls come.
            Event::State(_) | Event::Cell(_) | Event::ClearOutput { .. } | Event::Call(_) => {}
            Event::Display(shown) => self.show_display(&shown).await,
            Event::Exit(result) => {
                if !matches!(
                    result.outcome,
                    Outcome::Exited { .. } | Outcome::Error { .. }
                ) {
                    let _ = self
                        .stderr
                        .write_all(format!("weir: {}\n", result.message).as_bytes())
                        .await;
                }
                self.outcome = Some(result.outcome);
            }
        }
    }

    /// Writes output to the stream it came on, at once.
    async fn write_output(&mut self, stream: StreamKind, data: &[u8]) {
        let sink: &mut (dyn tokio::io::AsyncWrite + Unpin + Send) = match stream {
            StreamKind::Stdout => &mut self.stdout,
            StreamKind::Stderr => &mut self.stderr,
        };
        // A closed terminal pipe just discards the rest, as a killed reader would.
        let _ = sink.write_all(data).await;
        let _ = sink.flush().await;
    }

    /// Shows a display in a terminal: an image is saved next to the script (where, on stderr);
    /// anything else is printed as its text, as IPython's terminal shows it.
    async fn show_display(&mut self, shown: &weir_sandbox::Display) {
        let bundle = &shown.bundle;
        let note = match self.figures.save(bundle) {
            Some(Ok(path)) => format!("weir: figure{} saved to {}\n", size(bundle), path.display()),
            Some(Err(e)) => format!("weir: cannot save a figure: {e}\n"),
            None => {
                let text = format!("{}\n", bundle.plain());
                self.write_output(StreamKind::Stdout, text.as_bytes()).await;
                return;
            }
        };
        let _ = self.stdout.flush().await;
        let _ = self.stderr.write_all(note.as_bytes()).await;
    }

    async fn flush(&mut self) {
        let _ = self.stdout.flush().await;
        let _ = self.stderr.flush().await;
    }

    /// Writes the run's transcript of `req` to `path`, if the run ended with a result.
    fn write_transcript(
        &self,
        sandbox: &Sandbox,
        req: &RunRequest,
        path: &std::path::Path,
    ) -> anyhow::Result<()> {
        let Some(result) = &self.recorded else {
            return Ok(());
        };
        let runtime = sandbox.runtime(Some(&result.runtime))?;
        let transcript = Transcript::record(req, runtime, &self.log, result)?;
        std::fs::write(path, transcript.to_json())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    }
}

/// The exit code of a run that ended with `outcome` (70 when it never ended).
fn exit_code(outcome: Option<Outcome>) -> i32 {
    match outcome {
        // As `python` does after an uncaught KeyboardInterrupt: the status of death by SIGINT.
        Some(Outcome::Error { exception, .. }) if exception == "KeyboardInterrupt" => 130,
        Some(o) => o.exit_code(),
        None => 70,
    }
}

/// `weir packages add` (with `specs`) or `weir packages list` (without) for `runtime`'s site
/// under `root`.
pub async fn packages(
    specs: Option<Vec<String>>,
    root: &std::path::Path,
    runtime: Option<&str>,
    settings: EngineSettings,
) -> anyhow::Result<i32> {
    let sandbox = Sandbox::load_async(settings).await?;
    let name = match sandbox.runtime(runtime) {
        Ok(info) => info.name.clone(),
        Err(e) => {
            eprintln!("weir: {e}");
            return Ok(2);
        }
    };
    let Some(specs) = specs else {
        for p in weir_service::packages::installed(&root.join(&name)) {
            println!(
                "{}=={}\t{}\tsha256:{}",
                p.name, p.version, p.wheel, p.sha256
            );
        }
        return Ok(0);
    };
    match weir_service::packages::add(&sandbox, root, Some(&name), &specs).await {
        Ok(added) => {
            for p in added {
                println!(
                    "installed {}=={} for {name} (sha256:{})",
                    p.name, p.version, p.sha256
                );
            }
            Ok(0)
        }
        Err(e) => {
            eprintln!("weir: {e}");
            Ok(1)
        }
    }
}

/// `weir runtimes`: one line per runtime, the default first.
pub fn runtimes_table(sandbox: &Sandbox) -> String {
    let mut out = format!(
        "{:<14} {:<10} {:<9} {:<20} {:<10} {}\n",
        "NAME", "LANGUAGE", "VERSION", "ALIASES", "STATUS", "BUILD"
    );
    for (i, r) in sandbox.runtimes().enumerate() {
        let default = if i == 0 { " (default)" } else { "" };
        let status = match sandbox.runtime_status(&r.name) {
            Ok(weir_sandbox::RuntimeStatus::Ready) => "ready",
            Ok(weir_sandbox::RuntimeStatus::NotLoaded) => "on use",
            _ => "failed",
        };
        out.push_str(&format!(
            "{:<14} {:<10} {:<9} {:<20} {:<10} {}{default}\n",
            r.name,
            r.language,
            r.version,
            r.aliases.join(","),
            status,
            r.build
        ));
    }
    out
}
