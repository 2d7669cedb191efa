//! Stateful sessions over HTTP (`/v1/sessions`), as a notebook or an agent uses them: state kept
//! across cells, the last expression's value, errors that keep the session, interrupts, one cell
//! at a time, files in and out, idle expiry, owner-only access, and `DELETE`.

use crate::wheel;
use crate::ws;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use weir_service::RunningServer;
use ws::*;

async fn create(server: &RunningServer, auth: &[(&str, &str)], body: &Value) -> HttpResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    headers.extend_from_slice(auth);
    http(
        server,
        "POST",
        "/v1/sessions",
        &headers,
        body.to_string().as_bytes(),
    )
    .await
}

async fn session(server: &RunningServer) -> String {
    let r = create(server, &[], &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["session_id"].as_str().unwrap().to_string()
}

async fn exec(server: &RunningServer, id: &str, body: Value) -> Value {
    let r = post_json(server, &format!("/v1/sessions/{id}/exec"), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

#[tokio::test]
async fn cells_share_a_namespace_and_return_their_last_expression() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    let r = exec(&server, &id, json!({"code": "x = 41\nprint('set')"})).await;
    assert_eq!(
        (r["outcome"].as_str(), r["stdout"].as_str()),
        (Some("ok"), Some("set\n"))
    );
    assert_eq!(r["result"], Value::Null);
    let r = exec(&server, &id, json!({"code": "x + 1"})).await;
    assert_eq!(r["result"], "42");
    let r = exec(
        &server,
        &id,
        json!({"code": "import math\n{'pi': round(math.pi, 2)}"}),
    )
    .await;
    assert_eq!(r["result"], "{'pi': 3.14}");
    let r = exec(&server, &id, json!({"code": "undefined_name"})).await;
    assert_eq!(r["outcome"], "error");
    assert_eq!(r["error"]["type"], "NameError");
    assert!(r["stderr"]
        .as_str()
        .unwrap()
        .contains("NameError: name 'undefined_name' is not defined"));
    let r = exec(&server, &id, json!({"code": "x"})).await;
    assert_eq!(r["result"], "41", "an error keeps the session: {r}");
    let r = exec(
        &server,
        &id,
        json!({"code": "print(input(), input())", "stdin": "a\nb\n"}),
    )
    .await;
    assert_eq!(r["stdout"], "a b\n");
    let r = http_get(&server, "/metrics").await.1;
    assert!(r.contains("weir_http_sessions_open 1"), "{r}");
    assert!(r.contains("weir_cells_total 6"), "{r}");
}

/// Runs `code` as a cell and interrupts it 300 ms later (a cell's output comes with its end, so
/// the pause is what lets it start); returns the exec's answer and the interrupt's status.
async fn interrupted(server: &RunningServer, id: &str, code: &str) -> (Value, u16) {
    let path = format!("/v1/sessions/{id}/exec");
    let body = json!({ "code": code, "timeout_ms": 20_000, "interactive": true });
    let exec = post_json(server, &path, &body);
    let stop = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let r = http(
            server,
            "POST",
            &format!("/v1/sessions/{id}/interrupt"),
            &[],
            b"",
        )
        .await;
        r.status
    };
    let (r, status) = tokio::join!(exec, stop);
    assert_eq!(r.status, 200, "{}", r.body);
    (r.json(), status)
}

#[tokio::test]
async fn an_interrupt_stops_a_busy_loop_a_sleep_and_keeps_the_variables() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    exec(&server, &id, json!({"code": "n = 0"})).await;
    let started = Instant::now();
    let (r, status) = interrupted(&server, &id, "while True:\n    n += 1").await;
    assert_eq!(status, 200);
    assert_eq!(r["outcome"], "interrupted", "{r}");
    assert_eq!(r["error"]["type"], "KeyboardInterrupt");
    assert!(r["stderr"].as_str().unwrap().contains("KeyboardInterrupt"));
    let r2 = exec(&server, &id, json!({"code": "n > 0"})).await;
    assert_eq!(r2["result"], "True", "the loop's variable survived: {r2}");
    let (r, _) = interrupted(&server, &id, "import time\ntime.sleep(60)\nslept = True").await;
    assert_eq!(r["outcome"], "interrupted", "{r}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "interrupts were not prompt"
    );
    let r = exec(&server, &id, json!({"code": "'slept' in globals()"})).await;
    assert_eq!(r["result"], "False");
    let r = http(
        &server,
        "POST",
        &format!("/v1/sessions/{id}/interrupt"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 409, "nothing runs: {}", r.body);
}

#[tokio::test]
async fn a_cell_past_its_time_limit_is_interrupted_and_the_session_lives() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    exec(&server, &id, json!({"code": "kept = 'yes'"})).await;
    let r = exec(
        &server,
        &id,
        json!({"code": "while True: pass", "timeout_ms": 300}),
    )
    .await;
    assert_eq!(r["outcome"], "timeout", "{r}");
    assert_eq!(r["session_ended"], false);
    assert_eq!(r["error"]["type"], "KeyboardInterrupt");
    let r = exec(&server, &id, json!({"code": "kept"})).await;
    assert_eq!(r["result"], "'yes'");
    // A cell that swallows every interrupt is ended with its session after the grace period.
    let r = exec(
        &server,
        &id,
        json!({"code": "while True:\n    try:\n        while True: pass\n    except KeyboardInterrupt:\n        pass", "timeout_ms": 300}),
    )
    .await;
    assert_eq!(
        (r["outcome"].as_str(), r["session_ended"].as_bool()),
        (Some("timeout"), Some(true)),
        "{r}"
    );
    let r = post_json(
        &server,
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "1"}),
    )
    .await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn one_cell_at_a_time() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    let path = format!("/v1/sessions/{id}/exec");
    let slow_cell = json!({"code": "import time\ntime.sleep(1)\n'slow'"});
    let slow = post_json(&server, &path, &slow_cell);
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        post_json(&server, &path, &json!({"code": "'fast'"})).await
    };
    let (slow, second) = tokio::join!(slow, second);
    assert_eq!(slow.json()["result"], "'slow'");
    assert_eq!(second.status, 409, "{}", second.body);
    assert!(second.json()["error"]
        .as_str()
        .unwrap()
        .contains("already running"));
}

#[tokio::test]
async fn files_go_in_and_out_and_stay_inside_the_session() {
    let server = server(|_| {}).await;
    let r = create(
        &server,
        &[],
        &json!({"files": {"data/in.csv": "a,b\n1,2\n"}}),
    )
    .await;
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    let put = http(
        &server,
        "PUT",
        &format!("/v1/sessions/{id}/files/more/x.txt"),
        &[],
        b"hello",
    )
    .await;
    assert_eq!(put.status, 204, "{}", put.body);
    let r = exec(
        &server,
        &id,
        json!({"code": "import csv\nrows = list(csv.reader(open('data/in.csv')))\nopen('out.txt', 'w').write(open('more/x.txt').read().upper())\nrows"}),
    )
    .await;
    assert_eq!(r["result"], "[['a', 'b'], ['1', '2']]", "{r}");
    let (status, body) = http_get(&server, &format!("/v1/sessions/{id}/files/out.txt")).await;
    assert_eq!((status, body.as_str()), (200, "HELLO"));
    let (status, body) = http_get(&server, &format!("/v1/sessions/{id}/files")).await;
    assert_eq!(status, 200);
    let listed: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["data/in.csv", "more/x.txt", "out.txt"]);
    let bad = http(
        &server,
        "PUT",
        &format!("/v1/sessions/{id}/files/..%2F..%2Fetc%2Fx"),
        &[],
        b"x",
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    exec(
        &server,
        &id,
        json!({"code": "import os\nos.symlink('/etc/passwd', 'leak')"}),
    )
    .await;
    let (status, _) = http_get(&server, &format!("/v1/sessions/{id}/files/leak")).await;
    assert_eq!(status, 404, "a link the guest made leads nowhere outside");
    let (status, _) = http_get(&server, &format!("/v1/sessions/{id}/files/missing.txt")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn another_users_session_does_not_exist_for_them() {
    let secret = "s3cret";
    let server = server(|c| c.secret = Some(secret.into())).await;
    let token =
        |u: &str| weir_service::auth::mint(secret.as_bytes(), u, Duration::from_secs(60)).unwrap();
    let (ada, bob) = (
        format!("Bearer {}", token("ada")),
        format!("Bearer {}", token("bob")),
    );
    let r = create(&server, &[("Authorization", &ada)], &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    let cell = json!({"code": "1"}).to_string();
    for (who, status) in [(&bob, 404), (&ada, 200)] {
        let r = http(
            &server,
            "POST",
            &format!("/v1/sessions/{id}/exec"),
            &[("Authorization", who), ("Content-Type", "application/json")],
            cell.as_bytes(),
        )
        .await;
        assert_eq!(r.status, status, "{}", r.body);
    }
    let r = http(
        &server,
        "DELETE",
        &format!("/v1/sessions/{id}"),
        &[("Authorization", &bob)],
        b"",
    )
    .await;
    assert_eq!(r.status, 404);
    let r = http(
        &server,
        "GET",
        "/v1/sessions",
        &[("Authorization", &bob)],
        b"",
    )
    .await;
    assert_eq!(r.json(), json!([]));
    let r = http(
        &server,
        "POST",
        &format!("/v1/sessions/{id}/exec"),
        &[("Content-Type", "application/json")],
        cell.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn delete_frees_the_instance_at_once_and_idle_sessions_expire() {
    let server = server(|c| {
        c.session_idle_secs = 1;
        c.warm_instances = 0;
    })
    .await;
    let sandbox = &server.state.sandbox;
    let id = session(&server).await;
    exec(&server, &id, json!({"code": "1"})).await;
    assert_eq!(sandbox.live_instances(), 1);
    let r = http(&server, "DELETE", &format!("/v1/sessions/{id}"), &[], b"").await;
    assert_eq!(r.status, 204);
    let deadline = Instant::now() + Duration::from_millis(500);
    while sandbox.live_instances() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sandbox.live_instances(), 0, "DELETE freed the instance");
    let r = post_json(
        &server,
        &format!("/v1/sessions/{id}/exec"),
        &json!({"code": "1"}),
    )
    .await;
    assert_eq!(r.status, 404);
    let (status, body) = http_get(&server, &format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200, "the session is in the run history: {body}");
    let record: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (record["outcome"].as_str(), record["runtime"].as_str()),
        (Some("stopped"), Some("python"))
    );

    let id = session(&server).await;
    exec(&server, &id, json!({"code": "1"})).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(sandbox.live_instances(), 0, "the idle session was freed");
    let (status, _) = http_get(&server, &format!("/v1/sessions/{id}")).await;
    assert_eq!(status, 404);
    let (_, body) = http_get(&server, &format!("/v1/runs/{id}")).await;
    assert!(body.contains("\"outcome\":\"idle\""), "{body}");
    let (_, metrics) = http_get(&server, "/metrics").await;
    for line in [
        "weir_runs_started_total 2",
        "weir_runs_finished_total{outcome=\"stopped\"} 1",
        "weir_runs_finished_total{outcome=\"idle\"} 1",
        "weir_http_sessions_open 0",
    ] {
        assert!(metrics.contains(line), "{line}:\n{metrics}");
    }
}

#[tokio::test]
async fn sessions_count_against_the_session_cap() {
    let server = server(|c| c.max_sessions = 1).await;
    let id = session(&server).await;
    let r = create(&server, &[], &json!({})).await;
    assert_eq!(r.status, 503, "{}", r.body);
    http(&server, "DELETE", &format!("/v1/sessions/{id}"), &[], b"").await;
    let r = create(
        &server,
        &[],
        &json!({"limits": {"memory_bytes": 1}, "runtime": "nope"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("no runtime named"), "{}", r.body);
    session(&server).await;
}

#[tokio::test]
async fn a_one_shot_run_returns_the_files_its_globs_name() {
    let server = server(|_| {}).await;
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({
            "source": "import os\nos.makedirs('out', exist_ok=True)\nopen('out/a.txt', 'w').write('alpha')\nopen('out/b.bin', 'wb').write(bytes([0, 255]))\nopen('big.txt', 'w').write('x' * 5000)\nopen('skip.log', 'w').write('no')",
            "return_files": ["out/*", "big.txt"],
            "limits": {"output_bytes": 4096},
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let files = &r.json()["files"];
    assert_eq!(files["contents"]["out/a.txt"], "alpha", "{files}");
    assert_eq!(files["contents"]["out/b.bin"], json!({"base64": "AP8="}));
    assert_eq!(
        files["omitted"],
        json!(["big.txt"]),
        "past the output limit"
    );
    assert!(files["contents"].get("skip.log").is_none());
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "1", "return_files": ["["]}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("invalid pattern"), "{}", r.body);
}

#[tokio::test]
async fn an_interactive_cell_reads_what_is_sent_and_an_interrupt_ends_its_wait() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    let path = format!("/v1/sessions/{id}/exec");
    let stdin = format!("/v1/sessions/{id}/stdin");
    let cell = json!({"code": "name = input('name? ')\nname.upper()", "interactive": true, "timeout_ms": 20_000});
    let typed = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        post_json(&server, &stdin, &json!({"data": "ada\n"})).await
    };
    let (r, typed) = tokio::join!(post_json(&server, &path, &cell), typed);
    assert_eq!(typed.status, 200, "{}", typed.body);
    let r = r.json();
    assert_eq!(
        (r["result"].as_str(), r["stdout"].as_str()),
        (Some("'ADA'"), Some("name? ")),
        "{r}"
    );
    // Blocked in input(): the interrupt ends the wait with KeyboardInterrupt there.
    let (r, status) = interrupted(
        &server,
        &id,
        "try:\n    again = input()\nfinally:\n    reached = True",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(r["outcome"], "interrupted", "{r}");
    let r = exec(&server, &id, json!({"code": "reached, name"})).await;
    assert_eq!(r["result"], "(True, 'ada')");
    // End of file ends an interactive cell's input; nothing is left for the next cell.
    let cell = json!({"code": "import sys\nsys.stdin.read()", "interactive": true});
    let typed = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        post_json(&server, &stdin, &json!({"data": "x\ny\n", "eof": true})).await
    };
    let (r, _) = tokio::join!(post_json(&server, &path, &cell), typed);
    assert_eq!(r.json()["result"], "'x\\ny\\n'");
    let r = post_json(&server, &stdin, &json!({"data": "late\n"})).await;
    assert_eq!(r.status, 409, "no cell runs: {}", r.body);
}

#[tokio::test]
async fn sessions_and_one_shot_runs_import_the_operators_packages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("site");
    let wheel = wheel::greet_wheel(dir.path());
    let packages = root.clone();
    // The configured list is installed as the server starts.
    let server = server(move |c| {
        c.packages_dir = Some(packages);
        c.packages = vec![wheel];
    })
    .await;
    let installed = weir_service::packages::installed(&root.join("python"));
    assert_eq!(installed.len(), 1, "{installed:?}");
    let id = session(&server).await;
    let r = exec(
        &server,
        &id,
        json!({"code": "import greet\ngreet.hello('ada')"}),
    )
    .await;
    assert_eq!(r["result"], "'hello, ada'", "{r}");
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "import greet; print(greet.__file__)"}),
    )
    .await;
    assert_eq!(r.json()["stdout"], "/packages/greet/__init__.py\n");
}

#[tokio::test]
async fn a_cell_whose_client_hangs_up_is_interrupted_and_does_not_answer_the_next() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    exec(&server, &id, json!({"code": "n = 0"})).await;
    let body = json!({"code": "while True:\n    n += 1", "timeout_ms": 20_000}).to_string();
    // The client gives up on the cell.
    let path = format!("/v1/sessions/{id}/exec");
    hang_up_after(
        &server,
        "POST",
        &path,
        &[],
        &body,
        Duration::from_millis(300),
    )
    .await;
    let started = Instant::now();
    let r = exec(&server, &id, json!({"code": "'next', n > 0"})).await;
    assert_eq!(
        r["result"], "('next', True)",
        "the next cell answers for itself: {r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the abandoned cell was interrupted"
    );
}

/// `cpu_fuel` is each cell's budget, as documented: identical cells that each fit in it all
/// run, however many there are.
#[tokio::test]
async fn cpu_fuel_is_a_budget_per_cell() {
    let server = server(|_| {}).await;
    // About 650 million fuel units a cell: two of them pass one billion.
    let r = create(
        &server,
        &[],
        &json!({"limits": {"cpu_fuel": 1_000_000_000u64}}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    for n in 0..3 {
        let r = exec(
            &server,
            &id,
            json!({"code": "for i in range(1_000_000): pass\n'done'", "timeout_ms": 60_000}),
        )
        .await;
        assert_eq!((n, r["outcome"].as_str()), (n, Some("ok")), "{r}");
    }
    // A cell past the budget alone still hits it.
    let r = exec(
        &server,
        &id,
        json!({"code": "for i in range(3_000_000): pass", "timeout_ms": 60_000}),
    )
    .await;
    assert_eq!(r["outcome"], "cpu_limit", "{r}");
}

/// Only the runner ends a cell: code that reports an end for its own cell does not answer the
/// `exec` (which waits for the cell), and if it then runs on, its time limit still stops it.
#[tokio::test]
async fn a_cell_cannot_end_itself_and_run_on_unwatched() {
    let server = server(|_| {}).await;
    let id = session(&server).await;
    let started = Instant::now();
    let r = exec(
        &server,
        &id,
        json!({
            "code": "from wit_world.imports import host\nhost.cell_done('forged', None, None)\nwhile True:\n    pass",
            "timeout_ms": 500,
        }),
    )
    .await;
    assert_ne!(r["result"], "'forged'", "the forged end answered: {r}");
    assert_eq!(r["outcome"], "timeout", "{r}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered before the cell's time limit: {r}"
    );
    // Uninterruptible by its own doing: ended after the grace period, not at the run's backstop.
    assert_eq!(r["session_ended"], true, "{r}");
    assert!(started.elapsed() < Duration::from_secs(30), "{r}");
}

/// Input a cell has not read is bounded in bytes on the host (1 MiB a session), not only in
/// chunks: more is refused with 429 until the cell reads.
#[tokio::test]
async fn unread_stdin_is_bounded_in_bytes() {
    let server = server(|c| c.max_message_bytes = 2 << 20).await;
    let id = session(&server).await;
    let cell = {
        let server_addr = server.addr;
        let id = id.clone();
        tokio::spawn(async move {
            let body = json!({"code": "import time\ntime.sleep(20)", "interactive": true, "timeout_ms": 30_000});
            let mut stream = tokio::net::TcpStream::connect(server_addr).await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let body = body.to_string();
            let req = format!(
                "POST /v1/sessions/{id}/exec HTTP/1.1\r\nHost: {server_addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            let _ = stream.read_to_end(&mut out).await;
            String::from_utf8_lossy(&out).into_owned()
        })
    };
    // Wait until the cell runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(&server, &format!("/v1/sessions/{id}"))
        .await
        .1
        .contains("\"busy\":false")
    {
        assert!(Instant::now() < deadline, "the cell never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let chunk = "x".repeat(400 << 10);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = post_json(
            &server,
            &format!("/v1/sessions/{id}/stdin"),
            &json!({"data": chunk}),
        )
        .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429], "{statuses:?}");
    let r = post_json(&server, &format!("/v1/sessions/{id}/interrupt"), &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = cell.await.unwrap();
    assert!(answer.contains("\"interrupted\""), "{answer}");
}
