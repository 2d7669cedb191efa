//! WebSocket figures: first-output latency and run rate with N concurrent clients, and the
//! server's PSS per idle REPL session.

use crate::measure::{ms, percentile, pss_bytes_of, row};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// `weir serve` in a process of its own, so its memory and CPU are measured apart from the
/// bench's clients. Killed when dropped.
pub(crate) struct Server {
    child: tokio::process::Child,
    pub(crate) addr: String,
    _stderr: weir_sandbox::AbortOnDrop,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts this executable's `serve` with room for `sessions` sessions. It loads no runtime
    /// beyond the default one (`prepare_runtimes = false`): these rows measure the lean
    /// runtime, and a prepared `python-sci` adds its own fixed memory (docs/sci.md).
    #[allow(unsafe_code)]
    pub(crate) async fn start(sessions: usize) -> anyhow::Result<Server> {
        use tokio::io::AsyncBufReadExt;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("weir.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nmax_sessions = {n}\nmax_instances = {n}\n\
                 runs_per_minute = {rpm}\nprepare_runtimes = false\n\
                 [max_limits]\noutput_bytes = {out}\n\
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
            _stderr: weir_sandbox::AbortOnDrop(stderr),
            _dir: dir,
        })
    }

    /// Kills the server and waits until it has exited. A server still exiting shares the
    /// compiled guest's code pages with the next one, whose PSS then counts half of them,
    /// and the whole once it is gone: a measurement that spans that moment saw the code
    /// pages as growth (~0.2 MB per session of the flood row).
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    pub(crate) fn pss(&self) -> f64 {
        self.child
            .id()
            .and_then(|pid| pss_bytes_of(&pid.to_string()))
            .unwrap_or(0.0)
    }
}

pub(crate) async fn connect(server: &Server) -> anyhow::Result<Ws> {
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

pub(crate) async fn next_json(ws: &mut Ws) -> anyhow::Result<Value> {
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
/// mapped once per process): without this warm-up the flood row counted them as growth,
/// 0.25 MB per flooding session.
pub(crate) async fn warm_up(server: &Server) -> anyhow::Result<()> {
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
        crate::native::WsServer::start().await.ok()
    };
    client_rows(&server, baseline.as_ref().map(|b| b.addr.as_str())).await?;
    if clients_only {
        return Ok(());
    }
    drop(baseline);
    server.stop().await;
    flood_rows().await?;
    let native_pss = crate::native::idle_pss(100).await.ok();
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
