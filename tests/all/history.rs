//! Run history over a running server: runs are stored in SQLite, survive a restart, are only
//! shown to their owner, and recorded runs serve their transcript.

use crate::ws;

use serde_json::{json, Value};
use std::time::Duration;
use weir_sandbox::replay::{compare, replay};
use weir_sandbox::transcript::Transcript;
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
        if status == 200 {
            stored = Some(body(&text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = stored.expect("the run is stored within 2 s");
    assert_eq!(run["outcome"], "stopped");
    server.shutdown().await;
}
