//! The sandbox as a library user sees it: what scripts print, how runs end, what they can reach.

use crate::common;

use common::*;
use std::time::{Duration, Instant};
use weir_sandbox::{Event, Outcome, Program, RunRequest, RunState, StreamKind};

#[tokio::test]
async fn hello_prints_and_exits_zero() {
    let out = run("print('hello')").await;
    assert_eq!(out.stdout_text(), "hello\n");
    assert_eq!(out.stderr_text(), "");
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn script_sees_argv_file_and_only_given_env() {
    let out = run_with(
        "import sys, os\nprint(sys.argv)\nprint(__file__, __name__)\nprint(sorted(os.environ.items()))\nprint(os.getcwd())",
        |r| {
            r.args = vec!["a".into(), "-b".into()];
            r.env = vec![("GREETING".into(), "hi".into())];
        },
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "['main.py', 'a', '-b']\n/sandbox/main.py __main__\n[('GREETING', 'hi')]\n/sandbox\n"
    );
}

#[tokio::test]
async fn traceback_has_cpython_shape_without_runner_frames() {
    let out = run("def f():\n    return 1/0\nf()\n").await;
    assert_eq!(
        out.stderr_text(),
        "Traceback (most recent call last):\n  File \"/sandbox/main.py\", line 3, in <module>\n    f()\n    ~^^\n  File \"/sandbox/main.py\", line 2, in f\n    return 1/0\n           ~^~\nZeroDivisionError: division by zero\n"
    );
    assert_eq!(
        out.outcome(),
        Outcome::Error {
            exception: "ZeroDivisionError".into(),
            message: "division by zero".into()
        }
    );
    assert_eq!(out.outcome().exit_code(), 1);
}

#[tokio::test]
async fn syntax_error_is_reported_like_cpython() {
    let out = run("x = (\n").await;
    let err = out.stderr_text();
    assert!(
        err.starts_with("  File \"/sandbox/main.py\", line 1\n"),
        "{err}"
    );
    assert!(err.contains("SyntaxError: '(' was never closed"), "{err}");
    assert!(!err.contains("runner"), "{err}");
    assert!(
        matches!(out.outcome(), Outcome::Error { exception, .. } if exception == "SyntaxError")
    );
}

#[tokio::test]
async fn sys_exit_code_is_the_outcome() {
    assert_eq!(
        run("import sys; sys.exit(3)").await.outcome(),
        Outcome::Exited { code: 3 }
    );
    assert_eq!(
        run("import sys; sys.exit()").await.outcome(),
        Outcome::Exited { code: 0 }
    );
    let out = run("import sys; sys.exit('bye')").await;
    assert_eq!(out.stderr_text(), "bye\n");
    assert_eq!(out.outcome(), Outcome::Exited { code: 1 });
}

#[tokio::test]
async fn atexit_handlers_run_and_stdout_and_stderr_keep_their_order() {
    let out = run_with(
        "import sys, atexit\natexit.register(lambda: print('bye'))\nprint(1)\nprint(2, file=sys.stderr)\nprint(3)",
        |_| {},
    )
    .await;
    assert_eq!(out.stdout_text(), "1\n3\nbye\n");
    let mut handle = start(RunRequest::script(
        "import sys\nprint(1)\nprint(2, file=sys.stderr)\nprint(3)",
    ))
    .await;
    let mut order = Vec::new();
    while let Some(event) = handle.next_event().await {
        if let Event::Output { stream, data } = event {
            order.push((stream, String::from_utf8_lossy(&data).into_owned()));
        }
    }
    assert_eq!(
        order,
        vec![
            (StreamKind::Stdout, "1\n".into()),
            (StreamKind::Stderr, "2\n".into()),
            (StreamKind::Stdout, "3\n".into())
        ]
    );
}

#[tokio::test]
async fn binary_stdout_passes_unchanged() {
    let out = run("import sys\nsys.stdout.buffer.write(bytes(range(256)))\n").await;
    assert_eq!(out.stdout, (0..=255u8).collect::<Vec<_>>());
}

#[tokio::test]
async fn input_waits_for_stdin_that_arrives_later() {
    let mut handle = start(RunRequest::script(
        "name = input('name? ')\nprint('Hello', name)",
    ))
    .await;
    let control = handle.control();
    let prompt = wait_state(&mut handle, RunState::WaitingInput).await;
    assert_eq!(prompt, "name? ");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(control.write_stdin("Ada\n").await);
    let out = handle.collect().await;
    assert_eq!(out.stdout_text(), "Hello Ada\n");
    assert_eq!(out.states.first(), Some(&RunState::Running));
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn closed_stdin_gives_eof_error() {
    let out = run("input()").await;
    assert!(
        out.stderr_text().contains("EOFError"),
        "{}",
        out.stderr_text()
    );
    assert!(matches!(out.outcome(), Outcome::Error { exception, .. } if exception == "EOFError"));
}

#[tokio::test]
async fn repl_keeps_the_script_namespace() {
    let mut req = RunRequest::script("x = 41\ndef double(v):\n    return 2 * v\n");
    req.repl = true;
    let mut handle = start(req).await;
    let control = handle.control();
    wait_state(&mut handle, RunState::Repl).await;
    control.write_stdin("x + 1\nprint(double(x))\n").await;
    control.close_stdin();
    let out = handle.collect().await;
    assert_eq!(out.stdout_text(), "42\n>>> 82\n>>> ");
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn repl_ends_after_idle_timeout() {
    let mut req = RunRequest::script("x = 1");
    req.repl = true;
    req.limits = limits(|l| l.idle_ms = 300);
    let out = start(req).await.collect().await;
    assert_eq!(out.outcome(), Outcome::Idle);
    assert!(out.result.unwrap().message.contains("idle"));
}

#[tokio::test]
async fn infinite_loop_ends_as_timeout() {
    let started = Instant::now();
    let out = run_with("while True: pass", |r| {
        r.limits = limits(|l| l.wall_ms = 500)
    })
    .await;
    assert_eq!(out.outcome(), Outcome::Timeout);
    assert_eq!(
        out.result.unwrap().message,
        "Script exceeded its 500 ms time limit"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn host_sleep_is_bounded_by_the_time_limit() {
    let started = Instant::now();
    let out = run_with("import time; time.sleep(10**6)", |r| {
        r.limits = limits(|l| l.wall_ms = 500)
    })
    .await;
    assert_eq!(out.outcome(), Outcome::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn waiting_for_input_is_bounded_by_the_idle_limit() {
    let mut req = RunRequest::script("input()");
    req.limits = limits(|l| l.idle_ms = 300);
    let out = start(req).await.collect().await;
    assert_eq!(out.outcome(), Outcome::Idle);
}

#[tokio::test]
async fn memory_bombs_end_as_memory_limit_and_the_host_lives() {
    for bomb in [
        "x = bytearray(10**10)",
        "x = bytearray(10**9)",
        "l = []\nwhile True: l.append('x' * 10000)",
    ] {
        let out = run_with(bomb, |r| r.limits = limits(|l| l.memory_bytes = 64 << 20)).await;
        assert_eq!(
            out.outcome(),
            Outcome::MemoryLimit,
            "{bomb}: {}",
            out.stderr_text()
        );
        assert_eq!(
            out.result.unwrap().message,
            "Script exceeded its 64 MiB memory limit"
        );
    }
    assert_eq!(
        run("print('still here')").await.stdout_text(),
        "still here\n"
    );
}

#[tokio::test]
async fn memory_error_can_be_caught_by_the_script() {
    let out = run_with(
        "try:\n    x = bytearray(10**9)\nexcept MemoryError:\n    print('caught')",
        |r| r.limits = limits(|l| l.memory_bytes = 64 << 20),
    )
    .await;
    assert_eq!(out.stdout_text(), "caught\n");
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn deep_c_recursion_raises_recursion_error() {
    let out = run("l = []\nfor _ in range(10**5):\n    l = [l]\nprint(len(repr(l)))").await;
    assert!(
        out.stderr_text().contains("RecursionError"),
        "{}",
        out.stderr_text()
    );
    assert!(
        matches!(out.outcome(), Outcome::Error { exception, .. } if exception == "RecursionError")
    );
    let out = run("def f(n): return f(n+1)\nf(0)").await;
    assert!(
        matches!(out.outcome(), Outcome::Error { exception, .. } if exception == "RecursionError")
    );
}

/// Sums the output queued right now (what the host holds for a consumer that has not read).
async fn drain_queued(handle: &mut weir_sandbox::RunHandle) -> usize {
    let mut bytes = 0;
    while let Ok(Some(Event::Output { data, .. })) =
        tokio::time::timeout(Duration::from_millis(20), handle.next_event()).await
    {
        bytes += data.len();
    }
    bytes
}

#[tokio::test]
async fn a_flood_to_a_slow_consumer_is_bounded_and_ends_at_the_output_limit() {
    let mut req = RunRequest::script("i = 0\nwhile True:\n    print(i)\n    i += 1");
    req.limits = limits(|l| {
        l.output_bytes = 4 << 20;
        l.wall_ms = 60_000;
    });
    let mut handle = start(req).await;
    // Nobody reads for a while: the guest must wait instead of the host buffering.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = drain_queued(&mut handle).await;
    assert!(
        queued <= 300 << 10,
        "host buffered {queued} bytes for a stalled reader"
    );
    // Then a slow reader: the run still ends at the output limit, with a visible notice.
    let mut tail = Vec::new();
    let result = loop {
        match next(&mut handle, 30).await {
            Event::Output { data, .. } => {
                tail = data.to_vec();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Event::Exit(result) => break result,
            Event::State(_)
            | Event::Cell(_)
            | Event::Display(_)
            | Event::ClearOutput { .. }
            | Event::Call(_) => {}
        }
    };
    assert_eq!(result.outcome, Outcome::OutputLimit);
    assert!(result.output_truncated);
    assert!(String::from_utf8_lossy(&tail)
        .ends_with("[output truncated: the script wrote more than 4 MiB]\n"));
}

#[tokio::test]
async fn a_megabyte_line_is_cut_with_a_marker() {
    let out = run(
        "import sys\nsys.stdout.write('x' * 10**6)\nsys.stdout.flush()\nprint()\nprint('next')",
    )
    .await;
    let text = out.stdout_text();
    assert_eq!(
        text,
        format!(
            "{} [truncated: line longer than 64 KiB]\nnext\n",
            "x".repeat(64 << 10)
        )
    );
    assert!(out.result.unwrap().output_truncated);
}

#[tokio::test]
async fn host_files_sockets_and_processes_are_unreachable() {
    let out = run(
        "import socket, subprocess, os\n\
         def attempt(f):\n    try:\n        f()\n        return 'LEAK'\n    except Exception as e:\n        return type(e).__name__\n\
         print(attempt(lambda: open('/etc/passwd')))\n\
         print(attempt(lambda: os.listdir('/')))\n\
         print(attempt(lambda: socket.create_connection(('127.0.0.1', 80))))\n\
         print(attempt(lambda: socket.socket().bind(('127.0.0.1', 0))))\n\
         print(attempt(lambda: subprocess.run(['ls'])))\n",
    )
    .await;
    let text = out.stdout_text();
    assert!(!text.contains("LEAK"), "{text}");
    assert_eq!(text.lines().next(), Some("FileNotFoundError"));
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn files_written_land_only_in_the_scratch_dir() {
    let marker = format!("weir-escape-{}", std::process::id());
    let mut req = RunRequest::script(format!(
        "open('out.txt', 'w').write('data')\n\
         try:\n    open('/tmp/{marker}', 'w')\nexcept OSError as e:\n    print('refused', type(e).__name__)\n\
         input()\n"
    ));
    req.files = vec![("in/data.txt".into(), b"given".to_vec())];
    let mut handle = start(req).await;
    let before_input = wait_state(&mut handle, RunState::WaitingInput).await;
    assert!(before_input.starts_with("refused"), "{before_input}");
    let scratch = handle.control().live_dir().unwrap().path().to_path_buf();
    assert_eq!(
        std::fs::read_to_string(scratch.join("out.txt")).unwrap(),
        "data"
    );
    assert_eq!(
        std::fs::read_to_string(scratch.join("in/data.txt")).unwrap(),
        "given"
    );
    assert!(!std::path::Path::new(&format!("/tmp/{marker}")).exists());
    handle.control().write_stdin("\n").await;
    let out = handle.collect().await;
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
    assert!(
        !scratch.join("out.txt").exists() && !scratch.join("in").exists(),
        "files outlived their run"
    );
}

#[tokio::test]
async fn a_reused_scratch_dir_shows_nothing_of_the_previous_run() {
    // One sandbox, one run at a time: the second run gets the directory the first one emptied.
    let sandbox = private_sandbox(2);
    let mut first = RunRequest::script(
        "import os\nos.makedirs('a/b')\nopen('a/b/secret.txt', 'w').write('s')\n\
         open('notes.txt', 'w').write('n')\nos.symlink('a', 'link')\nprint(sorted(os.listdir()))",
    );
    first.files = vec![("given.txt".into(), b"g".to_vec())];
    let handle = sandbox.start(first).await.expect("a slot is free");
    let first_dir = handle.control().live_dir().unwrap().path().to_path_buf();
    let out = handle.collect().await;
    assert_eq!(
        out.stdout_text(),
        "['a', 'given.txt', 'link', 'main.py', 'notes.txt']\n"
    );
    let second = RunRequest::script("import os\nprint(sorted(os.listdir()), os.getcwd())");
    let handle = sandbox.start(second).await.expect("a slot is free");
    let second_dir = handle.control().live_dir().unwrap().path().to_path_buf();
    assert_eq!(second_dir, first_dir, "the directory is reused");
    let out = handle.collect().await;
    assert_eq!(out.stdout_text(), "['main.py'] /sandbox\n");
}

#[tokio::test]
async fn writing_past_the_scratch_limit_ends_the_run() {
    let started = Instant::now();
    let out = run_with(
        "chunk = b'x' * (1 << 20)\nwith open('big.bin', 'wb') as f:\n    while True:\n        f.write(chunk)\n        f.flush()",
        |r| r.limits = limits(|l| l.scratch_bytes = 8 << 20),
    )
    .await;
    assert_eq!(out.outcome(), Outcome::DiskLimit);
    assert_eq!(
        out.result.unwrap().message,
        "Script exceeded its 8 MiB scratch-directory limit"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let out = run_with(
        "import os\nfor i in range(20000):\n    open(f'f{i}', 'w').close()",
        |r| r.limits = limits(|l| l.wall_ms = 30_000),
    )
    .await;
    assert_eq!(out.outcome(), Outcome::DiskLimit);
}

#[tokio::test]
async fn extra_files_are_importable() {
    let out = run_with("import helper\nprint(helper.greet())", |r| {
        r.files = vec![(
            "helper.py".into(),
            b"def greet():\n    return 'hi from helper'\n".to_vec(),
        )];
    })
    .await;
    assert_eq!(out.stdout_text(), "hi from helper\n");
}

#[tokio::test]
async fn bad_requests_are_refused_with_clear_errors() {
    let mut req = RunRequest::script("print(1)");
    req.files = vec![("../escape.py".into(), Vec::new())];
    let err = sandbox().start(req).await.err().expect("refused");
    assert!(err.to_string().contains("invalid file name"), "{err}");
    let mut req = RunRequest::script("print(1)");
    req.limits.wall_ms = 0;
    let err = sandbox().start(req).await.err().expect("refused");
    assert_eq!(err.to_string(), "wall_ms must be greater than zero");
    let mut req = RunRequest::script("print(1)");
    req.files = vec![("big.bin".into(), vec![0; 65 << 20])];
    let err = sandbox().start(req).await.err().expect("refused");
    assert!(err.to_string().contains("scratch limit"), "{err}");
}

#[tokio::test]
async fn stop_ends_a_run_waiting_for_input_or_looping() {
    for source in ["input()", "while True: pass"] {
        let mut handle = start(RunRequest::script(source)).await;
        let control = handle.control();
        next(&mut handle, 10).await; // running
        tokio::time::sleep(Duration::from_millis(100)).await;
        let asked = Instant::now();
        control.stop();
        let out = handle.collect().await;
        assert_eq!(out.outcome(), Outcome::Stopped, "{source}");
        assert!(asked.elapsed() < Duration::from_secs(2));
        // Harmless after the end.
        control.stop();
        control.pause();
        control.resume();
        assert!(!control.write_stdin("late").await);
        control.close_stdin();
    }
}

#[tokio::test]
async fn pause_freezes_the_guest_and_stops_its_clock() {
    let mut req = RunRequest::script("import time\nfor i in range(30):\n    print(i, flush=True)\n    time.sleep(0.02)\nprint('done')");
    req.limits = limits(|l| l.wall_ms = 1500);
    let mut handle = start(req).await;
    let control = handle.control();
    read_until_stdout(&mut handle, "2\n").await;
    control.pause();
    wait_state(&mut handle, RunState::Paused).await;
    // While paused nothing is produced (at most what was already in flight).
    let mut produced = 0;
    let until = Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(event)) = tokio::time::timeout_at(until.into(), handle.next_event()).await {
        if let Event::Output { .. } = event {
            produced += 1;
        }
    }
    assert!(produced <= 1, "a paused guest printed {produced} lines");
    control.resume();
    let out = handle.collect().await;
    // 1.2 s paused plus ~0.7 s of work exceeds the 1.5 s limit only if paused time counted.
    assert!(
        out.stdout_text().ends_with("done\n"),
        "{}",
        out.stdout_text()
    );
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn fuel_bounds_cpu_deterministically() {
    let mut req = RunRequest::script("while True: pass");
    req.limits = limits(|l| l.cpu_fuel = Some(50_000_000));
    let out = start(req).await.collect().await;
    assert_eq!(out.outcome(), Outcome::CpuLimit);
    assert_eq!(out.outcome().exit_code(), 124);
    let mut req = RunRequest::script("print(sum(range(1000)))");
    req.limits = limits(|l| l.cpu_fuel = Some(500_000_000));
    req.close_stdin = true;
    let a = start(req.clone()).await.collect().await;
    let b = start(req).await.collect().await;
    assert_eq!(a.stdout_text(), "499500\n");
    let (fa, fb) = (
        a.result.unwrap().fuel_consumed,
        b.result.unwrap().fuel_consumed,
    );
    assert!(fa.is_some());
    assert_eq!(fa, fb, "the same script consumed different fuel");
}

#[tokio::test]
async fn the_standard_library_works_at_run_time() {
    let out = run(
        "import unittest, asyncio, sqlite3, json, decimal, shutil, re, dataclasses, collections\n\
         class T(unittest.TestCase):\n    def test_ok(self):\n        self.assertEqual(json.loads('[1]'), [1])\n\
         r = unittest.main(argv=['x'], exit=False)\n\
         print('tests ok', r.result.wasSuccessful())\n\
         async def main():\n    await asyncio.sleep(0.01)\n    return decimal.Decimal('1.1') + 1\n\
         print(asyncio.run(main()))\n\
         print(sqlite3.connect(':memory:').execute('select 6*7').fetchone()[0])\n",
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "tests ok True\n2.1\n42\n",
        "{}",
        out.stderr_text()
    );
    assert!(
        out.stderr_text().contains("Ran 1 test"),
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn the_snapshot_is_immortal_and_runs_still_free_their_own_objects() {
    // The build makes every object of the interpreter snapshot immortal (docs/sandbox.md), so
    // a run does not dirty snapshot pages by touching them; the run's own objects stay mortal.
    let out = run(
        "import sys, json, os, weakref, gc\n\
         print(sys._is_immortal(json.dumps), sys._is_immortal(os.environ), sys._is_immortal(json))\n\
         class C: pass\n\
         c = C(); r = weakref.ref(c)\n\
         print(sys._is_immortal(c), sys.getrefcount(c))\n\
         del c\n\
         print(r() is None)\n\
         s = 'x' * 10\n\
         s += 'y'\n\
         json.dumps = lambda o: 'patched'\n\
         print(len(s), json.dumps(1), gc.collect() >= 0)\n",
    )
    .await;
    assert_eq!(
        out.stdout_text(),
        "True True True\nFalse 2\nTrue\n11 patched True\n",
        "{}",
        out.stderr_text()
    );
}

#[tokio::test]
async fn a_runs_new_objects_are_packed_together_not_spread_over_the_snapshot() {
    // The build seals the snapshot heap's free chunks (docs/sandbox.md): without that, 2,000
    // small objects land in 16-byte holes spread over the snapshot's 30 MB, nearly each on a
    // 4 KiB page of its own that the instance must copy (1,055 pages measured); sealed, they
    // come one after the other from the heap's top (11 pages).
    let out = run("objs = [object() for _ in range(2000)]\n\
         print(len({i >> 12 for i in map(id, objs)}), 'pages')\n")
    .await;
    let text = out.stdout_text();
    let pages: u64 = text
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no page count in {text:?}: {}", out.stderr_text()));
    // 2,000 chunks of 16 bytes fill 8 pages; a few chunks the run freed are reused elsewhere.
    assert!(
        pages < 64,
        "2,000 new objects are spread over {pages} pages"
    );
}

#[tokio::test]
async fn each_run_draws_fresh_randomness() {
    let a = run("import random, uuid; print(random.random(), uuid.uuid4())").await;
    let b = run("import random, uuid; print(random.random(), uuid.uuid4())").await;
    assert_ne!(a.stdout_text(), b.stdout_text());
}

#[tokio::test]
async fn five_hundred_runs_leave_no_instance_behind() {
    let sandbox = private_sandbox(4);
    for i in 0..500 {
        let mut req = RunRequest::script(format!("print({i})"));
        req.close_stdin = true;
        let handle = sandbox.start(req).await.expect("a slot is free");
        let out = handle.collect().await;
        assert_eq!(out.stdout_text(), format!("{i}\n"));
        assert_eq!(sandbox.live_instances(), 0);
    }
    // A dropped handle frees its instance too.
    for _ in 0..10 {
        let handle = waiting_for_input(&sandbox).await;
        assert_eq!(sandbox.live_instances(), 1);
        drop(handle);
        until_no_instances(&sandbox).await;
    }
}

#[tokio::test]
async fn every_wait_for_input_is_reported() {
    let mut handle = start(RunRequest::script(
        "for i in range(20):\n    print(i, input())",
    ))
    .await;
    let control = handle.control();
    for i in 0..20 {
        wait_state(&mut handle, RunState::WaitingInput).await;
        assert!(control.write_stdin(format!("line{i}\n")).await);
    }
    let out = handle.collect().await;
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn merged_events_join_waiting_output_and_keep_stream_order() {
    let source = "import sys\n\
                  for i in range(300):\n    \
                  print('out', i, flush=True)\n    \
                  if i % 50 == 49:\n        \
                  print('err', i, file=sys.stderr, flush=True)\n";
    let mut handle = start(RunRequest::script(source)).await;
    // Let output pile up so there is something to merge.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut chunks, mut seen) = (0, Vec::new());
    while let Some(event) = handle.next_event_merged(64 << 10).await {
        match event {
            Event::Output { stream, data } => {
                chunks += 1;
                let tag = if stream == StreamKind::Stderr {
                    "E:"
                } else {
                    ""
                };
                for line in String::from_utf8_lossy(&data).lines() {
                    seen.push(format!("{tag}{line}"));
                }
            }
            Event::Exit(r) => assert_eq!(r.outcome, Outcome::Exited { code: 0 }),
            Event::State(_)
            | Event::Cell(_)
            | Event::Display(_)
            | Event::ClearOutput { .. }
            | Event::Call(_) => {}
        }
    }
    let mut expected = Vec::new();
    for i in 0..300 {
        expected.push(format!("out {i}"));
        if i % 50 == 49 {
            expected.push(format!("E:err {i}"));
        }
    }
    assert_eq!(seen, expected, "every line, each stream in its place");
    assert!(
        chunks < expected.len(),
        "waiting output was merged ({chunks} chunks)"
    );
}

#[tokio::test]
async fn warm_instances_start_clean_with_each_runs_own_state() {
    // More runs than the warm pool holds, so both pooled and refilled instances serve them.
    let sandbox = sandbox();
    for i in 0..12 {
        let mut req = RunRequest::script(
            "import json, os, sys\n\
             print(hasattr(json, 'leak'), os.environ.get('N'), sys.argv[1:], os.getcwd())\n\
             json.leak = 1\n",
        );
        req.env = vec![("N".into(), i.to_string())];
        req.args = vec![format!("a{i}")];
        req.close_stdin = true;
        let out = collect_in(&sandbox, req).await;
        assert_eq!(out.stdout_text(), format!("False {i} ['a{i}'] /sandbox\n"));
    }
}

#[tokio::test]
async fn a_memory_limit_below_the_interpreters_own_memory_ends_as_memory_limit() {
    // The interpreter's snapshot alone needs more than 4 MiB: a warm instance cannot serve this
    // run, and the fresh one is refused its initial memory.
    let out = run_with("print('hi')", |r| {
        r.limits = limits(|l| l.memory_bytes = 4 << 20)
    })
    .await;
    assert_eq!(out.outcome(), Outcome::MemoryLimit, "{}", out.stderr_text());
    assert_eq!(out.stdout_text(), "");
}

#[tokio::test]
async fn a_stopped_run_reports_the_memory_it_reached() {
    // With the warm pool a run's store lives inside the guest's call, and stopping the run
    // drops both: the result must still say how far its memory grew. Fresh stores too.
    for warm_instances in [2, 0] {
        let sandbox = sandbox_with(2, |s| s.warm_instances = warm_instances);
        let mut req = RunRequest::script("print(1)");
        req.close_stdin = true;
        let small = collect_in(&sandbox, req).await;
        let small = small.result.expect("a result").peak_memory;
        let mut handle = sandbox
            .start(RunRequest::script("b = bytearray(64 << 20)\ninput()"))
            .await
            .expect("starts");
        wait_state(&mut handle, RunState::WaitingInput).await;
        handle.control().stop();
        let out = handle.collect().await;
        assert_eq!(out.outcome(), Outcome::Stopped);
        let big = out.result.expect("a result").peak_memory;
        assert!(small > 0, "warm pool {warm_instances}");
        assert!(
            big >= small + (64 << 20),
            "warm pool {warm_instances}: {big} after a 64 MiB allocation, {small} before"
        );
    }
}

#[tokio::test]
async fn the_warm_pool_refills_after_runs_took_every_slot() {
    // Two runs hold both run slots while the filler makes guests; once they end, runs start
    // from warm guests again: the pool has room for what its fillers hold, and a filler that
    // could not make a guest tries again instead of stopping for good.
    let sandbox = sandbox_with(2, |s| {
        s.warm_instances = 1;
        s.warm_fillers = 1;
    });
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(waiting_for_input(&sandbox).await);
    }
    for handle in held {
        handle.control().stop();
        assert_eq!(handle.collect().await.outcome(), Outcome::Stopped);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut warm_in_a_row = 0;
    while warm_in_a_row < 3 {
        assert!(
            Instant::now() < deadline,
            "runs never started warm again: {:?}",
            sandbox.instance_starts()
        );
        let before = sandbox.instance_starts();
        let mut req = RunRequest::script("print('ok')");
        req.close_stdin = true;
        assert_eq!(collect_in(&sandbox, req).await.stdout_text(), "ok\n");
        let after = sandbox.instance_starts();
        assert_eq!(after.warm + after.fresh, before.warm + before.fresh + 1);
        warm_in_a_row = if after.warm > before.warm {
            warm_in_a_row + 1
        } else {
            0
        };
        // Give the filler time to refill before the next run.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn runs_work_with_the_warm_pool_off() {
    let sandbox = sandbox_with(2, |s| s.warm_instances = 0);
    for i in 0..3 {
        let mut req = RunRequest::script(format!("print({i})"));
        req.close_stdin = true;
        let out = collect_in(&sandbox, req).await;
        assert_eq!(out.stdout_text(), format!("{i}\n"));
    }
}

/// A run of `input()` in `sandbox`, once it waits for its input.
async fn waiting_for_input(sandbox: &weir_sandbox::Sandbox) -> weir_sandbox::RunHandle {
    let mut handle = sandbox
        .start(RunRequest::script("input()"))
        .await
        .expect("a slot is free");
    wait_state(&mut handle, RunState::WaitingInput).await;
    handle
}

/// Waits (up to 10 s) until `cond` holds.
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_start_in_the_foreground_and_leave_it_when_they_wait_or_run_long() {
    // Foreground for 1 s (default 20 ms), so a loaded machine cannot end it between two looks;
    // the run is busy for its first 0.5 s, so its wait for input cannot end it before the first
    // look either (a test thread descheduled right after `start` once saw it already waiting).
    let sandbox = sandbox_with(4, |s| s.foreground_for = Duration::from_secs(1));
    let mut waiting = sandbox
        .start(RunRequest::script(
            "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 0.5: pass\n\
             input()\nwhile True: pass",
        ))
        .await
        .expect("starts");
    assert_eq!(sandbox.foreground_runs(), 1);
    wait_state(&mut waiting, RunState::WaitingInput).await;
    assert_eq!(sandbox.foreground_runs(), 0, "a run waiting for input");
    // Input resumes it, still in the background: only a new run or REPL statement is foreground.
    assert!(waiting.control().write_stdin("go\n").await);
    wait_state(&mut waiting, RunState::Running).await;
    assert_eq!(sandbox.foreground_runs(), 0);

    let busy = sandbox
        .start(RunRequest::script("while True: pass"))
        .await
        .expect("starts");
    assert_eq!(sandbox.foreground_runs(), 1);
    eventually("a busy loop turns background", || {
        sandbox.foreground_runs() == 0
    })
    .await;

    drop((waiting, busy));
    until_no_instances(&sandbox).await;
    assert_eq!(sandbox.foreground_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_leaves_the_foreground_at_its_first_output() {
    // A foreground time far longer than the test: only the output can end it.
    let sandbox = sandbox_with(2, |s| s.foreground_for = Duration::from_secs(600));
    let mut busy = sandbox
        .start(RunRequest::script(
            "print('ready', flush=True)\nwhile True: pass",
        ))
        .await
        .expect("starts");
    let mut seen = String::new();
    while !seen.contains("ready") {
        match busy.next_event().await {
            Some(Event::Output { data, .. }) => seen.push_str(&String::from_utf8_lossy(&data)),
            Some(Event::Exit(r)) => panic!("ended early: {:?}", r.outcome),
            _ => {}
        }
    }
    eventually("the run is background after its first output", || {
        sandbox.foreground_runs() == 0
    })
    .await;
    // A background run still stops at once, with its exit.
    busy.control().stop();
    assert_eq!(busy.collect().await.outcome(), Outcome::Stopped);
    until_no_instances(&sandbox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_repl_statement_starts_in_the_foreground() {
    // A long foreground time, so a loaded machine cannot make the test miss it.
    let sandbox = sandbox_with(2, |s| s.foreground_for = Duration::from_secs(60));
    let mut req = RunRequest::script("x = 1");
    req.repl = true;
    let mut repl = sandbox.start(req).await.expect("starts");
    wait_state(&mut repl, RunState::Repl).await;
    assert_eq!(sandbox.foreground_runs(), 0, "an idle REPL");
    assert!(repl.control().write_stdin("sum(range(10**12))\n").await);
    eventually("a REPL statement starts in the foreground", || {
        sandbox.foreground_runs() == 1
    })
    .await;
    repl.control().stop();
    let out = repl.collect().await;
    assert_eq!(out.outcome(), Outcome::Stopped);
    assert_eq!(sandbox.foreground_runs(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_runs_finish_while_new_runs_keep_arriving() {
    let sandbox = private_sandbox(8);
    let mut long = Vec::new();
    for i in 0..3 {
        let mut req = RunRequest::script(format!(
            "n = 0\nfor k in range(2_000_000):\n    n += k\nprint({i}, n)\n\
             for line in range(3000):\n    print('flood', line)\n"
        ));
        req.close_stdin = true;
        long.push(sandbox.start(req).await.expect("starts"));
    }
    // Foreground runs arrive one after another while the long runs compute and flood.
    let hellos = async {
        for i in 0..40 {
            let mut req = RunRequest::script(format!("print('hello', {i})"));
            req.close_stdin = true;
            let out = collect_in(&sandbox, req).await;
            assert_eq!(out.stdout_text(), format!("hello {i}\n"));
        }
    };
    let longs = futures_util::future::join_all(long.into_iter().map(|h| h.collect()));
    let (outs, ()) = tokio::join!(longs, hellos);
    for (i, out) in outs.iter().enumerate() {
        let text = out.stdout_text();
        assert!(
            text.starts_with(&format!("{i} 1999999000000\n")),
            "{}",
            &text[..text.len().min(200)]
        );
        assert!(text.ends_with("flood 2999\n"));
        assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
    }
}

#[tokio::test]
async fn rerunning_an_unchanged_program_loads_it_compiled_and_behaves_the_same() {
    let sandbox = private_sandbox(4);
    let run_in = |source: &str, scope: &str| {
        let mut req = RunRequest::script(source);
        req.close_stdin = true;
        req.compile_scope = scope.into();
        collect_in(&sandbox, req)
    };
    let script = "import sys\n\
                  def f():\n    raise ValueError('boom')\n\
                  print(__file__, f.__code__.co_name, f.__code__.co_firstlineno)\n\
                  f()\n";
    let first = run_in(script, "a").await;
    let stats = sandbox.compile_cache_stats();
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 0, 1));
    let second = run_in(script, "a").await;
    assert_eq!(
        sandbox.compile_cache_stats().hits,
        1,
        "the second run loads it"
    );
    for out in [&first, &second] {
        assert_eq!(out.stdout_text(), "/sandbox/main.py f 2\n");
        assert!(
            out.stderr_text()
                .contains("line 3, in f\n    raise ValueError('boom')\n"),
            "tracebacks still show the source: {}",
            out.stderr_text()
        );
        assert_eq!(out.result.as_ref().map(|r| r.outcome.kind()), Some("error"));
    }
    assert_eq!(first.stderr_text(), second.stderr_text());
    // Another source, or another scope, compiles afresh.
    let changed = run_in(&script.replace("boom", "bang"), "a").await;
    assert!(changed.stderr_text().contains("ValueError: bang"));
    run_in(script, "b").await;
    let stats = sandbox.compile_cache_stats();
    assert_eq!((stats.entries, stats.hits, stats.misses), (3, 1, 3));
    // `-c` programs are cached too.
    for _ in 0..2 {
        let mut req = RunRequest::script("");
        req.program = Program::Code("print(6 * 7)".into());
        req.close_stdin = true;
        let out = collect_in(&sandbox, req).await;
        assert_eq!(out.stdout_text(), "42\n");
    }
    assert_eq!(sandbox.compile_cache_stats().hits, 2);
}

#[tokio::test]
async fn compile_warnings_and_errors_show_on_every_run_and_are_not_cached() {
    let sandbox = private_sandbox(4);
    for source in ["x = '\\d'\nprint(len(x))\n", "print('a'\n"] {
        for _ in 0..2 {
            let mut req = RunRequest::script(source);
            req.close_stdin = true;
            let out = collect_in(&sandbox, req).await;
            let err = out.stderr_text();
            if source.starts_with('x') {
                assert_eq!(out.stdout_text(), "2\n");
                assert!(
                    err.contains("SyntaxWarning: \"\\d\" is an invalid escape sequence"),
                    "{err}"
                );
            } else {
                assert!(err.contains("SyntaxError: '(' was never closed"), "{err}");
            }
        }
    }
    let stats = sandbox.compile_cache_stats();
    assert_eq!((stats.entries, stats.hits), (0, 0));
}

#[tokio::test]
async fn metered_runs_and_shadowed_scripts_compile_their_own() {
    let sandbox = private_sandbox(4);
    let start = |f: &dyn Fn(&mut RunRequest)| {
        let mut req = RunRequest::script("print('script')");
        req.close_stdin = true;
        f(&mut req);
        collect_in(&sandbox, req)
    };
    start(&|_| {}).await;
    assert_eq!(sandbox.compile_cache_stats().entries, 1);
    // Fuel (and the virtual clock it drives) must not depend on what ran before.
    let metered = start(&|r| r.limits.cpu_fuel = Some(1 << 32)).await;
    assert_eq!(metered.stdout_text(), "script\n");
    // A caller's file of the script's name is what runs, as it is what the file holds.
    let shadowed = start(&|r| r.files.push(("main.py".into(), b"print('file')".to_vec()))).await;
    assert_eq!(shadowed.stdout_text(), "file\n");
    let stats = sandbox.compile_cache_stats();
    assert_eq!((stats.entries, stats.hits, stats.misses), (1, 0, 1));
}

#[tokio::test]
async fn a_file_unlinked_while_open_still_counts_in_the_scratch_limit() {
    // tempfile.TemporaryFile's way: open, unlink, keep writing through the descriptor. No
    // directory lists the file, but it takes disk until closed.
    let started = Instant::now();
    let out = run_with(
        "import os\nf = open('hidden.bin', 'wb')\nos.unlink('hidden.bin')\n\
         chunk = b'x' * (1 << 20)\nfor i in range(64):\n    f.write(chunk)\n    f.flush()\n\
         print('wrote 64 MiB')",
        |r| r.limits = limits(|l| l.scratch_bytes = 8 << 20),
    )
    .await;
    assert_eq!(out.outcome(), Outcome::DiskLimit, "{}", out.stdout_text());
    assert!(started.elapsed() < Duration::from_secs(10));
    // Closed, the space is free again: a program may write, unlink and close as often as it likes.
    let out = run_with(
        "import os, tempfile\nfor i in range(6):\n    with tempfile.TemporaryFile(dir='.') as f:\n        \
         f.write(b'x' * (4 << 20))\n        f.flush()\n        import time; time.sleep(0.15)\nprint('ok')",
        |r| r.limits = limits(|l| l.scratch_bytes = 8 << 20),
    )
    .await;
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
    assert_eq!(out.stdout_text(), "ok\n");
}

#[tokio::test]
async fn files_past_the_hosts_path_length_count_in_the_scratch_limit() {
    // 16 directories of 250-byte names: about 4,000 bytes inside the guest, past PATH_MAX once
    // the host's scratch path is in front.
    let out = run_with(
        "import os\npath = '/'.join(['d' * 250] * 16)\nos.makedirs(path)\n\
         with open(path + '/big.bin', 'wb') as f:\n    for i in range(32):\n        \
         f.write(b'x' * (1 << 20))\n        f.flush()\nprint('wrote 32 MiB')",
        |r| r.limits = limits(|l| l.scratch_bytes = 8 << 20),
    )
    .await;
    assert_eq!(out.outcome(), Outcome::DiskLimit, "{}", out.stdout_text());
}

#[tokio::test]
async fn a_runs_directory_is_reachable_only_while_it_runs_and_reused_only_once_let_go() {
    let sandbox = private_sandbox(2);
    let mut first = sandbox
        .start(RunRequest::script("input()"))
        .await
        .expect("a slot is free");
    let control = first.control();
    wait_state(&mut first, RunState::WaitingInput).await;
    let held = control.live_dir().expect("a live run's directory");
    std::fs::write(held.path().join("secret.txt"), "first run's").unwrap();
    control.stop();
    let _ = first.collect().await;
    assert!(control.has_ended());
    assert!(control.live_dir().is_none(), "an ended run's directory");
    // Still held: the next run gets another directory, and the file is where it was.
    let second = sandbox
        .start(RunRequest::script("import os\nprint(sorted(os.listdir()))"))
        .await
        .expect("a slot is free");
    let second_dir = second.control().live_dir().unwrap().path().to_path_buf();
    assert_ne!(second_dir, held.path(), "a held directory was handed on");
    assert_eq!(second.collect().await.stdout_text(), "['main.py']\n");
    let first_dir = held.path().to_path_buf();
    drop(held);
    // Let go: emptied before anyone else sees it.
    assert!(!first_dir.join("secret.txt").exists());
}

#[tokio::test]
async fn environment_names_the_guest_cannot_take_are_refused() {
    for (name, value) in [("", "x"), ("A=B", "x"), ("A\0B", "x"), ("OK", "a\0b")] {
        let mut req = RunRequest::script("print(1)");
        req.env = vec![(name.into(), value.into())];
        let err = sandbox().start(req).await.err().expect("refused");
        assert!(
            err.to_string().contains("invalid environment variable"),
            "{name:?}: {err}"
        );
    }
}
