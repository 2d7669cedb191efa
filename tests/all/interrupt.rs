//! Interrupting running code (`KeyboardInterrupt`, as Ctrl-C) and sessions of cells, as a
//! library user sees them.

use crate::common;

use common::*;
use std::time::Duration;
use weir_sandbox::{Cell, CellEnd, Error, Event, Outcome, RunHandle, RunRequest, RunState};

/// Starts `source` and waits until it printed `ready`.
async fn started(source: &str, f: impl FnOnce(&mut RunRequest)) -> RunHandle {
    let mut req = RunRequest::script(source);
    f(&mut req);
    let mut handle = start(req).await;
    read_until_stdout(&mut handle, "ready\n").await;
    handle
}

#[tokio::test]
async fn an_interrupt_raises_keyboard_interrupt_in_a_busy_loop() {
    let handle = started(
        "print('ready', flush=True)\nn = 0\nwhile True:\n    n += 1\n",
        |_| {},
    )
    .await;
    assert!(handle.control().interrupt());
    let out = handle.collect().await;
    let err = out.stderr_text();
    assert!(err.contains("KeyboardInterrupt"), "{err}");
    assert!(err.contains("line 3") || err.contains("line 4"), "{err}");
    assert!(
        matches!(out.outcome(), Outcome::Error { ref exception, .. } if exception == "KeyboardInterrupt"),
        "{:?}",
        out.outcome()
    );
}

#[tokio::test]
async fn an_interrupt_ends_a_sleep_at_once_and_can_be_caught() {
    let handle = started(
        "import time\nprint('ready', flush=True)\ntry:\n    time.sleep(60)\n    print('slept')\nexcept KeyboardInterrupt:\n    print('interrupted')\nprint('after')\n",
        |_| {},
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let asked = std::time::Instant::now();
    assert!(handle.control().interrupt());
    let out = handle.collect().await;
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "the sleep was not cut short"
    );
    assert_eq!(out.stdout_text(), "interrupted\nafter\n");
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

#[tokio::test]
async fn an_interrupt_at_input_raises_there_and_a_repl_keeps_its_namespace() {
    let mut req = RunRequest::script("x = 41\n");
    req.repl = true;
    let mut handle = start(req).await;
    let control = handle.control();
    wait_state(&mut handle, RunState::Repl).await;
    control.write_stdin("name = input('name? ')\n").await;
    read_until_stdout(&mut handle, "name? ").await;
    assert!(control.interrupt());
    // The REPL prints the interrupt, as Python's does, and prompts again.
    let mut out = String::new();
    while !out.contains("KeyboardInterrupt\n>>> ") {
        match tokio::time::timeout(Duration::from_secs(10), handle.next_event()).await {
            Ok(Some(Event::Output { data, .. })) => out.push_str(&String::from_utf8_lossy(&data)),
            Ok(Some(e)) => eprintln!("event {e:?}"),
            other => panic!("{other:?} after {out:?}"),
        }
    }
    control.write_stdin("x + 1\n").await;
    control.close_stdin();
    let out = handle.collect().await;
    assert!(
        out.stdout_text().contains("42\n"),
        "{:?}",
        out.stdout_text()
    );
    assert_eq!(out.outcome(), Outcome::Exited { code: 0 });
}

/// A session's next cell, with what it printed.
pub async fn cell(handle: &mut RunHandle, code: &str) -> (String, String, CellEnd) {
    handle
        .control()
        .send_cell(Cell {
            code: code.into(),
            ..Default::default()
        })
        .expect("the session takes a cell");
    let (mut stdout, mut stderr) = (String::new(), String::new());
    loop {
        match next(handle, 30).await {
            Event::Output { stream, data } => {
                let text = String::from_utf8_lossy(&data).into_owned();
                match stream {
                    weir_sandbox::StreamKind::Stdout => stdout.push_str(&text),
                    weir_sandbox::StreamKind::Stderr => stderr.push_str(&text),
                }
            }
            Event::Cell(end) => return (stdout, stderr, end),
            Event::State(_) | Event::Display(_) | Event::ClearOutput { .. } | Event::Call(_) => {}
            Event::Exit(r) => panic!("the session ended: {r:?}"),
        }
    }
}

pub fn session() -> RunRequest {
    let mut req = RunRequest::script("");
    req.cells = true;
    req
}

#[tokio::test]
async fn a_session_keeps_its_namespace_and_reports_the_last_expression() {
    let mut handle = start(session()).await;
    let (out, _, end) = cell(&mut handle, "x = 41\nprint('set')").await;
    assert_eq!(
        (out.as_str(), end.value, end.exception),
        ("set\n", None, None)
    );
    let (_, _, end) = cell(&mut handle, "x + 1").await;
    assert_eq!(end.value.as_deref(), Some("42"));
    let (_, _, end) = cell(&mut handle, "def f():\n    return [x, 'a']\nf()").await;
    assert_eq!(end.value.as_deref(), Some("[41, 'a']"));
    let (_, err, end) = cell(&mut handle, "1 / 0").await;
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("ZeroDivisionError")
    );
    assert!(
        err.contains("File \"<cell 4>\", line 1") && err.contains("1 / 0"),
        "{err}"
    );
    let (_, _, end) = cell(&mut handle, "x").await;
    assert_eq!(
        end.value.as_deref(),
        Some("41"),
        "an error keeps the session"
    );
}

#[tokio::test]
async fn a_session_runs_one_cell_at_a_time() {
    let mut handle = start(session()).await;
    let control = handle.control();
    control
        .send_cell(Cell {
            code: "import time\ntime.sleep(0.3)".into(),
            ..Default::default()
        })
        .unwrap();
    // The first may already be taken; a third while one runs and one waits is refused.
    let second = control.send_cell(Cell::default());
    let third = control.send_cell(Cell::default());
    let busy = |r: &weir_sandbox::Result<()>| matches!(r, Err(Error::CellBusy));
    assert!(busy(&second) || busy(&third));
    drop(handle.collect());
    let not_a_session = start(RunRequest::script("")).await;
    assert!(matches!(
        not_a_session.control().send_cell(Cell::default()),
        Err(Error::NotASession)
    ));
    handle = start(session()).await;
    let (_, _, end) = cell(&mut handle, "'ok'").await;
    assert_eq!(end.value.as_deref(), Some("'ok'"));
}

#[tokio::test]
async fn an_interrupted_cell_keeps_the_session() {
    let mut handle = start(session()).await;
    cell(&mut handle, "total = 5").await;
    let control = handle.control();
    assert!(!control.interrupt(), "nothing runs between cells");
    control
        .send_cell(Cell {
            // 'ready' once the loop has run: the interrupt cannot beat its first steps.
            code: "while True:\n    total += 1\n    if total == 1000:\n        print('ready', flush=True)"
                .into(),
            ..Default::default()
        })
        .unwrap();
    read_until_stdout(&mut handle, "ready\n").await;
    assert!(control.interrupt());
    let end = loop {
        if let Event::Cell(end) = next(&mut handle, 30).await {
            break end;
        }
    };
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("KeyboardInterrupt")
    );
    let (_, _, end) = cell(&mut handle, "total > 5").await;
    assert_eq!(end.value.as_deref(), Some("True"));
}

#[tokio::test]
async fn a_cells_stdin_is_its_own_then_end_of_file() {
    let mut handle = start(session()).await;
    handle
        .control()
        .send_cell(Cell {
            code: "a = input()\nprint(a.upper())".into(),
            stdin: "one\ntwo\n".into(),
            ..Default::default()
        })
        .unwrap();
    let mut out = String::new();
    loop {
        match next(&mut handle, 30).await {
            Event::Output { data, .. } => out.push_str(&String::from_utf8_lossy(&data)),
            Event::Cell(end) => {
                assert_eq!(end.exception, None);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(out, "ONE\n");
    let (_, _, end) = cell(&mut handle, "input()").await;
    assert_eq!(
        end.exception.map(|e| e.type_name).as_deref(),
        Some("EOFError"),
        "the earlier cell's unread 'two' does not carry over"
    );
}

#[tokio::test]
async fn user_code_calling_the_cell_interface_cannot_break_its_session() {
    let mut handle = start(session()).await;
    // Only the runner ends a cell: a report from the cell's code neither ends it early nor
    // stands (the runner's, after the code, replaces it), and one outside any cell is ignored.
    let started = std::time::Instant::now();
    let (out, _, end) = cell(
        &mut handle,
        "from wit_world.imports import host\nhost.cell_done('fake', None, None)\n\
         import time\ntime.sleep(0.3)\nprint('still running')\n'real'",
    )
    .await;
    assert_eq!(
        end.value.as_deref(),
        Some("'real'"),
        "the cell's own report stood"
    );
    assert_eq!(out, "still running\n");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "ended early"
    );
    // The cell's code cannot take the next cell either: cells are the host's calls into the
    // guest, and the guest has no import that hands one out.
    let (_, _, end) = cell(
        &mut handle,
        "from wit_world.imports import host\nhasattr(host, 'next_cell')",
    )
    .await;
    assert_eq!(end.value.as_deref(), Some("False"));
    let (out, _, end) = cell(&mut handle, "print('next')\n41 + 1").await;
    assert_eq!((out.as_str(), end.value.as_deref()), ("next\n", Some("42")));
    let not_a_session =
        run("from wit_world.imports import host\nhost.cell_done('x', None, None)\nprint('ok')")
            .await;
    assert_eq!(not_a_session.stdout_text(), "ok\n");
}

/// Interrupts that race short cells (sent again and again while cells start, run and end)
/// reach the cells' code or nothing: the session lives through all of them, keeps its
/// namespace, and runs no cell twice.
#[tokio::test]
async fn interrupts_racing_short_cells_never_end_the_session() {
    // Epoch ticks every 20 µs and an interrupt asked for every 50 µs: interrupts land all over
    // the runner's own code around each cell, not only in the cells' code.
    let sandbox = sandbox_with(1, |s| s.epoch_tick = Duration::from_micros(20));
    let mut handle = sandbox.start(session()).await.expect("a slot is free");
    let (_, _, _) = cell(&mut handle, "n = 0").await;
    let control = handle.control();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = std::thread::spawn({
        let (control, stop) = (control.clone(), stop.clone());
        move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                control.interrupt();
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    });
    let mut interrupted = 0;
    let mut printed = Vec::new();
    for i in 0..150u64 {
        // Cells of 0 to about 3 ms, so that interrupts land before, in and after their code.
        let code = format!("for _ in range({}): pass\nn += 1", (i * 997) % 30_000);
        control
            .send_cell(Cell {
                code,
                ..Default::default()
            })
            .expect("the session takes a cell");
        let end = loop {
            match next(&mut handle, 30).await {
                Event::Cell(end) => break end,
                Event::Exit(result) => panic!(
                    "the session ended at cell {i}: {result:?}\n{}",
                    String::from_utf8_lossy(&printed[printed.len().saturating_sub(3000)..])
                ),
                Event::Output { data, .. } => printed.extend_from_slice(&data),
                _ => {}
            }
        };
        if let Some(e) = end.exception {
            assert_eq!(e.type_name, "KeyboardInterrupt", "cell {i}");
            interrupted += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    let (_, _, end) = cell(&mut handle, "n").await;
    let n: u64 = end.value.as_deref().unwrap_or("0").parse().unwrap();
    assert!(n + interrupted >= 150, "n = {n}, {interrupted} interrupted");
    assert!(n <= 150, "a cell ran twice: n = {n}");
    assert!(
        interrupted > 0,
        "no interrupt landed: the test proves nothing"
    );
}

/// A cell that calls `exit()` ends its session with the run's outcome.
#[tokio::test]
async fn a_cell_that_exits_ends_its_session() {
    let handle = start(session()).await;
    handle
        .control()
        .send_cell(Cell {
            code: "print('bye')\nexit(3)".into(),
            ..Default::default()
        })
        .unwrap();
    let out = handle.collect().await;
    assert_eq!(out.stdout_text(), "bye\n");
    assert_eq!(out.outcome(), Outcome::Exited { code: 3 });
}
