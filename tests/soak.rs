//! Soak and chaos test against a real `weir serve` process: 10,000 runs across 100 WebSocket
//! clients — normal scripts, floods, infinite loops, memory bombs, `input()` waits — with 1,000
//! abrupt disconnects mid-run and 100 server-side stops. At the end nothing may be left: no live
//! instance, no open session, server PSS within 10 % of its value after warm-up, no panic in the
//! server's log, an `exit` for every run a client saw start (except those it abandoned), and
//! every started run counted as finished. Bounded to 5 minutes.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const CLIENTS: usize = 100;
const RUNS_PER_CLIENT: usize = 100;
const WARMUP_RUNS_PER_CLIENT: usize = 90;
const BOUND: Duration = Duration::from_secs(300);
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one run of the mix does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    Input,
    Flood,
    Loop,
    MemoryBomb,
    /// Started, then stopped by the client with `stop`.
    Stop,
    /// Started, then the client drops its socket without a close frame.
    Disconnect,
}

/// Per 100 runs: 10 disconnects, 1 stop, 10 input waits, 5 floods, 5 loops, 5 memory bombs,
/// the rest normal scripts.
fn kind(i: usize) -> Kind {
    match (i % 10, i % 20, i % 100) {
        (_, _, 50) => Kind::Stop,
        (9, _, _) => Kind::Disconnect,
        (1, _, _) => Kind::Input,
        (_, 3, _) => Kind::Flood,
        (_, 5, _) => Kind::Loop,
        (_, 7, _) => Kind::MemoryBomb,
        _ => Kind::Normal,
    }
}

fn params(kind: Kind, i: usize) -> Value {
    let (source, limits) = match kind {
        // Generous wall limits: 100 clients share 2 cores, so a run may wait a while for CPU.
        Kind::Normal => ("print(sum(range(1000)))", json!({"wall_ms": 30000})),
        Kind::Input => ("print('got', input())", json!({"wall_ms": 30000})),
        Kind::Flood => (
            "while True:\n    print('x' * 80)",
            json!({"output_bytes": 32768, "wall_ms": 30000}),
        ),
        Kind::Loop => ("while True:\n    pass", json!({"wall_ms": 50})),
        Kind::MemoryBomb => (
            "x = []\nwhile True:\n    x.append(bytearray(1 << 20))",
            json!({"memory_bytes": 48 << 20, "wall_ms": 30000}),
        ),
        Kind::Stop => ("while True:\n    pass", json!({"wall_ms": 20000})),
        Kind::Disconnect if i % 20 == 9 => ("while True:\n    pass", json!({"wall_ms": 20000})),
        Kind::Disconnect => (
            "import time\nprint('sleeping', flush=True)\ntime.sleep(30)",
            json!({"wall_ms": 20000}),
        ),
    };
    json!({"source": source, "limits": limits})
}

fn expected_outcome(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Normal | Kind::Input => &["exited"],
        Kind::Flood => &["output_limit"],
        Kind::Loop => &["timeout"],
        Kind::MemoryBomb => &["memory_limit"],
        Kind::Stop => &["stopped"],
        Kind::Disconnect => &[],
    }
}

/// What one client saw.
#[derive(Default, Debug)]
struct Tally {
    started: usize,
    exits: usize,
    abandoned: usize,
    stops: usize,
    problems: Vec<String>,
}

struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_server(dir: &Path) -> Server {
    let addr = format!("127.0.0.1:{}", free_port());
    let config = dir.join("weir.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{addr}\"\nmax_sessions = 1000\nruns_per_minute = 1000000\n\
             [history]\npath = \"{}\"\n",
            dir.join("history.sqlite3").display()
        ),
    )
    .unwrap();
    let log = dir.join("server.log");
    let child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("WEIR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("weir serve starts");
    Server { child, addr, log }
}

async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).await.ok()?;
    text.starts_with("HTTP/1.1 200")
        .then(|| text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()))
        .flatten()
}

async fn metric(addr: &str, name: &str) -> f64 {
    let text = http_get(addr, "/metrics").await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// PSS (KiB) of the server's mappings larger than 1 GiB (wasmtime's instance pool) and of the
/// rest, for the report.
fn pss_split(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut pool, mut rest, mut big) = (0, 0, false);
    for line in text.lines() {
        if let Some((range, _)) = line.split_once(' ') {
            if let Some((a, b)) = range.split_once('-') {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    big = b - a > 1 << 30;
                    continue;
                }
            }
        }
        if let Some(v) = line.strip_prefix("Pss:") {
            let kib: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            if big {
                pool += kib;
            } else {
                rest += kib;
            }
        }
    }
    (pool, rest)
}

/// Waits until the server has no live instance and no open session (up to 10 s).
async fn until_quiet(addr: &str) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live = metric(addr, "weir_instances_live").await;
        let open = metric(addr, "weir_connections_open").await;
        if (live == 0.0 && open == 0.0) || Instant::now() > deadline {
            return (live, open);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(addr: &str) -> Result<Ws, String> {
    let url = format!("ws://{addr}/ws");
    for _ in 0..50 {
        match tokio_tungstenite::connect_async(&url).await {
            Ok((ws, _)) => return Ok(ws),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    Err("cannot connect".into())
}

async fn send(ws: &mut Ws, value: Value) -> Result<(), String> {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .map_err(|e| format!("send: {e}"))
}

async fn next(ws: &mut Ws) -> Result<Value, String> {
    loop {
        let msg = tokio::time::timeout(MESSAGE_TIMEOUT, ws.next())
            .await
            .map_err(|_| "no message within 60 s".to_string())?
            .ok_or("socket closed")?
            .map_err(|e| format!("socket error: {e}"))?;
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).map_err(|e| e.to_string()),
            Message::Close(f) => return Err(format!("closed: {f:?}")),
            _ => {}
        }
    }
}

/// Starts a run; returns its id once the server confirmed it.
async fn start_run(ws: &mut Ws, id: u64, params: Value) -> Result<String, String> {
    send(
        ws,
        json!({"jsonrpc": "2.0", "id": id, "method": "run", "params": params}),
    )
    .await?;
    loop {
        let m = next(ws).await?;
        if m["id"] == json!(id) {
            return m["result"]["run_id"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("run refused: {m}"));
        }
    }
}

/// Reads the run's messages until `state` (or its exit, returned as an error).
async fn until_state(ws: &mut Ws, run_id: &str, state: &str) -> Result<(), String> {
    loop {
        let m = next(ws).await?;
        if m["params"]["run_id"] != json!(run_id) {
            continue;
        }
        if m["method"] == "state" && m["params"]["state"] == state {
            return Ok(());
        }
        if m["method"] == "exit" {
            return Err(format!("exited before {state}: {}", m["params"]));
        }
    }
}

/// Reads the run's messages until its exit: (stdout, exit params).
async fn until_exit(ws: &mut Ws, run_id: &str) -> Result<(String, Value), String> {
    let mut out = String::new();
    loop {
        let m = next(ws).await?;
        if m["params"]["run_id"] != json!(run_id) {
            continue;
        }
        match m["method"].as_str() {
            Some("output") if m["params"]["stream"] == "stdout" => {
                out.push_str(m["params"]["data"].as_str().unwrap_or(""))
            }
            Some("exit") => return Ok((out, m["params"].clone())),
            _ => {}
        }
    }
}

async fn one_run(
    ws: &mut Ws,
    addr: &str,
    id: u64,
    i: usize,
    tally: &mut Tally,
) -> Result<(), String> {
    let kind = kind(i);
    let run_id = start_run(ws, id, params(kind, i)).await?;
    tally.started += 1;
    match kind {
        Kind::Disconnect => {
            until_state(ws, &run_id, "running").await?;
            // Abrupt: the socket goes without a close frame, mid-run.
            let old = std::mem::replace(ws, connect(addr).await?);
            drop(old);
            tally.abandoned += 1;
            return Ok(());
        }
        Kind::Input => {
            until_state(ws, &run_id, "waiting_input").await?;
            send(
                ws,
                json!({"jsonrpc": "2.0", "method": "input",
                            "params": {"run_id": run_id, "data": "hi\n"}}),
            )
            .await?;
        }
        Kind::Stop => {
            until_state(ws, &run_id, "running").await?;
            send(
                ws,
                json!({"jsonrpc": "2.0", "method": "stop", "params": {"run_id": run_id}}),
            )
            .await?;
            tally.stops += 1;
        }
        _ => {}
    }
    let (stdout, exit) = until_exit(ws, &run_id).await?;
    tally.exits += 1;
    let outcome = exit["outcome"].as_str().unwrap_or("");
    if !expected_outcome(kind).contains(&outcome) {
        tally
            .problems
            .push(format!("{kind:?} ended {outcome}: {exit}"));
    }
    let want = match kind {
        Kind::Normal => Some("499500\n"),
        Kind::Input => Some("got hi\n"),
        _ => None,
    };
    if want.is_some_and(|w| w != stdout) {
        tally.problems.push(format!("{kind:?} printed {stdout:?}"));
    }
    Ok(())
}

async fn client(addr: String, runs: usize) -> Tally {
    let mut tally = Tally::default();
    let mut ws = match connect(&addr).await {
        Ok(ws) => ws,
        Err(e) => {
            tally.problems.push(e);
            return tally;
        }
    };
    for i in 0..runs {
        if let Err(e) = one_run(&mut ws, &addr, i as u64 + 1, i, &mut tally).await {
            tally.problems.push(format!("run {i} ({:?}): {e}", kind(i)));
            match connect(&addr).await {
                Ok(fresh) => ws = fresh,
                Err(e) => {
                    tally.problems.push(e);
                    return tally;
                }
            }
        }
    }
    let _ = ws.close(None).await;
    tally
}

async fn phase(addr: &str, runs_per_client: usize) -> Tally {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(addr.to_string(), runs_per_client)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let t = task.await.expect("client task");
        total.started += t.started;
        total.exits += t.exits;
        total.abandoned += t.abandoned;
        total.stops += t.stops;
        total.problems.extend(t.problems);
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_of_chaos_leave_nothing_behind() {
    let dir = tempfile::Builder::new()
        .prefix("soak-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let server = start_server(dir.path());
    let addr = server.addr.clone();
    let began = Instant::now();
    let ready = async {
        while http_get(&addr, "/readyz").await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), ready)
        .await
        .expect("the server became ready");

    let soak = async {
        let warm = phase(&addr, WARMUP_RUNS_PER_CLIENT).await;
        assert!(
            warm.problems.is_empty(),
            "warm-up: {:?}",
            &warm.problems[..warm.problems.len().min(5)]
        );
        until_quiet(&addr).await;
        let pss_warm = pss_kib(server.child.id());
        println!(
            "soak: after warm-up, PSS (pool, rest) = {:?} KiB",
            pss_split(server.child.id())
        );
        let started_before = metric(&addr, "weir_runs_started_total").await;

        let t = Instant::now();
        let total = phase(&addr, RUNS_PER_CLIENT).await;
        let elapsed = t.elapsed();
        (pss_warm, started_before, total, elapsed)
    };
    let (pss_warm, started_before, total, elapsed) = tokio::time::timeout(BOUND, soak)
        .await
        .expect("the soak finished within 5 minutes");

    let (live, open) = until_quiet(&addr).await;
    let pss_end = pss_kib(server.child.id());
    println!(
        "soak: at the end, PSS (pool, rest) = {:?} KiB",
        pss_split(server.child.id())
    );
    let started = metric(&addr, "weir_runs_started_total").await;
    let finished = metric(&addr, "weir_runs_finished_total").await;
    println!(
        "soak: {} runs ({} abandoned by disconnecting, {} stopped) in {:.1} s; server PSS {} KiB after warm-up, {} KiB at the end; started {started}, finished {finished} (total since start {:.1} s)",
        total.started,
        total.abandoned,
        total.stops,
        elapsed.as_secs_f64(),
        pss_warm,
        pss_end,
        began.elapsed().as_secs_f64(),
    );

    assert!(
        total.problems.is_empty(),
        "{} problems, first: {:#?}",
        total.problems.len(),
        &total.problems[..total.problems.len().min(10)]
    );
    assert_eq!(total.started, CLIENTS * RUNS_PER_CLIENT);
    assert_eq!(total.abandoned, 1000);
    assert_eq!(total.stops, 100);
    assert_eq!(
        total.exits,
        total.started - total.abandoned,
        "an exit for every run seen to start"
    );
    assert_eq!((live, open), (0.0, 0.0), "live instances and open sessions");
    assert_eq!(started - started_before, total.started as f64);
    assert_eq!(
        started, finished,
        "every started run is counted as finished"
    );
    assert!(
        pss_end as f64 <= pss_warm as f64 * 1.10,
        "server PSS grew from {pss_warm} KiB to {pss_end} KiB"
    );

    // Graceful exit, and a clean log.
    let pid = server.child.id() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut server = server;
    let status = tokio::task::spawn_blocking(move || {
        let status = server.child.wait();
        (status, server)
    })
    .await
    .unwrap();
    let (status, server) = status;
    assert!(
        status.expect("wait").success(),
        "weir serve exits 0 on SIGTERM"
    );
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(!log.contains("panicked"), "a panic in the server log");
    assert!(log.contains("run started"), "the log is the server's");
}
