//! The `ruby` runtime (CRuby 4.0, ruby.wasm): what Ruby programs print and read, chosen by a
//! script's extension; sessions, interrupts, snapshots, determinism; and hostile programs
//! ending with their outcome inside their limit.
//!
//! The first test to run on a fresh machine prepares the runtime (fetch, pre-initialize,
//! compile: about a minute); every other waits for it (a file lock) and then loads it.

use crate::common::{limits, start};
use crate::interrupt::cell;
use std::time::Duration;
use weir_sandbox::{Collected, Outcome, RunRequest, Seed};

fn rb(source: &str) -> RunRequest {
    let mut req = RunRequest::script(source);
    if let weir_sandbox::Program::Script { filename, .. } = &mut req.program {
        *filename = "main.rb".into();
    }
    req.close_stdin = true;
    req.limits = limits(|l| l.wall_ms = 120_000);
    req
}

async fn run(req: RunRequest) -> Collected {
    start(req).await.collect().await
}

#[tokio::test]
async fn a_rb_file_runs_in_ruby_with_its_stdin_and_files() {
    let mut req = rb("name = gets.chomp\n\
         puts \"hello #{name}\"\n\
         p [1, {a: 2}, :sym, 2**70]\n\
         S = Struct.new(:x, :y)\n\
         p S.new(1, 'two')\n\
         puts [3, 1, 2, 1].tally.inspect\n\
         rest = $stdin.each_line.map(&:split).flatten.map(&:to_i)\n\
         puts rest.sum\n\
         File.write('out.txt', File.read('data.txt').upcase)\n\
         $stderr.puts 'to stderr'\n");
    req.stdin = Some(b"weir\n1 2\n3 4\n".to_vec());
    req.files = vec![("data.txt".into(), b"shout\n".to_vec())];
    req.return_files = vec!["out.txt".into()];
    let out = run(req).await;
    assert_eq!(
        out.outcome(),
        Outcome::Exited { code: 0 },
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        out.stdout_text(),
        "hello weir\n[1, {a: 2}, :sym, 1180591620717411303424]\n#<struct S x=1, y=\"two\">\n{3 => 1, 1 => 2, 2 => 1}\n10\n"
    );
    assert_eq!(out.stderr_text(), "to stderr\n");
    let result = out.result.as_ref().expect("a result");
    assert_eq!(result.runtime, "ruby");
    assert_eq!(result.files.files[0].data, b"SHOUT\n");
}

#[tokio::test]
async fn ruby_errors_and_exits_read_as_ruby_reports_them() {
    let out = run(rb("def f(x) = 1 / x\nputs 'before'\nf(0)")).await;
    assert_eq!(
        out.outcome(),
        Outcome::Error {
            exception: "ZeroDivisionError".into(),
            message: "divided by 0".into()
        }
    );
    assert_eq!(out.stdout_text(), "before\n");
    assert!(
        out.stderr_text().starts_with("main.rb:1:in 'Integer#/': divided by 0 (ZeroDivisionError)\n\tfrom main.rb:1:in 'Object#f'\n\tfrom main.rb:3:in '<main>'"),
        "{}",
        out.stderr_text()
    );
    assert_eq!(
        run(rb("exit 3")).await.outcome(),
        Outcome::Exited { code: 3 }
    );
    let out = run(rb("abort 'boom'")).await;
    assert_eq!(
        (out.stderr_text().as_str(), out.outcome()),
        ("boom\n", Outcome::Exited { code: 1 })
    );
    let out = run(rb("puts(1 +")).await;
    assert!(
        matches!(out.outcome(), Outcome::Error { ref exception, .. } if exception == "SyntaxError"),
        "{:?}",
        out.outcome()
    );
}

/// What a hostile program's outcome must be.
type Expect = fn(&Outcome) -> bool;

#[tokio::test]
async fn hostile_ruby_ends_with_its_outcome_inside_its_limit() {
    // Prepared first (a minute on a fresh machine): the cases time themselves.
    crate::common::sandbox()
        .prepare("ruby")
        .await
        .expect("ruby prepares");
    let cases: [(&str, Expect); 9] = [
        ("loop { }", |o| *o == Outcome::Timeout),
        (
            "def f(n) = f(n + 1)\nf(0)",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "SystemStackError"),
        ),
        ("x = []\nloop { x << 'y' * 1_000_000 }", |o| {
            *o == Outcome::MemoryLimit
        }),
        (
            "Array.new(10**9)",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "ArgumentError"),
        ),
        ("loop { puts 'x' * 1000 }", |o| *o == Outcome::OutputLimit),
        (
            "require 'socket'",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "LoadError"),
        ),
        (
            "File.read('/etc/passwd')",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "Errno::ENOENT"),
        ),
        (
            "system('id')",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "NotImplementedError"),
        ),
        (
            "Process.spawn('ls')",
            |o| matches!(o, Outcome::Error { exception, .. } if exception == "NotImplementedError"),
        ),
    ];
    for (program, expected) in cases {
        let mut req = rb(program);
        req.limits = limits(|l| {
            l.wall_ms = 3_000;
            l.memory_bytes = 192 << 20;
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
            started.elapsed() < Duration::from_secs(30),
            "{program} took {:?}",
            started.elapsed()
        );
    }
}

fn session() -> RunRequest {
    let mut req = crate::interrupt::session();
    req.runtime = Some("rb".into());
    req
}

#[tokio::test]
async fn a_ruby_session_keeps_its_locals_and_survives_errors_and_interrupts() {
    let mut handle = start(session()).await;
    let (out, _, end) = cell(&mut handle, "x = 41\ndef twice(n) = n * 2\nputs 'set'").await;
    assert_eq!(
        (out.as_str(), end.value, end.exception),
        ("set\n", None, None)
    );
    let (_, _, end) = cell(&mut handle, "x + 1").await;
    assert_eq!(end.value.as_deref(), Some("42"));
    let (_, _, end) = cell(&mut handle, "[twice(x), 'a', nil]").await;
    assert_eq!(end.value.as_deref(), Some("[82, \"a\", nil]"));
    let (_, err, end) = cell(&mut handle, "nil.upcase").await;
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("NoMethodError")
    );
    assert!(
        err.contains("undefined method 'upcase' for nil (NoMethodError)"),
        "{err}"
    );
    let control = handle.control();
    control
        .send_cell(weir_sandbox::Cell {
            code: "x = 7\nloop { }".into(),
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
        Some("Interrupt")
    );
    let (_, _, end) = cell(&mut handle, "[x, twice(1)]").await;
    assert_eq!(end.value.as_deref(), Some("[7, 2]"));
    let snapshot = control.snapshot().await.expect("snapshots");
    let mut req = session();
    req.restore = Some(std::sync::Arc::new(snapshot));
    let mut restored = start(req).await;
    let (_, _, end) = cell(&mut restored, "x += 1\ntwice(x)").await;
    assert_eq!(end.value.as_deref(), Some("16"));
    let (_, _, end) = cell(&mut handle, "x").await;
    assert_eq!(
        end.value.as_deref(),
        Some("7"),
        "the original did not change"
    );
}

#[tokio::test]
async fn a_ruby_script_is_interrupted_where_its_loop_runs_and_its_repl_goes_on() {
    let mut req = rb("n = 0\nloop { n += 1 }");
    req.close_stdin = false;
    req.repl = true;
    let handle = start(req).await;
    let control = handle.control();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(control.interrupt());
    // The script ended in Interrupt: no REPL after a failed script, as `python -i` has one.
    let out = handle.collect().await;
    assert!(
        out.stderr_text().contains("Interrupt"),
        "{}",
        out.stderr_text()
    );
    let mut req = rb("x = 21");
    req.close_stdin = false;
    req.repl = true;
    req.stdin = Some(b"def g(a,\n  b) = a * b\ng(x, 2)\n".to_vec());
    let handle = start(req).await;
    let control = handle.control();
    control.close_stdin();
    let out = handle.collect().await;
    assert_eq!(
        out.stdout_text(),
        ">> .. => :g\n>> => 42\n>> \n",
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn a_deterministic_ruby_run_repeats_byte_for_byte() {
    let program = "puts rand, Random.new_seed % 1000, Time.now.to_f\nsleep 0.5\nputs Time.now.to_f, [1, 2, 3].shuffle.inspect";
    let once = || async {
        let mut req = rb(program);
        req.deterministic = Some(Seed(3));
        run(req).await
    };
    let (a, b) = (once().await, once().await);
    assert_eq!(
        a.outcome(),
        Outcome::Exited { code: 0 },
        "{}",
        a.stderr_text()
    );
    assert_eq!(a.stdout_text(), b.stdout_text());
    assert_eq!(a.stdout_text().lines().count(), 5, "{}", a.stdout_text());
}
