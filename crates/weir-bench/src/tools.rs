//! Host-function figures (`weir_sandbox::Tools`): a guest's `tools.NAME(...)` round trip in the
//! library, timed inside the guest over many calls, beside an ordinary Python function call in
//! the same run.

use crate::measure::row;
use serde_json::{json, Value};
use weir_sandbox::{RunRequest, Sandbox, Tools};

/// Calls per sample.
const CALLS: usize = 2_000;

const PROGRAM: &str = "import time\nfrom weir import tools\n\
def echo(**kwargs):\n    return kwargs\n\
for f in (tools.echo, echo, tools.echo, echo):\n\
\x20   t = time.perf_counter()\n\
\x20   for i in range(CALLS):\n\
\x20       f(i=i)\n\
\x20   print((time.perf_counter() - t) / CALLS * 1e6)\n";

/// The host-function rows.
pub async fn rows(sandbox: &Sandbox) -> anyhow::Result<()> {
    let tools = Tools::new().add(
        "echo",
        "Returns its arguments.",
        json!({}),
        |args: Value| async move { Ok(args) },
    )?;
    let mut req = RunRequest::script(PROGRAM.replace("CALLS", &CALLS.to_string()));
    req.close_stdin = true;
    req.tools = Some(tools.with_limits(weir_sandbox::ToolLimits {
        max_calls: 10 * CALLS as u32,
        ..Default::default()
    }));
    let out = sandbox.start(req).await?.collect().await;
    let micros: Vec<f64> = out
        .stdout_text()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    anyhow::ensure!(
        micros.len() == 4,
        "the tools bench failed: {}",
        out.stderr_text()
    );
    // The second of each pair: the first warms up.
    row(
        "host function `tools.echo(i=…)` round trip in the library, per call",
        format!("{:.1} µs", micros[2]),
        &format!("{:.2} µs (a Python function)", micros[3]),
        "<= 20 µs",
    );
    Ok(())
}
