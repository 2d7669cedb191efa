//! Runtimes are a plug-in point: a second runtime (the embedded CPython under another name,
//! plugged in through the public `Runtime` trait) is selected by name or alias through the
//! library, `/ws`, `POST /v1/runs` and Piston's API, every result names the runtime that ran, and
//! an unknown name is refused with the names there are.

use crate::ws;

use serde_json::{json, Value};
use std::sync::OnceLock;
use weir_sandbox::CompileScope;
use weir_sandbox::{EngineSettings, Error, RunRequest, Sandbox};
use ws::*;

/// A sandbox with `python` (default) and `python-alt` (alias `alt`), shared by this binary.
fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| {
            let settings = EngineSettings {
                max_instances: 8,
                ..EngineSettings::default()
            };
            Sandbox::with_runtimes(settings, two_runtimes()).expect("sandbox loads")
        })
        .clone()
}

fn request(source: &str, runtime: Option<&str>) -> RunRequest {
    let mut req = RunRequest::script(source);
    req.close_stdin = true;
    req.runtime = runtime.map(String::from);
    // Only the compile-cache test below touches the cache: it counts hits.
    req.compile_scope = CompileScope::Off;
    req
}

#[test]
fn a_sandbox_lists_its_runtimes_default_first_and_finds_them_by_alias() {
    let sandbox = sandbox();
    let names: Vec<_> = sandbox.runtimes().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["python", "python-alt"]);
    let name = |n: Option<&str>| sandbox.runtime(n).map(|r| r.name.clone()).ok();
    assert_eq!(name(None).as_deref(), Some("python"));
    assert_eq!(name(Some("py")).as_deref(), Some("python"));
    assert_eq!(name(Some("python-alt")).as_deref(), Some("python-alt"));
    assert_eq!(name(Some("alt")).as_deref(), Some("python-alt"));
    assert_eq!(name(Some("cobol")), None);
}

#[tokio::test]
async fn a_run_goes_to_the_runtime_it_names_and_its_result_says_which() {
    for (asked, ran) in [
        (None, "python"),
        (Some("alt"), "python-alt"),
        (Some("python"), "python"),
    ] {
        let handle = sandbox()
            .start(request("print(6 * 7)", asked))
            .await
            .unwrap();
        assert_eq!(handle.runtime(), ran);
        let out = handle.collect().await;
        assert_eq!(out.stdout_text(), "42\n");
        assert_eq!(out.result.expect("a result").runtime, ran);
    }
}

#[tokio::test]
async fn an_unknown_runtime_is_refused_naming_the_ones_there_are() {
    let Err(e) = sandbox().start(request("print(1)", Some("cobol"))).await else {
        panic!("a run in an unknown runtime started");
    };
    assert!(matches!(e, Error::UnknownRuntime { .. }), "{e:?}");
    let text = e.to_string();
    assert!(
        text.contains("\"cobol\"") && text.contains("python, python-alt"),
        "{text}"
    );
}

#[tokio::test]
async fn compiled_programs_are_not_shared_between_runtimes() {
    let sandbox = sandbox();
    let source = "print('compiled once per runtime', 1)";
    let run = |runtime: &'static str| {
        let mut req = request(source, Some(runtime));
        req.compile_scope = CompileScope::Named("runtimes-test".into());
        let sandbox = sandbox.clone();
        async move {
            let out = sandbox.start(req).await.unwrap().collect().await;
            assert_eq!(out.stdout_text(), "compiled once per runtime 1\n");
        }
    };
    let before = sandbox.compile_cache_stats();
    run("python").await;
    run("python").await;
    let after_python = sandbox.compile_cache_stats();
    assert_eq!(
        after_python.hits - before.hits,
        1,
        "the re-run hit the cache"
    );
    run("python-alt").await;
    let after_alt = sandbox.compile_cache_stats();
    assert_eq!(
        after_alt.hits, after_python.hits,
        "python-alt used python's program"
    );
    assert_eq!(after_alt.misses - after_python.misses, 1);
}

/// A runtime's own policy reaches the service without the service naming it: a program that
/// names no runtime goes to the runtime that claims it, and a run of that runtime whose client
/// names no memory limit gets the runtime's default (here 96 MiB: 120 MB is refused), while the
/// default runtime keeps the server's (256 MiB: the same program runs).
#[tokio::test]
async fn a_runtime_claims_programs_and_sets_its_runs_memory_through_its_policy() {
    let server = server_with_runtimes(two_runtimes(), |_| {}).await;
    let program = "b = bytearray(120 << 20)\nprint(len(b) >> 20)\n";
    let run = |source: String| {
        let server = &server;
        async move {
            post_json(server, "/v1/runs", &json!({ "source": source }))
                .await
                .json()
        }
    };
    let plain = run(program.to_string()).await;
    assert_eq!(
        (plain["outcome"].as_str(), plain["runtime"].as_str()),
        (Some("exited"), Some("python")),
        "{plain}"
    );
    let claimed = run(format!("{CLAIM}\n{program}")).await;
    assert_eq!(
        (claimed["outcome"].as_str(), claimed["runtime"].as_str()),
        (Some("memory_limit"), Some("python-alt")),
        "{claimed}"
    );
    let asked =
        json!({"source": format!("{CLAIM}\n{program}"), "limits": {"memory_bytes": 256 << 20}});
    let asked = post_json(&server, "/v1/runs", &asked).await.json();
    assert_eq!(asked["outcome"], "exited", "{asked}");
    server.shutdown().await;
}

#[tokio::test]
async fn the_service_lists_and_selects_runtimes_on_every_entry_point() {
    let server = server_with_runtimes(two_runtimes(), |_| {}).await;

    let (status, body) = http_get(&server, "/v1/runtimes").await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["name"], "python");
    assert_eq!(list[0]["default"], true);
    assert_eq!(list[1]["name"], "python-alt");
    assert_eq!(list[1]["aliases"], json!(["alt"]));
    assert_eq!(list[1]["default"], false);
    assert_eq!(list[1]["language"], "python");
    assert_eq!(
        (&list[0]["display"], &list[1]["display"]),
        (&json!(true), &json!(true))
    );

    // `/ws`: the exit names the runtime that ran.
    let mut ws = connect(&server, "").await;
    for (params, ran) in [
        (json!({"source": "print('ws')"}), "python"),
        (
            json!({"source": "print('ws')", "runtime": "python-alt"}),
            "python-alt",
        ),
    ] {
        let run_id = run(&mut ws, 1, params).await;
        let (stdout, exit) = until_exit(&mut ws, &run_id).await;
        assert_eq!(stdout, "ws\n");
        assert_eq!(exit["runtime"], ran, "{exit}");
    }
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 9, "method": "run",
               "params": {"source": "print(1)", "runtime": "cobol"}}),
    )
    .await;
    let reply = loop {
        let m = recv(&mut ws).await;
        if m["id"] == json!(9) {
            break m;
        }
    };
    let message = reply["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("cobol"), "{reply}");

    // `POST /v1/runs`.
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "print(2)", "runtime": "alt"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["runtime"], "python-alt");
    assert_eq!(r.json()["stdout"], "2\n");
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "print(2)", "runtime": "cobol"}),
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("cobol") && r.body.contains("python-alt"),
        "{}",
        r.body
    );

    // Piston: both listed; the runtime's name selects it as a language, `*` the default.
    let (status, body) = http_get(&server, "/api/v2/runtimes").await;
    assert_eq!(status, 200);
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(2), "{list}");
    assert_eq!(list[1]["aliases"], json!(["python-alt", "alt"]));
    for (language, ran) in [("python", "python"), ("python-alt", "python-alt")] {
        let body = json!({"language": language, "version": "*",
                          "files": [{"content": "print('piston')"}]});
        let r = post_json(&server, "/api/v2/execute", &body).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["run"]["stdout"], "piston\n");
        assert_eq!(r.json()["language"], "python");
        let id = r.header("x-weir-run-id").expect("run id").to_string();
        let (status, record) = http_get(&server, &format!("/v1/runs/{id}")).await;
        assert_eq!(status, 200, "{record}");
        let record: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(record["runtime"], ran, "{record}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_transcript_names_the_runtime_it_ran_in_and_replays_there() {
    use weir_sandbox::{OutputLog, Transcript};
    let sandbox = sandbox();
    let mut req = request("import random\nprint(random.random())", Some("alt"));
    req.deterministic = Some(weir_sandbox::Seed(3));
    req.record_input = true;
    let mut handle = sandbox.start(req.clone()).await.expect("starts");
    let mut log = OutputLog::default();
    let mut result = None;
    while let Some(event) = handle.next_event().await {
        result = log.observe(&event).or(result);
    }
    let result = result.expect("exit");
    let runtime = sandbox.runtime(Some(&result.runtime)).expect("its runtime");
    let transcript = Transcript::record(&req, runtime, &log, &result).expect("records");
    assert_eq!(transcript.guest.runtime, "python-alt");
    let replayed = weir_sandbox::replay(&sandbox, &transcript)
        .await
        .expect("replays");
    assert_eq!(
        replayed, transcript.expected,
        "byte for byte, in python-alt"
    );
    let mut elsewhere = transcript.clone();
    elsewhere.guest.runtime = "cobol".into();
    let err = weir_sandbox::replay(&sandbox, &elsewhere)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no runtime named \"cobol\""),
        "{err}"
    );
}
