//! `weir bench`: measures the sandbox on this machine and prints one table (see
//! docs/benchmarks.md). A benchmark, not a test: it asserts nothing.

use crate::limits::Limits;
use crate::run::{Event, RunHandle, RunState};
use crate::sandbox::{RunRequest, Sandbox};
use crate::EngineSettings;
use std::time::{Duration, Instant};

const FIB: &str = "import time\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
t = time.perf_counter()\nfib(27)\nprint(time.perf_counter() - t)\n";

/// Runs every measurement and prints the table.
pub async fn run(settings: EngineSettings, samples: usize) -> anyhow::Result<()> {
    let sandbox = Sandbox::load_async(settings).await?;
    if std::env::var_os("WEIR_BENCH_ONLY_LATENCY").is_some() {
        let (p50, p99) = first_byte_latency(&sandbox, samples).await?;
        let rate = throughput(&sandbox, Duration::from_secs(3)).await?;
        println!(
            "first byte p50 {} p99 {}, {rate:.0} runs/s",
            ms(p50),
            ms(p99)
        );
        return Ok(());
    }
    println!("weir bench: {} samples, {} cores", samples, num_cores());
    println!("{:<48} {:>14} {:>14}", "measurement", "weir", "reference");
    let (p50, p99) = first_byte_latency(&sandbox, samples).await?;
    row(
        "hello: start -> first stdout byte, p50",
        ms(p50),
        "target <= 1.5 ms",
    );
    row("hello: start -> first stdout byte, p99", ms(p99), "");
    let rate = throughput(&sandbox, Duration::from_secs(3)).await?;
    row(
        "hello runs per second (all cores)",
        format!("{rate:.0}/s"),
        "target >= 800/s",
    );
    let (guest, native) = fib(&sandbox).await?;
    row("fib(27) in the guest", format!("{guest:.3} s"), "");
    match native {
        Some(native) => {
            row("fib(27) in native python3", "", &format!("{native:.3} s"));
            row(
                "fib(27) ratio guest/native",
                format!("{:.2}x", guest / native),
                "target <= 2.1x",
            );
        }
        None => row("fib(27) in native python3", "", "python3 not found"),
    }
    let pss = idle_pss(&sandbox, 50).await?;
    row(
        "PSS per idle instance blocked in input() (50)",
        format!("{:.2} MB", pss / 1e6),
        "target <= 2 MB",
    );
    let late = timeout_lateness(&sandbox).await?;
    row("timeout lateness (100 ms limit, busy loop)", ms(late), "");
    let stop = stop_latency(&sandbox).await?;
    row("stop -> exit, busy loop", ms(stop), "");
    drop(sandbox);
    ws::run(1000).await
}

fn num_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn row(name: &str, weir: impl std::fmt::Display, reference: &str) {
    println!("{name:<48} {weir:>14} {reference:>14}");
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
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

async fn first_byte_latency(sandbox: &Sandbox, n: usize) -> anyhow::Result<(Duration, Duration)> {
    for _ in 0..20 {
        sandbox.start(hello()).await?.collect().await; // warm up
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut handle = sandbox.start(hello()).await?;
        first_output(&mut handle).await?;
        times.push(t.elapsed());
        handle.collect().await;
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

async fn throughput(sandbox: &Sandbox, span: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + span;
    let n = std::env::var("WEIR_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(num_cores() * 16);
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let sandbox = sandbox.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if let Ok(handle) = sandbox.start(hello()).await {
                        handle.collect().await;
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for w in workers {
        total += w.await?;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

async fn fib(sandbox: &Sandbox) -> anyhow::Result<(f64, Option<f64>)> {
    let mut req = RunRequest::script(FIB);
    req.close_stdin = true;
    req.limits = Limits {
        wall_ms: 120_000,
        ..Limits::default()
    };
    let out = sandbox.start(req).await?.collect().await;
    let guest: f64 = out.stdout_text().trim().parse()?;
    let native = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(FIB)
        .output()
        .await
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok());
    Ok((guest, native))
}

/// Proportional set size of this process, bytes.
pub fn pss_bytes() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

async fn idle_pss(sandbox: &Sandbox, n: usize) -> anyhow::Result<f64> {
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

async fn stop_latency(sandbox: &Sandbox) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..10 {
        let mut handle = sandbox
            .start(RunRequest::script("while True: pass"))
            .await?;
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
    use super::{ms, percentile, pss_bytes, row};
    use crate::config::ServerConfig;
    use crate::server::{start, RunningServer};
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::Message;

    type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    async fn connect(server: &RunningServer) -> anyhow::Result<Ws> {
        let url = format!("ws://{}/ws", server.addr);
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

    async fn clients(server: &RunningServer, n: usize, span: Duration) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for _ in 0..n {
            let mut ws = connect(server).await?;
            tasks.push(tokio::spawn(async move {
                let mut times = Vec::new();
                let end = Instant::now() + span;
                let mut id = 0;
                while Instant::now() < end {
                    id += 1;
                    match hello(&mut ws, id).await {
                        Ok(t) => times.push(t),
                        Err(_) => break,
                    }
                }
                times
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await?);
        }
        all.sort();
        let rate = all.len() as f64 / span.as_secs_f64();
        let label = format!("ws {n} clients: run -> first output");
        row(
            &format!("{label}, p50"),
            ms(percentile(&all, 0.5)),
            "target <= 3 ms",
        );
        row(
            &format!("{label}, p99"),
            ms(percentile(&all, 0.99)),
            "target <= 25 ms",
        );
        row(
            &format!("ws {n} clients: runs per second"),
            format!("{rate:.0}/s"),
            "",
        );
        Ok(())
    }

    async fn repl_density(server: &RunningServer, n: usize) -> anyhow::Result<f64> {
        let before = pss_bytes().unwrap_or(0.0);
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
        let after = pss_bytes().unwrap_or(0.0);
        drop(sockets);
        Ok((after - before) / n as f64)
    }

    pub async fn run(repl_sessions: usize) -> anyhow::Result<()> {
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            max_sessions: repl_sessions + 10,
            max_instances: repl_sessions as u32 + 10,
            runs_per_minute: u32::MAX,
            ..ServerConfig::default()
        };
        let server = start(config).await?;
        for n in [1, 10, 100] {
            clients(&server, n, Duration::from_secs(3)).await?;
        }
        let per = repl_density(&server, repl_sessions).await?;
        row(
            &format!("server PSS per idle REPL session ({repl_sessions})"),
            format!("{:.2} MB", per / 1e6),
            "target <= 3 MB",
        );
        row(
            &format!("server PSS for {repl_sessions} REPL sessions"),
            format!("{:.0} MB", per * repl_sessions as f64 / 1e6),
            "target <= 3 GB",
        );
        server.shutdown().await;
        Ok(())
    }
}
