//! The kernel: Jupyter's five sockets from a connection file, each served by one task, over one
//! sandboxed session.
//!
//! - **shell** (one task, requests in order): `kernel_info`, `execute`, `complete`, `inspect`,
//!   `is_complete`, `history`, `comm_info`. It owns the session and the stdin socket, on which an
//!   `input()` in a cell becomes an `input_request`.
//! - **control**: `kernel_info`, `interrupt` (a `KeyboardInterrupt` in the running cell, the
//!   namespace kept), `shutdown`. SIGINT interrupts as the message does.
//! - **iopub** (one task, fed by a bounded queue): status, `execute_input`, `stream`,
//!   `display_data`, `update_display_data`, `clear_output`, `execute_result`, `error`; a
//!   subscriber is welcomed with `iopub_welcome`.
//! - **heartbeat**: echoes every ping back as it came.
//!
//! Every message is checked against the connection file's key by `jupyter-zmq-client`: one with
//! a bad signature, or one that does not parse, is logged and dropped, and the kernel goes on.
//! The sockets are bound before the sandbox loads, so `kernel_info` is answered at once; the
//! session starts in the background and the first request that needs it waits for it.

use crate::error::{Error, Result};
use crate::guest::Guest;
use crate::history::History;
use jupyter_protocol::{
    ClearOutput, CodeMirrorMode, CommInfoReply, CompleteReply, ConnectionInfo, DisplayData,
    ErrorOutput, ExecuteInput, ExecuteReply, ExecuteRequest, ExecuteResult, ExecutionCount,
    HistoryReply, InputRequest, InspectReply, InterruptReply, IoPubWelcome, IsCompleteReply,
    IsCompleteReplyStatus, JupyterMessage, JupyterMessageContent, KernelInfoReply, LanguageInfo,
    Media, ReplyError, ReplyStatus, ShutdownReply, Status, Stdio, StreamContent, Transient,
    UpdateDisplayData,
};
use jupyter_zmq_client::{
    create_kernel_control_connection, create_kernel_heartbeat_connection,
    create_kernel_iopub_xpub_connection, create_kernel_shell_connection,
    create_kernel_stdin_connection, KernelIoPubXPubConnection, KernelStdinConnection,
    RouterSendConnection, RuntimeError, SubscriptionEvent,
};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use weir_sandbox::{
    Bundle, CellEnd, EngineSettings, Event, Limits, RunControl, RuntimeInfo, Sandbox, StreamKind,
};

/// How long a cell may take to answer its interrupt at its time limit before its session is
/// stopped (and a fresh one started).
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);
/// How long a partial line of stdout waits for the rest of its line (or for `input()`, whose
/// prompt it then is) before it is sent as it is.
const PARTIAL_LINE_WAIT: Duration = Duration::from_millis(50);
/// iopub messages queued ahead of the socket; past it the cell's output waits.
const IOPUB_QUEUE: usize = 256;

/// What a kernel runs.
#[derive(Debug, Clone)]
pub struct KernelConfig {
    /// The runtime of its session (`python`, `python-sci`).
    pub runtime: String,
    /// Each cell's limits: `wall_ms` is a cell's time (interrupted at it, stopped 2 s later),
    /// the rest hold for the session.
    pub limits: Limits,
    /// The session's memory limit when configured for its runtime; else the larger of
    /// `limits.memory_bytes` and the runtime's own.
    pub memory_bytes: Option<u64>,
    /// The sandbox's engine settings.
    pub settings: EngineSettings,
}

/// The runtime a kernel names, from the runtimes weir has (known before the sandbox loads).
pub fn runtime_info(name: &str) -> Option<&'static RuntimeInfo> {
    runtimes().find(|info| info.answers_to(name))
}

/// Every runtime a kernel can run, the default first.
pub fn runtimes() -> impl Iterator<Item = &'static RuntimeInfo> {
    [
        weir_sandbox::runtime::python::info(),
        weir_sandbox::runtime::sci::info(),
    ]
    .into_iter()
}

/// Reads the connection file Jupyter wrote for a kernel.
pub fn read_connection_file(path: &std::path::Path) -> Result<ConnectionInfo> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Io(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| Error::Io(format!("{}: {e}", path.display())))
}

/// Echoes every heartbeat message back as it came, as the messaging protocol asks (the
/// client library's own loop answers `pong` and ends at its first error); a failed exchange is
/// logged and the next awaited.
async fn echo(mut heartbeat: jupyter_zmq_client::KernelHeartbeatConnection) {
    use zeromq::{SocketRecv, SocketSend};
    loop {
        let echoed = match heartbeat.socket.recv().await {
            Ok(ping) => heartbeat.socket.send(ping).await,
            Err(e) => Err(e),
        };
        if let Err(e) = echoed {
            tracing::debug!(error = %e, "a heartbeat exchange failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs a kernel on the sockets `connection` names until a `shutdown_request`.
pub async fn run(connection: ConnectionInfo, config: KernelConfig) -> Result<()> {
    let info = runtime_info(&config.runtime)
        .ok_or_else(|| Error::Io(format!("unknown runtime {:?}", config.runtime)))?;
    let session_id = weir_sandbox::RunId::new().to_string();
    let heartbeat = create_kernel_heartbeat_connection(&connection).await?;
    let (shell_send, mut shell_recv) = create_kernel_shell_connection(&connection, &session_id)
        .await?
        .split();
    let mut control = create_kernel_control_connection(&connection, &session_id).await?;
    let stdin = create_kernel_stdin_connection(&connection, &session_id).await?;
    let iopub = create_kernel_iopub_xpub_connection(&connection, &session_id).await?;

    let (publish, queue) = mpsc::channel(IOPUB_QUEUE);
    let iopub_task = weir_sandbox::AbortOnDrop(tokio::spawn(serve_iopub(iopub, queue)));
    let _heartbeat = weir_sandbox::AbortOnDrop(tokio::spawn(echo(heartbeat)));
    let interrupts: Arc<Interrupts> = Arc::default();
    let loader = weir_sandbox::AbortOnDrop(tokio::spawn(load(config.clone())));
    let mut shell = Shell {
        info,
        config,
        loader: Some(loader),
        sandbox: None,
        guest: None,
        interrupts: interrupts.clone(),
        reply: shell_send,
        stdin,
        publish,
        count: 0,
        history: History::default(),
    };
    let on_sigint = interrupts.clone();
    let _sigint = weir_sandbox::AbortOnDrop(tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            on_sigint.interrupt();
        }
    }));
    let shell_task = async move {
        loop {
            match crate::wire::read(&mut shell_recv).await {
                Ok(message) => shell.handle(&message).await,
                Err(e) if is_fatal(&e) => return e,
                Err(e) => {
                    tracing::warn!(error = %crate::wire::describe(&e), "shell message dropped")
                }
            }
        }
    };
    let control_task = async {
        loop {
            match control.read().await {
                Ok(message) => {
                    if let Some(done) =
                        control_message(&mut control, &message, info, &interrupts).await
                    {
                        return done;
                    }
                }
                Err(e) if is_fatal(&e) => return Err(Error::Protocol(e)),
                Err(e) => {
                    tracing::warn!(error = %crate::wire::describe(&e), "control message dropped")
                }
            }
        }
    };
    let ended = tokio::select! {
        e = shell_task => Err(Error::Protocol(e)),
        done = control_task => done,
    };
    if let Some(control) = interrupts.running() {
        control.stop();
    }
    drop(iopub_task);
    ended
}

/// Whether a read error means the socket is gone (not just one bad message).
fn is_fatal(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::ZmqError(_) | RuntimeError::IoError(_))
}

/// Where interrupts go: the session's run, and whoever waits for the cell's `input()`.
#[derive(Default)]
struct Interrupts {
    running: Mutex<Option<RunControl>>,
    asked: tokio::sync::Notify,
}

impl Interrupts {
    /// Raises `KeyboardInterrupt` in the running cell, if one runs.
    fn interrupt(&self) {
        if let Some(control) = self.running() {
            control.interrupt();
        }
        self.asked.notify_waiters();
    }

    fn running(&self) -> Option<RunControl> {
        self.running.lock().ok().and_then(|r| r.clone())
    }

    fn set(&self, control: Option<RunControl>) {
        if let Ok(mut running) = self.running.lock() {
            *running = control;
        }
    }
}

/// One control message; `Some` when the kernel is to end.
async fn control_message(
    control: &mut jupyter_zmq_client::KernelControlConnection,
    message: &JupyterMessage,
    info: &RuntimeInfo,
    interrupts: &Interrupts,
) -> Option<Result<()>> {
    let reply = match &message.content {
        JupyterMessageContent::KernelInfoRequest(_) => kernel_info(info).as_child_of(message),
        JupyterMessageContent::InterruptRequest(_) => {
            interrupts.interrupt();
            InterruptReply::new().as_child_of(message)
        }
        JupyterMessageContent::ShutdownRequest(request) => {
            let reply = ShutdownReply {
                restart: request.restart,
                status: ReplyStatus::Ok,
                error: None,
            }
            .as_child_of(message);
            let _ = control.send(reply).await;
            return Some(Ok(()));
        }
        other => {
            tracing::debug!(msg_type = other.message_type(), "control message ignored");
            return None;
        }
    };
    if let Err(e) = control.send(reply).await {
        tracing::warn!(error = %e, "control reply not sent");
    }
    None
}

/// The iopub socket: messages from the queue, and `iopub_welcome` to each subscriber.
async fn serve_iopub(
    mut iopub: KernelIoPubXPubConnection,
    mut queue: mpsc::Receiver<JupyterMessage>,
) {
    loop {
        tokio::select! {
            message = queue.recv() => match message {
                Some(message) => {
                    if let Err(e) = iopub.send(message).await {
                        tracing::warn!(error = %e, "iopub message not sent");
                    }
                }
                None => return,
            },
            event = iopub.recv_subscription() => {
                if let Ok(SubscriptionEvent::Subscribe(topic)) = event {
                    let _ = iopub.send(IoPubWelcome::new(topic).into()).await;
                }
            }
        }
    }
}

/// The sandbox and the session, loaded off the kernel's sockets.
async fn load(config: KernelConfig) -> Result<(Sandbox, Guest)> {
    let sandbox = Sandbox::load_async(config.settings.clone())
        .await
        .map_err(Error::Sandbox)?;
    sandbox
        .prepare(&config.runtime)
        .await
        .map_err(Error::Sandbox)?;
    let guest = start_guest(&sandbox, &config).await?;
    Ok((sandbox, guest))
}

async fn start_guest(sandbox: &Sandbox, config: &KernelConfig) -> Result<Guest> {
    let mut limits = config.limits;
    match (config.memory_bytes, sandbox.policy(Some(&config.runtime))) {
        (Some(memory), _) => limits.memory_bytes = memory,
        (None, Ok(policy)) => {
            if let Some(memory) = policy.memory_bytes {
                limits.memory_bytes = limits.memory_bytes.max(memory);
            }
        }
        (None, Err(_)) => {}
    }
    // A cell's time is the kernel's to enforce (interrupt, then stop); the run's own clocks
    // only back it up. A kernel idles as long as its notebook is open.
    limits.wall_ms = limits
        .wall_ms
        .saturating_add(INTERRUPT_GRACE.as_millis() as u64 + 5_000);
    limits.idle_ms = 30 * 24 * 3600 * 1000;
    Guest::start(sandbox, &config.runtime, limits).await
}

fn kernel_info(info: &RuntimeInfo) -> KernelInfoReply {
    KernelInfoReply {
        status: ReplyStatus::Ok,
        protocol_version: "5.3".into(),
        implementation: "weir".into(),
        implementation_version: env!("CARGO_PKG_VERSION").into(),
        language_info: LanguageInfo {
            name: "python".into(),
            version: info.version.clone(),
            mimetype: Some("text/x-python".into()),
            file_extension: Some(".py".into()),
            pygments_lexer: Some("ipython3".into()),
            codemirror_mode: Some(CodeMirrorMode::CustomMode {
                name: "ipython".into(),
                version: 3,
            }),
            nbconvert_exporter: Some("python".into()),
        },
        banner: format!(
            "{} in weir's WebAssembly sandbox (runtime {})",
            crate::spec::display_name(info).replace(" (weir sandbox)", ""),
            info.name
        ),
        help_links: Vec::new(),
        debugger: false,
        error: None,
    }
}

/// The shell socket's side of the kernel: the session, the execution count, the history.
struct Shell {
    info: &'static RuntimeInfo,
    config: KernelConfig,
    loader: Option<weir_sandbox::AbortOnDrop<Result<(Sandbox, Guest)>>>,
    sandbox: Option<Sandbox>,
    guest: Option<Guest>,
    interrupts: Arc<Interrupts>,
    reply: RouterSendConnection,
    stdin: KernelStdinConnection,
    publish: mpsc::Sender<JupyterMessage>,
    count: usize,
    history: History,
}

impl Shell {
    async fn handle(&mut self, message: &JupyterMessage) {
        self.publish(Status::busy().as_child_of(message)).await;
        let reply = match &message.content {
            JupyterMessageContent::KernelInfoRequest(_) => {
                Some(kernel_info(self.info).as_child_of(message))
            }
            JupyterMessageContent::ExecuteRequest(request) => {
                Some(self.execute(message, request).await.as_child_of(message))
            }
            JupyterMessageContent::CompleteRequest(r) => {
                let answer = self
                    .ask(
                        "complete",
                        json!({"code": r.code, "cursor_pos": r.cursor_pos}),
                    )
                    .await;
                Some(complete_reply(answer, r.cursor_pos).as_child_of(message))
            }
            JupyterMessageContent::InspectRequest(r) => {
                let args = json!({"code": r.code, "cursor_pos": r.cursor_pos,
                                  "detail_level": r.detail_level.unwrap_or(0)});
                let answer = self.ask("inspect", args).await;
                Some(inspect_reply(answer).as_child_of(message))
            }
            JupyterMessageContent::IsCompleteRequest(r) => {
                let answer = self.ask("is_complete", json!({"code": r.code})).await;
                Some(is_complete_reply(answer).as_child_of(message))
            }
            JupyterMessageContent::HistoryRequest(r) => {
                Some(HistoryReply::new(self.history.answer(r)).as_child_of(message))
            }
            JupyterMessageContent::CommInfoRequest(_) => Some(
                CommInfoReply {
                    status: ReplyStatus::Ok,
                    comms: Default::default(),
                    error: None,
                }
                .as_child_of(message),
            ),
            other => {
                tracing::debug!(msg_type = other.message_type(), "shell message ignored");
                None
            }
        };
        if let Some(reply) = reply {
            if let Err(e) = self.reply.send(reply).await {
                tracing::warn!(error = %e, "shell reply not sent");
            }
        }
        self.publish(Status::idle().as_child_of(message)).await;
    }

    async fn publish(&self, message: JupyterMessage) {
        let _ = self.publish.send(message).await;
    }

    /// The session, started if it is not (waiting for the sandbox the first time).
    async fn guest(&mut self) -> Result<&mut Guest> {
        if self.guest.is_none() {
            let guest = match self.loader.take() {
                Some(mut loader) => {
                    let (sandbox, guest) = (&mut loader.0)
                        .await
                        .map_err(|e| Error::Io(format!("the sandbox did not load: {e}")))??;
                    self.sandbox = Some(sandbox);
                    guest
                }
                None => {
                    let sandbox = self
                        .sandbox
                        .as_ref()
                        .ok_or_else(|| Error::Io("the sandbox did not load".into()))?;
                    start_guest(sandbox, &self.config).await?
                }
            };
            self.interrupts.set(Some(guest.control()));
            self.guest = Some(guest);
        }
        self.guest
            .as_mut()
            .ok_or_else(|| Error::Io("no session".into()))
    }

    /// The session ended: the next request starts a fresh one.
    fn lose_guest(&mut self) {
        if let Some(guest) = self.guest.take() {
            guest.stop();
        }
        self.interrupts.set(None);
    }

    /// A helper's answer, or `{"error": …}`.
    async fn ask(&mut self, op: &str, args: Value) -> Value {
        let answer = match self.guest().await {
            Ok(guest) => guest.helper(op, args).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(answer) => answer,
            Err(e) => {
                if matches!(e, Error::Ended(_)) {
                    self.lose_guest();
                }
                json!({"error": e.to_string()})
            }
        }
    }

    async fn execute(&mut self, parent: &JupyterMessage, request: &ExecuteRequest) -> ExecuteReply {
        let store = request.store_history && !request.silent;
        if store {
            self.count += 1;
        }
        let count = ExecutionCount::new(self.count.max(1));
        self.publish(
            ExecuteInput {
                code: request.code.clone(),
                execution_count: count,
            }
            .as_child_of(parent),
        )
        .await;
        let ended = self.run_cell(parent, request, count).await;
        let (end, output) = match ended {
            Ok(end) => {
                let result = end.result();
                let output = result.as_ref().map(|b| b.plain().to_owned());
                if let (Some(bundle), false) = (result, request.silent) {
                    self.publish(execute_result(count, &bundle).as_child_of(parent))
                        .await;
                }
                (end, output)
            }
            Err(e) => {
                let (ename, evalue) = match &e {
                    Error::Ended(why) => ("SessionEnded".to_owned(), why.clone()),
                    other => ("KernelError".to_owned(), other.to_string()),
                };
                let failure = CellEnd {
                    exception: Some(weir_sandbox::CellException {
                        type_name: ename,
                        message: evalue,
                    }),
                    ..Default::default()
                };
                (failure, None)
            }
        };
        if store {
            self.history
                .push(self.count, &request.code, output.as_deref());
        }
        match end.exception {
            None => ExecuteReply {
                status: ReplyStatus::Ok,
                execution_count: count,
                payload: Vec::new(),
                user_expressions: Some(Default::default()),
                error: None,
            },
            Some(exception) => {
                let traceback = match self.guest.as_mut() {
                    Some(guest) => guest.traceback().await,
                    None => Vec::new(),
                };
                let traceback = match traceback.is_empty() {
                    true => vec![format!("{}: {}", exception.type_name, exception.message)],
                    false => traceback,
                };
                let error = ReplyError {
                    ename: exception.type_name,
                    evalue: exception.message,
                    traceback,
                };
                self.publish(
                    ErrorOutput {
                        ename: error.ename.clone(),
                        evalue: error.evalue.clone(),
                        traceback: error.traceback.clone(),
                    }
                    .as_child_of(parent),
                )
                .await;
                ExecuteReply {
                    status: ReplyStatus::Error,
                    execution_count: count,
                    payload: Vec::new(),
                    user_expressions: None,
                    error: Some(Box::new(error)),
                }
            }
        }
    }

    /// Runs the cell, publishing its output as it comes; how it ended.
    async fn run_cell(
        &mut self,
        parent: &JupyterMessage,
        request: &ExecuteRequest,
        count: ExecutionCount,
    ) -> Result<CellEnd> {
        let limit = Duration::from_millis(self.config.limits.wall_ms);
        let guest = self.guest().await?;
        guest.send_cell(&request.code, request.allow_stdin, count.0)?;
        let control = guest.control();
        let started = tokio::time::Instant::now();
        let mut interrupted = false;
        let mut partial = Partial::default();
        loop {
            let deadline = match interrupted {
                false => started + limit,
                true => started + limit + INTERRUPT_GRACE,
            };
            let guest = self.guest().await?;
            let event = tokio::select! {
                event = guest.next_event() => event,
                _ = tokio::time::sleep_until(deadline) => {
                    match std::mem::replace(&mut interrupted, true) {
                        false => control.interrupt(),
                        true => { control.stop(); true }
                    };
                    continue;
                }
                _ = partial.wait() => {
                    if let Some(text) = partial.take() {
                        self.publish(stream(Stdio::Stdout, text).as_child_of(parent)).await;
                    }
                    continue;
                }
            };
            match event {
                Some(Event::Output { stream: kind, data }) => {
                    let text = String::from_utf8_lossy(&data).into_owned();
                    let (name, text) = match kind {
                        StreamKind::Stdout => (Stdio::Stdout, partial.push(text)),
                        StreamKind::Stderr => {
                            self.flush_partial(&mut partial, parent).await;
                            (Stdio::Stderr, text)
                        }
                    };
                    if !text.is_empty() {
                        self.publish(stream(name, text).as_child_of(parent)).await;
                    }
                }
                Some(Event::State(weir_sandbox::RunState::WaitingInput)) if request.allow_stdin => {
                    let prompt = partial.take().unwrap_or_default();
                    self.read_input(parent, prompt, &control, deadline).await;
                }
                Some(Event::Display(shown)) => {
                    self.flush_partial(&mut partial, parent).await;
                    self.publish(JupyterMessage::new(display(&shown), Some(parent)))
                        .await;
                }
                Some(Event::ClearOutput { wait }) => {
                    self.flush_partial(&mut partial, parent).await;
                    self.publish(ClearOutput { wait }.as_child_of(parent)).await;
                }
                Some(Event::Cell(end)) => {
                    self.flush_partial(&mut partial, parent).await;
                    return Ok(end);
                }
                Some(Event::Exit(result)) => {
                    self.flush_partial(&mut partial, parent).await;
                    self.lose_guest();
                    return Err(Error::Ended(format!(
                        "{} (a new session starts with the next cell)",
                        result.message
                    )));
                }
                None => {
                    self.lose_guest();
                    return Err(Error::Ended("the session vanished".into()));
                }
                Some(_) => {}
            }
        }
    }

    async fn flush_partial(&self, partial: &mut Partial, parent: &JupyterMessage) {
        if let Some(text) = partial.take() {
            self.publish(stream(Stdio::Stdout, text).as_child_of(parent))
                .await;
        }
    }

    /// `input()`: an `input_request` on the stdin socket, its answer the cell's next line. An
    /// interrupt, or the cell's time limit, ends the wait (the cell raises `KeyboardInterrupt`).
    async fn read_input(
        &mut self,
        parent: &JupyterMessage,
        prompt: String,
        control: &RunControl,
        deadline: tokio::time::Instant,
    ) {
        let request = InputRequest {
            prompt,
            password: false,
        };
        if self.stdin.send(request.as_child_of(parent)).await.is_err() {
            let _ = control.end_input();
            return;
        }
        let interrupts = self.interrupts.clone();
        loop {
            let answer = tokio::select! {
                answer = self.stdin.read() => answer,
                _ = interrupts.asked.notified() => return,
                _ = tokio::time::sleep_until(deadline) => return,
            };
            match answer {
                Ok(message) => {
                    if let JupyterMessageContent::InputReply(reply) = &message.content {
                        let line = format!("{}\n", reply.value);
                        if !control.write_stdin(line.into_bytes()).await {
                            let _ = control.end_input();
                        }
                        return;
                    }
                }
                Err(e) if is_fatal(&e) => {
                    let _ = control.end_input();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %crate::wire::describe(&e), "stdin message dropped")
                }
            }
        }
    }
}

/// stdout's last line while it is incomplete: sent once its line ends, or after
/// [`PARTIAL_LINE_WAIT`], or taken as the prompt of the `input()` that follows it.
#[derive(Default)]
struct Partial {
    text: String,
    since: Option<tokio::time::Instant>,
}

impl Partial {
    /// Adds stdout; what may be sent now (everything up to its last newline).
    fn push(&mut self, text: String) -> String {
        self.text.push_str(&text);
        match self.text.rfind('\n') {
            Some(end) => {
                let rest = self.text.split_off(end + 1);
                let ready = std::mem::replace(&mut self.text, rest);
                self.since = (!self.text.is_empty()).then(tokio::time::Instant::now);
                ready
            }
            None => {
                self.since.get_or_insert_with(tokio::time::Instant::now);
                String::new()
            }
        }
    }

    fn take(&mut self) -> Option<String> {
        self.since = None;
        (!self.text.is_empty()).then(|| std::mem::take(&mut self.text))
    }

    async fn wait(&self) {
        match self.since {
            Some(since) => tokio::time::sleep_until(since + PARTIAL_LINE_WAIT).await,
            None => std::future::pending().await,
        }
    }
}

fn stream(name: Stdio, text: String) -> StreamContent {
    StreamContent { name, text }
}

fn media(bundle: &Bundle) -> Media {
    serde_json::from_value(Value::Object(bundle.data.clone())).unwrap_or_default()
}

fn display(shown: &weir_sandbox::Display) -> JupyterMessageContent {
    let transient = shown.display_id.clone().map(|id| Transient {
        display_id: Some(id),
    });
    match (shown.update, transient) {
        (true, Some(transient)) => UpdateDisplayData {
            data: media(&shown.bundle),
            metadata: shown.bundle.metadata.clone(),
            transient,
        }
        .into(),
        (_, transient) => DisplayData {
            data: media(&shown.bundle),
            metadata: shown.bundle.metadata.clone(),
            transient,
        }
        .into(),
    }
}

fn execute_result(count: ExecutionCount, bundle: &Bundle) -> ExecuteResult {
    ExecuteResult {
        execution_count: count,
        data: media(bundle),
        metadata: bundle.metadata.clone(),
        // `{}`, not null: the message schema wants an object.
        transient: Some(Transient::default()),
    }
}

fn complete_reply(answer: Value, cursor: usize) -> CompleteReply {
    let matches = answer["matches"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let at = |key: &str| {
        answer[key]
            .as_u64()
            .map_or(cursor, |v| usize::try_from(v).unwrap_or(cursor))
    };
    CompleteReply {
        matches,
        cursor_start: at("cursor_start"),
        cursor_end: at("cursor_end"),
        metadata: Default::default(),
        status: ReplyStatus::Ok,
        error: None,
    }
}

fn inspect_reply(answer: Value) -> InspectReply {
    let found = answer["found"].as_bool().unwrap_or(false);
    let data = match answer.get("data") {
        Some(Value::Object(data)) => {
            serde_json::from_value(Value::Object(data.clone())).unwrap_or_default()
        }
        _ => Media::default(),
    };
    InspectReply {
        found,
        data,
        metadata: Default::default(),
        status: ReplyStatus::Ok,
        error: None,
    }
}

fn is_complete_reply(answer: Value) -> IsCompleteReply {
    let status = match answer["status"].as_str() {
        Some("complete") => IsCompleteReplyStatus::Complete,
        Some("incomplete") => IsCompleteReplyStatus::Incomplete,
        Some("invalid") => IsCompleteReplyStatus::Invalid,
        _ => IsCompleteReplyStatus::Unknown,
    };
    let indent = answer["indent"].as_str().unwrap_or_default().to_owned();
    IsCompleteReply::new(status, indent)
}
