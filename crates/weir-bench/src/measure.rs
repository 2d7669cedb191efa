//! Measurement helpers shared by the benchmark's parts: percentiles, medians, a closed-loop
//! load generator, PSS readings and the table's formatting.

use std::time::{Duration, Instant};

pub fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

pub fn opt_ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), ms)
}

pub fn row(name: &str, weir: impl std::fmt::Display, native: &str, target: &str) {
    println!("{name:<52} {weir:>22} {native:>22} {target:>12}");
}

pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

/// Completions per second of `workers` callers that each repeat `one` until `span` has passed
/// (`one` tells whether its attempt completed).
pub async fn closed_loop<F, Fut>(workers: usize, span: Duration, one: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let deadline = Instant::now() + span;
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if one().await {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap_or(0);
    }
    total as f64 / started.elapsed().as_secs_f64()
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Proportional set size of this process, bytes.
pub fn pss_bytes() -> Option<f64> {
    pss_bytes_of("self")
}

/// Proportional set size of process `pid` ("self" for this one), bytes.
pub fn pss_bytes_of(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Pss:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}
