//! The `javascript` rows: first output of a hello program and fib(27), beside a fresh `node`
//! process doing the same in the same sitting (`$WEIR_BENCH_NODE`, default `node`; rows show `-`
//! where it is not installed), and PSS per idle instance.

use crate::first_output;
use crate::measure::{ms, opt_ms, percentile, row};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use weir_sandbox::{Limits, RunRequest, Sandbox};

const HELLO: &str = "console.log('hello')";

/// fib(27) three times in one interpreter, one line of seconds per call.
const FIB27: &str = "function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2) }\n\
for (let i = 0; i < 3; i++) { const t = performance.now(); fib(27); console.log((performance.now() - t) / 1000) }\n";

fn node() -> String {
    std::env::var("WEIR_BENCH_NODE").unwrap_or_else(|_| "node".into())
}

fn request(source: &str) -> RunRequest {
    let mut req = RunRequest::script(source);
    req.runtime = Some("javascript".into());
    req.close_stdin = true;
    req.limits = Limits {
        wall_ms: 120_000,
        ..Limits::default()
    };
    req
}

/// Start → first stdout byte of [`HELLO`], `n` sequential runs.
async fn weir_first_output(sandbox: &Sandbox, n: usize) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..20 {
        sandbox.start(request(HELLO)).await?.collect().await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut handle = sandbox.start(request(HELLO)).await?;
        first_output(&mut handle).await?;
        times.push(t.elapsed());
        handle.collect().await;
    }
    times.sort();
    Ok(times)
}

/// Spawn → first stdout byte of `node -e HELLO`, `n` sequential processes.
async fn node_first_output(n: usize) -> std::io::Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n + 3 {
        let t = Instant::now();
        let mut child = Command::new(node())
            .args(["-e", HELLO])
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

/// The calls' seconds a fib program printed.
fn calls(text: &str) -> Vec<f64> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

async fn node_fib() -> Option<Vec<f64>> {
    let out = Command::new(node())
        .args(["-e", FIB27])
        .output()
        .await
        .ok()?;
    let c = calls(&String::from_utf8_lossy(&out.stdout));
    (c.len() == 3).then_some(c)
}

fn best(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

/// The rows.
pub async fn rows(sandbox: &Sandbox, samples: usize) -> anyhow::Result<()> {
    sandbox.prepare("javascript").await?;
    let sandbox2 = sandbox.clone();
    let weir = tokio::spawn(async move { weir_first_output(&sandbox2, samples).await }).await??;
    let native = node_first_output(samples.min(50)).await.ok();
    let p = |t: &[Duration], q| percentile(t, q);
    row(
        "javascript hello: start -> first stdout byte, p50",
        ms(p(&weir, 0.5)),
        &opt_ms(native.as_deref().map(|t| p(t, 0.5))),
        "<= 0.5 ms",
    );
    row(
        "javascript hello: start -> first stdout byte, p99",
        ms(p(&weir, 0.99)),
        &opt_ms(native.as_deref().map(|t| p(t, 0.99))),
        "",
    );
    let out = sandbox.start(request(FIB27)).await?.collect().await;
    let guest = calls(&out.stdout_text());
    anyhow::ensure!(guest.len() == 3, "fib printed {:?}", out.stdout_text());
    let native = node_fib().await;
    row(
        "javascript fib(27), best of 3 calls",
        format!("{:.3} s", best(&guest)),
        &native
            .as_deref()
            .map_or("-".into(), |n| format!("{:.3} s", best(n))),
        "",
    );
    if let Some(n) = native {
        row(
            "javascript fib(27) ratio weir (QuickJS) / node (V8 JIT)",
            format!("{:.1}x", best(&guest) / best(&n)),
            "1x",
            "reported",
        );
    }
    Ok(())
}
