//! Host functions ("code mode", library): a run given `Tools` calls them from Python as
//! `from weir import tools; tools.NAME(**kwargs)`, with JSON in and out, host errors raised as
//! `weir.ToolError`, and the limits of `ToolLimits`; an interrupt ends a hanging call as
//! `KeyboardInterrupt` keeping the session; stopping a run drops the call. Both runtimes.

use crate::common;
use crate::interrupt::{cell, session};
use crate::sci;

use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_sandbox::{Outcome, RunRequest, ToolLimits, Tools};

/// `add`, `echo`, `fail`, `hang` and `big`, counting calls in `calls`.
fn toolbox(calls: Arc<AtomicUsize>) -> Tools {
    let counted = calls.clone();
    Tools::new()
        .add(
            "add",
            "Adds two numbers.",
            json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
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
    for call in (lambda: tools.fail(), lambda: tools.nope(), lambda: tools.add(a='x', b=1)):\n\
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
    ToolError: add needs numbers a and b, got {\"a\":\"x\",\"b\":1}\n\
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
        2,
        "add ran twice: once well, once refused"
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
async fn bad_function_names_and_deterministic_runs_are_refused() {
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
    let mut req = RunRequest::script("print(1)");
    req.deterministic = Some(weir_sandbox::Seed(1));
    req.tools = Some(toolbox(Arc::default()));
    let refused = common::sandbox().start(req).await.err().expect("refused");
    assert!(refused.to_string().contains("deterministic"), "{refused}");
}
