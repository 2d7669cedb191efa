//! The Piston-compatible API (`/api/v2/runtimes`, `/api/v2/execute`, `/api/v2/connect`) and
//! weir's one-shot `POST /v1/runs`, over a running server. The first test drives weir with the
//! published npm `piston-client`, unmodified.

use crate::common;
use crate::node;
use crate::ws;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use weir_service::piston::connect::close;
use ws::*;

fn job(source: &str) -> Value {
    json!({"language": "python", "version": "*", "files": [{"content": source}]})
}

async fn execute(server: &weir_service::server::RunningServer, body: Value) -> HttpResponse {
    post_json(server, "/api/v2/execute", &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_published_piston_client_runs_scripts_on_weir() {
    let server = server(|_| {}).await;
    let url = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || node::node("piston_client.mjs", &[&url]))
        .await
        .unwrap();
    let r: Value = serde_json::from_str(out.trim()).expect("the client printed JSON");

    assert_eq!(r["runtimes"][0]["language"], "python");
    assert_eq!(
        r["runtimes"][0]["version"],
        weir_sandbox::runtime::python::PYTHON_VERSION
    );
    assert_eq!(r["runtimes"][0]["aliases"], json!(["py", "python3"]));
    assert_eq!(r["runtimes"][1]["language"], "python");
    assert_eq!(r["runtimes"][1]["version"], "3.15.0");
    assert_eq!(r["runtimes"][1]["aliases"][0], "python-sci");

    let hello = &r["hello"];
    assert_eq!(hello["language"], "python");
    assert_eq!(hello["run"]["stdout"], "hello weir ['a', 'b']\n");
    assert_eq!(hello["run"]["code"], 0);
    assert_eq!(hello["run"]["signal"], Value::Null);

    let error = &r["error"]["run"];
    assert_eq!(error["stdout"], "before\n");
    assert_eq!(error["code"], 1);
    let stderr = error["stderr"].as_str().unwrap();
    assert!(
        stderr.contains("ZeroDivisionError: division by zero"),
        "{stderr}"
    );
    assert!(
        error["output"]
            .as_str()
            .unwrap()
            .starts_with("before\nTraceback"),
        "{error}"
    );

    let syntax = &r["syntax"]["run"];
    assert_eq!(syntax["code"], 1);
    assert!(
        syntax["stderr"].as_str().unwrap().contains("SyntaxError"),
        "{syntax}"
    );

    let timeout = &r["timeout"]["run"];
    assert_eq!(timeout["signal"], "SIGKILL");
    assert_eq!(timeout["code"], Value::Null);
    assert_eq!(timeout["status"], "TO");

    assert_eq!(r["unknown"]["message"], "python-2.7.18 runtime is unknown");

    let listed = r["runtimes"].as_array().unwrap();
    let js = listed
        .iter()
        .find(|r| r["language"] == "javascript")
        .expect("javascript listed");
    assert_eq!(js["version"], weir_sandbox::runtime::js::VERSION);
    assert!(
        js["aliases"].as_array().unwrap().contains(&json!("node")),
        "{js}"
    );
    let hello = &r["javascript"];
    assert_eq!(hello["language"], "javascript");
    assert_eq!(hello["run"]["stdout"], "hello weir [ 'a', 'b' ] { n: 1 }\n");
    assert_eq!(hello["run"]["code"], 0);
    let ruby = &r["ruby"]["run"];
    assert_eq!(ruby["stdout"], "[\"weir\", [\"a\"]]\n", "{ruby}");
    assert_eq!(ruby["code"], 0);
    let error = &r["js_error"]["run"];
    assert_eq!(
        (&error["stdout"], &error["code"]),
        (&json!("before\n"), &json!(1))
    );
    assert!(
        error["stderr"]
            .as_str()
            .unwrap()
            .starts_with("Uncaught TypeError"),
        "{error}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_places_files_passes_args_and_stdin_and_records_the_run() {
    let server = server(|_| {}).await;
    let source = "import sys, helper\n\
                  print(helper.GREETING, input(), sys.argv)\n\
                  print('to stderr', file=sys.stderr)\n\
                  print(open('data.bin', 'rb').read())\n\
                  sys.exit(4)\n";
    let body = json!({
        "language": "python3", "version": "3.x",
        "files": [
            {"name": "main.py", "content": source},
            {"name": "helper.py", "content": "GREETING = 'hi'"},
            {"name": "data.bin", "content": "AAH/", "encoding": "base64"}
        ],
        "stdin": "there\n", "args": ["x"],
        "compile_timeout": 10000, "compile_memory_limit": -1, "run_memory_limit": -1
    });
    let r = execute(&server, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = &r.json()["run"];
    assert_eq!(
        run["stdout"],
        "hi there ['main.py', 'x']\nb'\\x00\\x01\\xff'\n"
    );
    assert_eq!(run["stderr"], "to stderr\n");
    assert_eq!(
        run["output"],
        "hi there ['main.py', 'x']\nto stderr\nb'\\x00\\x01\\xff'\n"
    );
    assert_eq!(run["code"], 4);
    assert_eq!(run["status"], "RE");
    assert_eq!(run["message"], "Script exited with code 4");
    assert!(run["wall_time"].as_u64().is_some());

    let id = r.header("x-weir-run-id").expect("the run id header");
    let (status, text) = http_get(&server, &format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200, "{text}");
    let record: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (record["outcome"].as_str(), record["code"].as_i64()),
        (Some("exited"), Some(4))
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_reports_limits_as_piston_reports_killed_processes() {
    let server = server(|_| {}).await;
    let mut body = job("x = bytearray(512 * 1024 * 1024)\nprint('allocated')");
    body["run_memory_limit"] = json!(64 << 20);
    let run = &execute(&server, body).await.json()["run"];
    assert_eq!(run["signal"], "SIGKILL", "{run}");
    assert_eq!(run["code"], Value::Null);
    assert_eq!(run["stdout"], "");

    let mut body = job("while True:\n    print('y' * 100)");
    body["run_timeout"] = json!(5000);
    let run = &execute(&server, body).await.json()["run"];
    assert_eq!(
        (run["signal"].as_str(), run["status"].as_str()),
        (Some("SIGKILL"), Some("OL"))
    );

    let mut body = job("while True:\n    pass");
    body["run_cpu_time"] = json!(200);
    let run = &execute(&server, body).await.json()["run"];
    assert_eq!(
        (run["signal"].as_str(), run["status"].as_str()),
        (Some("SIGKILL"), Some("TO"))
    );
    assert!(run["message"].as_str().unwrap().contains("CPU"), "{run}");

    let (_, metrics) = http_get(&server, "/metrics").await;
    assert!(
        metrics.contains("weir_runs_finished_total{outcome=\"memory_limit\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_refuses_bad_bodies_with_pistons_status_and_messages() {
    let server = server(|c| {
        c.max_message_bytes = 64 * 1024;
        c.limits.scratch_bytes = 16 * 1024;
    })
    .await;
    let message = |r: &HttpResponse| r.json()["message"].as_str().unwrap_or("").to_string();

    let r = http(&server, "POST", "/api/v2/execute", &[], b"{\"language\": ").await;
    assert_eq!(r.status, 400);
    assert!(
        message(&r).starts_with("the request body is not valid JSON"),
        "{}",
        r.body
    );

    for (body, expected) in [
        (json!([1]), "the request body must be a JSON object"),
        (
            json!({"version": "*", "files": []}),
            "language is required as a string",
        ),
        (
            json!({"language": "python", "files": []}),
            "version is required as a string",
        ),
        (
            json!({"language": "python", "version": "*", "files": "x"}),
            "files is required as an array",
        ),
        (
            json!({"language": "cobol", "version": "*", "files": [{"content": "DISPLAY 1"}]}),
            "cobol-* runtime is unknown",
        ),
        (
            json!({"language": "python", "version": ">=4", "files": [{"content": "1"}]}),
            "python->=4 runtime is unknown",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": 1}]}),
            "files[0].content is required as a string",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"content": "1"}], "run_timeout": -5}),
            "run_timeout must be non-negative",
        ),
        (
            json!({"language": "python", "version": "*", "files": [{"name": "../x.py", "content": "1"}]}),
            "invalid file name \"../x.py\": use a relative path without '..'",
        ),
    ] {
        let r = execute(&server, body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(message(&r), expected, "{body}");
    }

    // Files above the scratch-directory limit, and a body above the message limit.
    let big = "#".repeat(20 * 1024);
    let r = execute(&server, job(&big)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        message(&r).contains("above the scratch limit"),
        "{}",
        r.body
    );
    let huge = "#".repeat(100 * 1024);
    let r = execute(&server, job(&huge)).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(
        message(&r),
        "the request body is larger than the 64 KiB limit"
    );

    // The server is still fine.
    let r = execute(&server, job("print('still here')")).await;
    assert_eq!(r.json()["run"]["stdout"], "still here\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_runs_pass_the_same_auth_and_origin_checks() {
    let secret = "piston-secret";
    let server = server(|c| c.secret = Some(secret.into())).await;
    let r = execute(&server, job("print(1)")).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["message"].as_str().unwrap().contains("token"),
        "{}",
        r.body
    );
    let r = post_json(&server, "/v1/runs", &json!({"source": "print(1)"})).await;
    assert_eq!(r.status, 401);
    assert!(
        r.json()["error"].as_str().unwrap().contains("token"),
        "{}",
        r.body
    );

    let token =
        weir_service::auth::mint(secret.as_bytes(), "ada", std::time::Duration::from_secs(60))
            .unwrap();
    let bearer = format!("Bearer {token}");
    let body = job("print('authorized')").to_string();
    let r = http(
        &server,
        "POST",
        "/api/v2/execute",
        &[("Authorization", &bearer)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.json()["run"]["stdout"], "authorized\n");
    let id = r.header("x-weir-run-id").unwrap().to_string();
    let (status, _) = http_get(&server, &format!("/v1/runs/{id}?token={token}")).await;
    assert_eq!(status, 200, "the run belongs to the token's user");

    let r = http(
        &server,
        "POST",
        &format!("/api/v2/execute?token={token}"),
        &[("Origin", "https://evil.example")],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_runs_answers_with_the_whole_run() {
    let server = server(|_| {}).await;
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "import sys\nprint(input().upper())\nsys.stdout.buffer.write(b'\\xff')\nprint('e', file=sys.stderr)\nsys.exit(2)",
                "stdin": "abc\n"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let run = r.json();
    assert_eq!(
        run["stdout"],
        json!({"base64": "QUJDCv8="}),
        "non-UTF-8 output comes as base64"
    );
    assert_eq!(run["stderr"], "e\n");
    assert_eq!(
        (run["outcome"].as_str(), run["code"].as_i64()),
        (Some("exited"), Some(2))
    );
    assert_eq!(run["message"], "Script exited with code 2");
    assert!(run["run_id"].as_str().is_some_and(|id| id.len() == 32));

    // Deterministic runs repeat exactly; recorded ones serve their transcript.
    let det = json!({"source": "import random, time\nprint(random.random(), time.time())",
                     "deterministic": {"seed": 7}, "record": true});
    let a = post_json(&server, "/v1/runs", &det).await.json();
    let b = post_json(&server, "/v1/runs", &det).await.json();
    assert_eq!(a["stdout"], b["stdout"]);
    assert_eq!(a["fuel_consumed"], b["fuel_consumed"]);
    let url = a["transcript"].as_str().expect("a transcript url");
    let (status, transcript) = http_get(&server, url).await;
    assert_eq!(status, 200);
    assert!(transcript.contains("weir-transcript"), "{transcript}");

    // Bad requests: clear errors, nothing started.
    let r = post_json(&server, "/v1/runs", &json!({"sauce": "print(1)"})).await;
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `sauce`"),
        "{}",
        r.body
    );
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "1", "limits": {"wall_ms": 0}}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    server.shutdown().await;
}

/// Reads `/connect` messages until the close frame: (messages, close code).
async fn until_closed(ws: &mut Ws) -> (Vec<Value>, u16) {
    use futures_util::StreamExt;
    let mut messages = Vec::new();
    loop {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(90), ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) => messages.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => {
                return (messages, f.map(|f| u16::from(f.code)).unwrap_or(0))
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (messages, 0),
        }
    }
}

async fn piston_ws(server: &weir_service::server::RunningServer) -> Ws {
    try_connect_to(server, "/api/v2/connect", &[])
        .await
        .expect("upgrade accepted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_runs_an_interactive_job() {
    let server = server(|_| {}).await;
    let mut ws = piston_ws(&server).await;
    let mut init = job(
        "name = input('name? ')\nprint('hello', name)\nimport sys\nprint('bye', file=sys.stderr)",
    );
    init["type"] = json!("init");
    send(&mut ws, init).await;
    let runtime = recv(&mut ws).await;
    assert_eq!(
        runtime,
        json!({"type": "runtime", "language": "python", "version": weir_sandbox::runtime::python::PYTHON_VERSION})
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "stage", "stage": "run"})
    );
    assert_eq!(
        recv(&mut ws).await,
        json!({"type": "data", "stream": "stdout", "data": "name? "})
    );
    send(
        &mut ws,
        json!({"type": "data", "stream": "stdin", "data": "ada\n"}),
    )
    .await;
    let (messages, code) = until_closed(&mut ws).await;
    assert_eq!(code, close::JOB_COMPLETED);
    let data: Vec<(&str, &str)> = messages
        .iter()
        .filter(|m| m["type"] == "data")
        .map(|m| (m["stream"].as_str().unwrap(), m["data"].as_str().unwrap()))
        .collect();
    assert_eq!(data, [("stdout", "hello ada\n"), ("stderr", "bye\n")]);
    let exit = messages.last().unwrap();
    assert_eq!(
        (exit["type"].as_str(), exit["stage"].as_str()),
        (Some("exit"), Some("run"))
    );
    assert_eq!(
        (exit["code"].as_i64(), exit["signal"].as_str()),
        (Some(0), None)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_signals_stop_pause_and_resume_the_job() {
    let server = server(|_| {}).await;
    let mut ws = piston_ws(&server).await;
    let mut init =
        job("import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.05)");
    init["type"] = json!("init");
    init["run_timeout"] = json!(30_000);
    send(&mut ws, init).await;
    for _ in 0..3 {
        recv(&mut ws).await; // runtime, stage, the first tick
    }
    send(&mut ws, json!({"type": "signal", "signal": "SIGSTOP"})).await;
    send(&mut ws, json!({"type": "signal", "signal": "SIGWINCH"})).await;
    send(&mut ws, json!({"type": "signal", "signal": "SIGCONT"})).await;
    send(&mut ws, json!({"type": "signal", "signal": "SIGTERM"})).await;
    let (messages, code) = until_closed(&mut ws).await;
    assert_eq!(code, close::JOB_COMPLETED);
    let exit = messages.last().unwrap();
    assert_eq!(exit["type"], "exit");
    assert_eq!(
        (exit["signal"].as_str(), exit["code"].as_i64()),
        (Some("SIGTERM"), None)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_misuse_closes_with_pistons_codes() {
    let server = server(|_| {}).await;
    let init = || {
        let mut init = job("input()");
        init["type"] = json!("init");
        init
    };

    let mut ws = piston_ws(&server).await; // says nothing
    assert_eq!(until_closed(&mut ws).await.1, close::INIT_TIMEOUT);

    let mut ws = piston_ws(&server).await;
    send(
        &mut ws,
        json!({"type": "data", "stream": "stdin", "data": "x"}),
    )
    .await;
    assert_eq!(until_closed(&mut ws).await.1, close::NOT_INITIALIZED);

    let mut ws = piston_ws(&server).await;
    send(&mut ws, init()).await;
    send(&mut ws, init()).await;
    assert_eq!(until_closed(&mut ws).await.1, close::ALREADY_INITIALIZED);

    let mut ws = piston_ws(&server).await;
    send(&mut ws, init()).await;
    send(
        &mut ws,
        json!({"type": "data", "stream": "stdout", "data": "x"}),
    )
    .await;
    assert_eq!(until_closed(&mut ws).await.1, close::STDIN_ONLY);

    let mut ws = piston_ws(&server).await;
    send(&mut ws, init()).await;
    send(&mut ws, json!({"type": "signal", "signal": "SIGNOPE"})).await;
    assert_eq!(until_closed(&mut ws).await.1, close::INVALID_SIGNAL);

    let mut ws = piston_ws(&server).await;
    ws.send(Message::Text("{not json".into())).await.unwrap();
    let (messages, code) = until_closed(&mut ws).await;
    assert_eq!(code, close::NOTIFIED_ERROR);
    assert_eq!(messages[0]["type"], "error");
    assert!(messages[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON"));

    let mut ws = piston_ws(&server).await;
    send(
        &mut ws,
        json!({"type": "init", "language": "go", "version": "*", "files": [{"content": "x"}]}),
    )
    .await;
    let (messages, code) = until_closed(&mut ws).await;
    assert_eq!(code, close::NOTIFIED_ERROR);
    assert_eq!(
        messages[0],
        json!({"type": "error", "message": "go-* runtime is unknown"})
    );

    // Every abandoned job was freed.
    common::until_no_instances(&server.state.sandbox).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connect_socket_frees_its_run() {
    let server = server(|_| {}).await;
    let mut ws = piston_ws(&server).await;
    let mut init = job("while True:\n    pass");
    init["type"] = json!("init");
    init["run_timeout"] = json!(60_000);
    send(&mut ws, init).await;
    recv(&mut ws).await;
    recv(&mut ws).await;
    assert_eq!(server.state.sandbox.live_instances(), 1);
    drop(ws);
    common::until_no_instances(&server.state.sandbox).await;
    server.shutdown().await;
}
