//! The baseline `weir bench` compares against: what a process-based executor does, a fresh
//! native `python3` process per run with its output read from a pipe as it is written.

use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// The interpreter the baseline runs: `$WEIR_BENCH_PYTHON`, default `python3` resolved to its
/// real executable once (a version manager's shim, such as pyenv's, would add ~250 ms per
/// process that a real executor would not pay).
pub fn python() -> String {
    static PYTHON: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let named = std::env::var("WEIR_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
            std::process::Command::new(&named)
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or(named)
        })
        .clone()
}

fn spawn(code: &str, stdin: Stdio) -> std::io::Result<Child> {
    Command::new(python())
        .args(["-c", code])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
}

/// One `print("hello")` process: spawn → first stdout byte; then it is waited for.
async fn hello_first_byte() -> std::io::Result<Duration> {
    let t = Instant::now();
    let mut child = spawn("print('hello')", Stdio::null())?;
    let mut stdout = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
    let mut byte = [0u8; 1];
    stdout.read_exact(&mut byte).await?;
    let first = t.elapsed();
    let mut rest = Vec::new();
    stdout.read_to_end(&mut rest).await?;
    child.wait().await?;
    Ok(first)
}

/// Spawn → first byte of `print("hello")`, p50 and p99 over `n` sequential processes.
pub async fn first_byte_latency(n: usize) -> std::io::Result<(Duration, Duration)> {
    for _ in 0..5 {
        hello_first_byte().await?; // page cache warm
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        times.push(hello_first_byte().await?);
    }
    times.sort();
    Ok((
        crate::measure::percentile(&times, 0.5),
        crate::measure::percentile(&times, 0.99),
    ))
}

/// `print("hello")` processes completed per second with `workers` concurrent callers.
pub async fn throughput(span: Duration, workers: usize) -> f64 {
    crate::measure::closed_loop(workers, span, || async { hello_first_byte().await.is_ok() }).await
}

/// PSS per idle interactive interpreter: `n` `python3 -i` processes waiting at their prompt.
pub async fn idle_pss(n: usize) -> std::io::Result<f64> {
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        let mut child = Command::new(python())
            .args(["-i", "-q", "-c", "x = 1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        // Wait for its first prompt (written to stderr when stdin is not a terminal).
        if let Some(mut stderr) = child.stderr.take() {
            let mut seen = Vec::new();
            let mut buf = [0u8; 64];
            while !seen.ends_with(b">>> ") {
                let read = tokio::time::timeout(Duration::from_secs(10), stderr.read(&mut buf));
                match read.await {
                    Ok(Ok(k)) if k > 0 => seen.extend_from_slice(&buf[..k]),
                    _ => break,
                }
            }
        }
        children.push(child);
    }
    let total: f64 = children
        .iter()
        .filter_map(Child::id)
        .filter_map(|pid| crate::measure::pss_bytes_of(&pid.to_string()))
        .sum();
    drop(children);
    Ok(total / n as f64)
}

/// SIGKILL → the process reaped, for a busy loop or a process blocked in `input()`.
pub async fn stop_latency(busy: bool) -> std::io::Result<Duration> {
    let code = if busy { "while True: pass" } else { "input()" };
    let mut times = Vec::new();
    for _ in 0..10 {
        let mut child = spawn(code, Stdio::piped())?;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        child.start_kill()?;
        child.wait().await?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(crate::measure::percentile(&times, 0.5))
}

/// A process-per-run executor speaking the same `/ws` messages as weir (`run` → result, then
/// `output` and `exit` notifications), so the WebSocket rows compare like for like: each run is
/// a fresh `python3 -c SOURCE` whose stdout is forwarded as it is read.
pub struct WsServer {
    pub addr: String,
    _task: weir_sandbox::AbortOnDrop,
}

impl WsServer {
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                connections.spawn(serve_connection(tcp));
            }
        });
        Ok(WsServer {
            addr,
            _task: weir_sandbox::AbortOnDrop(task),
        })
    }
}

async fn serve_connection(tcp: tokio::net::TcpStream) {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{json, Value};
    use tokio_tungstenite::tungstenite::Message;
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    let mut next_run = 0u64;
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(req) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let source = req["params"]["source"].as_str().unwrap_or("").to_string();
        next_run += 1;
        let run_id = next_run.to_string();
        let reply = json!({"jsonrpc": "2.0", "id": req["id"], "result": {"run_id": run_id}});
        let Ok(mut child) = spawn(&source, Stdio::null()) else {
            return;
        };
        if ws
            .send(Message::Text(reply.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
        let Some(mut stdout) = child.stdout.take() else {
            return;
        };
        let mut buf = vec![0u8; 16 << 10];
        let mut seq = 0;
        while let Ok(n) = stdout.read(&mut buf).await {
            if n == 0 {
                break;
            }
            seq += 1;
            let data = String::from_utf8_lossy(&buf[..n]);
            let note = json!({"jsonrpc": "2.0", "method": "output", "params":
                {"run_id": run_id, "stream": "stdout", "data": data, "seq": seq}});
            if ws
                .send(Message::Text(note.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
        }
        let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(-1);
        let exit = json!({"jsonrpc": "2.0", "method": "exit", "params":
            {"run_id": run_id, "outcome": "exited", "code": code}});
        if ws
            .send(Message::Text(exit.to_string().into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Ordinary busy processes, at the priority any program on the host has: `python3` spin loops
/// that each stop by themselves after two minutes, and are killed when this is dropped. The
/// "busy host" of `weir bench`'s fairness rows and of `tests/host_resources.rs`.
pub struct BusyHost(Vec<std::process::Child>);

/// Says it is spinning, then spins for at most 120 s.
const SPIN: &str = "import time\nend = time.monotonic() + 120\nprint('spinning', flush=True)\n\
while time.monotonic() < end: pass";

impl BusyHost {
    /// `n` busy processes; returns once every one is spinning.
    pub fn start(n: usize) -> std::io::Result<Self> {
        use std::io::BufRead;
        let mut host = BusyHost(Vec::with_capacity(n));
        for _ in 0..n {
            let mut child = std::process::Command::new(python())
                .args(["-c", SPIN])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take();
            host.0.push(child); // killed on drop from here on
            let mut line = String::new();
            if let Some(stdout) = stdout {
                std::io::BufReader::new(stdout).read_line(&mut line)?;
            }
            if line != "spinning\n" {
                return Err(std::io::Error::other(
                    "a busy process did not start spinning",
                ));
            }
        }
        Ok(host)
    }
}

impl Drop for BusyHost {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
