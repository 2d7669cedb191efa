//! Judge0's API: Judge0's official Python SDK (PyPI `judge0`, `tests/judge0/client.py`, in a
//! private venv) judges programs against expected output through weir unchanged — accepted,
//! wrong answer, runtime errors, time limit, test cases as a batch, asynchronous submissions —
//! and the API's own rules hold over plain HTTP: `wait=true`, `base64_encoded`, `fields`,
//! Judge0's 422s, tokens of other owners, and signed callbacks.

use crate::tools::signing_server;
use crate::tools::Receiver;
use crate::ws::{http, http_get, http_get_at, post_json};
use base64::Engine as _;
use serde_json::{json, Value};
use std::process::Command;

fn sdk_python() -> std::path::PathBuf {
    crate::common::venv("judge0-venv", "tests/judge0/requirements.txt")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge0s_own_python_sdk_judges_programs_through_weir() {
    let server = crate::ws::server(|c| c.limits.wall_ms = 20_000).await;
    let python = sdk_python();
    let base = format!("http://{}", server.addr);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/judge0/client.py"
            ))
            .arg(base)
            .output()
            .expect("the SDK client runs")
    })
    .await
    .expect("the client's thread");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cases: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let case = |name: &str| -> &Value {
        cases
            .iter()
            .find(|c| c["case"] == name)
            .unwrap_or_else(|| panic!("no case {name}: {stdout}"))
    };
    assert_eq!(case("languages")["ids"], json!([10, 63, 71, 72, 93]));
    let first = |name: &str| case(name)["results"][0].clone();
    let accepted = first("accepted");
    assert_eq!(accepted["status"], "Accepted", "{accepted}");
    assert_eq!(accepted["stdout"], "HELLO\n");
    assert!(accepted["memory"].as_u64().unwrap_or(0) > 0, "{accepted}");
    assert_eq!(first("wrong")["status"], "Wrong Answer");
    assert_eq!(first("wrong")["stdout"], "42\n");
    let nzec = first("nzec");
    assert_eq!(
        (&nzec["status"], &nzec["stdout"], &nzec["exit_code"]),
        (&json!("Runtime Error Nzec"), &json!("partial\n"), &json!(3))
    );
    let exception = first("exception");
    assert_eq!(exception["status"], "Runtime Error Nzec");
    assert!(exception["stderr"]
        .as_str()
        .unwrap_or("")
        .contains("ZeroDivisionError"));
    let tle = first("tle");
    assert_eq!(tle["status"], "Time Limit Exceeded", "{tle}");
    let statuses: Vec<&Value> = (case("cases")["results"].as_array())
        .map(|r| r.iter().map(|r| &r["status"]).collect())
        .unwrap_or_default();
    assert_eq!(
        statuses,
        [
            &json!("Accepted"),
            &json!("Accepted"),
            &json!("Wrong Answer")
        ]
    );
    assert_eq!(first("async")["stdout"], "later\n");
    let javascript: Vec<&str> = case("javascript")["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(javascript, ["Accepted", "Accepted", "Wrong Answer"]);
    let ruby: Vec<&str> = case("ruby")["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(ruby, ["Accepted", "Wrong Answer"]);
    let js_error = first("javascript_error");
    assert_eq!(js_error["status"], "Runtime Error Nzec", "{js_error}");
    assert!(
        js_error["stderr"]
            .as_str()
            .unwrap_or("")
            .contains("TypeError"),
        "{js_error}"
    );
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_judge0s_rules_over_http() {
    let receiver = Receiver::start("the operator's key");
    let hooks = format!("http://127.0.0.1:{}/judge0/", receiver.1);
    let server = signing_server(&hooks, |_| {}).await;

    // wait=true, base64 both ways, all fields, the output compared as Judge0 compares it.
    let body = json!({"source_code": b64("import sys\nprint(sys.argv[1:], input(), end='  \\n')\n"),
        "language_id": 71, "stdin": b64("x"), "expected_output": b64("['a b', 'c'] x\n\n"),
        "command_line_arguments": "'a b' c"});
    let r = post_json(
        &server,
        "/submissions?base64_encoded=true&wait=true&fields=*",
        &body,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let s = r.json();
    assert_eq!(
        s["status"],
        json!({"id": 3, "description": "Accepted"}),
        "{s}"
    );
    assert_eq!(s["stdout"], b64("['a b', 'c'] x  \n"));
    assert_eq!(s["language"]["id"], 71);
    assert!(
        s["time"].as_str().is_some_and(|t| t.parse::<f64>().is_ok()),
        "{s}"
    );
    assert!(
        s["created_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{s}"
    );
    let run = s["weir_run_id"].clone();
    assert!(run.is_null(), "weir's own field only when named: {s}");

    // Not UTF-8 without base64: the field is null and the message says what to do.
    let body = json!({"source_code": "import sys\nsys.stdout.buffer.write(b'\\xff')",
        "language_id": 71});
    let s = post_json(&server, "/submissions?wait=true", &body)
        .await
        .json();
    assert_eq!(s["stdout"], Value::Null, "{s}");
    assert!(
        s["message"]
            .as_str()
            .unwrap_or("")
            .contains("base64_encoded=true"),
        "{s}"
    );

    // Judge0's 422s, field by field; 400 for fields that do not exist.
    for (body, field, why) in [
        (json!({"language_id": 71}), "source_code", "can't be blank"),
        (
            json!({"source_code": "1", "language_id": 9999}),
            "language_id",
            "doesn't exist",
        ),
        (
            json!({"source_code": "1", "language_id": 71, "cpu_time_limit": 100}),
            "cpu_time_limit",
            "between 0 and 15",
        ),
        (
            json!({"source_code": "1", "language_id": 71, "memory_limit": 10}),
            "memory_limit",
            "between 2048",
        ),
        (
            json!({"source_code": "1", "language_id": 71, "callback_url": "http://169.254.169.254/"}),
            "callback_url",
            "not one the operator allows",
        ),
    ] {
        let r = post_json(&server, "/submissions", &body).await;
        assert_eq!(r.status, 422, "{}", r.body);
        assert!(
            r.json()[field][0].as_str().unwrap_or("").contains(why),
            "{}",
            r.body
        );
    }
    let r = post_json(
        &server,
        "/submissions?base64_encoded=true",
        &json!({"source_code": "%%%", "language_id": 71}),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    let r = http_get(&server, "/submissions/nope?fields=stdout,nope").await;
    assert_eq!(r.0, 400, "{}", r.1);
    assert!(r.1.contains("invalid fields: [nope]"), "{}", r.1);
    assert_eq!(http_get(&server, "/submissions/not-a-token").await.0, 404);

    // Asynchronous, with a signed callback PUT when judged; the result then by token.
    let body = json!({"source_code": "print(input()[::-1])", "language_id": "71",
        "stdin": "judge", "expected_output": "egduj", "callback_url": format!("{hooks}done")});
    let r = post_json(&server, "/submissions", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let token = r.json()["token"].as_str().unwrap_or_default().to_string();
    let judged = loop {
        let at = std::net::SocketAddr::from(([127, 0, 0, 1], receiver.1));
        let (_, seen) = http_get_at(at, "/judged").await;
        let seen: Value = serde_json::from_str(&seen).unwrap_or(Value::Null);
        if let Some(first) = seen.as_array().and_then(|a| a.first()).cloned() {
            break first;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(judged["path"], "/judge0/done");
    let put = &judged["submission"];
    assert_eq!(put["token"], token.as_str());
    assert_eq!(put["status"]["description"], "Accepted");
    assert_eq!(
        put["stdout"],
        b64("egduj\n"),
        "callbacks carry base64: {put}"
    );
    let (status, shown) = http_get(&server, &format!("/submissions/{token}")).await;
    assert_eq!(status, 200, "{shown}");
    let shown: Value = serde_json::from_str(&shown).unwrap_or(Value::Null);
    assert_eq!(shown["stdout"], "egduj\n");
    assert_eq!(
        shown.as_object().map(|o| o.len()),
        Some(8),
        "Judge0's default fields: {shown}"
    );

    // A batch: an invalid entry answers in its place; the batch GET keeps the order, null for
    // an unknown token.
    let body = json!({"submissions": [
        {"source_code": "print(1)", "language_id": 71},
        {"source_code": "print(2)"},
        {"source_code": "print(3)", "language_id": 71}]});
    let r = post_json(&server, "/submissions/batch", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let made = r.json();
    assert!(made[1]["language_id"].is_array(), "{made}");
    let tokens = [
        made[0]["token"].as_str().unwrap_or(""),
        made[2]["token"].as_str().unwrap_or(""),
    ];
    let path = format!(
        "/submissions/batch?tokens={},unknown,{}&fields=stdout,status_id",
        tokens[0], tokens[1]
    );
    let got = loop {
        let (_, body) = http_get(&server, &path).await;
        let got: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let done = (got["submissions"].as_array()).is_some_and(|s| {
            s.iter()
                .all(|s| s.is_null() || s["status_id"].as_u64().unwrap_or(1) > 2)
        });
        if done {
            break got;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(
        got["submissions"],
        json!([{"stdout": "1\n", "status_id": 3}, null, {"stdout": "3\n", "status_id": 3}])
    );
    let r = post_json(&server, "/submissions/batch", &json!({"submissions": []})).await;
    assert_eq!(r.status, 400, "{}", r.body);

    // The listings Judge0's clients read first.
    let (_, about) = http_get(&server, "/about").await;
    assert!(about.contains("\"version\":\"1.13.1\""), "{about}");
    let (_, config) = http_get(&server, "/config_info").await;
    let config: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
    assert_eq!(config.as_object().map(|o| o.len()), Some(39), "{config}");
    let r = http(&server, "GET", "/languages/71", &[], b"").await;
    assert_eq!(r.json()["source_file"], "script.py");
    let (_, statuses) = http_get(&server, "/statuses").await;
    assert!(statuses.contains("Runtime Error (NZEC)"), "{statuses}");
}
