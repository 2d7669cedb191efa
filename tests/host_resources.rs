//! What runs take from the host, and that they get their share of it and give it back.
//!
//! Runs keep their fair CPU share on a busy host: with ordinary busy processes on every core, a
//! script that needs ~50 ms of CPU still finishes well inside its time limit, through the
//! library, the server and `weir run`. weir's own priorities (new runs first) must never rank
//! its runs below the rest of the host: under a `SCHED_IDLE` background lane such a script, once
//! it had printed, got almost no CPU and was killed by its time limit.
//!
//! Memory a run used comes back: a run that recursed as deep as the wasm stack allows leaves
//! none of its 34 MiB fiber stack resident in the pool.
//!
//! The tests take turns (one lock): each measures the whole process or loads the whole host.

mod common;

#[path = "common/ws.rs"]
mod ws;

use serde_json::json;
use std::process::{Command, Stdio};
use weir_bench::native::BusyHost;
use weir_sandbox::{Outcome, RunRequest};

/// Prints at once (which ends a run's foreground phase), then computes fib(24): ~50 ms of CPU
/// in the guest on a quiet core.
const SCRIPT: &str = "print('started', flush=True)\n\
def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\
print(fib(24))\n";

const EXPECTED: &str = "started\n46368\n";

/// The time limit every run here gets: 100 times what the script needs on a quiet core.
const LIMIT_MS: u64 = 5_000;

/// One ordinary busy process per core (`weir_bench::native::BusyHost`, the bench's own).
fn busy_host() -> BusyHost {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    BusyHost::start(cores).expect("busy processes spin")
}

/// One test at a time: the tests of this binary run in parallel otherwise.
static HOST: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_recursion_gives_its_stack_memory_back() {
    let _one = HOST.lock().await;
    let sandbox = common::private_sandbox(8);
    let deep = "import sys\nsys.setrecursionlimit(10**9)\n\
                def f(n):\n    return f(n + 1)\nf(0)\n";
    let run_all = |n: usize| {
        let sandbox = sandbox.clone();
        async move {
            let runs = (0..n).map(|_| {
                let mut req = RunRequest::script(deep);
                req.close_stdin = true;
                req.limits = common::limits(|l| l.wall_ms = 60_000);
                common::collect_in(&sandbox, req)
            });
            futures_util::future::join_all(runs).await
        }
    };
    // Once first: the process pages in the compiled guest and its other one-time costs.
    run_all(1).await;
    common::until_no_instances(&sandbox).await;
    let before = weir_bench::measure::pss_bytes().expect("PSS readable");
    for out in run_all(6).await {
        assert_eq!(out.outcome(), Outcome::StackOverflow);
    }
    common::until_no_instances(&sandbox).await;
    let grown = weir_bench::measure::pss_bytes().expect("PSS readable") - before;
    // Six stacks kept resident would be ~200 MB.
    assert!(
        grown < 48e6,
        "PSS grew {:.1} MB after six deep runs",
        grown / 1e6
    );
}

#[tokio::test]
async fn a_library_run_finishes_on_a_busy_host() {
    let _one = HOST.lock().await;
    let sandbox = common::sandbox();
    let _busy = busy_host();
    for _ in 0..3 {
        let mut req = RunRequest::script(SCRIPT);
        req.close_stdin = true;
        req.limits = common::limits(|l| l.wall_ms = LIMIT_MS);
        let out = common::collect_in(&sandbox, req).await;
        assert_eq!(
            out.outcome(),
            Outcome::Exited { code: 0 },
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout_text(), EXPECTED);
    }
}

#[tokio::test]
async fn a_server_run_finishes_on_a_busy_host() {
    let _one = HOST.lock().await;
    let server = ws::server(|_| {}).await;
    let _busy = busy_host();
    let body = json!({"source": SCRIPT, "limits": {"wall_ms": LIMIT_MS}});
    for _ in 0..3 {
        let r = ws::post_json(&server, "/v1/runs", &body).await.json();
        assert_eq!(r["outcome"], "exited", "{r}");
        assert_eq!(r["stdout"], EXPECTED);
    }
}

#[tokio::test]
async fn weir_run_finishes_on_a_busy_host_even_with_an_idle_lane_asked_for() {
    let _one = HOST.lock().await;
    let _busy = busy_host();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--timeout", "5s", "-c", SCRIPT])
        // A single run has no other runs to give way to: it keeps the process's priority.
        .env("WEIR_BACKGROUND_NICE", "idle")
        .stdin(Stdio::null())
        .output()
        .expect("weir runs");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), EXPECTED);
}

/// The highest resident set size this process reaches while `work` runs, above where it
/// started, bytes (sampled every 2 ms).
async fn peak_rss_growth<T>(work: impl std::future::Future<Output = T>) -> (T, i64) {
    fn rss() -> i64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: i64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }
    let start = rss();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let mut peak = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            peak.max(rss())
        }
    });
    let out = work.await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = sampler.join().unwrap_or(start);
    (out, peak - start)
}

/// A python-sci program that calls the runner's private door itself with huge JSON gets a
/// fault, and the host builds nothing of what it sent: only the structure each request kind
/// has is parsed, within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sci_requests_the_host_parses_are_bounded_and_typed() {
    let _one = HOST.lock().await;
    let sandbox = common::private_sandbox(2);
    sandbox
        .prepare("python-sci")
        .await
        .expect("python-sci prepares");
    let request = |source: &str| {
        let mut req = RunRequest::script(source);
        req.runtime = Some("python-sci".into());
        req.close_stdin = true;
        req.limits = common::limits(|l| {
            l.wall_ms = 60_000;
            l.memory_bytes = 1 << 30;
        });
        req
    };
    // Once first: the process pages in the compiled guest.
    common::collect_in(&sandbox, request("print(1)")).await;
    // 15 MB of `0,`: as a JSON tree, 7.5 million values (~250 MB on the host) per call.
    let flood = "import _host\npad = b'0,' * 7_500_000\n\
                 for op in (b'cell_done', b'display', b'no_such_op'):\n    \
                 try:\n        _host.call(b'{\"value\": [' + pad + b'0], \"op\": \"' + op + b'\"}')\n    \
                 except Exception as e:\n        print(type(e).__name__)\n\
                 print('alive')";
    let (out, grown) = peak_rss_growth(common::collect_in(&sandbox, request(flood))).await;
    assert!(
        out.stdout_text().ends_with("alive\n"),
        "{}",
        out.stderr_text()
    );
    assert!(
        grown < 120_000_000,
        "the host's RSS peaked {:.0} MB above its start",
        grown as f64 / 1e6
    );
}
