//! The session-snapshot rows (`WEIR_BENCH_ONLY_SNAPSHOTS=1` runs only these): saving an idle
//! `python` session, its size, restoring it to its first answered cell, and a fork, beside a
//! fresh session's first cell in the same run.

use crate::measure::{mb, ms, percentile, pss_bytes, row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use weir_sandbox::{Cell, Event, RunHandle, RunRequest, Sandbox, Snapshot};

/// A `python` session with nothing in it yet.
fn session() -> RunRequest {
    let mut req = RunRequest::script("");
    req.cells = true;
    req.runtime = Some("python".into());
    req
}

/// Runs `code` as the session's next cell and waits for its end.
pub(crate) async fn cell(handle: &mut RunHandle, code: &str) -> anyhow::Result<()> {
    handle.control().send_cell(Cell {
        code: code.into(),
        ..Default::default()
    })?;
    loop {
        match handle.next_event().await {
            Some(Event::Cell(_)) => return Ok(()),
            Some(Event::Exit(r)) => anyhow::bail!("the session ended: {r:?}"),
            Some(_) => {}
            None => anyhow::bail!("the session ended"),
        }
    }
}

/// Time from starting `req` to its first cell (`x`) answered.
async fn to_first_cell(sandbox: &Sandbox, req: RunRequest) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut handle = sandbox.start(req).await?;
    cell(&mut handle, "x").await?;
    Ok(started.elapsed())
}

fn p50_p99(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// A durable session's save after a cell that changes one variable (`n += 1`): the save of
/// its changes (captured and compressed) timed apart from the cell, and its size.
async fn save_rows(handle: &mut RunHandle, samples: usize) -> anyhow::Result<()> {
    cell(handle, "n = 0").await?;
    handle.control().save(true).await?;
    let (mut capture, mut compress, mut sizes) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..samples {
        cell(handle, "n += 1").await?;
        let started = Instant::now();
        let taken = handle.control().save(false).await?;
        let captured = started.elapsed();
        let bytes = taken.to_bytes()?;
        capture.push(captured);
        compress.push(started.elapsed() - captured);
        sizes.push((taken.stored_page_bytes(), bytes.len()));
    }
    sizes.sort();
    let (pages, stored) = sizes[sizes.len() / 2];
    let (c50, _) = p50_p99(capture);
    let (z50, _) = p50_p99(compress);
    row(
        "save of changes after `n += 1`: capture / compress, p50",
        format!("{} / {}", ms(c50), ms(z50)),
        "",
        "",
    );
    row(
        "  its pages uncompressed / stored, median",
        format!("{} / {}", mb(pages as f64), mb(stored as f64)),
        "",
        "",
    );
    Ok(())
}

/// The rows, `samples` of each.
pub async fn rows(sandbox: &Sandbox, samples: usize) -> anyhow::Result<()> {
    let mut parent = sandbox.start(session()).await?;
    cell(&mut parent, "x = 1\ndef f(n):\n    return n * x").await?;
    let mut saves = Vec::new();
    let mut snapshot = None;
    for _ in 0..samples {
        let started = Instant::now();
        let taken = parent.control().snapshot().await?;
        let bytes = taken.to_bytes()?;
        saves.push(started.elapsed());
        snapshot = Some((taken, bytes.len()));
    }
    let (taken, stored) = snapshot.ok_or_else(|| anyhow::anyhow!("no samples"))?;
    save_rows(&mut parent, samples).await?;
    let (s50, s99) = p50_p99(saves);
    row(
        "snapshot of an idle python session, p50",
        ms(s50),
        "",
        "<= 5 ms",
    );
    row("snapshot of an idle python session, p99", ms(s99), "", "");
    row(
        "  its size stored (pages that differ from the image, zstd)",
        mb(stored as f64),
        "",
        "<= 1 MB",
    );
    row(
        "  memory pages it holds, uncompressed",
        mb(taken.stored_page_bytes() as f64),
        "",
        "",
    );
    let from = Arc::new(taken);
    let restore = || {
        let mut req = RunRequest::script("");
        req.restore = Some(from.clone());
        req
    };
    let mut fresh = Vec::new();
    let mut restored = Vec::new();
    let mut woken = Vec::new();
    // A hibernated session is a snapshot in a file: waking it reads the file back first.
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), from.to_bytes()?)?;
    // Alternated, so all three see the same machine.
    for _ in 0..samples {
        let mut req = session();
        req.program = weir_sandbox::Program::Code("x = 1".into());
        fresh.push(to_first_cell(sandbox, req).await?);
        restored.push(to_first_cell(sandbox, restore()).await?);
        let started = Instant::now();
        let read = Snapshot::from_bytes(&std::fs::read(file.path())?)?;
        let mut req = RunRequest::script("");
        req.restore = Some(Arc::new(read));
        woken.push(started.elapsed() + to_first_cell(sandbox, req).await?);
    }
    let (w50, _) = p50_p99(woken);
    let ((f50, _), (r50, r99)) = (p50_p99(fresh), p50_p99(restored));
    row("fresh session -> first cell answered, p50", ms(f50), "", "");
    row(
        "restore -> first cell answered, p50",
        ms(r50),
        "",
        "<= 2 ms",
    );
    row("restore -> first cell answered, p99", ms(r99), "", "");
    row(
        "hibernated (a file) -> woken, first cell answered, p50",
        ms(w50),
        "",
        "<= 5 ms",
    );
    fork_rows(sandbox, &mut parent, samples).await?;
    restored_pss(sandbox, &from).await?;
    fork_pss(sandbox, &parent).await
}

/// A session forked: its snapshot for a fork taken and a session started from it, to its
/// first cell answered. Each sample after a cell in the parent (it has changed since its last
/// fork), and again with nothing run since (the fork shares the last one's pages); one at a
/// time with pauses; and the parent's cell right after each fork (it writes shared pages).
async fn fork_rows(
    sandbox: &Sandbox,
    parent: &mut RunHandle,
    samples: usize,
) -> anyhow::Result<()> {
    let (mut changed, mut same, mut taken, mut cells) = (vec![], vec![], vec![], vec![]);
    cell(parent, "n = 0").await?;
    for _ in 0..samples {
        let started = Instant::now();
        cell(parent, "n += 1").await?;
        cells.push(started.elapsed());
        for again in [false, true] {
            let started = Instant::now();
            let snapshot = Arc::new(parent.control().fork().await?);
            if !again {
                taken.push(started.elapsed());
            }
            let mut req = RunRequest::script("");
            req.restore = Some(snapshot);
            let mut child = sandbox.start(req).await?;
            cell(&mut child, "x").await?;
            match again {
                false => changed.push(started.elapsed()),
                true => same.push(started.elapsed()),
            }
        }
    }
    // One at a time on an idle server: each after a pause that lets the warm instances refill.
    let mut paced = Vec::new();
    for _ in 0..samples.min(100) {
        cell(parent, "n += 1").await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let started = Instant::now();
        let mut req = RunRequest::script("");
        req.restore = Some(Arc::new(parent.control().fork().await?));
        let mut child = sandbox.start(req).await?;
        cell(&mut child, "x").await?;
        paced.push(started.elapsed());
    }
    let (k50, k99) = p50_p99(changed);
    row(
        "fork of an idle session -> first cell answered, p50",
        ms(k50),
        "",
        "<= 1 ms",
    );
    row(
        "fork of an idle session -> first cell answered, p99",
        ms(k99),
        "",
        "",
    );
    row(
        "  of which the parent's side (pages into a shared file), p50",
        ms(p50_p99(taken).0),
        "",
        "",
    );
    row(
        "  again, nothing run since (same shared pages), p50",
        ms(p50_p99(same).0),
        "",
        "",
    );
    row(
        "  one at a time, 20 ms apart (warm instances ready), p50",
        ms(p50_p99(paced).0),
        "",
        "",
    );
    row(
        "  a cell in the parent, right after its fork, p50",
        ms(p50_p99(cells).0),
        "",
        "",
    );
    Ok(())
}

/// The process's PSS growth per idle session restored from one snapshot (100 of them).
async fn restored_pss(sandbox: &Sandbox, from: &Arc<Snapshot>) -> anyhow::Result<()> {
    const N: usize = 100;
    let before = pss_bytes();
    let mut held = Vec::new();
    for _ in 0..N {
        let mut req = RunRequest::script("");
        req.restore = Some(from.clone());
        let mut child = sandbox.start(req).await?;
        cell(&mut child, "x").await?;
        held.push(child);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    if let (Some(before), Some(after)) = (before, pss_bytes()) {
        row(
            "PSS per idle session restored from a snapshot file (100)",
            mb((after - before) / N as f64),
            "",
            "",
        );
    }
    drop(held);
    Ok(())
}

/// The process's PSS growth per fork of `parent` (100 of them): restored and idle, after an
/// empty cell, and after a cell that sets a variable.
async fn fork_pss(sandbox: &Sandbox, parent: &RunHandle) -> anyhow::Result<()> {
    const N: usize = 100;
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    let fork = || async {
        let mut req = RunRequest::script("");
        req.restore = Some(Arc::new(parent.control().fork().await?));
        anyhow::Ok(sandbox.start(req).await?)
    };
    // A first hundred, gone before measuring: the next take slots as the first left them, not
    // slots still holding pages of earlier runs (which a fork's mapping would free, flattering
    // the figure).
    let mut held = Vec::new();
    for _ in 0..N {
        held.push(fork().await?);
    }
    for child in &mut held {
        cell(child, "").await?;
    }
    drop(held);
    settle().await;
    let before = pss_bytes();
    let mut held = Vec::new();
    for _ in 0..N {
        held.push(fork().await?);
    }
    settle().await;
    let mut after = vec![pss_bytes()];
    for code in ["", "y = [n] * 10"] {
        for child in &mut held {
            cell(child, code).await?;
        }
        settle().await;
        after.push(pss_bytes());
    }
    let names = [
        "PSS per fork of an idle session (100), restored, before it writes",
        "  after an empty cell",
        "  after a cell that sets a variable",
    ];
    for (name, after) in names.iter().zip(after) {
        if let (Some(before), Some(after)) = (before, after) {
            let goal = if name.starts_with("PSS") {
                "<= 0.2 MB"
            } else {
                ""
            };
            row(name, mb((after - before) / N as f64), "", goal);
        }
    }
    drop(held);
    Ok(())
}
