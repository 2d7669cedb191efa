//! Replay: run a transcript's program again and compare what it produces, byte for byte, with
//! what was recorded (`weir replay`). [`replay_file`] gives one transcript's [`Verdict`]; how
//! verdicts are shown is the caller's.

use crate::error::{Error, Result};
use crate::event::{Event, RunState, StreamKind};
use crate::sandbox::Sandbox;
use crate::transcript::{ended_from_outside, Expected, OutputLog, Transcript};
use std::fmt::Write as _;
use std::path::Path;

/// Runs the transcript's program again (the guest build must match) and returns what it produced.
pub async fn replay(sandbox: &Sandbox, t: &Transcript) -> Result<Expected> {
    t.check_guest(sandbox.runtime(Some(&t.guest.runtime))?)?;
    rerun(sandbox, t).await
}

/// Runs the transcript's program without checking the guest build (for `--update`).
async fn rerun(sandbox: &Sandbox, t: &Transcript) -> Result<Expected> {
    let mut handle = sandbox.start(t.request()?).await?;
    let control = handle.control();
    let mut output = OutputLog::default();
    let mut result = None;
    while let Some(event) = handle.next_event().await {
        // Every recorded read is available from the start, so a guest that waits for input has
        // read all of it: the recorded run was ended here, from outside.
        if let Event::State(RunState::WaitingInput | RunState::Repl) = event {
            control.stop();
        }
        if let Some(r) = output.observe(&event) {
            result = Some(r);
        }
    }
    let result = result.ok_or(Error::NoResult)?;
    let mut actual = Expected::of(&output, &result);
    // The recorded run was ended from outside while it waited for input; the replay ends it at
    // the same point (its recorded input ran out), which is the same result.
    if actual.outcome == "stopped" && !t.stdin.eof && ended_from_outside(&t.expected.outcome) {
        actual.outcome = t.expected.outcome.clone();
        actual.code = t.expected.code;
        actual.message = t.expected.message.clone();
    }
    Ok(actual)
}

/// `None` when `actual` is exactly what was recorded; otherwise a readable account of every
/// difference (a unified diff per stream, then the result fields).
pub fn compare(expected: &Expected, actual: &Expected) -> Option<String> {
    if expected == actual {
        return None;
    }
    let mut report = String::new();
    for stream in [StreamKind::Stdout, StreamKind::Stderr] {
        let (e, a) = (expected.stream_bytes(stream), actual.stream_bytes(stream));
        if e != a {
            let name = match stream {
                StreamKind::Stdout => "stdout",
                StreamKind::Stderr => "stderr",
            };
            let _ = writeln!(report, "{name} differs:");
            report.push_str(&diff(&e, &a));
        }
    }
    let (e, a) = (expected.displays(), actual.displays());
    if e != a {
        let _ = writeln!(
            report,
            "displays differ: {} recorded, {} now{}",
            e.len(),
            a.len(),
            match e.iter().zip(&a).position(|(e, a)| e != a) {
                Some(i) => format!(", the first difference at display {}", i + 1),
                None => String::new(),
            }
        );
    }
    if report.is_empty() && expected.output != actual.output {
        let _ = writeln!(
            report,
            "stdout, stderr and the displays hold the same but interleave differently"
        );
    }
    let fields: [(&str, String, String); 5] = [
        ("outcome", expected.outcome.clone(), actual.outcome.clone()),
        ("code", expected.code.to_string(), actual.code.to_string()),
        ("message", expected.message.clone(), actual.message.clone()),
        (
            "output_truncated",
            expected.output_truncated.to_string(),
            actual.output_truncated.to_string(),
        ),
        (
            "fuel_consumed",
            format!("{:?}", expected.fuel_consumed),
            format!("{:?}", actual.fuel_consumed),
        ),
    ];
    for (name, e, a) in fields {
        if e != a {
            let _ = writeln!(report, "{name}: expected {e}, got {a}");
        }
    }
    Some(report)
}

/// A unified line diff of two byte strings (lossy UTF-8).
fn diff(expected: &[u8], actual: &[u8]) -> String {
    let e = String::from_utf8_lossy(expected);
    let a = String::from_utf8_lossy(actual);
    let text = similar::TextDiff::from_lines(e.as_ref(), a.as_ref());
    let mut out = text
        .unified_diff()
        .context_radius(3)
        .header("expected", "actual")
        .to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

/// How one file's replay went.
#[derive(Debug)]
pub enum Verdict {
    /// The run produced exactly what was recorded.
    Match,
    /// It differed; the text says how.
    Mismatch(String),
    /// The transcript was re-recorded.
    Updated,
    /// It could not be replayed; the text says why.
    Failed(String),
}

/// Replays one transcript file; with `update`, re-records it instead of comparing.
pub async fn replay_file(sandbox: &Sandbox, path: &Path, update: bool) -> Verdict {
    let t = match Transcript::load(path) {
        Ok(t) => t,
        Err(e) => return Verdict::Failed(e.to_string()),
    };
    if update {
        return match rerun(sandbox, &t).await {
            Ok(actual) => write_updated(sandbox, path, t, actual),
            Err(e) => failed(&e),
        };
    }
    match replay(sandbox, &t).await {
        Ok(actual) => match compare(&t.expected, &actual) {
            None => Verdict::Match,
            Some(diff) => Verdict::Mismatch(diff),
        },
        Err(e) => failed(&e),
    }
}

/// The verdict on a transcript that could not be replayed: what is wrong with the transcript,
/// or why its run could not start.
fn failed(e: &Error) -> Verdict {
    let of_the_transcript = matches!(
        e,
        Error::ReadTranscript { .. }
            | Error::NotATranscript(_)
            | Error::TranscriptVersion { .. }
            | Error::OtherGuest { .. }
            | Error::NotDeterministic
            | Error::HasMounts
            | Error::NoResult
    );
    match of_the_transcript {
        true => Verdict::Failed(e.to_string()),
        false => Verdict::Failed(format!("the run could not start: {e}")),
    }
}

fn write_updated(sandbox: &Sandbox, path: &Path, mut t: Transcript, actual: Expected) -> Verdict {
    match sandbox.runtime(Some(&t.guest.runtime)) {
        Ok(info) => t.guest = crate::transcript::GuestIdentity::of(info),
        Err(e) => return Verdict::Failed(e.to_string()),
    }
    t.weir_version = env!("CARGO_PKG_VERSION").into();
    t.expected = actual;
    match std::fs::write(path, t.to_json()) {
        Ok(()) => Verdict::Updated,
        Err(e) => Verdict::Failed(format!("cannot write {}: {e}", path.display())),
    }
}
