//! `weir bench`: measures the sandbox on this machine and prints one table (see
//! docs/benchmarks.md). A benchmark, not a test: it asserts nothing.

use crate::bench_native as native;
use crate::limits::Limits;
use crate::run::{Event, RunHandle, RunState};
use crate::sandbox::{RunRequest, Sandbox};
use crate::EngineSettings;
use std::time::{Duration, Instant};

/// Times fib(27) [`FIB_CALLS`] times in one interpreter, one line per call.
const FIB: &str = "import time\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
for _ in range(3):\n    t = time.perf_counter()\n    fib(27)\n    print(time.perf_counter() - t)\n";
/// Calls of fib(27) per run of [`FIB`].
const FIB_CALLS: usize = 3;

/// Runs every measurement and prints the table: weir, and beside it the baseline a
/// process-based executor uses (a fresh native `python3` per run, [`crate::bench_native`]).
pub async fn run(settings: EngineSettings, samples: usize) -> anyhow::Result<()> {
    if std::env::var_os("WEIR_BENCH_ONLY_WS").is_some() {
        row("measurement", "weir", "python3 per run", "target");
        return ws::run(1000).await;
    }
    let sandbox = Sandbox::load_async(settings.clone()).await?;
    // `WEIR_BENCH_ONLY_FIB=1`: the fib(27) rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_FIB").is_some() {
        row("measurement", "weir", "python3 per run", "target");
        return fib_rows(&sandbox).await;
    }
    // `WEIR_BENCH_ONLY_HOST=1`: the busy-host and deep-recursion rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_HOST").is_some() {
        row("measurement", "weir", "python3 per run", "target");
        busy_host_rows(&sandbox).await?;
        return deep_recursion_row(&sandbox).await;
    }
    if std::env::var_os("WEIR_BENCH_ONLY_LATENCY").is_some() {
        let (p50, p99) = first_byte_latency(&sandbox, samples, false).await?;
        let (c50, c99) = first_byte_latency(&sandbox, samples, true).await?;
        let rate = throughput(&sandbox, Duration::from_secs(3)).await?;
        println!(
            "first byte p50 {} p99 {} (compiling: p50 {} p99 {}), {rate:.0} runs/s",
            ms(p50),
            ms(p99),
            ms(c50),
            ms(c99)
        );
        return Ok(());
    }
    let python = native::python();
    println!(
        "weir bench: {samples} samples, {} cores; baseline: a fresh `{python}` process per run",
        num_cores()
    );
    row("measurement", "weir", "python3 per run", "target");
    let (p50, p99) = first_byte_latency(&sandbox, samples, false).await?;
    let (c50, c99) = first_byte_latency(&sandbox, samples, true).await?;
    let native_latency = native::first_byte_latency(samples.min(200)).await.ok();
    let (n50, n99) = native_latency.unzip();
    row(
        "hello: start -> first stdout byte, p50",
        ms(p50),
        &opt_ms(n50),
        "<= 0.25 ms",
    );
    row(
        "hello: start -> first stdout byte, p99",
        ms(p99),
        &opt_ms(n99),
        "",
    );
    row(
        "  the same, compiling (no compile-cache hit): p50 / p99",
        format!("{} / {}", ms(c50), ms(c99)),
        "",
        "",
    );
    let workers = workers();
    let rate = throughput(&sandbox, Duration::from_secs(3)).await?;
    let native_rate = native::throughput(Duration::from_secs(3), num_cores() * 2).await;
    row(
        "hello runs per second (all cores)",
        format!("{rate:.0}/s ({workers} callers)"),
        &format!("{native_rate:.0}/s ({} callers)", num_cores() * 2),
        ">= 1000/s",
    );
    fib_rows(&sandbox).await?;
    busy_host_rows(&sandbox).await?;
    let pss = idle_pss(&settings, 100).await?;
    let native_pss = native::idle_pss(100).await.ok();
    row(
        "PSS per idle interpreter (100; weir: in input())",
        mb(pss),
        &native_pss.map_or("-".into(), mb),
        "<= 1.2 MB",
    );
    deep_recursion_row(&sandbox).await?;
    let late = timeout_lateness(&sandbox).await?;
    row(
        "timeout lateness (100 ms limit, busy loop)",
        ms(late),
        "",
        "",
    );
    for busy in [true, false] {
        let label = if busy {
            "busy loop"
        } else {
            "blocked in input()"
        };
        let stop = stop_latency(&sandbox, busy).await?;
        let native_stop = native::stop_latency(busy).await.ok();
        row(
            &format!("stop -> exit, {label}, p50"),
            ms(stop),
            &opt_ms(native_stop),
            "<= 15 ms",
        );
    }
    drop(sandbox);
    ws::run(1000).await
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), ms)
}

fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn row(name: &str, weir: impl std::fmt::Display, native: &str, target: &str) {
    println!("{name:<52} {weir:>22} {native:>22} {target:>12}");
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn hello() -> RunRequest {
    let mut req = RunRequest::script("print('hello')");
    req.close_stdin = true;
    req
}

async fn first_output(handle: &mut RunHandle) -> anyhow::Result<()> {
    while let Some(event) = handle.next_event().await {
        match event {
            Event::Output { .. } => return Ok(()),
            Event::Exit(r) => anyhow::bail!("run ended without output: {}", r.message),
            Event::State(_) => {}
        }
    }
    anyhow::bail!("run vanished")
}

/// start -> first byte of hello, p50 and p99. Re-runs of one script load it from the compile
/// cache (`crate::compile_cache`) after the first; with `compiling`, every run has a scope of its
/// own, so each one compiles (and offers its code to the cache) as a first run does.
async fn first_byte_latency(
    sandbox: &Sandbox,
    n: usize,
    compiling: bool,
) -> anyhow::Result<(Duration, Duration)> {
    // From a task, as a server handler calls it (not from `block_on`'s thread, whose spawns
    // must wake a worker thread first).
    let sandbox = sandbox.clone();
    tokio::spawn(async move { first_byte_samples(&sandbox, n, compiling).await }).await?
}

async fn first_byte_samples(
    sandbox: &Sandbox,
    n: usize,
    compiling: bool,
) -> anyhow::Result<(Duration, Duration)> {
    for _ in 0..20 {
        sandbox.start(hello()).await?.collect().await; // warm up
    }
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let mut req = hello();
        if compiling {
            req.compile_scope = format!("bench-{i}").into();
        }
        let t = Instant::now();
        let mut handle = sandbox.start(req).await?;
        first_output(&mut handle).await?;
        times.push(t.elapsed());
        handle.collect().await;
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// Concurrent callers of weir's throughput line: `$WEIR_BENCH_WORKERS`, default 16 per core.
fn workers() -> usize {
    std::env::var("WEIR_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(num_cores() * 16)
}

async fn throughput(sandbox: &Sandbox, span: Duration) -> anyhow::Result<f64> {
    let sandbox = sandbox.clone();
    Ok(closed_loop(workers(), span, move || {
        let sandbox = sandbox.clone();
        async move {
            match sandbox.start(hello()).await {
                Ok(handle) => {
                    handle.collect().await;
                    true
                }
                Err(_) => false,
            }
        }
    })
    .await)
}

/// Completions per second of `workers` callers that each repeat `one` until `span` has passed
/// (`one` tells whether its attempt completed).
pub(crate) async fn closed_loop<F, Fut>(workers: usize, span: Duration, one: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + span;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if one().await {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

/// The fib(27) rows: guest and native times side by side, and their ratios.
async fn fib_rows(sandbox: &Sandbox) -> anyhow::Result<()> {
    let (guest, native_fib) = fib(sandbox).await?;
    row(
        "fib(27) s, best (median) of 7 runs x 3 calls",
        format!("{:.3} ({:.3}) s", guest.best, guest.median),
        &native_fib.map_or("-".into(), |n| format!("{:.3} ({:.3}) s", n.best, n.median)),
        "",
    );
    if let Some(n) = native_fib {
        row(
            "fib(27) ratio weir / native, best (median)",
            format!(
                "{:.2}x ({:.2}x)",
                guest.best / n.best,
                guest.median / n.median
            ),
            "1x",
            "<= 1.8x",
        );
    }
    Ok(())
}

/// Times fib(25) [`FIB_CALLS`] times in one interpreter, one line per call.
const FIB25: &str =
    "import time\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
for _ in range(3):\n    t = time.perf_counter()\n    fib(25)\n    print(time.perf_counter() - t)\n";

/// Rounds of the busy-host rows: each runs [`FIB25`] on both sides on a quiet host, then on a
/// busy one.
const BUSY_ROUNDS: usize = 7;

/// The busy-host rows: fib(25) with one ordinary busy process per core on the host against a
/// quiet host, for weir and a native `python3` in the same sitting, rounds alternating quiet
/// and busy. A run must keep its fair share of the CPU (`crate::background`): weir's slowdown
/// should match native's.
async fn busy_host_rows(sandbox: &Sandbox) -> anyhow::Result<()> {
    fib25_guest(sandbox).await?; // warm: the first run pages in what later runs find resident
    let (mut quiet, mut busy) = (Fib25::default(), Fib25::default());
    for _ in 0..BUSY_ROUNDS {
        quiet.round(sandbox).await?;
        let _host = native::BusyHost::start(num_cores())?;
        busy.round(sandbox).await?;
    }
    let (q, b) = (quiet.medians(), busy.medians());
    row(
        "fib(25) s, median: quiet / busy host (1 busy proc/core)",
        format!("{:.3} / {:.3} s", q.0, b.0),
        &format!("{:.3} / {:.3} s", q.1, b.1),
        "",
    );
    let slowdown = |busy: f64, quiet: f64| format!("{:.2}x", busy / quiet);
    row(
        "  slowdown on the busy host",
        slowdown(b.0, q.0),
        &slowdown(b.1, q.1),
        "<= 1.5x native's",
    );
    row(
        "  weir start -> exit, median: quiet / busy host",
        format!("{:.3} / {:.3} s", q.2, b.2),
        "",
        "",
    );
    Ok(())
}

/// fib(25) call times on each side, and weir's whole runs (start to exit), seconds.
#[derive(Default)]
struct Fib25 {
    guest: Vec<f64>,
    native: Vec<f64>,
    guest_run: Vec<f64>,
}

impl Fib25 {
    async fn round(&mut self, sandbox: &Sandbox) -> anyhow::Result<()> {
        let t = Instant::now();
        self.guest.extend(fib25_guest(sandbox).await?);
        self.guest_run.push(t.elapsed().as_secs_f64());
        let run = tokio::process::Command::new(native::python())
            .arg("-c")
            .arg(FIB25)
            .output()
            .await?;
        self.native
            .extend(fib_calls(&String::from_utf8_lossy(&run.stdout)));
        Ok(())
    }

    /// Medians of the guest's calls, native's calls and weir's runs.
    fn medians(&mut self) -> (f64, f64, f64) {
        let m = |v: &mut Vec<f64>| if v.is_empty() { f64::NAN } else { median(v) };
        (
            m(&mut self.guest),
            m(&mut self.native),
            m(&mut self.guest_run),
        )
    }
}

/// One run of [`FIB25`] in the guest: its calls' times.
async fn fib25_guest(sandbox: &Sandbox) -> anyhow::Result<Vec<f64>> {
    guest_calls(sandbox, FIB25).await
}

/// A request for `script` with stdin closed and two minutes of wall time.
fn long_request(script: &str) -> RunRequest {
    let mut req = RunRequest::script(script);
    req.close_stdin = true;
    req.limits = Limits {
        wall_ms: 120_000,
        ..Limits::default()
    };
    req
}

/// Runs `script`, which times [`FIB_CALLS`] calls, in the guest: the calls' times.
async fn guest_calls(sandbox: &Sandbox, script: &str) -> anyhow::Result<Vec<f64>> {
    let out = sandbox.start(long_request(script)).await?.collect().await;
    let calls = fib_calls(&out.stdout_text());
    anyhow::ensure!(
        calls.len() == FIB_CALLS,
        "the guest printed {calls:?} ({:?})",
        out.outcome()
    );
    Ok(calls)
}

async fn deep_recursion_row(sandbox: &Sandbox) -> anyhow::Result<()> {
    let deep = deep_recursion_growth(sandbox).await?;
    row(
        "PSS growth after 100 deep-recursion runs (10 at once)",
        mb(deep),
        "",
        "~0 MB",
    );
    Ok(())
}

/// How much this process's PSS grew over 100 runs that recurse until the wasm stack is
/// exhausted, 10 at a time: what the fiber stacks keep resident after such runs.
async fn deep_recursion_growth(sandbox: &Sandbox) -> anyhow::Result<f64> {
    const DEEP: &str = "import sys\nsys.setrecursionlimit(10**9)\n\
                        def f(n):\n    return f(n + 1)\nf(0)\n";
    let batch = |n: usize| {
        let runs = (0..n).map(|_| {
            let sandbox = sandbox.clone();
            async move { sandbox.start(long_request(DEEP)).await.map(|h| h.collect()) }
        });
        futures_util::future::join_all(runs)
    };
    for run in batch(1).await {
        run?.await;
    }
    let before = pss_bytes().unwrap_or(0.0);
    for _ in 0..10 {
        let mut collecting = Vec::new();
        for run in batch(10).await {
            collecting.push(run?);
        }
        futures_util::future::join_all(collecting).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(pss_bytes().unwrap_or(0.0) - before)
}

/// Runs of fib(27) on each side.
const FIB_ROUNDS: usize = 7;

/// fib(27) times on one side: the best call, and the median call.
#[derive(Debug, Clone, Copy)]
struct FibTimes {
    best: f64,
    median: f64,
}

impl FibTimes {
    fn of(mut calls: Vec<f64>) -> Option<Self> {
        // `median` sorts the calls, so the best is then the first.
        let median = (!calls.is_empty()).then(|| median(&mut calls))?;
        Some(FibTimes {
            best: calls[0],
            median,
        })
    }
}

/// The calls' times printed by one run of [`FIB`].
fn fib_calls(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// fib(27) in the guest and in native python3: [`FIB_ROUNDS`] runs per side, taken alternately,
/// each timing [`FIB_CALLS`] calls. Single calls vary by up to 3x on this (virtual, shared)
/// machine, the guest's more than native's, so the table shows the best call (the convention of
/// Python's `timeit`: slower calls measure interference) beside the median one.
async fn fib(sandbox: &Sandbox) -> anyhow::Result<(FibTimes, Option<FibTimes>)> {
    let (mut guest, mut native) = (Vec::new(), Vec::new());
    for _ in 0..FIB_ROUNDS {
        guest.extend(guest_calls(sandbox, FIB).await?);
        let run = tokio::process::Command::new(native::python())
            .arg("-c")
            .arg(FIB)
            .output()
            .await;
        if let Ok(o) = run {
            native.extend(fib_calls(&String::from_utf8_lossy(&o.stdout)));
        }
    }
    let guest = FibTimes::of(guest).ok_or_else(|| anyhow::anyhow!("no fib time"))?;
    Ok((guest, FibTimes::of(native)))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Proportional set size of this process, bytes.
pub fn pss_bytes() -> Option<f64> {
    pss_bytes_of("self")
}

/// Proportional set size of process `pid` ("self" for this one), bytes.
pub fn pss_bytes_of(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// PSS per instance blocked in `input()`, on a sandbox of its own: the shared one's freed slots
/// keep the pages their runs dirtied, which would hide new instances' copies.
async fn idle_pss(settings: &EngineSettings, n: usize) -> anyhow::Result<f64> {
    let sandbox = Sandbox::load_async(settings.clone()).await?;
    let before = pss_bytes().unwrap_or(0.0);
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let mut handle = sandbox.start(RunRequest::script("input()")).await?;
        while let Some(event) = handle.next_event().await {
            if let Event::State(RunState::WaitingInput) = event {
                break;
            }
        }
        handles.push(handle);
    }
    let after = pss_bytes().unwrap_or(0.0);
    drop(handles);
    Ok((after - before) / n as f64)
}

async fn timeout_lateness(sandbox: &Sandbox) -> anyhow::Result<Duration> {
    let mut lateness = Vec::new();
    for _ in 0..10 {
        let mut req = RunRequest::script("while True: pass");
        req.limits.wall_ms = 100;
        let out = sandbox.start(req).await?.collect().await;
        if let Some(r) = out.result {
            lateness.push(r.duration.saturating_sub(Duration::from_millis(100)));
        }
    }
    lateness.sort();
    Ok(percentile(&lateness, 0.5))
}

async fn stop_latency(sandbox: &Sandbox, busy: bool) -> anyhow::Result<Duration> {
    let code = if busy { "while True: pass" } else { "input()" };
    let mut times = Vec::new();
    for _ in 0..10 {
        let mut handle = sandbox.start(RunRequest::script(code)).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        handle.control().stop();
        while let Some(event) = handle.next_event().await {
            if let Event::Exit(_) = event {
                break;
            }
        }
        times.push(t.elapsed());
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

/// WebSocket figures: first-output latency and run rate with N concurrent clients, and the
/// server's PSS per idle REPL session.
pub mod ws {
    use super::{ms, percentile, pss_bytes_of, row};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// `weir serve` in a process of its own, so its memory and CPU are measured apart from the
    /// bench's clients. Killed when dropped.
    struct Server {
        child: tokio::process::Child,
        addr: String,
        _stderr: crate::run::AbortOnDrop,
        _dir: tempfile::TempDir,
    }

    impl Server {
        /// Starts this executable's `serve` with room for `sessions` sessions.
        async fn start(sessions: usize) -> anyhow::Result<Server> {
            use tokio::io::AsyncBufReadExt;
            let dir = tempfile::tempdir()?;
            let config = dir.path().join("weir.toml");
            std::fs::write(
                &config,
                format!(
                    "listen = \"127.0.0.1:0\"\nmax_sessions = {n}\nmax_instances = {n}\n\
                     runs_per_minute = {rpm}\n[max_limits]\noutput_bytes = {out}\n\
                     [history]\npath = \"{db}\"\n",
                    n = sessions + 10,
                    rpm = u32::MAX,
                    out = 1u64 << 30,
                    db = dir.path().join("history.sqlite3").display(),
                ),
            )?;
            let mut command = tokio::process::Command::new(std::env::current_exe()?);
            command
                .args(["serve", "--config"])
                .arg(&config)
                .env("WEIR_LOG", "warn")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It makes
            // the kernel kill the server if the bench dies without dropping it (Ctrl-C).
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut child = command.spawn()?;
            let stderr = child
                .stderr
                .take()
                .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let addr = loop {
                let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                    .await??
                    .ok_or_else(|| anyhow::anyhow!("weir serve exited before listening"))?;
                if let Some(rest) = line.strip_prefix("weir: listening on http://") {
                    break rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                }
            };
            // Keep reading its stderr so the server never blocks on a full pipe.
            let stderr =
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(Server {
                child,
                addr,
                _stderr: crate::run::AbortOnDrop(stderr),
                _dir: dir,
            })
        }

        /// Kills the server and waits until it has exited. A server still exiting shares the
        /// compiled guest's code pages with the next one, whose PSS then counts half of them,
        /// and the whole once it is gone: a measurement that spans that moment saw the code
        /// pages as growth (~0.2 MB per session of the flood row until session 10).
        async fn stop(mut self) {
            let _ = self.child.kill().await;
        }

        fn pss(&self) -> f64 {
            self.child
                .id()
                .and_then(|pid| pss_bytes_of(&pid.to_string()))
                .unwrap_or(0.0)
        }
    }

    async fn connect(server: &Server) -> anyhow::Result<Ws> {
        connect_to(&server.addr).await
    }

    async fn connect_to(addr: &str) -> anyhow::Result<Ws> {
        let url = format!("ws://{addr}/ws");
        Ok(
            tokio_tungstenite::connect_async_with_config(url, None, true)
                .await?
                .0,
        )
    }

    async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(_)) => {}
                _ => anyhow::bail!("socket closed"),
            }
        }
    }

    /// One run: returns the time from sending `run` to the first `output`.
    async fn hello(ws: &mut Ws, id: u64) -> anyhow::Result<Duration> {
        let req = json!({"jsonrpc": "2.0", "id": id, "method": "run", "params": {"source": "print('hello')"}});
        let t = Instant::now();
        ws.send(Message::Text(req.to_string().into())).await?;
        let mut first = None;
        loop {
            let m = next_json(ws).await?;
            match m["method"].as_str() {
                Some("output") if first.is_none() => first = Some(t.elapsed()),
                Some("exit") => return first.ok_or_else(|| anyhow::anyhow!("no output")),
                _ => {}
            }
        }
    }

    /// What `clients` measured.
    struct ClientFigures {
        /// Steady state: runs sent during the measured span, after a settling second.
        p50: Duration,
        p99: Duration,
        runs_per_second: f64,
        /// The clients' first runs, all sent at once: p50 and slowest.
        first_p50: Duration,
        first_max: Duration,
        /// The share of the machine's CPU time the hypervisor took during the measured span.
        steal: Option<f64>,
    }

    /// (steal, total) CPU time of the whole machine so far, in clock ticks (`/proc/stat`).
    fn cpu_ticks() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        Some((*fields.get(7)?, fields.iter().sum()))
    }

    /// The steal share between two `cpu_ticks` readings.
    fn steal_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
        let ((s0, t0), (s1, t1)) = (before?, after?);
        (t1 > t0).then(|| s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
    }

    /// How long the clients loop before the measured span starts.
    const SETTLE: Duration = Duration::from_secs(1);

    /// `n` clients run hello in a closed loop for `span`.
    async fn clients(addr: &str, n: usize, span: Duration) -> anyhow::Result<ClientFigures> {
        // Every client connects first; then all loop over the same span. (Started one after
        // another as they connected, the clients used to run for longer than the span the rate
        // was divided by, which overstated runs/s by up to 2x at 100 clients.)
        let mut sockets = Vec::with_capacity(n);
        for _ in 0..n {
            sockets.push(connect_to(addr).await?);
        }
        // One run per client first, all at once, reported apart: it lands in pool slots no run
        // has used yet, whose first writes to the snapshot take copy-on-write faults with
        // cross-CPU TLB shootdowns (docs/benchmarks.md), a start-up cost, not the steady state.
        let firsts = futures_util::future::join_all(
            sockets
                .iter_mut()
                .enumerate()
                .map(|(i, ws)| hello(ws, i as u64)),
        )
        .await;
        let mut firsts = firsts.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
        firsts.sort();
        // Then every client loops; runs sent in the first second are not counted: the clients
        // start in step (they all just got their first exit), and a burst of 100 runs sent at
        // the same instant measures that instant, not the server's steady state.
        let started = Instant::now() + SETTLE;
        let end = started + span;
        let tasks: Vec<_> = sockets
            .into_iter()
            .map(|mut ws| {
                tokio::spawn(async move {
                    let mut times = Vec::new();
                    let mut id = 1_000_000;
                    while Instant::now() < end {
                        id += 1;
                        let counted = Instant::now() >= started;
                        match hello(&mut ws, id).await {
                            Ok(t) if counted => times.push(t),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    times
                })
            })
            .collect();
        let at_start = tokio::spawn(async move {
            tokio::time::sleep_until(started.into()).await;
            cpu_ticks()
        });
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        let steal = steal_share(at_start.await?, cpu_ticks());
        // The last runs end after the span: divide by the time they really took.
        let rate = all.len() as f64 / started.elapsed().as_secs_f64();
        all.sort();
        Ok(ClientFigures {
            p50: percentile(&all, 0.5),
            p99: percentile(&all, 0.99),
            runs_per_second: rate,
            first_p50: percentile(&firsts, 0.5),
            first_max: firsts.last().copied().unwrap_or_default(),
            steal,
        })
    }

    /// The server's `weir_instance_starts_total` counters, (warm, fresh), read from
    /// `/metrics` with a plain HTTP/1.1 request.
    async fn instance_starts(addr: &str) -> Option<(u64, u64)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.ok()?;
        let count = |from: &str| {
            let prefix = format!("weir_instance_starts_total{{from=\"{from}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|v| v.trim().parse().ok())
        };
        Some((count("warm")?, count("fresh")?))
    }

    /// The share of runs between two `instance_starts` readings that instantiated on the
    /// request path because the warm pool was empty.
    fn fresh_share(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> String {
        let Some(((w0, f0), (w1, f1))) = before.zip(after) else {
            return "-".into();
        };
        let (warm, fresh) = (w1.saturating_sub(w0), f1.saturating_sub(f0));
        let all = (warm + fresh).max(1);
        format!(
            "{fresh} of {} ({:.1} %)",
            warm + fresh,
            fresh as f64 * 100.0 / all as f64
        )
    }

    /// The WebSocket rows: weir's server beside the process-per-run baseline server.
    async fn client_rows(server: &Server, native: Option<&str>) -> anyhow::Result<()> {
        let span = Duration::from_secs(3);
        for n in [1, 10, 100] {
            let starts_before = instance_starts(&server.addr).await;
            let weir = clients(&server.addr, n, span).await?;
            let starts_after = instance_starts(&server.addr).await;
            let base = match native {
                Some(addr) => clients(addr, n, span).await.ok(),
                None => None,
            };
            let label = format!("ws {n} clients: run -> first output");
            let target = if n == 100 { "<= 2 ms" } else { "" };
            let cell = |f: fn(&ClientFigures) -> String| base.as_ref().map_or("-".into(), f);
            row(
                &format!("{label}, p50"),
                ms(weir.p50),
                &cell(|b| ms(b.p50)),
                target,
            );
            row(
                &format!("{label}, p99"),
                ms(weir.p99),
                &cell(|b| ms(b.p99)),
                if n == 100 { "<= 25 ms" } else { "" },
            );
            row(
                &format!("ws {n} clients: runs per second"),
                format!("{:.0}/s", weir.runs_per_second),
                &cell(|b| format!("{:.0}/s", b.runs_per_second)),
                "",
            );
            row(
                &format!("ws {n} clients: first runs, at once (cold), p50 / max"),
                format!("{} / {}", ms(weir.first_p50), ms(weir.first_max)),
                &cell(|b| format!("{} / {}", ms(b.first_p50), ms(b.first_max))),
                "",
            );
            let pct = |f: &ClientFigures| {
                f.steal
                    .map_or("-".into(), |s| format!("{:.0} %", s * 100.0))
            };
            row(
                &format!("ws {n} clients: runs instantiated on the request path"),
                fresh_share(starts_before, starts_after),
                "",
                "",
            );
            row(
                &format!("ws {n} clients: CPU taken by the hypervisor (steal)"),
                pct(&weir),
                &base.as_ref().map_or("-".into(), pct),
                "",
            );
        }
        Ok(())
    }

    /// Runs hello 100 times over one connection, so that a memory row measures what sessions
    /// add and not the server's one-time costs. The first runs that end page in the parts of
    /// the compiled guest's file that resetting a slot reads (~28 MB of page-cache pages,
    /// mapped once per process): before session 10 the flood row counted them as growth,
    /// 0.25 MB per flooding session.
    async fn warm_up(server: &Server) -> anyhow::Result<()> {
        let mut ws = connect(server).await?;
        for id in 0..100 {
            hello(&mut ws, id).await?;
        }
        Ok(())
    }

    async fn repl_density(server: &Server, n: usize) -> anyhow::Result<f64> {
        warm_up(server).await?;
        let before = server.pss();
        let mut sockets = Vec::with_capacity(n);
        for i in 0..n {
            let mut ws = connect(server).await?;
            let req = json!({"jsonrpc": "2.0", "id": i, "method": "run", "params": {"source": "x = 1", "repl": true}});
            ws.send(Message::Text(req.to_string().into())).await?;
            loop {
                let m = next_json(&mut ws).await?;
                if m["params"]["state"] == "repl" {
                    break;
                }
            }
            sockets.push(ws);
        }
        let after = server.pss();
        drop(sockets);
        Ok((after - before) / n as f64)
    }

    /// What the flood row measured.
    struct Flood {
        /// Server PSS growth per flooding session, from before they connected.
        growth: f64,
        /// The part of it that came while the floods were in full flow (their last 3 s).
        late_growth: f64,
        p50: Duration,
        p99: Duration,
        /// Hello runs the concurrent client completed: each waits for its exit, background
        /// work behind the floods, so there are only a few dozen and the p99 is near the max.
        samples: usize,
    }

    /// `n` sessions print as fast as they can to clients that read one message every 10 ms;
    /// meanwhile one more client runs hello in a loop.
    async fn flood(server: &Server, n: usize) -> anyhow::Result<Flood> {
        warm_up(server).await?;
        let before = server.pss();
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for i in 0..n {
            let mut ws = connect(server).await?;
            let req = json!({"jsonrpc": "2.0", "id": i, "method": "run", "params": {
                "source": "while True:\n    print('x' * 100)",
                "limits": {"wall_ms": 60_000, "output_bytes": 1u64 << 30}}});
            ws.send(Message::Text(req.to_string().into())).await?;
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    if ws.next().await.is_none() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let flowing = server.pss();
        let mut ws = connect(server).await?;
        let mut times = Vec::new();
        let end = Instant::now() + Duration::from_secs(3);
        let mut id = 0;
        while Instant::now() < end {
            id += 1;
            times.push(hello(&mut ws, id).await?);
        }
        let after = server.pss();
        stop.store(true, Relaxed);
        for r in readers {
            r.abort();
        }
        times.sort();
        Ok(Flood {
            growth: (after - before) / n as f64,
            late_growth: (after - flowing) / n as f64,
            p50: percentile(&times, 0.5),
            p99: percentile(&times, 0.99),
            samples: times.len(),
        })
    }

    async fn flood_rows() -> anyhow::Result<()> {
        let server = Server::start(100).await?;
        let f = flood(&server, 100).await?;
        row(
            "flood, 100 slow readers: server PSS growth/session",
            format!("{:.2} MB", f.growth / 1e6),
            "",
            "<= 1 MB",
        );
        row(
            "flood: of which in its last 3 s, per session",
            format!("{:.3} MB", f.late_growth / 1e6),
            "",
            "",
        );
        row("flood: concurrent hello, p50", ms(f.p50), "", "");
        row(
            "flood: concurrent hello, p99",
            format!("{} (of {} runs)", ms(f.p99), f.samples),
            "",
            "<= 25 ms",
        );
        server.stop().await;
        Ok(())
    }

    pub async fn run(repl_sessions: usize) -> anyhow::Result<()> {
        // Each measurement gets a server of its own: a freed pool slot keeps the pages its last
        // run dirtied, so a server that already ran other rows would under-count memory.
        let server = Server::start(100).await?;
        // `WEIR_BENCH_ONLY_WS=clients`: weir's client rows only, for quick comparisons.
        let only = std::env::var("WEIR_BENCH_ONLY_WS").unwrap_or_default();
        let clients_only = only == "clients";
        // `WEIR_BENCH_ONLY_WS=flood`: the flood rows only.
        if only == "flood" {
            server.stop().await;
            return flood_rows().await;
        }
        // `WEIR_BENCH_ONLY_WS=repl`: the REPL-density rows only.
        if only == "repl" {
            server.stop().await;
            return repl_rows(repl_sessions, None).await;
        }
        let baseline = if clients_only {
            None
        } else {
            crate::bench_native::WsServer::start().await.ok()
        };
        client_rows(&server, baseline.as_ref().map(|b| b.addr.as_str())).await?;
        if clients_only {
            return Ok(());
        }
        drop(baseline);
        server.stop().await;
        flood_rows().await?;
        let native_pss = crate::bench_native::idle_pss(100).await.ok();
        repl_rows(repl_sessions, native_pss).await
    }

    /// PSS per idle REPL session of a fresh server, at 100 and `repl_sessions` sessions.
    async fn repl_rows(repl_sessions: usize, native_pss: Option<f64>) -> anyhow::Result<()> {
        for n in [100, repl_sessions] {
            let server = Server::start(n).await?;
            let per = repl_density(&server, n).await?;
            row(
                &format!("PSS per idle REPL session ({n})"),
                format!("{:.2} MB", per / 1e6),
                &native_pss.map_or("-".into(), |p| format!("{:.2} MB (100)", p / 1e6)),
                "<= 1.2 MB",
            );
            row(
                &format!("server PSS for {n} REPL sessions"),
                format!("{:.0} MB", per * n as f64 / 1e6),
                "",
                if n == 1000 { "<= 1.5 GB" } else { "" },
            );
            server.stop().await;
        }
        Ok(())
    }
}
