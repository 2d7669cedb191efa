//! Host-function figures (`weir_sandbox::Tools`): a guest's `tools.NAME(...)` round trip in the
//! library, timed inside the guest over many calls, beside an ordinary Python function call in
//! the same run; and over `/ws`, where a client answers each call (`weir serve` in a process
//! of its own, the client in this one), beside the library's; and an allowed HTTP GET from the
//! guest's `urllib.request`, made by the host (`weir_egress`), beside native `python3`'s own
//! `urllib.request` GET of the same local server.

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
    let over_ws = ws_round_trip().await?;
    row(
        "host function round trip over /ws (the client answers `call` with `return`), per call",
        format!("{:.3} ms", over_ws / 1000.0),
        &format!("{:.1} µs (in the library)", micros[2]),
        "<= 0.3 ms",
    );
    let (guest, native) = http_get(sandbox).await?;
    row(
        "allowed HTTP GET from the guest's urllib (made by the host), local server, per request",
        format!("{:.0} µs", guest),
        &format!("{:.0} µs (python3's urllib)", native),
        "measured",
    );
    Ok(())
}

/// Requests per sample.
const GETS: usize = 300;

const GET_PROGRAM: &str = "import time, urllib.request\n\
for _ in range(2):\n\
\x20   t = time.perf_counter()\n\
\x20   for i in range(GETS):\n\
\x20       urllib.request.urlopen(URL).read()\n\
\x20   print((time.perf_counter() - t) / GETS * 1e6)\n";

/// µs per GET of a local server's 2-byte answer: from a weir run allowed to reach it, and from
/// native `python3`, one after the other against the same server; each the second of two
/// batches of [`GETS`].
async fn http_get(sandbox: &Sandbox) -> anyhow::Result<(f64, f64)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let server = tokio::spawn(answer_ok(listener));
    let program = GET_PROGRAM
        .replace("GETS", &GETS.to_string())
        .replace("URL", &format!("'http://127.0.0.1:{port}/'"));
    let config = weir_egress::NetworkConfig {
        allow: vec![format!("127.0.0.1:{port}")],
        max_requests: 10 * GETS as u32,
        ..Default::default()
    };
    let network = weir_egress::Network::new(&config, &Default::default())?
        .ok_or_else(|| anyhow::anyhow!("the bench's network allows nothing"))?;
    let mut req = RunRequest::script(program.clone());
    req.close_stdin = true;
    network.for_run(None, Default::default())?.give(&mut req);
    let out = sandbox.start(req).await?.collect().await;
    let native = tokio::process::Command::new(crate::native::python())
        .arg("-c")
        .arg(&program)
        .output()
        .await?;
    server.abort();
    let second = |text: &str| {
        text.lines()
            .filter_map(|l| l.trim().parse::<f64>().ok())
            .nth(1)
    };
    let guest = second(&out.stdout_text())
        .ok_or_else(|| anyhow::anyhow!("the GET bench failed: {}", out.stderr_text()))?;
    let native = second(&String::from_utf8_lossy(&native.stdout))
        .ok_or_else(|| anyhow::anyhow!("native python3's GET bench failed"))?;
    Ok((guest, native))
}

/// Answers every connection's request with `ok` and closes it.
async fn answer_ok(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut connections = tokio::task::JoinSet::new();
    while let Ok((mut stream, _)) = listener.accept().await {
        connections.spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
            let _ = stream.write_all(answer).await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Calls over `/ws` per sample, after as many to warm up.
const WS_CALLS: usize = 500;

/// A `/ws` client's run calling `echo` [`WS_CALLS`] times twice, each call answered as it comes;
/// the second batch's time per call, µs, timed inside the guest.
async fn ws_round_trip() -> anyhow::Result<f64> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let server = crate::ws::Server::start(4).await?;
    let mut ws = crate::ws::connect(&server).await?;
    let program = "import time\nfrom weir import tools\n\
        for _ in range(2):\n\
        \x20   t = time.perf_counter()\n\
        \x20   for i in range(CALLS):\n\
        \x20       tools.echo(i=i)\n\
        \x20   print((time.perf_counter() - t) / CALLS * 1e6)\n"
        .replace("CALLS", &WS_CALLS.to_string());
    let run = json!({"jsonrpc": "2.0", "id": 1, "method": "run", "params": {
        "source": program, "functions": [{"name": "echo"}], "limits": {"wall_ms": 60_000}}});
    ws.send(Message::Text(run.to_string().into())).await?;
    let mut printed = Vec::new();
    loop {
        let m = crate::ws::next_json(&mut ws).await?;
        match m["method"].as_str() {
            Some("call") => {
                let p = &m["params"];
                let answer = json!({"jsonrpc": "2.0", "method": "return", "params": {
                    "run_id": p["run_id"], "call_id": p["call_id"], "value": p["args"]}});
                ws.send(Message::Text(answer.to_string().into())).await?;
            }
            Some("output") => printed.extend(
                (m["params"]["data"].as_str().unwrap_or_default().lines())
                    .filter_map(|l| l.trim().parse::<f64>().ok()),
            ),
            Some("exit") => break,
            _ => {}
        }
    }
    server.stop().await;
    match printed[..] {
        [_, second] => Ok(second),
        _ => anyhow::bail!("the /ws host-function bench printed {printed:?}"),
    }
}
