//! WebSocket and HTTP helpers for tests that drive a running `weir serve`.
#![allow(dead_code)]

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use weir_sandbox::runtime::python::CPython;
use weir_sandbox::runtime::{Footprint, Loaded, Runtime, RuntimeInfo};
use weir_sandbox::Uncaught;
use weir_sandbox::{Outcome, Sandbox};
use weir_service::config::ServerConfig;
use weir_service::server::{start, start_with, RunningServer};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A test server's configuration: a free port, 16 instances, its run history in a fresh file
/// under `target/tmp`, then whatever `f` changes.
fn test_config(f: impl FnOnce(&mut ServerConfig)) -> ServerConfig {
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        max_instances: 16,
        ..ServerConfig::default()
    };
    config.history.path = temp_history();
    // Whatever packages this machine's operator installed, tests run without them.
    config.packages_dir = None;
    // `python-sci` loads on its first run: tests that use it wait for it there.
    config.prepare_runtimes = false;
    f(&mut config);
    config
}

/// A test server (`test_config`).
pub async fn server(f: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    start(test_config(f)).await.expect("server starts")
}

/// A test server whose sandbox hosts `runtimes` (the first is the default).
pub async fn server_with_runtimes(
    runtimes: Vec<Arc<dyn Runtime>>,
    f: impl FnOnce(&mut ServerConfig),
) -> RunningServer {
    let config = test_config(f);
    let sandbox =
        Sandbox::with_runtimes(config.engine_settings(), runtimes).expect("sandbox loads");
    start_with(config, sandbox).await.expect("server starts")
}

/// A test server whose sandbox hosts `eager` (loaded now, the first the default) and `lazy`
/// (loaded by their first run).
pub async fn server_with_lazy_runtimes(
    eager: Vec<Arc<dyn Runtime>>,
    lazy: Vec<Arc<dyn Runtime>>,
    f: impl FnOnce(&mut ServerConfig),
) -> RunningServer {
    let config = test_config(f);
    let sandbox =
        Sandbox::with_lazy_runtimes(config.engine_settings(), eager, lazy).expect("sandbox loads");
    start_with(config, sandbox).await.expect("server starts")
}

/// The embedded CPython under another name and aliases: a second runtime plugged in through the
/// public `Runtime` trait, to test runtime selection through every API.
pub struct Renamed(RuntimeInfo);

impl Renamed {
    pub fn new(name: &str, aliases: &[&str]) -> Self {
        let mut info = CPython.info().clone();
        info.name = name.into();
        info.aliases = aliases.iter().map(|a| a.to_string()).collect();
        Renamed(info)
    }
}

/// The line by which a program claims `Renamed` runtimes ([`Runtime::claims`]).
pub const CLAIM: &str = "# runtime: renamed";

/// How much memory a run of a `Renamed` runtime gets unless it asks ([`Runtime::policy`]).
pub const RENAMED_MEMORY: u64 = 96 << 20;

impl Runtime for Renamed {
    fn info(&self) -> &RuntimeInfo {
        &self.0
    }
    fn policy(&self) -> weir_sandbox::Policy {
        weir_sandbox::Policy {
            memory_bytes: Some(RENAMED_MEMORY),
            display: true,
        }
    }
    fn claims(&self, source: &str) -> bool {
        source.lines().next() == Some(CLAIM)
    }
    fn footprint(&self) -> Footprint {
        CPython.footprint()
    }
    fn load(
        &self,
        engine: &weir_sandbox::wasmtime::Engine,
        cache_dir: &Path,
    ) -> anyhow::Result<Arc<dyn Loaded>> {
        CPython.load(engine, cache_dir)
    }
    fn exited(&self, code: i32, uncaught: Option<&Uncaught>, memory_hit: bool) -> Outcome {
        CPython.exited(code, uncaught, memory_hit)
    }
}

/// `python` (the default) and `python-alt` (alias `alt`).
pub fn two_runtimes() -> Vec<Arc<dyn Runtime>> {
    vec![
        Arc::new(CPython),
        Arc::new(Renamed::new("python-alt", &["alt"])),
    ]
}

/// A new, empty history database path (kept after the test, under `target/tmp`).
pub fn temp_history() -> std::path::PathBuf {
    tempfile::Builder::new()
        .prefix("history-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
        .keep()
        .join("history.sqlite3")
}

pub async fn connect(server: &RunningServer, query: &str) -> Ws {
    try_connect(server, query, &[])
        .await
        .expect("upgrade accepted")
}

pub async fn try_connect(
    server: &RunningServer,
    query: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    try_connect_to(server, &format!("/ws{query}"), headers).await
}

/// Opens a WebSocket on any path (`/api/v2/connect`, …).
pub async fn try_connect_to(
    server: &RunningServer,
    path: &str,
    headers: &[(&'static str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("ws://{}{path}", server.addr).into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

pub fn status_of(err: tokio_tungstenite::tungstenite::Error) -> u16 {
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

pub async fn send(ws: &mut Ws, value: Value) {
    ws.send(Message::Text(value.to_string().into()))
        .await
        .expect("sent");
}

/// How long a test waits for the server's next message before calling it hung. Generous: the
/// first metered run on a fresh machine compiles the fuel-metered guest (10-15 s alone, 30 s
/// on a busy 2-core machine with other test binaries compiling it too).
const MESSAGE_WAIT: Duration = Duration::from_secs(90);

/// The next JSON message (pings are skipped); panics after [`MESSAGE_WAIT`].
pub async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(MESSAGE_WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(&t).expect("JSON"),
            Message::Close(f) => panic!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// Reads until the close frame; returns its code.
pub async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(Some(f)))) => return u16::from(f.code),
            Some(Ok(Message::Close(None))) | None => return 0,
            Some(Err(_)) => return 0,
            Some(Ok(_)) => {}
        }
    }
}

pub async fn run(ws: &mut Ws, id: u64, params: Value) -> String {
    send(
        ws,
        json!({"jsonrpc": "2.0", "id": id, "method": "run", "params": params}),
    )
    .await;
    loop {
        let m = recv(ws).await;
        if m["id"] == json!(id) {
            return m["result"]["run_id"].as_str().expect("run_id").to_string();
        }
    }
}

/// Collects a run's stdout until its exit; returns (stdout, exit params).
pub async fn until_exit(ws: &mut Ws, run_id: &str) -> (String, Value) {
    let mut out = String::new();
    let mut last_seq: Option<u64> = None;
    loop {
        let m = recv(ws).await;
        if m["params"]["run_id"] != json!(run_id) {
            continue;
        }
        match m["method"].as_str() {
            Some("output") => {
                let seq = m["params"]["seq"].as_u64().expect("seq");
                if let Some(prev) = last_seq {
                    assert_eq!(seq, prev + 1, "seq increases by one");
                }
                last_seq = Some(seq);
                if m["params"]["stream"] == "stdout" {
                    out.push_str(m["params"]["data"].as_str().unwrap());
                }
            }
            Some("exit") => return (out, m["params"].clone()),
            _ => {}
        }
    }
}

pub async fn wait_for_state(ws: &mut Ws, run_id: &str, state: &str) {
    loop {
        let m = recv(ws).await;
        if m["method"] == "state"
            && m["params"]["run_id"] == json!(run_id)
            && m["params"]["state"] == state
        {
            return;
        }
    }
}

pub async fn http_get(server: &RunningServer, path: &str) -> (u16, String) {
    http_get_at(server.addr, path).await
}

/// `GET path` from whatever listens at `addr`: its status and body.
pub async fn http_get_at(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let status = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP/1.1 response: status, headers (lower-case names) and body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub async fn http(
    server: &RunningServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        server.addr,
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    // The server may answer (413) before reading a large body; a failed write is fine then.
    let _ = stream.write_all(body).await;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let parsed = weir_bench::harness::parse_response(&raw);
    HttpResponse {
        status: parsed.status,
        headers: parsed.headers,
        body: parsed.body,
    }
}

/// Sends `method path` with `body` and hangs up `after` later, without reading the answer.
pub async fn hang_up_after(
    server: &RunningServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    after: Duration,
) {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        server.addr,
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(after).await;
    drop(stream);
}

/// POSTs a JSON body.
pub async fn post_json(server: &RunningServer, path: &str, body: &Value) -> HttpResponse {
    http(
        server,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
    .await
}
