//! Deterministic mode, transcripts and replay: every fixture in `fixtures/transcripts/` replays
//! byte for byte, in this process and in a separate `weir replay` process.

use crate::common;

use common::{run_with, sandbox};
use std::path::PathBuf;
use std::process::Command;
use weir_sandbox::Seed;
use weir_sandbox::{compare, replay};
use weir_sandbox::{Data, OutputDoc, OutputLog, Transcript};
use weir_sandbox::{Event, RunRequest};

fn fixtures() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/transcripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/transcripts exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fixture_replays_identically_twice_in_one_process() {
    let files = fixtures();
    assert!(files.len() >= 20, "only {} fixtures", files.len());
    let sandbox = sandbox();
    for path in files {
        let t = Transcript::load(&path).expect("fixture parses");
        let first = replay(&sandbox, &t).await.expect("replays");
        let second = replay(&sandbox, &t).await.expect("replays");
        if let Some(diff) = compare(&t.expected, &first) {
            panic!("{} differs from its recording:\n{diff}", path.display());
        }
        assert_eq!(first, second, "{}: two replays differ", path.display());
    }
}

#[test]
fn every_fixture_replays_in_a_separate_process() {
    let out = weir()
        .arg("replay")
        .args(fixtures())
        .output()
        .expect("weir runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let n = fixtures().len();
    assert!(
        stdout.contains(&format!("{n} passed, 0 failed")),
        "{stdout}"
    );
}

#[test]
fn the_fixtures_cover_what_the_issue_names() {
    let outcomes: Vec<(String, String, bool)> = fixtures()
        .iter()
        .map(|p| {
            let t = Transcript::load(p).unwrap();
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, t.expected.outcome.clone(), t.repl)
        })
        .collect();
    let has = |outcome: &str| outcomes.iter().any(|(_, o, _)| o == outcome);
    for outcome in [
        "exited",
        "error",
        "cpu_limit",
        "output_limit",
        "memory_limit",
    ] {
        assert!(has(outcome), "no fixture ends as {outcome}");
    }
    assert!(outcomes.iter().any(|(_, _, repl)| *repl), "no REPL fixture");
    let text = |name: &str| {
        std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/transcripts")
                .join(format!("{name}.json")),
        )
        .unwrap()
    };
    assert!(text("recursion_error").contains("RecursionError"));
    assert!(text("unittest_run").contains("Ran 3 tests"));
    assert!(text("input_prompts").contains("How old are you?"));
    assert!(text("random_values").contains("uuid4"));
    assert!(text("output_truncation").contains("[output truncated"));
}

const NOISE: &str = "import random, time, uuid, os\n\
    print(random.random(), uuid.uuid4(), os.urandom(4).hex())\n\
    print(time.time(), time.monotonic())\n";

async fn deterministic(seed: u64) -> String {
    run_with(NOISE, |r| r.deterministic = Some(Seed(seed)))
        .await
        .stdout_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_gives_the_same_bytes_and_another_seed_differs() {
    let (a, b, c) = (
        deterministic(7).await,
        deterministic(7).await,
        deterministic(8).await,
    );
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Both clocks are virtual: the wall clock starts at 2000-01-01T00:00:00Z.
    assert!(a.lines().nth(1).unwrap().starts_with("946684800."), "{a}");
    // Without deterministic mode, two runs differ.
    let real = |_| async { common::run(NOISE).await.stdout_text() };
    assert_ne!(real(0).await, real(1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sleep_advances_the_virtual_clock_instead_of_waiting() {
    let started = std::time::Instant::now();
    let out = run_with(
        "import time\nt = time.monotonic()\ntime.sleep(3600)\nprint(round(time.monotonic() - t))",
        |r| {
            r.deterministic = Some(Seed(0));
            r.limits.wall_ms = 5_000; // raised to the deterministic safety net, never reached
        },
    )
    .await;
    assert_eq!(out.stdout_text(), "3600\n", "{}", out.stderr_text());
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_runs_are_bounded_by_fuel() {
    let out = run_with("while True: pass", |r| {
        r.deterministic = Some(Seed(0));
        r.limits.cpu_fuel = Some(5_000_000);
    })
    .await;
    assert_eq!(out.outcome().kind(), "cpu_limit");
    assert_eq!(out.result.unwrap().fuel_consumed, Some(5_000_000));
}

/// Records an interactive run through the library, as the CLI and the server do.
async fn record(req: RunRequest, input: &[&str]) -> Transcript {
    let mut handle = sandbox().start(req.clone()).await.expect("starts");
    let control = handle.control();
    let mut log = OutputLog::default();
    let mut pending = input.iter();
    let mut result = None;
    while let Some(event) = handle.next_event().await {
        if let Event::State(weir_sandbox::RunState::WaitingInput | weir_sandbox::RunState::Repl) =
            event
        {
            match pending.next() {
                Some(line) => {
                    control.write_stdin(line.as_bytes().to_vec()).await;
                }
                None => control.stop(),
            }
        }
        if let Some(r) = log.observe(&event) {
            result = Some(r);
        }
    }
    let result = result.expect("exit");
    let sandbox = sandbox();
    let runtime = sandbox.runtime(Some(&result.runtime)).expect("its runtime");
    Transcript::record(&req, runtime, &log, &result).expect("records")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interactive_repl_stopped_while_waiting_replays() {
    let mut req = RunRequest::script("x = 20\n");
    req.repl = true;
    req.deterministic = Some(Seed(3));
    req.record_input = true;
    let t = record(req, &["x + 1\n", "import random; random.randint(1, 100)\n"]).await;
    assert_eq!(t.expected.outcome, "stopped");
    assert!(!t.stdin.eof);
    assert_eq!(t.stdin.reads.len(), 2);
    let text = serde_json::to_string(&t.expected.output).unwrap();
    assert!(text.contains("21"), "{text}");
    let replayed = replay(&sandbox(), &t).await.expect("replays");
    assert_eq!(compare(&t.expected, &replayed), None);
}

fn write_temp(t: &Transcript, name: &str) -> PathBuf {
    let dir = tempfile::Builder::new()
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
        .keep();
    let path = dir.join(name);
    std::fs::write(&path, t.to_json()).unwrap();
    path
}

fn hello() -> Transcript {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/transcripts/hello.json");
    Transcript::load(&path).unwrap()
}

#[test]
fn a_tampered_transcript_gives_a_readable_diff_and_fails() {
    let mut t = hello();
    let first = t
        .expected
        .output
        .iter_mut()
        .find(|o| matches!(o, OutputDoc::Stdout(_)))
        .unwrap();
    let Some(Data::Text(text)) = first.data().cloned() else {
        panic!("hello's stdout is text")
    };
    *first = OutputDoc::Stdout(Data::Text(text.replace("Hello, world.", "Hello, moon.")));
    t.expected.code = 5;
    let path = write_temp(&t, "tampered.json");
    let out = weir().arg("replay").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("MISMATCH"), "{stdout}");
    assert!(stdout.contains("stdout differs"), "{stdout}");
    assert!(stdout.contains("-Hello, moon."), "{stdout}");
    assert!(stdout.contains("+Hello, world."), "{stdout}");
    assert!(stdout.contains("code: expected 5, got 0"), "{stdout}");

    // --update re-records it, after which it replays again.
    let out = weir()
        .args(["replay", "--update"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = weir().arg("replay").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_transcript_of_another_guest_build_is_refused_not_diffed() {
    let mut t = hello();
    t.guest.build = "0123456789abcdef0123456789abcdef".into();
    let path = write_temp(&t, "other-guest.json");
    let out = weir().arg("replay").arg(&path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("FAILED"), "{stdout}");
    assert!(stdout.contains("different guest build"), "{stdout}");
    assert!(!stdout.contains("differs"), "{stdout}");
}

#[test]
fn weir_run_records_what_the_guest_read() {
    let dir = tempfile::Builder::new()
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let script = dir.path().join("ask.py");
    std::fs::write(
        &script,
        "a = input('a? ')\nb = input('b? ')\nprint(a + b)\n",
    )
    .unwrap();
    let record = dir.path().join("ask.json");
    let mut child = weir()
        .arg("run")
        .arg("--record")
        .arg(&record)
        .arg(&script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"4\n2\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a? b? 42\n");
    let t = Transcript::load(&record).unwrap();
    let reads: Vec<_> = t
        .stdin
        .reads
        .iter()
        .map(|d| d.to_bytes().unwrap())
        .collect();
    assert_eq!(reads.concat(), b"4\n2\n");
    assert!(t.seed == 0 && t.limits.cpu_fuel.is_some());
    let out = weir().arg("replay").arg(&record).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn malformed_transcripts_get_clear_errors() {
    let dir = tempfile::Builder::new()
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let cases = [
        ("not-json.json", "{", "not a weir transcript"),
        (
            "wrong-format.json",
            r#"{"format": "x", "version": 1}"#,
            "\"format\"",
        ),
        (
            "future.json",
            r#"{"format": "weir-transcript", "version": 99}"#,
            "version 99 is not supported",
        ),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = weir().arg("replay").arg(&path).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1));
        assert!(stdout.contains(expected), "{name}: {stdout}");
    }
}

/// Displays are part of what a run produced: a transcript whose display differs from what the
/// program shows now is a mismatch, and says which display.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_display_is_a_mismatch() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/transcripts/display_bundles.json");
    let mut t = Transcript::load(&path).unwrap();
    let shown = t
        .expected
        .output
        .iter_mut()
        .filter_map(|o| match o {
            OutputDoc::Display(d) => Some(d),
            _ => None,
        })
        .nth(1)
        .expect("the fixture displays");
    shown
        .data
        .insert("text/markdown".into(), "# changed".into());
    let sandbox = sandbox();
    let actual = replay(&sandbox, &t).await.expect("replays");
    let report = compare(&t.expected, &actual).expect("a mismatch");
    assert!(
        report.contains("displays differ: 8 recorded, 8 now, the first difference at display 2"),
        "{report}"
    );
}
