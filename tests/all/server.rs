//! `weir serve` as a browser IDE sees it, driven by a real WebSocket client (tokio-tungstenite).

use futures_util::SinkExt;
use serde_json::json;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use weir_service::server::RunningServer;

use crate::ws;
use ws::*;

async fn until_no_instances(server: &RunningServer) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while server.state.sandbox.live_instances() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        server.state.sandbox.live_instances(),
        0,
        "instances still alive after 1 s"
    );
}

#[tokio::test]
async fn a_run_streams_output_state_and_exit() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let id = run(
        &mut ws,
        1,
        json!({"source": "print('hello')\nprint('world')"}),
    )
    .await;
    let (out, exit) = until_exit(&mut ws, &id).await;
    assert_eq!(out, "hello\nworld\n");
    assert_eq!(exit["outcome"], "exited");
    assert_eq!(exit["code"], 0);
    assert_eq!(exit["output_truncated"], false);
    assert!(exit["message"].is_string() && exit["duration_ms"].is_u64());
    let id = run(&mut ws, 2, json!({"source": "1/0"})).await;
    let (_, exit) = until_exit(&mut ws, &id).await;
    assert_eq!(
        (exit["outcome"].as_str(), exit["code"].as_i64()),
        (Some("error"), Some(1))
    );
}

#[tokio::test]
async fn input_is_interactive_and_stop_ends_a_waiting_run() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let id = run(
        &mut ws,
        1,
        json!({"source": "n = input('name? ')\nprint('hi', n)\ninput()"}),
    )
    .await;
    wait_for_state(&mut ws, &id, "waiting_input").await;
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 2, "method": "input", "params": {"run_id": id, "data": "Ada\n"}})).await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["result"]["bytes"], 4);
    wait_for_state(&mut ws, &id, "waiting_input").await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "stop", "params": {"run_id": id}}),
    )
    .await;
    let (_, exit) = until_exit(&mut ws, &id).await;
    assert_eq!(exit["outcome"], "stopped");
}

#[tokio::test]
async fn pause_and_resume_and_repl() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let id = run(&mut ws, 1, json!({"source": "x = 5", "repl": true})).await;
    wait_for_state(&mut ws, &id, "repl").await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "pause", "params": {"run_id": id}}),
    )
    .await;
    wait_for_state(&mut ws, &id, "paused").await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "resume", "params": {"run_id": id}}),
    )
    .await;
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 4, "method": "input", "params": {"run_id": id, "data": "print(x * 8)\n"}})).await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 5, "method": "eof", "params": {"run_id": id}}),
    )
    .await;
    let (out, exit) = until_exit(&mut ws, &id).await;
    assert!(out.contains("40\n"), "{out}");
    assert_eq!(exit["outcome"], "exited");
}

#[tokio::test]
async fn bad_messages_get_clear_errors_and_the_session_survives() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let cases = [
        ("{not json".to_string(), -32700),
        ("[1,2]".to_string(), -32600),
        (json!({"jsonrpc": "2.0", "id": 1, "method": "teleport"}).to_string(), -32601),
        (json!({"jsonrpc": "2.0", "id": 2, "method": "run", "params": {"source": 42}}).to_string(), -32602),
        (json!({"jsonrpc": "2.0", "id": 3, "method": "stop", "params": {"run_id": "nope"}}).to_string(), -32001),
        (json!({"jsonrpc": "2.0", "id": 4, "method": "run", "params": {"source": "", "files": {"../x": ""}}}).to_string(), -32602),
    ];
    for (text, code) in cases {
        ws.send(Message::Text(text.clone().into())).await.unwrap();
        let reply = recv(&mut ws).await;
        assert_eq!(reply["error"]["code"], code, "{text} -> {reply}");
        assert!(!reply["error"]["message"].as_str().unwrap().is_empty());
    }
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["error"]["code"], -32600);
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 9, "method": "ping"}),
    )
    .await;
    assert_eq!(recv(&mut ws).await["result"], "pong");
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let big = "x".repeat(10 << 20);
    let _ = ws.send(Message::Text(big.into())).await;
    assert_eq!(close_code(&mut ws).await, 1009);
}

#[tokio::test]
async fn rapid_runs_leave_only_the_last_one_running() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    for i in 0..50 {
        let source = format!("import time\nprint('run {i}')\ntime.sleep(0.2)\nprint('end {i}')");
        send(
            &mut ws,
            json!({"jsonrpc": "2.0", "id": i, "method": "run", "params": {"source": source}}),
        )
        .await;
    }
    let mut started: Vec<String> = Vec::new();
    let mut exited: Vec<String> = Vec::new();
    let mut last_output = String::new();
    while exited.len() < 50 {
        let m = recv(&mut ws).await;
        if let Some(run_id) = m["result"]["run_id"].as_str() {
            if let Some(prev) = started.last() {
                assert!(
                    exited.contains(prev),
                    "run {prev} had no exit before the next run started"
                );
            }
            started.push(run_id.to_string());
        } else if m["method"] == "exit" {
            exited.push(m["params"]["run_id"].as_str().unwrap().to_string());
        } else if m["method"] == "output" {
            let run = m["params"]["run_id"].as_str().unwrap();
            assert_eq!(
                Some(run),
                started.last().map(String::as_str),
                "output from a run that is not the latest"
            );
            if started.len() == 50 {
                last_output.push_str(m["params"]["data"].as_str().unwrap());
            }
        }
    }
    assert_eq!(started, exited);
    assert_eq!(last_output, "run 49\nend 49\n");
}

#[tokio::test]
async fn a_disconnect_during_a_flood_frees_every_instance() {
    let server = server(|_| {}).await;
    for _ in 0..3 {
        let mut ws = connect(&server, "").await;
        let id = run(&mut ws, 1, json!({"source": "while True: print('flood' * 20)", "limits": {"output_bytes": 16000000}})).await;
        loop {
            let m = recv(&mut ws).await;
            if m["method"] == "output" && m["params"]["run_id"] == json!(id) {
                break;
            }
        }
        assert_eq!(server.state.sandbox.live_instances(), 1);
        drop(ws); // abrupt: no close frame
        until_no_instances(&server).await;
    }
}

#[tokio::test]
async fn sessions_beyond_the_cap_are_refused_with_503() {
    let server = server(|c| c.max_sessions = 2).await;
    let _a = connect(&server, "").await;
    let _b = connect(&server, "").await;
    let err = try_connect(&server, "", &[]).await.expect_err("refused");
    assert_eq!(status_of(err), 503);
    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("weir_connections_rejected_total{reason=\"capacity\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("weir_connections_open 2"), "{metrics}");
}

#[tokio::test]
async fn tokens_are_required_checked_and_one_session_per_user() {
    let secret = "test-secret";
    let server = server(|c| c.secret = Some(secret.into())).await;
    assert_eq!(
        status_of(try_connect(&server, "", &[]).await.err().unwrap()),
        401
    );
    let expired = weir_service::auth::mint(secret.as_bytes(), "ada", Duration::ZERO).unwrap();
    assert_eq!(
        status_of(
            try_connect(&server, &format!("?token={expired}"), &[])
                .await
                .err()
                .unwrap()
        ),
        401
    );
    let forged = weir_service::auth::mint(b"wrong", "ada", Duration::from_secs(60)).unwrap();
    assert_eq!(
        status_of(
            try_connect(&server, &format!("?token={forged}"), &[])
                .await
                .err()
                .unwrap()
        ),
        401
    );
    let token =
        weir_service::auth::mint(secret.as_bytes(), "ada", Duration::from_secs(60)).unwrap();
    let mut first = connect(&server, &format!("?token={token}")).await;
    send(
        &mut first,
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    )
    .await;
    assert_eq!(recv(&mut first).await["result"], "pong");
    // The same user again, with the token in Sec-WebSocket-Protocol: the first session is closed.
    let mut second = try_connect(&server, "", &[("Sec-WebSocket-Protocol", &token)])
        .await
        .expect("accepted");
    assert_eq!(close_code(&mut first).await, 4001);
    send(
        &mut second,
        json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}),
    )
    .await;
    assert_eq!(recv(&mut second).await["result"], "pong");
}

#[tokio::test]
async fn cross_origin_upgrades_are_refused() {
    let server = server(|_| {}).await;
    let err = try_connect(&server, "", &[("Origin", "https://evil.example")])
        .await
        .err()
        .unwrap();
    assert_eq!(status_of(err), 403);
    assert!(
        try_connect(&server, "", &[("Origin", "http://localhost:3000")])
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn idle_sessions_close_with_4002() {
    let server = server(|c| c.session_idle_secs = 1).await;
    let mut ws = connect(&server, "").await;
    // A run longer than the idle limit keeps the session open, and the idle clock restarts
    // when it ends.
    let id = run(
        &mut ws,
        1,
        json!({"source": "import time\ntime.sleep(1.5)\nprint('done')"}),
    )
    .await;
    let (out, _) = until_exit(&mut ws, &id).await;
    assert_eq!(out, "done\n");
    let ended = Instant::now();
    assert_eq!(close_code(&mut ws).await, 4002);
    assert!(
        ended.elapsed() >= Duration::from_millis(800),
        "closed {:?} after the run",
        ended.elapsed()
    );
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let server = server(|_| {}).await;
    assert_eq!(http_get(&server, "/healthz").await, (200, "ok".into()));
    assert_eq!(http_get(&server, "/readyz").await, (200, "ready".into()));
    let mut ws = connect(&server, "").await;
    let id = run(
        &mut ws,
        1,
        json!({"source": "while True: pass", "limits": {"wall_ms": 200}}),
    )
    .await;
    let (_, exit) = until_exit(&mut ws, &id).await;
    assert_eq!(exit["outcome"], "timeout");
    assert_eq!(exit["message"], "Script exceeded its 200 ms time limit");
    let (status, text) = http_get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "weir_connections_open 1",
        "weir_instances_live 0",
        "weir_runs_started_total 1",
        "weir_runs_finished_total{outcome=\"timeout\"} 1",
        "weir_run_duration_seconds_count 1",
        "weir_output_bytes_total 0",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The readiness canary and the run: each took a warm guest or instantiated its own.
    let starts = |from: &str| -> u64 {
        let prefix = format!("weir_instance_starts_total{{from=\"{from}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix:?} in\n{text}"))
    };
    assert_eq!(starts("warm") + starts("fresh"), 2, "{text}");
}

#[tokio::test]
async fn shutdown_stops_active_runs_and_closes_with_1001() {
    let server = server(|c| c.shutdown_grace_secs = 1).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = connect(&server, "").await;
        let id = run(&mut ws, 1, json!({"source": "input()"})).await;
        wait_for_state(&mut ws, &id, "waiting_input").await;
        clients.push((ws, id));
    }
    let state = server.state.clone();
    let stopping = tokio::spawn(server.shutdown());
    for (mut ws, id) in clients {
        let (_, exit) = until_exit(&mut ws, &id).await;
        assert_eq!(exit["outcome"], "shutdown");
        assert_eq!(close_code(&mut ws).await, 1001);
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
    assert_eq!(state.sandbox.live_instances(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sessions_wait_for_input() {
    let server = server(|c| c.max_instances = 220).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        let mut ws = connect(&server, "").await;
        let id = run(&mut ws, 1, json!({"source": "print(int(input()) * 2)"})).await;
        clients.push((ws, id));
    }
    for (ws, id) in &mut clients {
        wait_for_state(ws, id, "waiting_input").await;
    }
    assert_eq!(server.state.sandbox.live_instances(), 200);
    for (i, (ws, id)) in clients.iter_mut().enumerate() {
        send(ws, json!({"jsonrpc": "2.0", "id": 2, "method": "input", "params": {"run_id": id, "data": format!("{i}\n")}})).await;
    }
    for (i, (ws, id)) in clients.iter_mut().enumerate() {
        let (out, exit) = until_exit(ws, id).await;
        assert_eq!(out, format!("{}\n", i * 2));
        assert_eq!(exit["outcome"], "exited");
    }
    until_no_instances(&server).await;
}

#[test]
fn close_codes_are_the_documented_ones() {
    assert_eq!(
        u16::from(CloseCode::Away),
        weir_service::lifecycle::pump::close::GOING_AWAY
    );
    assert_eq!(
        u16::from(CloseCode::Size),
        weir_service::lifecycle::pump::close::TOO_BIG
    );
}

#[tokio::test]
async fn runs_per_minute_are_limited_per_session() {
    let server = server(|c| c.runs_per_minute = 3).await;
    let mut ws = connect(&server, "").await;
    for i in 0..3 {
        let id = run(&mut ws, i, json!({"source": "pass"})).await;
        until_exit(&mut ws, &id).await;
    }
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 9, "method": "run", "params": {"source": "pass"}}),
    )
    .await;
    let reply = recv(&mut ws).await;
    assert_eq!(reply["error"]["code"], -32002);
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3 per minute"));
}

#[tokio::test]
async fn a_client_that_stops_reading_makes_its_guest_wait() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let limits = json!({"output_bytes": 16_000_000, "wall_ms": 60_000});
    let id = run(
        &mut ws,
        1,
        json!({"source": "while True: print('x' * 1000)", "limits": limits}),
    )
    .await;
    // Unthrottled, this script writes 16 MB in well under a second; nobody reads for 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "stop", "params": {"run_id": id}}),
    )
    .await;
    let mut received = 0usize;
    let exit = loop {
        let m = recv(&mut ws).await;
        match m["method"].as_str() {
            Some("output") => received += m["params"]["data"].as_str().unwrap().len(),
            Some("exit") => break m["params"].clone(),
            _ => {}
        }
    };
    assert_eq!(
        exit["outcome"], "stopped",
        "the guest was not held back: {exit}"
    );
    assert!(
        received < 12_000_000,
        "{received} bytes were buffered for a stalled reader"
    );
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_dropped() {
    let server = server(|c| c.heartbeat_secs = 1).await;
    // A client that never reads never answers pings.
    let _silent = connect(&server, "").await;
    let open = || {
        server
            .state
            .metrics
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while open() != 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open(), 1, "the session never opened");
    let deadline = Instant::now() + Duration::from_secs(10);
    while open() != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open(), 0, "the silent peer was not dropped");
}

#[tokio::test]
async fn interrupt_raises_keyboard_interrupt_in_a_repl_statement_and_the_repl_goes_on() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let id = run(&mut ws, 1, json!({"source": "total = 0", "repl": true})).await;
    wait_for_state(&mut ws, &id, "repl").await;
    let input = |id: &str, n, data: &str| json!({"jsonrpc": "2.0", "id": n, "method": "input", "params": {"run_id": id, "data": data}});
    send(&mut ws, input(&id, 2, "while True: total += 1\n\n")).await;
    wait_for_state(&mut ws, &id, "running").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "interrupt", "params": {"run_id": id}}),
    )
    .await;
    let mut stderr = String::new();
    loop {
        let m = recv(&mut ws).await;
        if m["id"] == 3 {
            assert_eq!(m["result"], true, "{m}");
        } else if m["method"] == "output" && m["params"]["stream"] == "stderr" {
            stderr.push_str(m["params"]["data"].as_str().unwrap());
        } else if m["method"] == "state" && m["params"]["state"] == "repl" {
            break;
        }
    }
    assert!(stderr.contains("KeyboardInterrupt"), "{stderr}");
    send(&mut ws, input(&id, 4, "print(total > 0)\n")).await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 5, "method": "eof", "params": {"run_id": id}}),
    )
    .await;
    let (out, exit) = until_exit(&mut ws, &id).await;
    assert!(out.contains("True\n"), "{out}");
    assert_eq!(exit["outcome"], "exited");
}

/// A one-shot run whose client hangs up is stopped, its instance freed, and its end recorded:
/// `stopped` in the metrics (and in the history, by the run's record being dropped unfinished).
#[tokio::test]
async fn a_one_shot_run_whose_client_hangs_up_is_stopped_and_recorded() {
    let server = server(|c| c.limits.wall_ms = 30_000).await;
    let body = json!({"source": "print('started', flush=True)\nwhile True:\n    pass\n"});
    hang_up_after(
        &server,
        "POST",
        "/v1/runs",
        &[],
        &body.to_string(),
        Duration::from_millis(500),
    )
    .await;
    let stopped = "weir_runs_finished_total{outcome=\"stopped\"} 1\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_get(&server, "/metrics").await;
        if metrics.contains(stopped) && metrics.contains("weir_instances_live 0\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the run was not stopped: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}
