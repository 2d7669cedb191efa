//! Stateful-session figures (`/v1/sessions`): a cell's round trip over HTTP on a warm session,
//! how soon an interrupt ends a busy cell, and the server's PSS per idle session.

use crate::measure::{ms, percentile, row};
use crate::ws::{warm_up, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection: the bench measures the server, not connection setup.
struct Http {
    stream: BufReader<TcpStream>,
    addr: String,
}

impl Http {
    async fn connect(addr: &str) -> anyhow::Result<Http> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Http {
            stream: BufReader::new(tcp),
            addr: addr.to_string(),
        })
    }

    /// Sends a request with a JSON body (or none) and reads the response's status and JSON body.
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let body = body.map(Value::to_string).unwrap_or_default();
        // One write: a head and a body in two would wait for the server's delayed ACK.
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.stream.get_mut().write_all(request.as_bytes()).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut data = vec![0; length];
        self.stream.read_exact(&mut data).await?;
        let value = serde_json::from_slice(&data).unwrap_or(Value::Null);
        Ok((status, value))
    }
}

async fn create(http: &mut Http) -> anyhow::Result<String> {
    let (status, body) = http.call("POST", "/v1/sessions", Some(&json!({}))).await?;
    anyhow::ensure!(status == 201, "session not created: {status} {body}");
    Ok(body["session_id"].as_str().unwrap_or_default().to_string())
}

/// `n` round trips of `x += 1` on one warm session: p50 and p99.
async fn cell_round_trip(server: &Server, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut http = Http::connect(&server.addr).await?;
    let id = create(&mut http).await?;
    let path = format!("/v1/sessions/{id}/exec");
    http.call("POST", &path, Some(&json!({"code": "x = 0"})))
        .await?;
    let cell = json!({"code": "x += 1"});
    let mut times = Vec::with_capacity(n);
    for _ in 0..n + n / 10 {
        let t = Instant::now();
        let (status, body) = http.call("POST", &path, Some(&cell)).await?;
        anyhow::ensure!(
            status == 200 && body["outcome"] == "ok",
            "cell failed: {body}"
        );
        times.push(t.elapsed());
    }
    times.drain(..n / 10); // warm-up
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// `n` times: a busy cell runs, an interrupt is sent; the time from sending it to the cell's
/// answer (its `KeyboardInterrupt`). p50 and p99.
async fn interrupt_latency(server: &Server, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut control = Http::connect(&server.addr).await?;
    let id = create(&mut control).await?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let mut cell = Http::connect(&server.addr).await?;
        let path = format!("/v1/sessions/{id}/exec");
        let busy = json!({"code": "while True: pass", "timeout_ms": 30_000});
        let running = tokio::spawn(async move {
            let answer = cell.call("POST", &path, Some(&busy)).await;
            (Instant::now(), answer)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = Instant::now();
        let (status, _) = control
            .call("POST", &format!("/v1/sessions/{id}/interrupt"), None)
            .await?;
        anyhow::ensure!(status == 200, "interrupt refused: {status}");
        let (answered, answer) = running.await?;
        let (_, body) = answer?;
        anyhow::ensure!(body["outcome"] == "interrupted", "not interrupted: {body}");
        times.push(answered - sent);
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

/// The server's PSS growth per idle session, `n` sessions that each ran `x = 1`.
async fn idle_session_pss(server: &Server, n: usize) -> anyhow::Result<f64> {
    warm_up(server).await?;
    let before = server.pss();
    let mut http = Http::connect(&server.addr).await?;
    for _ in 0..n {
        let id = create(&mut http).await?;
        let path = format!("/v1/sessions/{id}/exec");
        http.call("POST", &path, Some(&json!({"code": "x = 1"})))
            .await?;
    }
    Ok((server.pss() - before) / n as f64)
}

/// The session rows; `WEIR_BENCH_ONLY_SESSIONS=1` runs only these.
pub async fn rows() -> anyhow::Result<()> {
    let server = Server::start(10).await?;
    let (p50, p99) = cell_round_trip(&server, 1000).await?;
    row("session cell x += 1 over HTTP, p50", ms(p50), "", "");
    row("session cell x += 1 over HTTP, p99", ms(p99), "", "");
    let (i50, i99) = interrupt_latency(&server, 50).await?;
    row(
        "interrupt -> KeyboardInterrupt answered, p50",
        ms(i50),
        "",
        "<= 15 ms",
    );
    row(
        "interrupt -> KeyboardInterrupt answered, p99",
        ms(i99),
        "",
        "",
    );
    server.stop().await;
    let server = Server::start(100).await?;
    let per = idle_session_pss(&server, 100).await?;
    row(
        "PSS per idle HTTP session (100)",
        format!("{:.2} MB", per / 1e6),
        "",
        "<= 1.2 MB",
    );
    server.stop().await;
    Ok(())
}
