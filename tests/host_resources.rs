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
