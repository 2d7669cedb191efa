//! The `javascript` runtime (QuickJS-NG): what node programs print, read and do, chosen by a
//! script's extension; sessions, interrupts, snapshots, determinism; and every hostile program
//! ending with its outcome inside its limit. The expected text is what node 20 prints for the
//! same program.

use crate::common::{self, limits, start};
use crate::interrupt::cell;
use std::time::Duration;
use weir_sandbox::{Collected, Outcome, RunRequest, Seed};

fn js(source: &str) -> RunRequest {
    let mut req = RunRequest::script(source);
    if let weir_sandbox::Program::Script { filename, .. } = &mut req.program {
        *filename = "main.js".into();
    }
    req.close_stdin = true;
    req
}

async fn run(req: RunRequest) -> Collected {
    start(req).await.collect().await
}

async fn run_js(source: &str) -> Collected {
    run(js(source)).await
}

#[tokio::test]
async fn a_js_file_runs_in_javascript_and_prints_as_node_does() {
    let out = run_js(
        r#"
console.log("hello", 1, -0, 2n, [1, 2, 3], { a: 1, b: "x", "c-d": [1, { e: { f: { g: 1 } } }] }, null, undefined, true);
console.log([1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27]);
console.log(new Map([["a", 1], ["b", { x: 1 }]]), new Set([1, "2"]), new Date(0), /re/g, Symbol("s"));
console.log(function foo() {}, class A {}, () => 1);
class P { constructor() { this.x = 1; this.y = [1, 2]; } }
console.log(new P(), [undefined, null], "%s is %d years", "Bob", 42);
const o = { a: 1 }; o.self = o; console.log(o);
console.log({ long: "a".repeat(30), longer: "b".repeat(30), evenlonger: "c".repeat(30) });
console.log(new Uint8Array([1, 2, 3]), [, 1, ,], Object.create(null), [[1, [2, [3, [4]]]]]);
console.log("it's", ["it's", 'say "hi"', "a\nb"]);
console.error("to stderr");
"#,
    )
    .await;
    assert_eq!(
        out.outcome(),
        Outcome::Exited { code: 0 },
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        out.stdout_text(),
        "hello 1 -0 2n [ 1, 2, 3 ] { a: 1, b: 'x', 'c-d': [ 1, { e: [Object] } ] } null undefined true
[
   1,  2,  3,  4,  5,  6,  7,  8,
   9, 10, 11, 12, 13, 14, 15, 16,
  17, 18, 19, 20, 21, 22, 23, 24,
  25, 26, 27
]
Map(2) { 'a' => 1, 'b' => { x: 1 } } Set(2) { 1, '2' } 1970-01-01T00:00:00.000Z /re/g Symbol(s)
[Function: foo] [class A] [Function (anonymous)]
P { x: 1, y: [ 1, 2 ] } [ undefined, null ] %s is %d years Bob 42
<ref *1> { a: 1, self: [Circular *1] }
{
  long: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  longer: 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb',
  evenlonger: 'cccccccccccccccccccccccccccccc'
}
Uint8Array(3) [ 1, 2, 3 ] [ <1 empty item>, 1, <1 empty item> ] [Object: null prototype] {} [ [ 1, [ 2, [Array] ] ] ]
it's [ \"it's\", 'say \"hi\"', 'a\\nb' ]
"
    );
    assert_eq!(out.stderr_text(), "to stderr\n");
    assert_eq!(
        out.result.as_ref().map(|r| r.runtime.as_str()),
        Some("javascript")
    );
}

#[tokio::test]
async fn stdin_reaches_every_way_node_programs_read_it() {
    let programs = [
        // d8/SpiderMonkey-style judges.
        "const n = +readline(); const xs = readline().split(' ').map(Number); print(n, xs.reduce((a, b) => a + b));",
        // The whole of stdin at once.
        "const [n, line] = require('fs').readFileSync(0, 'utf8').trim().split('\\n'); console.log(+n, line.split(' ').map(Number).reduce((a, b) => a + b));",
        // readline's events.
        "const rl = require('readline').createInterface({ input: process.stdin }); const ls = []; rl.on('line', l => ls.push(l)); rl.on('close', () => console.log(+ls[0], ls[1].split(' ').map(Number).reduce((a, b) => a + b)));",
        // process.stdin's events.
        "let d = ''; process.stdin.on('data', c => d += c); process.stdin.on('end', () => { const [n, l] = d.trim().split('\\n'); console.log(+n, l.split(' ').map(Number).reduce((a, b) => a + b)); });",
        // for await over readline.
        "(async () => { const ls = []; for await (const l of require('readline').createInterface({ input: process.stdin })) ls.push(l); console.log(+ls[0], ls[1].split(' ').map(Number).reduce((a, b) => a + b)); })();",
    ];
    for program in programs {
        let mut req = js(program);
        req.stdin = Some(b"3\n1 2 3\n".to_vec());
        let out = run(req).await;
        assert_eq!(
            out.stdout_text(),
            "3 6\n",
            "{program}: {}",
            out.stderr_text()
        );
    }
}

#[tokio::test]
async fn timers_promises_and_exit_codes_behave_as_in_node() {
    let out = run_js(
        "setTimeout(() => console.log('timer 20'), 20); setTimeout(() => console.log('timer 10'), 10);
         const i = setInterval(() => { console.log('tick'); clearInterval(i); }, 5);
         Promise.resolve().then(() => console.log('micro')); process.nextTick(() => console.log('tick 0'));
         (async () => { await null; console.log('async'); })(); console.log('sync'); process.exitCode = 3;",
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "sync\nmicro\ntick 0\nasync\ntick\ntimer 10\ntimer 20\n"
    );
    assert_eq!(out.outcome(), Outcome::Exited { code: 3 });
    let out = run_js("console.log('a'); process.exit(7); console.log('b')").await;
    assert_eq!(
        (out.stdout_text().as_str(), out.outcome()),
        ("a\n", Outcome::Exited { code: 7 })
    );
    let out = run_js("function f() { throw new TypeError('bad input') }\nf()").await;
    assert_eq!(
        out.outcome(),
        Outcome::Error {
            exception: "TypeError".into(),
            message: "bad input".into()
        }
    );
    assert!(
        out.stderr_text()
            .starts_with("Uncaught TypeError: bad input\n    at f"),
        "{}",
        out.stderr_text()
    );
    let out = run_js("setTimeout(() => { throw new RangeError('late') }, 1); setTimeout(() => console.log('never'), 50)").await;
    assert_eq!(
        out.outcome(),
        Outcome::Error {
            exception: "RangeError".into(),
            message: "late".into()
        }
    );
    assert_eq!(out.stdout_text(), "");
    let out = run_js("import { x } from 'nowhere';\nconsole.log(x)").await;
    assert!(
        matches!(out.outcome(), Outcome::Error { .. }),
        "{:?}",
        out.outcome()
    );
}

/// What a hostile program's outcome must be.
type Expect = fn(&Outcome) -> bool;

#[tokio::test]
async fn hostile_javascript_ends_with_its_outcome_inside_its_limit() {
    // Prepared first (seconds on a fresh machine): the cases time themselves.
    common::sandbox()
        .prepare("javascript")
        .await
        .expect("javascript prepares");
    let cases: [(&str, Expect); 9] = [
        ("while (true) {}", |o| *o == Outcome::Timeout),
        ("Promise.resolve().then(() => { while (true) {} })", |o| {
            *o == Outcome::Timeout
        }),
        ("setInterval(() => {}, 1)", |o| *o == Outcome::Timeout),
        ("function f(n) { return f(n + 1) + 1 } f(0)", |o| {
            *o == Outcome::StackOverflow
        }),
        (
            "const a = []; for (;;) a.push(new Array(1e6).fill(1))",
            |o| *o == Outcome::MemoryLimit,
        ),
        ("for (;;) console.log('x'.repeat(1000))", |o| {
            *o == Outcome::OutputLimit
        }),
        (
            "require('fs').readFileSync('/etc/passwd', 'utf8')",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "Error"),
        ),
        (
            "require('child_process').execSync('id')",
            |o| matches!(o, Outcome::Error { message, .. } if message.contains("no processes")),
        ),
        (
            "'x'.repeat(2 ** 30)",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "RangeError"),
        ),
    ];
    for (program, expected) in cases {
        let mut req = js(program);
        req.limits = limits(|l| {
            l.wall_ms = 2_000;
            l.memory_bytes = 64 << 20;
            l.output_bytes = 1 << 20;
        });
        let started = std::time::Instant::now();
        let out = run(req).await;
        assert!(
            expected(&out.outcome()),
            "{program}: {:?} {}",
            out.outcome(),
            out.stderr_text()
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{program} took {:?}",
            started.elapsed()
        );
    }
    // Fuel: a metered busy loop ends at its budget.
    let mut req = js("for (;;) {}");
    req.limits = limits(|l| l.cpu_fuel = Some(50_000_000));
    assert_eq!(run(req).await.outcome(), Outcome::CpuLimit);
}

fn session() -> RunRequest {
    let mut req = crate::interrupt::session();
    req.runtime = Some("js".into());
    req
}

#[tokio::test]
async fn a_javascript_session_keeps_its_globals_and_survives_errors_and_interrupts() {
    let mut handle = start(session()).await;
    let (out, _, end) = cell(
        &mut handle,
        "let x = 41; const f = (a) => [a, 'a']; console.log('set')",
    )
    .await;
    assert_eq!(
        (out.as_str(), end.value, end.exception),
        ("set\n", None, None)
    );
    let (_, _, end) = cell(&mut handle, "x + 1").await;
    assert_eq!(end.value.as_deref(), Some("42"));
    let (_, _, end) = cell(&mut handle, "f(x)").await;
    assert_eq!(end.value.as_deref(), Some("[ 41, 'a' ]"));
    let (_, err, end) = cell(&mut handle, "null.y").await;
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("TypeError")
    );
    assert!(err.starts_with("Uncaught TypeError"), "{err}");
    // An interrupt ends the cell's busy loop and keeps the globals.
    let control = handle.control();
    control
        .send_cell(weir_sandbox::Cell {
            code: "x = 7; while (true) {}".into(),
            ..Default::default()
        })
        .expect("takes the cell");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(control.interrupt(), "a running cell takes an interrupt");
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), handle.next_event()).await {
            Ok(Some(weir_sandbox::Event::Cell(end))) => break end,
            Ok(Some(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("KeyboardInterrupt")
    );
    let (_, _, end) = cell(&mut handle, "[x, typeof f]").await;
    assert_eq!(end.value.as_deref(), Some("[ 7, 'function' ]"));
    // A timer a cell leaves runs before the cell ends.
    let (out, _, _) = cell(
        &mut handle,
        "setTimeout(() => console.log('later', x), 10); 'now'",
    )
    .await;
    assert_eq!(out, "later 7\n");
    // A snapshot restores into a fresh session with its globals.
    let snapshot = control.snapshot().await.expect("snapshots");
    let mut req = session();
    req.restore = Some(std::sync::Arc::new(snapshot));
    let mut restored = start(req).await;
    let (_, _, end) = cell(&mut restored, "x += 1; f(x)").await;
    assert_eq!(end.value.as_deref(), Some("[ 8, 'a' ]"));
    let (_, _, end) = cell(&mut handle, "x").await;
    assert_eq!(
        end.value.as_deref(),
        Some("7"),
        "the original did not change"
    );
}

#[tokio::test]
async fn a_deterministic_javascript_run_repeats_byte_for_byte() {
    let program = "console.log(Math.random(), Date.now(), performance.now() > 0); setTimeout(() => console.log(Date.now()), 1000); console.log(typeof crypto);";
    let once = || async {
        let mut req = js(program);
        req.deterministic = Some(Seed(7));
        run(req).await.stdout_text()
    };
    let (a, b) = (once().await, once().await);
    assert_eq!(a, b);
    assert_eq!(a.lines().count(), 3, "{a}");
    let _ = common::sandbox();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_javascript_over_ws_v1_runs_and_sessions_and_records_it() {
    use crate::ws::*;
    use serde_json::json;
    let server = server(|_| {}).await;
    // /ws: an interactive run whose program waits for a line.
    let mut ws = connect(&server, "").await;
    let run_id = run(
        &mut ws,
        1,
        json!({"source": "const n = readline(); console.log('got', n.length)", "runtime": "node"}),
    )
    .await;
    wait_for_state(&mut ws, &run_id, "waiting_input").await;
    send(&mut ws, json!({"jsonrpc": "2.0", "id": 2, "method": "input", "params": {"run_id": run_id, "data": "four\n"}})).await;
    let (output, exit) = until_exit(&mut ws, &run_id).await;
    assert_eq!(output, "got 4\n");
    assert_eq!(exit["outcome"], "exited", "{exit}");

    // POST /v1/runs, and the run in the history under its runtime.
    let r = post_json(
        &server,
        "/v1/runs",
        &json!({"source": "console.log([1, 'a'])", "runtime": "javascript"}),
    )
    .await;
    let body = r.json();
    assert_eq!(
        (r.status, &body["stdout"]),
        (200, &json!("[ 1, 'a' ]\n")),
        "{body}"
    );
    let id = body["run_id"].as_str().unwrap();
    let (status, record) = http_get(&server, &format!("/v1/runs/{id}")).await;
    assert_eq!(status, 200);
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["runtime"], "javascript", "{record}");

    // /v1/sessions: a JavaScript session's cells.
    let r = post_json(&server, "/v1/sessions", &json!({"runtime": "js"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let session = r.json()["session_id"].as_str().unwrap().to_owned();
    let exec = |code: &str| json!({"code": code});
    let path = format!("/v1/sessions/{session}/exec");
    post_json(&server, &path, &exec("const xs = [3, 1, 2]")).await;
    let r = post_json(&server, &path, &exec("xs.sort()")).await.json();
    assert_eq!(r["result"], "[ 1, 2, 3 ]", "{r}");
    server.shutdown().await;
}

#[tokio::test]
async fn javascript_reads_writes_and_requires_files_of_its_working_directory_only() {
    let mut req = js("const { twice } = require('./lib/util');\n\
         const data = require('./data.json');\n\
         const fs = require('fs');\n\
         fs.writeFileSync('out.txt', `${twice(data.n)}\\n`);\n\
         fs.appendFileSync('out.txt', 'more\\n');\n\
         console.log(fs.readFileSync('out.txt', 'utf8').trim().split('\\n'), fs.existsSync('/sandbox/data.json'));\n\
         for (const p of ['/etc/passwd', '../../etc/passwd', 'missing.txt']) {\n\
           try { fs.readFileSync(p, 'utf8') } catch (e) { console.log(e.code) }\n\
         }\n\
         try { fs.writeFileSync('../escape.txt', 'x') } catch (e) { console.log(e.code) }\n\
         try { fs.writeFileSync('big.txt', 'x'.repeat(2 << 20)) } catch (e) { console.log(e.code) }\n\
         try { require('./nope') } catch (e) { console.log(e.code) }");
    req.files = vec![
        (
            "lib/util.js".into(),
            b"exports.twice = (n) => n * 2; module.exports.self = __filename;".to_vec(),
        ),
        ("data.json".into(), br#"{"n": 21}"#.to_vec()),
    ];
    req.return_files = vec!["out.txt".into()];
    req.limits = limits(|l| l.scratch_bytes = 1 << 20);
    let out = run(req).await;
    assert_eq!(
        out.stdout_text(),
        "[ '42', 'more' ] true\nENOENT\nENOENT\nENOENT\nEACCES\nENOSPC\nMODULE_NOT_FOUND\n",
        "{}",
        out.stderr_text()
    );
    let files = &out.result.as_ref().expect("a result").files.files;
    assert_eq!(
        files
            .iter()
            .map(|f| (f.path.as_str(), f.data.as_slice()))
            .collect::<Vec<_>>(),
        [("out.txt", &b"42\nmore\n"[..])]
    );
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn es_modules_import_node_builtins_and_files_of_the_working_directory() {
    let mut req = js("import { readFileSync } from 'fs';\n\
         import readline from 'node:readline';\n\
         import { twice } from './lib/util.mjs';\n\
         import data from './data.json';\n\
         const line = readFileSync(0, 'utf8').trim();\n\
         console.log(twice(data.n), typeof readline.createInterface, line, await Promise.resolve('top-level await'));\n\
         try { await import('./nope.js') } catch (e) { console.log(e.name) }\n\
         try { await import('../../etc/passwd') } catch (e) { console.log(e.name) }");
    req.files = vec![
        (
            "lib/util.mjs".into(),
            b"export const twice = (n) => n * 2;".to_vec(),
        ),
        ("data.json".into(), br#"{"n": 21}"#.to_vec()),
    ];
    req.stdin = Some(b"from stdin\n".to_vec());
    let out = run(req).await;
    assert_eq!(
        out.stdout_text(),
        "42 function from stdin top-level await\nReferenceError\nReferenceError\n",
        "{}",
        out.stderr_text()
    );
    // What a module's top level throws, before or after an `await`, is its uncaught exception.
    for program in [
        "import 'fs';\nthrow new TypeError('esm')",
        "import 'fs';\nawait null;\nthrow new TypeError('esm')",
    ] {
        let out = run_js(program).await;
        assert_eq!(
            out.outcome(),
            Outcome::Error {
                exception: "TypeError".into(),
                message: "esm".into()
            }
        );
        assert!(
            out.stderr_text().contains("(main.js:"),
            "{}",
            out.stderr_text()
        );
    }
}
