//! Hostile clients and guests against `weir serve` and the sandbox: each test is a failure an
//! adversarial review found, and shows it can no longer happen (docs/sandbox.md, "Hostile
//! input").

use crate::common;

use crate::ws;

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
    let root = handle
        .control()
        .live_dir()
        .unwrap()
        .path()
        .parent()
        .unwrap()
        .to_path_buf();
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
    // Every refused request is counted: the run, the upgrade and the history read.
    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("weir_connections_rejected_total{reason=\"host\"} 3"),
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

/// A session whose run ends with no `exec` to read it (here: an abandoned cell that takes its
/// interrupt and then exits) is gone at once on every route: its files are never reached
/// through it again, whoever's run gets its directory next.
#[tokio::test]
async fn a_session_whose_run_ended_unseen_answers_404_on_every_route() {
    let server = server(|c| c.session_idle_secs = 600).await;
    let r = post_json(&server, "/v1/sessions", &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    let r = http(
        &server,
        "PUT",
        &format!("/v1/sessions/{id}/files/mine.txt"),
        &[],
        b"mine",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let cell = json!({
        "code": "import os, time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n    pass\nos._exit(3)",
        "timeout_ms": 30_000,
    });
    let path = format!("/v1/sessions/{id}/exec");
    hang_up_after(
        &server,
        "POST",
        &path,
        &[],
        &cell.to_string(),
        Duration::from_millis(300),
    )
    .await;
    // The run ends a moment later; from then on the session does not exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&server, &format!("/v1/sessions/{id}")).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "an ended session is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another user's run now takes the pooled directory.
    let theirs =
        json!({"source": "import time\nopen('theirs.txt', 'w').write('secret')\ntime.sleep(1)"});
    let other = post_json(&server, "/v1/runs", &theirs);
    let probes = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let files = format!("/v1/sessions/{id}/files");
        let file = format!("/v1/sessions/{id}/files/theirs.txt");
        let planted = format!("/v1/sessions/{id}/files/seaborn.py");
        vec![
            (
                "GET files",
                http(&server, "GET", &files, &[], b"").await.status,
            ),
            (
                "GET file",
                http(&server, "GET", &file, &[], b"").await.status,
            ),
            (
                "PUT file",
                http(&server, "PUT", &planted, &[], b"import os")
                    .await
                    .status,
            ),
            (
                "exec",
                post_json(&server, &path, &json!({"code": "1"}))
                    .await
                    .status,
            ),
            (
                "interrupt",
                post_json(&server, &format!("/v1/sessions/{id}/interrupt"), &json!({}))
                    .await
                    .status,
            ),
            (
                "stdin",
                post_json(
                    &server,
                    &format!("/v1/sessions/{id}/stdin"),
                    &json!({"data": "x"}),
                )
                .await
                .status,
            ),
            (
                "DELETE",
                http(&server, "DELETE", &format!("/v1/sessions/{id}"), &[], b"")
                    .await
                    .status,
            ),
        ]
    };
    let (other, probes) = tokio::join!(other, probes);
    assert_eq!(other.status, 200, "{}", other.body);
    for (route, status) in probes {
        assert_eq!(status, 404, "{route} on an ended session");
    }
    let listed = http(&server, "GET", "/v1/sessions", &[], b"").await.json();
    assert_eq!(listed, json!([]), "an ended session is listed");
    // Counted once, with its run's own outcome.
    let metrics = http_get(&server, "/metrics").await.1;
    assert!(metrics.contains("weir_http_sessions_open 0"), "{metrics}");
    server.shutdown().await;
}

#[tokio::test]
async fn sessions_with_environment_names_a_guest_cannot_take_are_refused() {
    let server = server(|_| {}).await;
    for env in [
        json!({"": "x"}),
        json!({"A=B": "x"}),
        json!({"A\u{0}B": "x"}),
    ] {
        let r = post_json(&server, "/v1/sessions", &json!({ "env": env })).await;
        assert_eq!(r.status, 400, "{env}: {}", r.body);
        assert!(
            r.body.contains("invalid environment variable"),
            "{}",
            r.body
        );
    }
    assert_eq!(server.state.sessions.len(), 0);
    server.shutdown().await;
}

const MCP_HEADERS: [(&str, &str); 2] = [
    ("accept", "application/json, text/event-stream"),
    ("mcp-protocol-version", "2025-06-18"),
];

fn mcp_call(id: u64, code: &str) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "run_python", "arguments": {"code": code, "timeout_ms": 30_000}},
    })
    .to_string()
}

/// `tools/call` requests whose clients hung up stop their runs, and hold their slots until the
/// runs are gone: no instance runs for a client that left, and none runs without a slot.
#[tokio::test]
async fn mcp_calls_whose_client_hung_up_stop_their_runs() {
    let server = server(|c| c.max_sessions = 3).await;
    let sleeper = "import time\ntime.sleep(25)\nprint('done')";
    for i in 0..3 {
        hang_up_after(
            &server,
            "POST",
            "/mcp",
            &MCP_HEADERS,
            &mcp_call(i, sleeper),
            Duration::from_millis(400),
        )
        .await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.state.sandbox.live_instances() > 0 {
        assert!(
            Instant::now() < deadline,
            "{} runs of departed clients still live",
            server.state.sandbox.live_instances()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Their slots are back: three calls that stay fill every slot, a fourth is refused.
    let staying: Vec<_> = (0..3)
        .map(|i| {
            let addr = server.addr;
            let body = mcp_call(10 + i, "import time\ntime.sleep(4)\nprint('stayed')");
            tokio::spawn(async move {
                request_with(
                    addr,
                    "POST",
                    &addr.to_string(),
                    &MCP_HEADERS,
                    "/mcp",
                    body.as_bytes(),
                )
                .await
            })
        })
        .collect();
    // Once the three run, a fourth is refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.sandbox.live_instances() < 3 {
        assert!(Instant::now() < deadline, "the three calls never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = post_json(&server, "/v1/runs", &json!({"source": "print(1)"})).await;
    assert_eq!(r.status, 503, "admitted past max_sessions: {}", r.body);
    for call in staying {
        let r = call.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains("stayed"), "{}", r.body);
    }
    server.shutdown().await;
}

/// A body that never arrives gets 408 after `request_timeout_secs` on every route that reads
/// one, and holds no slot while it is awaited.
#[tokio::test]
async fn silent_bodies_time_out_on_every_route_and_hold_no_slot() {
    let server = server(|c| {
        c.request_timeout_secs = 1;
        c.max_sessions = 2;
    })
    .await;
    let r = post_json(&server, "/v1/sessions", &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    let paths = [
        "/mcp".to_string(),
        "/v1/sessions".to_string(),
        "/v1/runs".to_string(),
        "/api/v2/execute".to_string(),
        format!("/v1/sessions/{id}/files/x.bin"),
        format!("/v1/sessions/{id}/exec"),
        format!("/v1/sessions/{id}/stdin"),
    ];
    let mut silent = Vec::new();
    for path in &paths {
        let method = if path.contains("/files/") {
            "PUT"
        } else {
            "POST"
        };
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n\
             Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        silent.push((path, tcp));
    }
    // One slot is the session's; the other is free while the bodies are awaited.
    let r = post_json(&server, "/v1/runs", &json!({"source": "print('served')"})).await;
    assert_eq!(r.status, 200, "a silent body held a slot: {}", r.body);
    for (path, mut tcp) in silent {
        assert_eq!(status_line(&mut tcp).await, 408, "{path}");
    }
    server.shutdown().await;
}

/// Without a secret every caller is anonymous: a session is reachable only through the id its
/// creation returned, and no listing hands that id to another caller.
#[tokio::test]
async fn without_a_secret_no_caller_is_shown_anothers_session() {
    let server = server(|_| {}).await;
    let r = post_json(&server, "/v1/sessions", &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    assert!(id.len() >= 32, "a guessable session id: {id}");
    let listed = http(&server, "GET", "/v1/sessions", &[], b"").await.json();
    assert_eq!(
        listed,
        json!([]),
        "a listing showed a session to any caller"
    );
    // The holder of the id still reaches it.
    let r = post_json(
        &server,
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "6 * 7"}),
    )
    .await;
    assert_eq!(r.json()["result"], "42");
    server.shutdown().await;
}

#[tokio::test]
async fn the_node_header_does_not_reveal_the_host_name() {
    let server = server(|_| {}).await;
    let r = http(&server, "GET", "/healthz", &[], b"").await;
    let node = r.header("x-weir-node").expect("X-Weir-Node").to_string();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    assert!(node.starts_with("node-"), "{node}");
    let host = host.trim();
    assert!(
        host.is_empty() || !node.contains(host),
        "{node} names the host {host}"
    );
    server.shutdown().await;
}

/// File transfers a cell's links or a path's shape defeat answer 4xx with the reason, never 500.
#[tokio::test]
async fn file_transfers_onto_links_out_or_overlong_names_answer_4xx() {
    let server = server(|_| {}).await;
    let r = post_json(&server, "/v1/sessions", &json!({})).await;
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    let r = post_json(
        &server,
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "import os\nup = '../' * 12\nos.symlink(up + 'etc/passwd', 'out')\nos.symlink(up + 'etc', 'dir')"}),
    )
    .await;
    assert_eq!(r.json()["outcome"], "ok", "{}", r.body);
    let long = "n".repeat(300);
    for (path, expected) in [
        ("out".to_string(), 400),
        ("dir/x".to_string(), 400),
        (long.clone(), 400),
        (format!("{long}/x"), 400),
    ] {
        let r = http(
            &server,
            "PUT",
            &format!("/v1/sessions/{id}/files/{path}"),
            &[],
            b"x",
        )
        .await;
        assert_eq!(r.status, expected, "PUT {path}: {}", r.body);
        assert!(r.body.contains("cannot use"), "{}", r.body);
    }
    let r = http(
        &server,
        "GET",
        &format!("/v1/sessions/{id}/files/{long}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    assert_ne!(
        std::fs::read("/etc/passwd").unwrap_or_default(),
        b"x",
        "written through"
    );
    server.shutdown().await;
}

/// A chunked `/mcp` body (no length announced) that grows past `max_message_bytes` is 413.
#[tokio::test]
async fn an_over_cap_chunked_mcp_body_is_413() {
    let server = server(|c| c.max_message_bytes = 64 << 10).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head =
        "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: application/json, text/event-stream\r\n\
                Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; 16 << 10];
    for _ in 0..8 {
        let frame = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
        if tcp.write_all(&frame).await.is_err() {
            break; // answered and closed already
        }
    }
    assert_eq!(status_line(&mut tcp).await, 413);
    server.shutdown().await;
}

/// One signed-in user cannot take the server: `max_sessions_per_user` holds over every entry
/// point at once (HTTP sessions, `/ws`, one-shot runs, Piston, MCP), with 429 naming the
/// setting, while another user is still served.
#[tokio::test]
async fn one_user_holds_at_most_max_sessions_per_user_over_every_entry_point() {
    let server = server(|c| {
        c.secret = Some("s3cret".into());
        c.max_sessions_per_user = 2;
    })
    .await;
    let token = |user: &str| {
        weir_service::auth::mint(b"s3cret", user, Duration::from_secs(60)).expect("a token")
    };
    let (ann, bob) = (token("ann"), token("bob"));
    let ann_auth = format!("Bearer {ann}");
    let ann_headers = [
        ("Authorization", ann_auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    // Ann's first two: an HTTP session and a /ws connection.
    let r = http(&server, "POST", "/v1/sessions", &ann_headers, b"{}").await;
    assert_eq!(r.status, 201, "{}", r.body);
    let first = r.json()["session_id"].as_str().unwrap().to_string();
    let ws = connect(&server, &format!("?token={ann}")).await;
    // Her third, by any entry point, is refused.
    let run = json!({"source": "print(1)"}).to_string();
    for (path, body) in [("/v1/sessions", "{}"), ("/v1/runs", run.as_str())] {
        let r = http(&server, "POST", path, &ann_headers, body.as_bytes()).await;
        assert_eq!(r.status, 429, "{path}: {}", r.body);
        assert!(r.body.contains("max_sessions_per_user"), "{}", r.body);
    }
    let piston = json!({"language": "python", "version": "*", "files": [{"content": "print(1)"}]})
        .to_string();
    let r = http(
        &server,
        "POST",
        "/api/v2/execute",
        &ann_headers,
        piston.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    let refused = try_connect_to(&server, &format!("/api/v2/connect?token={ann}"), &[]).await;
    assert_eq!(status_of(refused.expect_err("refused")), 429);
    let mut mcp = ann_headers.to_vec();
    mcp.extend(MCP_HEADERS);
    let r = http(
        &server,
        "POST",
        "/mcp",
        &mcp,
        mcp_call(1, "print(1)").as_bytes(),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    // Bob is served meanwhile.
    let bob_auth = format!("Bearer {bob}");
    let bob_headers = [
        ("Authorization", bob_auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = http(&server, "POST", "/v1/runs", &bob_headers, run.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // One of Ann's ends: she gets her slot back.
    drop(ws);
    let r = http(
        &server,
        "DELETE",
        &format!("/v1/sessions/{first}"),
        &ann_headers,
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http(&server, "POST", "/v1/runs", &ann_headers, run.as_bytes()).await;
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Ann's slots never came back: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = http_get(&server, "/metrics").await.1;
    assert!(metrics.contains("reason=\"user_capacity\"} 5"), "{metrics}");
    server.shutdown().await;
}

/// The host's memory budget: a session whose memory limit what is left cannot cover is refused
/// (503, naming the budget), and the budget comes back when a session ends.
#[tokio::test]
async fn sessions_past_the_hosts_memory_budget_are_refused() {
    let server = server(|c| c.memory_budget_bytes = Some(700 << 20)).await;
    let big = json!({"limits": {"memory_bytes": 512u64 << 20}});
    let r = post_json(&server, "/v1/sessions", &big).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let first = r.json()["session_id"].as_str().unwrap().to_string();
    let r = post_json(
        &server,
        &format!("/v1/sessions/{first}/exec"),
        &json!({"code": "x = bytearray(300 << 20)\nlen(x)"}),
    )
    .await;
    assert_eq!(r.json()["outcome"], "ok", "{}", r.body);
    let r = post_json(&server, "/v1/sessions", &big).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("memory budget"), "{}", r.body);
    // A run with a smaller limit still fits.
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "print(1)", "limits": {"memory_bytes": 256u64 << 20}}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = http(
        &server,
        "DELETE",
        &format!("/v1/sessions/{first}"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = post_json(&server, "/v1/sessions", &big).await;
        if r.status == 201 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the budget never came back: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
