//! The MCP server, driven by the official MCP TypeScript SDK (`tests/js/mcp_client.mjs`) over
//! both transports: `weir mcp` on stdio and `/mcp` on `weir serve`. Over HTTP, `/mcp` passes the
//! same admission as every other entry point.

use crate::node;
use crate::ws;

use ws::*;

const STEPS: [&str; 14] = [
    "connects and says what it is",
    "lists run_python with its limits in the description",
    "runs code and returns its output",
    "passes files and stdin",
    "reports an uncaught exception as an error with its traceback",
    "stops a busy loop at its time limit",
    "returns a matplotlib figure as PNG image content",
    "returns HTML and Markdown displays as text resources of their type",
    "runs JavaScript with run_code",
    "refuses an unknown runtime by name",
    "keeps state across session cells",
    "interrupts a loop and reads a variable afterwards",
    "forks, saves and restores a session",
    "lists and reads session files, then closes the session",
];

fn assert_steps(out: &str) {
    for step in STEPS {
        assert!(
            out.contains(&format!("ok - {step}")),
            "step {step:?}:\n{out}"
        );
    }
}

#[tokio::test]
async fn the_official_sdk_runs_python_over_stdio() {
    let history = temp_history();
    let history = history.to_string_lossy().into_owned();
    let weir = env!("CARGO_BIN_EXE_weir");
    let out = tokio::task::spawn_blocking(move || {
        node::node("mcp_client.mjs", &["stdio", weir, "--history", &history])
    })
    .await
    .unwrap();
    assert_steps(&out);
    assert!(
        out.contains("ok - refuses functions without a callback the operator allows"),
        "{out}"
    );
}

#[tokio::test]
async fn the_official_sdk_runs_python_over_streamable_http() {
    let receiver = crate::tools::Receiver::start("mcp key");
    let hooks = format!("http://127.0.0.1:{}/hooks/", receiver.1);
    let allow = hooks.clone();
    let server = server(move |c| {
        c.callbacks.allow = vec![allow];
        c.callbacks.key = Some("mcp key".into());
    })
    .await;
    let url = format!("http://{}/mcp", server.addr);
    let callback = format!("{hooks}mcp");
    let out = tokio::task::spawn_blocking(move || {
        node::node("mcp_client.mjs", &["http", &url, &callback])
    })
    .await
    .unwrap();
    assert_steps(&out);
    assert!(
        out.contains("ok - calls the functions it declares through the operator's callback"),
        "{out}"
    );
    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("weir_runs_started_total 13"),
        "every tool call that started a run is counted (7 of 8 run_python calls, 2 run_code \
         calls, 2 sessions, 1 fork, 1 restore):\n{metrics}"
    );
    // The closed session's instance is freed once its run's task has ended, just after the
    // client hears `session_close`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while server.state.sandbox.live_instances() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(server.state.sandbox.live_instances(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn mcp_over_http_passes_the_same_admission_as_every_entry_point() {
    let server = server(|c| c.secret = Some("s3cret".into())).await;
    let initialize = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#;
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    let r = http(&server, "POST", "/mcp", &headers, initialize).await;
    assert_eq!(r.status, 401, "no token: {}", r.body);
    let token = weir_service::auth::mint(b"s3cret", "ann", std::time::Duration::from_secs(60))
        .expect("a token");
    let path = format!("/mcp?token={token}");
    let mut evil = headers.to_vec();
    evil.push(("origin", "https://evil.example"));
    let r = http(&server, "POST", &path, &evil, initialize).await;
    assert_eq!(r.status, 403, "cross-origin: {}", r.body);
    let r = http(&server, "POST", &path, &headers, initialize).await;
    assert_eq!(r.status, 200, "admitted: {}", r.body);
    assert!(r.body.contains("\"weir\""), "{}", r.body);
    // Stateless: no MCP session is kept per client, so none is named.
    assert_eq!(r.header("mcp-session-id"), None, "a session was created");
    let max = server.state.config.max_message_bytes;
    let huge = format!(
        r#"{{"jsonrpc":"2.0","id":2,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(max)
    );
    let r = http(&server, "POST", &path, &headers, huge.as_bytes()).await;
    assert_eq!(r.status, 413, "a body over max_message_bytes: {}", r.body);
    server.shutdown().await;
}
