//! Run history over a running server: runs are stored in SQLite, survive a restart, are only
//! shown to their owner, and recorded runs serve their transcript.

use crate::ws;

use serde_json::{json, Value};
use std::time::Duration;
use weir_sandbox::Transcript;
use weir_sandbox::{compare, replay};
use ws::*;

fn body(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_survive_a_restart() {
    let path = temp_history();
    let first = server(|c| c.history.path = path.clone()).await;
    let mut ws = connect(&first, "").await;
    let run_id = run(&mut ws, 1, json!({"source": "print('kept')"})).await;
    let (out, exit) = until_exit(&mut ws, &run_id).await;
    assert_eq!(out, "kept\n");
    assert_eq!(exit["outcome"], "exited");
    drop(ws);
    first.shutdown().await;

    let second = server(|c| c.history.path = path.clone()).await;
    let (status, text) = http_get(&second, &format!("/v1/runs/{run_id}")).await;
    assert_eq!(status, 200, "{text}");
    let run = body(&text);
    assert_eq!(run["id"], json!(run_id));
    assert_eq!(run["user"], "anonymous");
    assert_eq!(run["outcome"], "exited");
    assert_eq!(run["code"], 0);
    assert_eq!(run["output_bytes"], 5);
    assert_eq!(run["recorded"], false);
    assert!(run["finished_at_ms"].as_u64() >= run["started_at_ms"].as_u64());
    let (status, text) = http_get(&second, &format!("/v1/runs/{run_id}/transcript")).await;
    assert_eq!(status, 404);
    assert!(text.contains("was not recorded"), "{text}");
    let (status, _) = http_get(&second, "/v1/runs/no-such-run").await;
    assert_eq!(status, 404);
    second.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_run_serves_a_transcript_that_replays() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let source = "import random\nname = input('name? ')\nprint(name, random.randint(1, 10**9))\n";
    let run_id = run(
        &mut ws,
        1,
        json!({"source": source, "record": true, "deterministic": {"seed": 42}}),
    )
    .await;
    wait_for_state(&mut ws, &run_id, "waiting_input").await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 2, "method": "input", "params": {"run_id": run_id, "data": "ada\n"}}),
    )
    .await;
    let (out, exit) = until_exit(&mut ws, &run_id).await;
    assert!(out.starts_with("ada "), "{out}");
    let url = exit["transcript"]
        .as_str()
        .expect("exit names the transcript");
    assert_eq!(url, format!("/v1/runs/{run_id}/transcript"));
    assert!(exit["fuel_consumed"].as_u64().is_some());

    let (status, text) = http_get(&server, url).await;
    assert_eq!(status, 200, "{text}");
    let t = Transcript::parse(&text).expect("a valid transcript");
    assert_eq!(t.seed, 42);
    assert_eq!(t.stdin.reads.len(), 1);
    let replayed = replay(&server.state.sandbox, &t).await.expect("replays");
    assert_eq!(compare(&t.expected, &replayed), None);

    let (_, text) = http_get(&server, &format!("/v1/runs/{run_id}")).await;
    assert_eq!(body(&text)["recorded"], true);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_user_cannot_read_a_run() {
    let secret = "history-secret";
    let server = server(|c| c.secret = Some(secret.into())).await;
    let token = |user: &str| {
        weir_service::auth::mint(secret.as_bytes(), user, Duration::from_secs(60)).unwrap()
    };
    let (ada, bob) = (token("ada"), token("bob"));
    let mut ws = connect(&server, &format!("?token={ada}")).await;
    let run_id = run(&mut ws, 1, json!({"source": "print(1)", "record": true})).await;
    until_exit(&mut ws, &run_id).await;

    for path in [
        format!("/v1/runs/{run_id}"),
        format!("/v1/runs/{run_id}/transcript"),
    ] {
        let (status, text) = http_get(&server, &format!("{path}?token={ada}")).await;
        assert_eq!(status, 200, "{path}: {text}");
        let (status, text) = http_get(&server, &format!("{path}?token={bob}")).await;
        assert_eq!(status, 404, "{path}: {text}");
        assert!(!text.contains("print"), "{text}");
        let (status, text) = http_get(&server, &path).await;
        assert_eq!(status, 401, "{path}: {text}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_abandoned_by_a_disconnect_is_stored_as_stopped() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let run_id = run(&mut ws, 1, json!({"source": "input()"})).await;
    wait_for_state(&mut ws, &run_id, "waiting_input").await;
    drop(ws);
    let mut stored = None;
    for _ in 0..100 {
        let (status, text) = http_get(&server, &format!("/v1/runs/{run_id}")).await;
        // Stored `running` from its start; its end replaces that.
        if status == 200 && body(&text)["outcome"] != "running" {
            stored = Some(body(&text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = stored.expect("the run's end is stored within 2 s");
    assert_eq!(run["outcome"], "stopped");
    server.shutdown().await;
}

/// Opens `/ws` on `addr` and starts `source`; returns the socket and the run's id.
async fn start_on(addr: &str, token: &str, source: &str) -> (Ws, String) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .expect("the upgrade is accepted");
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": "run", "params": {"source": source}});
    ws::send(&mut ws, request).await;
    loop {
        let m = ws::recv(&mut ws).await;
        if m["id"] == 1 {
            return (
                ws,
                m["result"]["run_id"].as_str().expect("run_id").to_string(),
            );
        }
    }
}

/// The outcome `GET /v1/runs/{id}` reports on `addr`, once it is `want` (within 10 s).
async fn outcome_becomes(addr: &str, token: &str, id: &str, want: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let path = format!("/v1/runs/{id}");
        let r = weir_bench::harness::http(addr, "GET", &path, Some(token), b"").await;
        if r.status == 200 && r.json()["outcome"] == want {
            return r.json();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} on {addr}: {} {}",
            r.status,
            r.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The embedded history shows a run `running` while it runs, and `lost` once the process
/// running it was killed (at the next start); a second live process sharing the file leaves
/// the first one's runs alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_servers_running_runs_read_lost_at_the_next_start() {
    let dir = tempfile::Builder::new()
        .prefix("lost-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let weir = std::path::Path::new(env!("CARGO_BIN_EXE_weir"));
    let node = |dir: &std::path::Path| {
        weir_bench::harness::Node::new(weir, dir, "alone", None, "").expect("a node")
    };
    let ann = weir_bench::harness::token("ann", 3600);
    let mut first = node(dir.path());
    first.spawn().unwrap();
    first.wait_ready().await.unwrap();
    let (_ws, id) = start_on(
        &first.addr,
        &ann,
        "import time\nprint('working', flush=True)\ntime.sleep(120)",
    )
    .await;
    let running = outcome_becomes(&first.addr, &ann, &id, "running").await;
    assert_eq!(running["message"], "The run is running");
    // Another process on the same file: the first one lives, so its run stays `running`.
    let mut second = node(dir.path());
    second.spawn().unwrap();
    second.wait_ready().await.unwrap();
    outcome_becomes(&second.addr, &ann, &id, "running").await;
    first.kill9();
    second.terminate();
    second.spawn().unwrap();
    second.wait_ready().await.unwrap();
    let lost = outcome_becomes(&second.addr, &ann, &id, "lost").await;
    assert!(
        lost["message"]
            .as_str()
            .unwrap_or("")
            .contains("stopped before the run ended"),
        "{lost}"
    );
    second.terminate();
}
