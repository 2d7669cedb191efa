//! Hostile clients and guests against `weir serve` and the sandbox: each test is a failure an
//! adversarial review found, and shows it can no longer happen (docs/sandbox.md, "Hostile
//! input").

mod common;

#[path = "common/ws.rs"]
mod ws;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weir_sandbox::{Outcome, RunRequest, RunState};
use ws::*;

/// Compiles with a warning (an invalid escape), so the runner does not hand its code to the
/// cache, then tries to fill the cache slot itself with other code for the same key.
const POISONER: &str = "import marshal\n\
from wit_world.imports import host\n\
pattern = '\\d+'\n\
evil = compile(\"print('injected by another tenant')\", '/sandbox/main.py', 'exec')\n\
host.program_compiled(marshal.dumps(evil))\n\
print('honest')\n";

#[tokio::test]
async fn user_code_cannot_fill_the_compile_cache() {
    let sandbox = common::private_sandbox(4);
    for _ in 0..3 {
        let mut req = RunRequest::script(POISONER);
        req.close_stdin = true;
        req.compile_scope = "shared".into();
        let out = common::collect_in(&sandbox, req).await;
        assert_eq!(out.stdout_text(), "honest\n");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("SyntaxWarning"),
            "the warning is shown every time"
        );
    }
    assert_eq!(sandbox.compile_cache_stats().entries, 0);
}

#[tokio::test]
async fn anonymous_one_shot_callers_do_not_share_compiled_programs() {
    let server = server(|_| {}).await;
    let body = json!({"source": "print('hi')"});
    for _ in 0..2 {
        let r = post_json(&server, "/v1/runs", &body).await;
        assert_eq!(r.json()["stdout"], "hi\n");
    }
    let stats = server.state.sandbox.compile_cache_stats();
    assert_eq!((stats.entries, stats.hits), (0, 0), "{stats:?}");
}

#[tokio::test]
async fn piston_execute_closes_stdin_after_its_text() {
    let server = server(|_| {}).await;
    let job = json!({
        "language": "python", "version": "3.14",
        "files": [{"content": "print(input())\nprint(input())"}],
        "stdin": "only line\n",
    });
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        post_json(&server, "/api/v2/execute", &job),
    )
    .await
    .expect("answered without waiting for input that cannot come")
    .json();
    assert_eq!(r["run"]["stdout"], "only line\n", "{r}");
    assert!(
        r["run"]["stderr"].as_str().unwrap().contains("EOFError"),
        "{r}"
    );
}

#[tokio::test]
async fn deterministic_runs_stay_within_the_servers_maximum() {
    let server = server(|c| {
        c.max_limits.wall_ms = 1_000;
        c.max_limits.cpu_fuel = Some(1_000_000_000);
    })
    .await;
    for extra in [
        json!({"deterministic": {"seed": 1}}),
        json!({"record": true}),
    ] {
        let mut body = json!({"source": "while True: pass"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = post_json(&server, "/v1/runs", &body).await.json();
        assert_eq!(r["outcome"], "cpu_limit", "{r}");
        assert!(r["fuel_consumed"].as_u64().unwrap() <= 1_000_000_000, "{r}");
    }
}

#[tokio::test]
async fn guest_strings_are_bounded_in_responses() {
    let server = server(|_| {}).await;
    let source = "from wit_world.imports import host\n\
                  host.uncaught_exception('T' * (8 << 20), 'M' * (8 << 20))\n\
                  import sys\nsys.exit(1)\n";
    let r = post_json(&server, "/v1/runs", &json!({"source": source})).await;
    assert!(r.body.len() < 64 << 10, "{} bytes", r.body.len());
}

#[tokio::test]
async fn eof_while_stdin_is_full_answers_at_once() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let id = run(
        &mut ws,
        1,
        json!({"source": "import sys\nprint(len(sys.stdin.read()))"}),
    )
    .await;
    call(&mut ws, 2, "pause", json!({"run_id": id})).await;
    // Fill stdin's queue while the guest cannot read it.
    let mut sent = 0;
    for n in 0..40 {
        let reply = call(
            &mut ws,
            10 + n,
            "input",
            json!({"run_id": id, "data": "ab"}),
        )
        .await;
        if reply.get("error").is_some() {
            break;
        }
        sent += 2;
    }
    assert!(sent > 0 && sent < 80, "stdin was never full ({sent} bytes)");
    let eof = call(&mut ws, 100, "eof", json!({"run_id": id})).await;
    assert_eq!(eof["result"], true, "{eof}");
    let pong = call(&mut ws, 101, "ping", json!({})).await;
    assert_eq!(pong["result"], "pong");
    call(&mut ws, 102, "resume", json!({"run_id": id})).await;
    let (out, exit) = until_exit(&mut ws, &id).await;
    assert_eq!(out, format!("{sent}\n"));
    assert_eq!(exit["outcome"], "exited");
}

/// Waits (up to 15 s) for a server's shutdown to complete.
async fn until_shut_down(stopping: tokio::task::JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(15), stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
}

/// Sends one JSON-RPC request and returns its response (skipping notifications).
async fn call(ws: &mut Ws, id: u64, method: &str, params: Value) -> Value {
    send(
        ws,
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = tokio::time::timeout_at(deadline.into(), recv(ws))
            .await
            .unwrap_or_else(|_| panic!("no answer to {method}"));
        if m["id"] == json!(id) {
            return m;
        }
    }
}

#[tokio::test]
async fn shutdown_stops_one_shot_runs_after_the_grace_and_keeps_answering() {
    let server = server(|c| c.shutdown_grace_secs = 1).await;
    // A session holds a run, so the drain lasts the whole grace period.
    let mut ws = connect(&server, "").await;
    let id = run(&mut ws, 1, json!({"source": "input()"})).await;
    wait_for_state(&mut ws, &id, "waiting_input").await;
    let addr = server.addr;
    let state = server.state.clone();
    let slow = json!({"source": "import time\nprint('started', flush=True)\ntime.sleep(20)"});
    let one_shot = tokio::spawn({
        let state = state.clone();
        async move {
            let started = Instant::now();
            let r = post_json_to(addr, &slow).await;
            let _ = state; // the server lives until the answer
            (r, started.elapsed())
        }
    });
    // Wait for the one-shot run to be live.
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.sandbox.live_instances() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A new connection during the drain is answered, not refused.
    let refused = post_json_to(addr, &json!({"source": "print(1)"})).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    let (r, took) = tokio::time::timeout(Duration::from_secs(15), one_shot)
        .await
        .expect("the one-shot run was stopped")
        .unwrap();
    assert_eq!(r.json()["outcome"], "shutdown", "{}", r.body);
    assert!(took < Duration::from_secs(15));
    assert_eq!(close_code(&mut ws).await, 1001);
    until_shut_down(stopping).await;
}

#[tokio::test]
async fn piston_connect_closes_with_1001_on_shutdown() {
    let server = server(|c| c.shutdown_grace_secs = 1).await;
    let mut ws = try_connect_to(&server, "/api/v2/connect", &[])
        .await
        .expect("connected");
    send(
        &mut ws,
        json!({"type": "init", "language": "python", "version": "3.14",
               "files": [{"content": "import time\ntime.sleep(30)"}]}),
    )
    .await;
    let runtime = recv(&mut ws).await;
    assert_eq!(runtime["type"], "runtime", "{runtime}");
    let stopping = tokio::spawn(server.shutdown());
    assert_eq!(close_code(&mut ws).await, 1001);
    until_shut_down(stopping).await;
}

#[tokio::test]
async fn the_scratch_root_is_removed_even_while_the_sandbox_is_held() {
    let server = server(|_| {}).await;
    let state = server.state.clone();
    let handle = state
        .sandbox
        .start(RunRequest::script("print(1)"))
        .await
        .unwrap();
    let root = handle.scratch_path().parent().unwrap().to_path_buf();
    drop(handle);
    assert!(root.exists());
    server.shutdown().await;
    // `state` (and so the sandbox) is still alive, as a stuck session's would be.
    assert!(!root.exists(), "{} outlived the server", root.display());
    drop(state);
}

#[tokio::test]
async fn slow_and_silent_connections_are_closed_and_capped() {
    let server = server(|c| {
        c.request_timeout_secs = 1;
        c.max_connections = 2;
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    // Both slots are taken: a third connection waits...
    let waiting = tokio::spawn({
        let addr = server.addr;
        async move { post_json_to(addr, &json!({"source": "print(1)"})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "served past the connection cap");
    // ...until the server closes the two that never finished their headers.
    for conn in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "a connection without headers stayed open");
    }
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a slot was free")
        .unwrap();
    assert_eq!(r.json()["stdout"], "1\n");
}

#[tokio::test]
async fn bodies_that_are_too_large_or_never_come_are_answered() {
    let server = server(|c| c.request_timeout_secs = 1).await;
    for path in ["/v1/runs", "/api/v2/execute"] {
        // Announced far above the limit: refused before any of it is read.
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(status_line(&mut tcp).await, 413, "{path}");
        // Announced small, never sent.
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head =
            format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{{");
        tcp.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(status_line(&mut tcp).await, 408, "{path}");
    }
}

/// The status of the response on `tcp` (within 10 s).
async fn status_line(tcp: &mut tokio::net::TcpStream) -> u16 {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf))
        .await
        .expect("answered in time")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a response: {text:?}"))
}

#[tokio::test]
async fn a_rebound_host_name_is_refused_without_a_secret() {
    let server = server(|_| {}).await;
    let evil = format!("evil.example:{}", server.addr.port());
    let origin = format!("http://{evil}");
    let body = br#"{"source":"print(1)"}"#;
    let r = request_as(server.addr, &evil, &[("Origin", &origin)], "/v1/runs", body).await;
    assert_eq!(r.status, 421, "{}", r.body);
    let err = try_connect(&server, "", &[("Host", &evil), ("Origin", &origin)])
        .await
        .expect_err("the upgrade was refused");
    assert_eq!(status_of(err), 421);
    // The same request by IP address or localhost is served.
    let local = format!("localhost:{}", server.addr.port());
    let r = request_as(server.addr, &local, &[], "/v1/runs", body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The run history is not readable through the rebound name either.
    let path = format!("/v1/runs/{}", r.json()["run_id"].as_str().unwrap());
    let read = request_with(server.addr, "GET", &evil, &[], &path, b"").await;
    assert_eq!(read.status, 421, "{}", read.body);
    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("weir_connections_rejected_total{reason=\"host\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_slow_reader_of_a_long_output_is_not_dropped_for_pings() {
    let server = server(|c| c.heartbeat_secs = 1).await;
    let mut ws = connect(&server, "").await;
    let id = run(
        &mut ws,
        1,
        json!({"source": "for i in range(200000): print('x' * 60, i)",
               "limits": {"wall_ms": 60000, "output_bytes": 16000000}}),
    )
    .await;
    // Read more slowly than the script writes, for five heartbeat periods: the server's
    // queue and the socket buffers stay full, and the pings wait behind megabytes of output.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        let m = recv(&mut ws).await;
        assert_ne!(m["method"], "exit", "the run ended early: {m}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let pong = call(&mut ws, 2, "stop", json!({"run_id": id})).await;
    assert_eq!(pong["result"], true, "{pong}");
}

#[tokio::test]
async fn a_script_cannot_reset_its_time_limit_by_claiming_a_repl() {
    // Each input line is followed by 0.3 s of work: four lines exceed the 1 s limit, unless
    // each line restarted the clock as a REPL statement does.
    let source = "import time\nfrom wit_world.imports import host\n\
                  host.repl_started()\n\
                  while True:\n    input()\n    t = time.time()\n\
                  \x20   while time.time() - t < 0.3: pass\n";
    let mut req = RunRequest::script(source);
    req.limits = common::limits(|l| l.wall_ms = 1_000);
    let mut handle = common::start(req).await;
    let control = handle.control();
    let feeder = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !control.write_stdin("line\n").await {
                return;
            }
        }
        control.close_stdin();
    });
    let mut saw_repl = false;
    let result = loop {
        match common::next(&mut handle, 30).await {
            weir_sandbox::Event::State(RunState::Repl) => saw_repl = true,
            weir_sandbox::Event::Exit(r) => break r,
            _ => {}
        }
    };
    feeder.abort();
    assert!(!saw_repl, "a run without a REPL reported one");
    assert_eq!(result.outcome, Outcome::Timeout, "{}", result.message);
}

#[tokio::test]
async fn readiness_probes_share_one_canary() {
    let server = server(|_| {}).await;
    let starts = |s: &weir_service::server::RunningServer| {
        let n = s.state.sandbox.instance_starts();
        n.warm + n.fresh
    };
    let before = starts(&server);
    let probes: Vec<_> = (0..50)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(async move { get_to(addr, "/readyz").await })
        })
        .collect();
    for probe in probes {
        assert_eq!(probe.await.unwrap(), 200);
    }
    let canaries = starts(&server) - before;
    assert!(canaries <= 2, "{canaries} canaries for 50 probes");
}

#[tokio::test]
async fn exit_codes_are_cpythons() {
    for (source, code) in [
        ("import sys\nsys.exit(2**100)", 255),
        ("import sys\nsys.exit(-1)", 255),
        ("import sys\nsys.exit(300)", 44),
        ("import os\nos._exit(300)", 44),
        ("import os\nos._exit(3)", 3),
    ] {
        let out = common::run(source).await;
        assert_eq!(out.outcome(), Outcome::Exited { code }, "{source}");
    }
    let out = common::run("import os\nos._exit(2**40)").await;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("OverflowError"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// POSTs JSON to a server by address (the server may be shutting down).
async fn post_json_to(addr: std::net::SocketAddr, body: &Value) -> HttpResponse {
    request_to(addr, "POST", "/v1/runs", body.to_string().as_bytes()).await
}

async fn get_to(addr: std::net::SocketAddr, path: &str) -> u16 {
    request_to(addr, "GET", path, b"").await.status
}

async fn request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> HttpResponse {
    request_with(addr, method, &addr.to_string(), &[], path, body).await
}

/// POSTs `body` to `path` naming `host` in the `Host` header.
async fn request_as(
    addr: std::net::SocketAddr,
    host: &str,
    headers: &[(&str, &str)],
    path: &str,
    body: &[u8],
) -> HttpResponse {
    request_with(addr, "POST", host, headers, path, body).await
}

async fn request_with(
    addr: std::net::SocketAddr,
    method: &str,
    host: &str,
    headers: &[(&str, &str)],
    path: &str,
    body: &[u8],
) -> HttpResponse {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    HttpResponse {
        status,
        headers: Vec::new(),
        body: body.to_string(),
    }
}
