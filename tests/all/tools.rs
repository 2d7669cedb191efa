//! Host functions ("code mode", library): a run given `Tools` calls them from Python as
//! `from weir import tools; tools.NAME(**kwargs)`, with JSON in and out, host errors raised as
//! `weir.ToolError`, and the limits of `ToolLimits`; an interrupt ends a hanging call as
//! `KeyboardInterrupt` keeping the session; stopping a run drops the call. Both runtimes.
//! Arguments are checked against each function's JSON Schema. Functions the run's caller answers
//! (`Tools::declare`) come out as `Event::Call` behind the output before them, in the library
//! and as `/ws`'s `call` notification answered by `return`.

use crate::common;
use crate::interrupt::{cell, session};
use crate::sci;

use crate::ws::{connect, post_json, recv, run, send, server};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_sandbox::{Event, Outcome, RunHandle, RunRequest, ToolLimits, Tools};

/// `add`, `echo`, `fail`, `hang` and `big`, counting calls in `calls`.
fn toolbox(calls: Arc<AtomicUsize>) -> Tools {
    let counted = calls.clone();
    Tools::new()
        .add(
            "add",
            "Adds two numbers.",
            json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"]}),
            move |args: Value| {
                counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    match (args["a"].as_f64(), args["b"].as_f64()) {
                        (Some(a), Some(b)) => Ok(json!(a + b)),
                        _ => Err(format!("add needs numbers a and b, got {args}")),
                    }
                }
            },
        )
        .and_then(|t| t.add("echo", "Returns its arguments.", json!({}), |args| async move { Ok(args) }))
        .and_then(|t| {
            t.add("fail", "Always fails.", json!({}), |_| async move {
                Err("the weather service is down".to_owned())
            })
        })
        .and_then(|t| {
            t.add("hang", "Never answers.", json!({}), |_| async move {
                std::future::pending::<()>().await;
                Ok(Value::Null)
            })
        })
        .and_then(|t| {
            t.add("big", "A large result.", json!({}), |args| async move {
                let n = args["n"].as_u64().unwrap_or(0) as usize;
                Ok(json!("x".repeat(n)))
            })
        })
        .expect("valid tools")
}

const CALLS: &str = "from weir import tools, ToolError\n\
    print(tools.add(a=2, b=40))\n\
    print(tools.echo(city='Oslo', days=[1, 2], nested={'k': None, 'f': 1.5}))\n\
    for call in (lambda: tools.fail(), lambda: tools.nope(), lambda: tools.add(a='x', b=1),\n\
    \x20            lambda: tools.add(a=1)):\n\
    \x20   try:\n\
    \x20       call()\n\
    \x20   except ToolError as e:\n\
    \x20       print('ToolError:', e)\n\
    try:\n\
    \x20   tools.add(1, 2)\n\
    except TypeError as e:\n\
    \x20   print('TypeError:', e)\n\
    try:\n\
    \x20   tools.echo(x=object())\n\
    except TypeError as e:\n\
    \x20   print('TypeError:', type(e).__name__)\n";

const EXPECTED: &str = "42.0\n\
    {'city': 'Oslo', 'days': [1, 2], 'nested': {'f': 1.5, 'k': None}}\n\
    ToolError: the weather service is down\n\
    ToolError: no host function named \"nope\"\n\
    ToolError: add: argument a: \"x\" is not of type \"number\"\n\
    ToolError: add: arguments: \"b\" is a required property\n\
    TypeError: weir.tools.add takes keyword arguments only\n\
    TypeError: TypeError\n";

#[tokio::test]
async fn a_program_calls_host_functions_with_json_values_and_gets_host_errors_as_tool_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let tools = toolbox(calls.clone());
    let out = common::run_with(CALLS, |req| req.tools = Some(tools)).await;
    assert_eq!(out.stdout_text(), EXPECTED, "{}", out.stderr_text());
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "add ran once: the calls its schema refuses never reach it"
    );
}

#[tokio::test]
async fn python_sci_calls_host_functions_the_same_way() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut req = RunRequest::script(CALLS);
    req.close_stdin = true;
    req.runtime = Some(sci::SCI.into());
    req.tools = Some(toolbox(calls));
    let out = sci::sandbox()
        .await
        .start(req)
        .await
        .expect("starts")
        .collect()
        .await;
    assert_eq!(out.stdout_text(), EXPECTED, "{}", out.stderr_text());
}

#[tokio::test]
async fn a_run_without_tools_gets_a_clear_error() {
    let out = common::run(
        "from weir import tools, ToolError\ntry:\n    tools.add(a=1)\nexcept ToolError as e:\n    print(e)\n",
    )
    .await;
    assert_eq!(out.stdout_text(), "this run has no host functions\n");
}

#[tokio::test]
async fn limits_bound_calls_argument_and_result_sizes_and_time() {
    let limits = ToolLimits {
        max_calls: 5,
        max_bytes: 1000,
        call_ms: 300,
    };
    let tools = toolbox(Arc::default()).with_limits(limits);
    let code = "from weir import tools, ToolError\n\
        def show(f):\n\
        \x20   try:\n\
        \x20       print('ok', len(str(f())))\n\
        \x20   except ToolError as e:\n\
        \x20       print(e)\n\
        show(lambda: tools.echo(s='y' * 2000))\n\
        show(lambda: tools.big(n=500))\n\
        show(lambda: tools.big(n=5000))\n\
        show(lambda: tools.hang())\n\
        show(lambda: tools.add(a=1, b=1))\n\
        show(lambda: tools.add(a=1, b=1))\n";
    let out = common::run_with(code, |req| req.tools = Some(tools)).await;
    assert_eq!(
        out.stdout_text(),
        "echo: arguments of 2009 bytes, over the 1000-byte limit\n\
         ok 500\n\
         big: a result of 5002 bytes, over the 1000-byte limit\n\
         hang: no answer within 300 ms\n\
         ok 3\n\
         the run's 5 host-function calls are used up\n",
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn a_hanging_call_counts_in_the_runs_wall_time() {
    let tools = toolbox(Arc::default()).with_limits(ToolLimits {
        call_ms: 60_000,
        ..ToolLimits::default()
    });
    let out = common::run_with("from weir import tools\ntools.hang()\n", |req| {
        req.tools = Some(tools);
        req.limits.wall_ms = 500;
    })
    .await;
    assert_eq!(out.outcome(), Outcome::Timeout);
}

#[tokio::test]
async fn an_interrupt_ends_a_hanging_call_as_keyboard_interrupt_and_the_session_goes_on() {
    let mut req = session();
    req.tools = Some(toolbox(Arc::default()));
    let mut handle = common::start(req).await;
    cell(
        &mut handle,
        "from weir import tools\nkept = tools.add(a=1, b=2)",
    )
    .await;
    let control = handle.control();
    let interrupter = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(control.interrupt(), "the cell takes the interrupt");
    });
    let (_, _, end) = cell(&mut handle, "tools.hang()").await;
    interrupter.await.expect("interrupted");
    let exception = end.exception.expect("the cell raised");
    assert_eq!(exception.type_name, "KeyboardInterrupt");
    let (_, _, end) = cell(&mut handle, "kept, tools.echo(again=True)").await;
    assert_eq!(end.value.as_deref(), Some("(3.0, {'again': True})"));
}

#[tokio::test]
async fn stopping_a_run_drops_its_pending_call() {
    struct Dropped(Arc<AtomicBool>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let tools = Tools::new()
        .add("wait", "Waits for ever.", json!({}), move |_| {
            let guard = Dropped(flag.clone());
            async move {
                std::future::pending::<()>().await;
                drop(guard);
                Ok(Value::Null)
            }
        })
        .expect("valid");
    let mut req =
        RunRequest::script("from weir import tools\nprint('calling', flush=True)\ntools.wait()\n");
    req.tools = Some(tools);
    let mut handle = common::start(req).await;
    common::read_until_stdout(&mut handle, "calling").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    handle.control().stop();
    let out = handle.collect().await;
    assert_eq!(out.outcome(), Outcome::Stopped);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the pending call's future was dropped"
    );
}

#[tokio::test]
async fn bad_function_names_are_refused() {
    let noop = |_: Value| async move { Ok(Value::Null) };
    for name in [
        "",
        "1st",
        "_private",
        "has space",
        "dash-ed",
        &"x".repeat(65),
    ] {
        let refused = Tools::new().add(name, "", json!({}), noop);
        assert!(refused.is_err(), "{name:?} was taken");
    }
    let twice = Tools::new()
        .add("f", "", json!({}), noop)
        .and_then(|t| t.add("f", "", json!({}), noop));
    assert!(twice.is_err());
}

const RECORDED: &str = "import random\n\
    from weir import tools, ToolError\n\
    print(tools.add(a=random.randint(1, 9), b=1) > 1)\n\
    print(tools.echo(city='Oslo', n=None))\n\
    print(tools.lookup(city='Oslo'))\n\
    for f in (tools.fail, tools.nope, lambda: tools.echo(s='y' * 2000),\n\
    \x20         lambda: tools.echo(last=True)):\n\
    \x20   try:\n\
    \x20       f()\n\
    \x20   except ToolError as e:\n\
    \x20       print('ToolError:', e)\n";

/// Records `source` deterministically with `toolbox` and `lookup` (answered here).
async fn record_with_tools(source: &str) -> weir_sandbox::Transcript {
    let tools = toolbox(Arc::default())
        .declare("lookup", "", json!({}))
        .expect("valid")
        .with_limits(ToolLimits {
            max_calls: 6,
            max_bytes: 1000,
            ..ToolLimits::default()
        });
    let mut req = RunRequest::script(source);
    req.close_stdin = true;
    req.deterministic = Some(weir_sandbox::Seed(4));
    req.record_input = true;
    req.tools = Some(tools);
    let mut handle = common::start(req.clone()).await;
    let control = handle.control();
    let mut log = weir_sandbox::OutputLog::default();
    let mut result = None;
    while let Some(event) = handle.next_event().await {
        if let Event::Call(call) = &event {
            control
                .answer_call(call.id, Ok(json!({"temp": -3})))
                .expect("answered");
        }
        if let Some(r) = log.observe(&event) {
            result = Some(r);
        }
    }
    let result = result.expect("exit");
    let sandbox = common::sandbox();
    let runtime = sandbox.runtime(Some(&result.runtime)).expect("its runtime");
    weir_sandbox::Transcript::record(&req, runtime, &log, &result).expect("records")
}

#[tokio::test]
async fn a_recorded_run_keeps_its_calls_and_replays_without_any_function() {
    let t = record_with_tools(RECORDED).await;
    let stdout =
        String::from_utf8_lossy(&t.expected.stream_bytes(weir_sandbox::StreamKind::Stdout))
            .into_owned();
    assert_eq!(
        stdout,
        "True\n\
         {'city': 'Oslo', 'n': None}\n\
         {'temp': -3}\n\
         ToolError: the weather service is down\n\
         ToolError: no host function named \"nope\"\n\
         ToolError: echo: arguments of 2009 bytes, over the 1000-byte limit\n\
         ToolError: the run's 6 host-function calls are used up\n"
    );
    let calls = t.calls.clone().expect("calls recorded");
    assert_eq!(calls.max_calls, 6);
    let names: Vec<&str> = calls.made.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["add", "echo", "lookup", "fail", "nope", "echo"]);
    assert_eq!(calls.made[2].value, Some(json!({"temp": -3})));
    assert_eq!(
        calls.made[3].error.as_deref(),
        Some("the weather service is down")
    );

    // The replay answers from the transcript: no function is given, none is asked.
    let replayed = weir_sandbox::replay(&common::sandbox(), &t)
        .await
        .expect("replays");
    assert_eq!(weir_sandbox::compare(&t.expected, &replayed), None);
    // And in another process, through `weir replay`.
    let dir = tempfile::Builder::new()
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir");
    let path = dir.path().join("calls.json");
    std::fs::write(&path, t.to_json()).expect("written");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("replay")
        .arg(&path)
        .output()
        .expect("weir runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // A transcript whose answer was changed no longer replays as recorded.
    let mut changed = t.clone();
    changed.calls.as_mut().expect("calls").made[2].value = Some(json!({"temp": 30}));
    let replayed = weir_sandbox::replay(&common::sandbox(), &changed)
        .await
        .expect("replays");
    let report = weir_sandbox::compare(&changed.expected, &replayed).expect("differs");
    assert!(report.contains("'temp': 30"), "{report}");
    // A program that calls with other arguments than recorded is told so.
    let mut other = t.clone();
    other.program = weir_sandbox::ProgramDoc::Code {
        code: "from weir import tools, ToolError\ntry:\n    tools.add(a=0, b=0)\nexcept ToolError as e:\n    print(e)\n".into(),
    };
    let replayed = weir_sandbox::replay(&common::sandbox(), &other)
        .await
        .expect("replays");
    let printed = String::from_utf8_lossy(&replayed.stream_bytes(weir_sandbox::StreamKind::Stdout))
        .into_owned();
    assert!(
        printed.starts_with(
            "replay: the program called add({\"a\":0,\"b\":0}) where the transcript has add("
        ),
        "{printed}"
    );
}

#[tokio::test]
async fn schemas_that_cannot_be_used_are_refused_when_declared() {
    for parameters in [
        json!({"type": 5}),
        json!({"$ref": "https://example.org/schema.json"}),
        json!({"type": "object", "properties": {"a": {"pattern": "("}}}),
    ] {
        let refused = Tools::new().declare("f", "", parameters.clone());
        let why = refused.expect_err("refused").to_string();
        assert!(
            why.contains("not a usable JSON Schema"),
            "{parameters}: {why}"
        );
    }
    assert!(Tools::new().declare("f", "", Value::Null).is_ok());
}

/// Events until the next call, and the stdout before it.
async fn until_call(handle: &mut RunHandle) -> (String, weir_sandbox::Call) {
    let mut out = String::new();
    loop {
        match common::next(handle, 30).await {
            Event::Output { data, .. } => out.push_str(&String::from_utf8_lossy(&data)),
            Event::Call(call) => return (out, call),
            Event::Exit(r) => panic!("ended before a call: {r:?}\n{out}"),
            _ => {}
        }
    }
}

const LOOKUP: &str = "from weir import tools, ToolError\n\
    print('before')\n\
    print(tools.lookup(city='Oslo'))\n\
    try:\n\
    \x20   tools.lookup(city='Atlantis')\n\
    except ToolError as e:\n\
    \x20   print('ToolError:', e)\n\
    print('after')\n";

fn lookup() -> Tools {
    Tools::new()
        .declare(
            "lookup",
            "The weather in a city.",
            json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
        )
        .expect("valid")
}

/// Answers `LOOKUP`'s two calls: Oslo's with a value, Atlantis's with an error.
async fn answer_lookups(mut handle: RunHandle) -> weir_sandbox::Collected {
    let (before, call) = until_call(&mut handle).await;
    assert_eq!(
        before, "before\n",
        "output printed before a call comes before it"
    );
    assert_eq!((call.id, call.name.as_str()), (1, "lookup"));
    assert_eq!(call.args, json!({"city": "Oslo"}));
    let control = handle.control();
    assert!(
        control.answer_call(2, Ok(json!(null))).is_err(),
        "no call 2 waits"
    );
    control
        .answer_call(1, Ok(json!({"temp": -3, "sky": "snow"})))
        .expect("answered");
    assert!(
        control.answer_call(1, Ok(json!(0))).is_err(),
        "call 1 was answered"
    );
    let (between, call) = until_call(&mut handle).await;
    // JSON objects are unordered: they arrive with their keys sorted.
    assert_eq!(between, "{'sky': 'snow', 'temp': -3}\n");
    assert_eq!((call.id, &call.args), (2, &json!({"city": "Atlantis"})));
    control
        .answer_call(2, Err("no such city".into()))
        .expect("answered");
    handle.collect().await
}

#[tokio::test]
async fn a_declared_function_is_answered_by_the_runs_caller_in_order_with_the_output() {
    let mut req = RunRequest::script(LOOKUP);
    req.close_stdin = true;
    req.tools = Some(lookup());
    let out = answer_lookups(common::start(req).await).await;
    assert_eq!(
        out.stdout_text(),
        "ToolError: no such city\nafter\n",
        "{}",
        out.stderr_text()
    );
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn python_sci_calls_declared_functions_the_same_way() {
    let mut req = RunRequest::script(LOOKUP);
    req.close_stdin = true;
    req.runtime = Some(sci::SCI.into());
    req.tools = Some(lookup());
    let handle = sci::sandbox().await.start(req).await.expect("starts");
    let out = answer_lookups(handle).await;
    assert_eq!(
        out.stdout_text(),
        "ToolError: no such city\nafter\n",
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn a_call_nobody_answers_ends_at_the_call_time_limit() {
    let tools = lookup().with_limits(ToolLimits {
        call_ms: 300,
        ..ToolLimits::default()
    });
    let out = common::run_with(LOOKUP, |req| req.tools = Some(tools)).await;
    assert!(
        out.stdout_text().starts_with("before\n")
            && out
                .stderr_text()
                .contains("ToolError: lookup: no answer within 300 ms"),
        "{}\n{}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert_eq!(out.calls.len(), 1, "the call was reported once");
}

#[tokio::test]
async fn a_ws_client_declares_functions_and_answers_their_calls() {
    let server = server(|_| {}).await;
    let mut ws = connect(&server, "").await;
    let functions = json!([
        {"name": "add", "description": "Adds.", "parameters":
            {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}},
        {"name": "lookup"}
    ]);
    let code = "from weir import tools, ToolError\n\
        print('sum', tools.add(a=2, b=40))\n\
        try:\n\
        \x20   tools.lookup(city='Atlantis')\n\
        except ToolError as e:\n\
        \x20   print('ToolError:', e)\n\
        try:\n\
        \x20   tools.add(a='two')\n\
        except ToolError as e:\n\
        \x20   print('ToolError:', e)\n";
    let run_id = run(&mut ws, 1, json!({"source": code, "functions": functions})).await;
    let mut answered = 0;
    let mut out = String::new();
    let exit = loop {
        let m = recv(&mut ws).await;
        match m["method"].as_str() {
            Some("call") => {
                let p = &m["params"];
                assert_eq!(p["run_id"], json!(run_id));
                let call_id = p["call_id"].as_u64().expect("call_id");
                // A wrong call id and a wrong run id are refused; the call goes on waiting.
                send(
                    &mut ws,
                    json!({"jsonrpc": "2.0", "id": 90, "method": "return",
                    "params": {"run_id": run_id, "call_id": call_id + 7, "value": 0}}),
                )
                .await;
                send(
                    &mut ws,
                    json!({"jsonrpc": "2.0", "id": 91, "method": "return",
                    "params": {"run_id": "nope", "call_id": call_id, "value": 0}}),
                )
                .await;
                let answer = match p["name"].as_str() {
                    Some("add") => {
                        assert_eq!(p["args"], json!({"a": 2, "b": 40}));
                        json!({"value": p["args"]["a"].as_i64().unwrap() + p["args"]["b"].as_i64().unwrap()})
                    }
                    Some("lookup") => json!({"error": "no such city"}),
                    other => panic!("unexpected call {other:?}"),
                };
                let mut params = json!({"run_id": run_id, "call_id": call_id});
                params
                    .as_object_mut()
                    .unwrap()
                    .extend(answer.as_object().unwrap().clone());
                send(
                    &mut ws,
                    json!({"jsonrpc": "2.0", "id": 92, "method": "return", "params": params}),
                )
                .await;
                answered += 1;
            }
            Some("output") if m["params"]["stream"] == "stdout" => {
                out.push_str(m["params"]["data"].as_str().unwrap())
            }
            Some("exit") => break m["params"].clone(),
            _ if m["id"] == json!(90) => assert_eq!(m["error"]["code"], json!(-32003), "{m}"),
            _ if m["id"] == json!(91) => assert_eq!(m["error"]["code"], json!(-32001), "{m}"),
            _ if m["id"] == json!(92) => assert_eq!(m["result"], json!(true), "{m}"),
            _ => {}
        }
    };
    assert_eq!(
        answered, 2,
        "the call the schema refused never reached the client"
    );
    assert_eq!(
        out,
        "sum 42\nToolError: no such city\nToolError: add: argument a: \"two\" is not of type \"integer\"\n"
    );
    assert_eq!(exit["outcome"], "exited", "{exit}");
    // A function that cannot be declared is refused before the run starts.
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 3, "method": "run", "params":
        {"source": "print(1)", "functions": [{"name": "no good"}]}}),
    )
    .await;
    let m = recv(&mut ws).await;
    assert_eq!(m["error"]["code"], json!(-32602), "{m}");
    // A run with no functions has no calls to answer.
    let plain = run(&mut ws, 4, json!({"source": "input()"})).await;
    send(
        &mut ws,
        json!({"jsonrpc": "2.0", "id": 5, "method": "return",
        "params": {"run_id": plain, "call_id": 1, "value": 1}}),
    )
    .await;
    loop {
        let m = recv(&mut ws).await;
        if m["id"] == json!(5) {
            assert_eq!(m["error"]["code"], json!(-32003), "{m}");
            break;
        }
    }
}

/// A server whose callbacks may go under `hooks`, signed with the receiver's key ("the
/// operator's key"), with `more` settings.
pub(crate) async fn signing_server(
    hooks: &str,
    more: impl FnOnce(&mut weir_service::ServerConfig) + Send + 'static,
) -> weir_service::RunningServer {
    let allow = hooks.to_string();
    server(move |c| {
        c.callbacks.allow = vec![allow];
        c.callbacks.key = Some("the operator's key".into());
        more(c);
    })
    .await
}

/// A Python HTTP server of the tests' (`tests/callbacks/receiver.py`, `tests/network/server.py`)
/// and its port. Killed when dropped.
pub(crate) struct Receiver(std::process::Child, pub(crate) u16);

impl Receiver {
    /// The callback receiver, checking signatures with `key`.
    pub(crate) fn start(key: &str) -> Self {
        Receiver::spawn("tests/callbacks/receiver.py", &[key])
    }

    /// `script` (from the repository's root) with `args`, once it says its port.
    pub(crate) fn spawn(script: &str, args: &[&str]) -> Self {
        use std::io::BufRead;
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs the receiver");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the receiver says its port");
        let port = line
            .trim()
            .strip_prefix("port ")
            .expect("port line")
            .parse()
            .expect("a port");
        Receiver(child, port)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_runs_calls_go_to_its_signed_callback_and_failures_are_retried() {
    let receiver = Receiver::start("the operator's key");
    let hooks = format!("http://127.0.0.1:{}/hooks/", receiver.1);
    let server = signing_server(&hooks, |c| {
        c.callbacks.timeout_ms = 1000;
        c.callbacks.retries = 2;
        c.limits.wall_ms = 30_000;
    })
    .await;
    let functions = json!([
        {"name": "add", "parameters": {"type": "object", "required": ["a", "b"]}},
        {"name": "lookup"}, {"name": "flaky"}, {"name": "broken"}, {"name": "slow"}
    ]);
    let code = "from weir import tools, ToolError\n\
        print(tools.add(a=2, b=40))\n\
        for f in (lambda: tools.lookup(city='Atlantis'), tools.flaky, tools.broken, tools.slow,\n\
        \x20         lambda: tools.add(a=1)):\n\
        \x20   try:\n\
        \x20       print(f())\n\
        \x20   except ToolError as e:\n\
        \x20       print('ToolError:', e)\n";
    let body =
        json!({"source": code, "functions": functions, "callback_url": format!("{hooks}weir")});
    let r = post_json(&server, "/v1/runs", &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let answer = r.json();
    assert_eq!(
        answer["stdout"],
        "42\n\
         ToolError: no such city: Atlantis\n\
         answered on attempt 3\n\
         ToolError: broken: the callback failed: HTTP 500 Internal Server Error\n\
         ToolError: slow: the callback failed: no answer in time\n\
         ToolError: add: arguments: \"b\" is a required property\n",
        "{answer}"
    );

    // A server signing with another key: the receiver refuses every call.
    let forged = crate::ws::server({
        let allow = hooks.clone();
        move |c| {
            c.callbacks.allow = vec![allow];
            c.callbacks.key = Some("another key".into());
        }
    })
    .await;
    let body = json!({"source": "from weir import tools\ntools.add(a=1, b=2)\n",
        "functions": [{"name": "add"}], "callback_url": format!("{hooks}weir")});
    let r = post_json(&forged, "/v1/runs", &body).await;
    assert!(
        r.json()["stderr"]
            .as_str()
            .unwrap_or_default()
            .contains("the callback answered HTTP 401"),
        "{}",
        r.body
    );

    // Callback URLs the operator does not allow, and functions without one, are refused.
    for (body, why) in [
        (
            json!({"source": "1", "functions": [{"name": "f"}], "callback_url": "http://169.254.169.254/x"}),
            "not one the operator allows",
        ),
        (
            json!({"source": "1", "functions": [{"name": "f"}], "callback_url": format!("http://127.0.0.1:{}/elsewhere", receiver.1)}),
            "not one the operator allows",
        ),
        (
            json!({"source": "1", "functions": [{"name": "f"}]}),
            "need a callback_url",
        ),
        (
            json!({"source": "1", "callback_url": format!("{hooks}weir")}),
            "without functions",
        ),
    ] {
        let r = post_json(&server, "/v1/runs", &body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert!(r.body.contains(why), "{body}: {}", r.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_sessions_cells_call_its_functions_through_its_signed_callback() {
    let receiver = Receiver::start("the operator's key");
    let hooks = format!("http://127.0.0.1:{}/hooks/", receiver.1);
    let server = signing_server(&hooks, |_| {}).await;
    let body = json!({"functions": [{"name": "add"}, {"name": "slow"}],
        "callback_url": format!("{hooks}session")});
    let r = post_json(&server, "/v1/sessions", &body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let exec = |id: String, code: &'static str, timeout_ms: u64| {
        let server = &server;
        async move {
            let body = json!({"code": code, "timeout_ms": timeout_ms});
            post_json(server, &format!("/v1/sessions/{id}/exec"), &body)
                .await
                .json()
        }
    };
    let r = exec(
        id.clone(),
        "from weir import tools\nx = tools.add(a=2, b=40)\nx",
        10_000,
    )
    .await;
    assert_eq!(r["result"], "42", "{r}");
    // A call outlasting its cell's time limit: the cell is interrupted, the session goes on.
    let r = exec(id.clone(), "tools.slow()", 500).await;
    assert_eq!(r["outcome"], "timeout", "{r}");
    assert_eq!(r["error"]["type"], "KeyboardInterrupt", "{r}");
    // A fork declares the same functions, answered by the same callback.
    let r = post_json(&server, &format!("/v1/sessions/{id}/fork"), &json!({})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let fork = r.json()["session_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let r = exec(fork, "tools.add(a=x, b=1)", 10_000).await;
    assert_eq!(r["result"], "43", "{r}");
    // Functions without a callback the operator allows are refused, as for one-shot runs.
    let body = json!({"functions": [{"name": "add"}], "callback_url": "http://169.254.169.254/"});
    let r = post_json(&server, "/v1/sessions", &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let body = json!({"functions": [{"name": "add"}], "durable": true,
        "callback_url": format!("{hooks}session")});
    let r = post_json(&server, "/v1/sessions", &body).await;
    assert_eq!(r.status, 400, "{}", r.body);
}

#[tokio::test]
async fn javascript_calls_host_functions_as_weir_tools() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut req = RunRequest::script(
        "console.log(weir.tools.add({ a: 2, b: 40 }));\n\
         console.log(weir.tools.echo({ city: 'Oslo', days: [1, 2] }));\n\
         for (const call of [() => weir.tools.fail(), () => weir.tools.nope(), () => weir.tools.add({ a: 'x', b: 1 })]) {\n\
           try { call() } catch (e) { console.log(e.name + ':', e.message) }\n\
         }\n\
         try { weir.tools.add([1, 2]) } catch (e) { console.log(e.name) }\n",
    );
    req.close_stdin = true;
    req.runtime = Some("javascript".into());
    req.tools = Some(toolbox(calls.clone()));
    let out = common::sandbox()
        .start(req)
        .await
        .expect("starts")
        .collect()
        .await;
    assert_eq!(
        out.stdout_text(),
        "42\n{ city: 'Oslo', days: [ 1, 2 ] }\n\
         ToolError: the weather service is down\n\
         ToolError: no host function named \"nope\"\n\
         ToolError: add: argument a: \"x\" is not of type \"number\"\n\
         TypeError\n",
        "{}",
        out.stderr_text()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
