//! `weir kernel` figures, measured as a notebook front end meets them: from starting the kernel
//! process to its `kernel_info_reply`, an `execute` round trip for `1+1` on a started session,
//! and a 1,000-row DataFrame's HTML bundle (`python-sci`). Beside them, the same against
//! ipykernel when a Python with it is at hand (`$WEIR_BENCH_IPYKERNEL_PYTHON`, else `python3`).

use crate::measure::{ms, percentile, row};
use jupyter_protocol::{
    ConnectionInfo, ExecuteRequest, JupyterMessage, JupyterMessageContent, KernelInfoRequest,
    ShutdownRequest, Transport,
};
use jupyter_zmq_client::{
    create_client_control_connection, create_client_iopub_connection,
    create_client_shell_connection_with_identity, peek_ports, peer_identity_for_session,
    ClientIoPubConnection, ClientShellConnection,
};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long the bench waits for any one reply (a first cell may load a runtime).
const PATIENCE: Duration = Duration::from_secs(600);

/// One kernel process and a client's shell and iopub sockets on it.
struct Kernel {
    child: Child,
    connection: ConnectionInfo,
    shell: ClientShellConnection,
    iopub: ClientIoPubConnection,
    _dir: tempfile::TempDir,
}

impl Kernel {
    /// Starts `argv` (with `{connection_file}` replaced) and waits for its `kernel_info_reply`;
    /// the kernel and how long that took.
    async fn start(argv: &[String]) -> anyhow::Result<(Kernel, Duration)> {
        let dir = tempfile::tempdir()?;
        let ports = peek_ports("127.0.0.1".parse()?, 5).await?;
        let connection = ConnectionInfo {
            ip: "127.0.0.1".into(),
            transport: Transport::TCP,
            shell_port: ports[0],
            iopub_port: ports[1],
            stdin_port: ports[2],
            control_port: ports[3],
            hb_port: ports[4],
            key: weir_sandbox::RunId::new().to_string(),
            signature_scheme: "hmac-sha256".into(),
            kernel_name: None,
        };
        let file = dir.path().join("kernel.json");
        std::fs::write(&file, serde_json::to_vec(&connection)?)?;
        let file = file.to_string_lossy().into_owned();
        let args: Vec<String> = argv[1..]
            .iter()
            .map(|a| a.replace("{connection_file}", &file))
            .collect();
        let started = Instant::now();
        let child = Command::new(&argv[0])
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        // Ready when its shell port accepts a connection: polled every millisecond, so the
        // figure is the kernel's and not a ZeroMQ client's reconnection backoff.
        let shell_addr = ("127.0.0.1", connection.shell_port);
        while tokio::net::TcpStream::connect(shell_addr).await.is_err() {
            anyhow::ensure!(started.elapsed() < PATIENCE, "the kernel never listened");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let session = weir_sandbox::RunId::new().to_string();
        let identity = peer_identity_for_session(&session)?;
        let mut shell =
            create_client_shell_connection_with_identity(&connection, &session, identity).await?;
        let iopub = create_client_iopub_connection(&connection, "", &session).await?;
        shell.send(KernelInfoRequest {}.into()).await?;
        loop {
            let reply = tokio::time::timeout(PATIENCE, shell.read()).await??;
            if let JupyterMessageContent::KernelInfoReply(_) = reply.content {
                break;
            }
        }
        let took = started.elapsed();
        let kernel = Kernel {
            child,
            connection,
            shell,
            iopub,
            _dir: dir,
        };
        Ok((kernel, took))
    }

    /// Runs `code`; the round trip to its `execute_reply`, and the bytes of its
    /// `execute_result`'s `text/html` (read from iopub afterwards, off the clock).
    async fn execute(&mut self, code: &str) -> anyhow::Result<(Duration, usize)> {
        let request: JupyterMessage = ExecuteRequest::new(code.into()).into();
        let id = request.header.msg_id.clone();
        let started = Instant::now();
        self.shell.send(request).await?;
        loop {
            let reply = tokio::time::timeout(PATIENCE, self.shell.read()).await??;
            if let JupyterMessageContent::ExecuteReply(_) = reply.content {
                break;
            }
        }
        let took = started.elapsed();
        let mut html = 0;
        loop {
            let message = tokio::time::timeout(PATIENCE, self.iopub.read()).await??;
            let ours = message
                .parent_header
                .as_ref()
                .is_some_and(|p| p.msg_id == id);
            match &message.content {
                JupyterMessageContent::ExecuteResult(result) if ours => {
                    html = serde_json::to_value(&result.data)?["text/html"]
                        .as_str()
                        .map_or(0, str::len);
                }
                JupyterMessageContent::Status(status)
                    if ours && status.execution_state == jupyter_protocol::ExecutionState::Idle =>
                {
                    break
                }
                _ => {}
            }
        }
        Ok((took, html))
    }

    async fn shut_down(mut self) {
        if let Ok(mut control) = create_client_control_connection(
            &self.connection,
            &weir_sandbox::RunId::new().to_string(),
        )
        .await
        {
            let _ = control
                .send(ShutdownRequest { restart: false }.into())
                .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), control.read()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

fn weir_kernel(runtime: &str) -> anyhow::Result<Vec<String>> {
    let weir = std::env::current_exe()?.to_string_lossy().into_owned();
    Ok([
        &weir,
        "kernel",
        "-f",
        "{connection_file}",
        "--runtime",
        runtime,
    ]
    .map(str::to_owned)
    .to_vec())
}

/// ipykernel's argv, when a Python with it is at hand.
fn ipykernel() -> Option<Vec<String>> {
    let python = std::env::var("WEIR_BENCH_IPYKERNEL_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = std::process::Command::new(&python)
        .args(["-c", "import ipykernel"])
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    found.then(|| {
        [
            &python,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
        ]
        .map(str::to_owned)
        .to_vec()
    })
}

/// Starts `argv` `n` times: the median start, and the last kernel (kept running).
async fn starts(argv: &[String], n: usize) -> anyhow::Result<(Duration, Kernel)> {
    let mut times = Vec::with_capacity(n);
    let mut last = None;
    for _ in 0..n {
        if let Some(kernel) = last.take() {
            Kernel::shut_down(kernel).await;
        }
        let (kernel, took) = Kernel::start(argv).await?;
        times.push(took);
        last = Some(kernel);
    }
    times.sort();
    let kernel = last.ok_or_else(|| anyhow::anyhow!("no kernel started"))?;
    Ok((percentile(&times, 0.5), kernel))
}

/// `samples` round trips of `code` after one to warm up: the median.
async fn round_trips(kernel: &mut Kernel, code: &str, samples: usize) -> anyhow::Result<Duration> {
    kernel.execute(code).await?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        times.push(kernel.execute(code).await?.0);
    }
    times.sort();
    Ok(percentile(&times, 0.5))
}

const DATAFRAME: &str = "import pandas as pd\npd.set_option('display.max_rows', 1000)\n\
df = pd.DataFrame({'n': range(1000), 'square': [i * i for i in range(1000)], \
'name': ['row %d' % i for i in range(1000)]})";

/// A 1,000-row DataFrame shown `samples` times on a kernel of `argv`: the median round trip and
/// its HTML's bytes.
async fn dataframe(argv: &[String], samples: usize) -> anyhow::Result<(Duration, usize)> {
    let (mut kernel, _) = Kernel::start(argv).await?;
    let made = kernel.execute(DATAFRAME).await;
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..samples {
        if made.is_err() {
            break;
        }
        let (took, html) = kernel.execute("df").await?;
        times.push(took);
        bytes = html;
    }
    Kernel::shut_down(kernel).await;
    made?;
    if bytes == 0 {
        anyhow::bail!("the DataFrame showed no HTML");
    }
    times.sort();
    Ok((percentile(&times, 0.5), bytes))
}

/// The kernel rows, weir beside ipykernel.
pub async fn rows(samples: usize) -> anyhow::Result<()> {
    let theirs = ipykernel();
    let (start, mut kernel) = starts(&weir_kernel("python")?, 10).await?;
    let native = match &theirs {
        Some(argv) => Some(starts(argv, 5).await?),
        None => None,
    };
    row(
        "kernel: start -> kernel_info_reply, p50 (ipykernel beside)",
        ms(start),
        &native.as_ref().map_or("-".into(), |(d, _)| ms(*d)),
        "<= 50 ms",
    );
    let trip = round_trips(&mut kernel, "1+1", samples).await?;
    Kernel::shut_down(kernel).await;
    let native_trip = match native {
        Some((_, mut theirs)) => {
            let trip = round_trips(&mut theirs, "1+1", samples).await?;
            Kernel::shut_down(theirs).await;
            Some(trip)
        }
        None => None,
    };
    row(
        "kernel: execute `1+1` -> execute_reply, p50",
        ms(trip),
        &native_trip.map_or("-".into(), ms),
        "<= 1 ms",
    );
    let dataframes = samples.clamp(5, 50);
    let (took, bytes) = dataframe(&weir_kernel("python-sci")?, dataframes).await?;
    let native = match &theirs {
        // ipykernel's Python may lack pandas: then no figure beside.
        Some(argv) => dataframe(argv, dataframes).await.ok(),
        None => None,
    };
    row(
        &format!(
            "kernel: 1,000-row DataFrame -> execute_reply ({} KB text/html), p50",
            bytes / 1000
        ),
        ms(took),
        &native.map_or("-".into(), |(d, _)| ms(d)),
        "measured",
    );
    Ok(())
}
