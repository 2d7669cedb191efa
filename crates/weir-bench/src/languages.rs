//! The `javascript` and `ruby` rows: first output of a hello program and fib(27), beside a fresh
//! `node` or `ruby` process doing the same in the same sitting (`$WEIR_BENCH_NODE`,
//! `$WEIR_BENCH_RUBY`; rows show `-` where the interpreter is not installed).

use crate::first_output;
use crate::measure::{ms, opt_ms, percentile, row};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use weir_sandbox::{Limits, RunRequest, Sandbox};

/// A language's rows: its runtime, its native interpreter, and the programs both run.
struct Lang {
    runtime: &'static str,
    native: fn() -> String,
    hello: &'static str,
    /// fib(27) three times in one interpreter, one line of seconds per call.
    fib27: &'static str,
    /// The native interpreter's name in the rows.
    called: &'static str,
    /// A program that waits for a line of stdin (an idle instance), in weir and natively.
    wait: &'static str,
    native_wait: &'static str,
}

const LANGS: [Lang; 2] = [
    Lang {
        runtime: "javascript",
        native: || std::env::var("WEIR_BENCH_NODE").unwrap_or_else(|_| "node".into()),
        hello: "console.log('hello')",
        fib27: "function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) }\n\
for (let i = 0; i < 3; i++) { const t = performance.now(); fib(27); console.log((performance.now() - t) / 1000) }\n",
        called: "node (V8 JIT)",
        wait: "readline()",
        native_wait: "process.stdin.once('data', () => {})",
    },
    Lang {
        runtime: "ruby",
        native: || std::env::var("WEIR_BENCH_RUBY").unwrap_or_else(|_| "ruby".into()),
        hello: "puts 'hello'",
        fib27: "def fib(n) = n < 2 ? n : fib(n - 1) + fib(n - 2)\n\
3.times { t = Process.clock_gettime(Process::CLOCK_MONOTONIC); fib(27); puts Process.clock_gettime(Process::CLOCK_MONOTONIC) - t }\n",
        called: "ruby (CRuby)",
        wait: "$stdin.gets",
        native_wait: "$stdin.gets",
    },
];

fn request(runtime: &str, source: &str) -> RunRequest {
    let mut req = RunRequest::script(source);
    req.runtime = Some(runtime.into());
    req.close_stdin = true;
    req.limits = Limits {
        wall_ms: 120_000,
        ..Limits::default()
    };
    req
}

/// Start → first stdout byte of the language's hello, `n` sequential runs.
async fn weir_first_output(
    sandbox: &Sandbox,
    lang: &Lang,
    n: usize,
) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..20 {
        sandbox
            .start(request(lang.runtime, lang.hello))
            .await?
            .collect()
            .await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut handle = sandbox.start(request(lang.runtime, lang.hello)).await?;
        first_output(&mut handle).await?;
        times.push(t.elapsed());
        handle.collect().await;
    }
    times.sort();
    Ok(times)
}

/// Spawn → first stdout byte of the native interpreter's `-e HELLO`, `n` sequential processes.
async fn native_first_output(lang: &Lang, n: usize) -> std::io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let t = Instant::now();
        let mut child = Command::new((lang.native)())
            .args(["-e", lang.hello])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let mut out = child.stdout.take().ok_or(std::io::ErrorKind::BrokenPipe)?;
        let mut byte = [0u8; 1];
        out.read_exact(&mut byte).await?;
        if i >= 3 {
            times.push(t.elapsed());
        }
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).await?;
        child.wait().await?;
    }
    times.sort();
    Ok(times)
}

/// Idle instances measured for the PSS row.
const IDLE: usize = 20;

/// PSS per idle instance: [`IDLE`] runs each waiting for a line of stdin.
async fn idle_pss(sandbox: &Sandbox, lang: &Lang) -> anyhow::Result<f64> {
    let before = crate::measure::pss_bytes().unwrap_or(0.0);
    let mut handles = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut req = request(lang.runtime, lang.wait);
        req.close_stdin = false;
        let mut handle = sandbox.start(req).await?;
        while let Some(event) = handle.next_event().await {
            if let weir_sandbox::Event::State(weir_sandbox::RunState::WaitingInput) = event {
                break;
            }
        }
        handles.push(handle);
    }
    let after = crate::measure::pss_bytes().unwrap_or(0.0);
    drop(handles);
    Ok((after - before) / IDLE as f64)
}

/// PSS per idle native interpreter: [`IDLE`] processes each waiting for a line of stdin.
async fn native_idle_pss(lang: &Lang) -> Option<f64> {
    let mut children = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let child = Command::new((lang.native)())
            .args(["-e", lang.native_wait])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        children.push(child);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut total = 0.0;
    for child in &children {
        total += crate::measure::pss_bytes_of(&child.id()?.to_string())?;
    }
    Some(total / IDLE as f64)
}

/// The calls' seconds a fib program printed.
fn calls(text: &str) -> Vec<f64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

async fn native_fib(lang: &Lang) -> Option<Vec<f64>> {
    let out = Command::new((lang.native)())
        .args(["-e", lang.fib27])
        .output()
        .await
        .ok()?;
    let c = calls(&String::from_utf8_lossy(&out.stdout));
    (c.len() == 3).then_some(c)
}

fn best(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The rows, both languages.
pub async fn rows(sandbox: &Sandbox, samples: usize) -> anyhow::Result<()> {
    for lang in &LANGS {
        lang_rows(sandbox, lang, samples).await?;
    }
    Ok(())
}

async fn lang_rows(sandbox: &Sandbox, lang: &'static Lang, samples: usize) -> anyhow::Result<()> {
    sandbox.prepare(lang.runtime).await?;
    let sandbox2 = sandbox.clone();
    let weir =
        tokio::spawn(async move { weir_first_output(&sandbox2, lang, samples).await }).await??;
    let native = native_first_output(lang, samples.min(50)).await.ok();
    let p = |t: &[Duration], q| percentile(t, q);
    let target = if lang.runtime == "ruby" {
        "<= 2 ms"
    } else {
        "<= 0.5 ms"
    };
    row(
        &format!("{} hello: start -> first stdout byte, p50", lang.runtime),
        ms(p(&weir, 0.5)),
        &opt_ms(native.as_deref().map(|t| p(t, 0.5))),
        target,
    );
    row(
        &format!("{} hello: start -> first stdout byte, p99", lang.runtime),
        ms(p(&weir, 0.99)),
        &opt_ms(native.as_deref().map(|t| p(t, 0.99))),
        "",
    );
    let out = sandbox
        .start(request(lang.runtime, lang.fib27))
        .await?
        .collect()
        .await;
    let guest = calls(&out.stdout_text());
    anyhow::ensure!(
        guest.len() == 3,
        "fib printed {:?} {:?}",
        out.stdout_text(),
        out.stderr_text()
    );
    let native = native_fib(lang).await;
    row(
        &format!("{} fib(27), best of 3 calls", lang.runtime),
        format!("{:.3} s", best(&guest)),
        &native
            .as_deref()
            .map_or("-".into(), |n| format!("{:.3} s", best(n))),
        "",
    );
    let pss = idle_pss(sandbox, lang).await?;
    let native_pss = native_idle_pss(lang).await;
    row(
        &format!("{} PSS per idle instance (waiting for stdin)", lang.runtime),
        format!("{:.2} MB", pss / 1e6),
        &native_pss.map_or("-".into(), |p| format!("{:.2} MB", p / 1e6)),
        "reported",
    );
    if let Some(n) = native {
        row(
            &format!("{} fib(27) ratio weir / {}", lang.runtime, lang.called),
            format!("{:.1}x", best(&guest) / best(&n)),
            "1x",
            "reported",
        );
    }
    Ok(())
}
