//! `weir replay FILE…`: one line per transcript (with a diff per mismatch), then a summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use weir_sandbox::Sandbox;
use weir_sandbox::{replay_file, Verdict};

/// Replays (or, with `update`, re-records) every file in turn, printing each verdict as it
/// comes; returns the exit code: 0 when every file matched (or was updated), 1 otherwise.
pub async fn run(sandbox: &Sandbox, files: &[PathBuf], update: bool) -> i32 {
    let (mut ok, mut bad) = (0, 0);
    for path in files {
        let verdict = replay_file(sandbox, path, update).await;
        if passed(&verdict) {
            ok += 1;
        } else {
            bad += 1;
        }
        print!("{}", verdict_lines(path, &verdict));
    }
    println!("{ok} passed, {bad} failed");
    i32::from(bad > 0)
}

/// Whether a verdict counts as passed.
fn passed(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Match | Verdict::Updated)
}

/// What `weir replay` prints for one file: `ok`, `updated`, `MISMATCH` with the differences
/// indented below it, or `FAILED` with the reason.
fn verdict_lines(path: &Path, verdict: &Verdict) -> String {
    let shown = path.display();
    match verdict {
        Verdict::Match => format!("ok       {shown}\n"),
        Verdict::Updated => format!("updated  {shown}\n"),
        Verdict::Mismatch(diff) => {
            let mut out = format!("MISMATCH {shown}\n");
            for line in diff.lines() {
                let _ = writeln!(out, "    {line}");
            }
            out
        }
        Verdict::Failed(reason) => format!("FAILED   {shown}: {reason}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_one_line_per_verdict_and_indents_a_diff() {
        let path = Path::new("t.json");
        assert_eq!(verdict_lines(path, &Verdict::Match), "ok       t.json\n");
        assert_eq!(verdict_lines(path, &Verdict::Updated), "updated  t.json\n");
        assert_eq!(
            verdict_lines(path, &Verdict::Mismatch("a\nb\n".into())),
            "MISMATCH t.json\n    a\n    b\n"
        );
        assert_eq!(
            verdict_lines(path, &Verdict::Failed("gone".into())),
            "FAILED   t.json: gone\n"
        );
    }
}
