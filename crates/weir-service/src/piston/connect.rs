//! Piston's interactive WebSocket, `GET /api/v2/connect`: the client sends `init` (a Piston job)
//! within a second; the server answers `runtime` and `stage`, streams `data` (stdout/stderr),
//! takes `data` (stdin) and `signal`, ends with `exit` and closes with 4999. Misuse closes with
//! Piston's 4000-range codes. weir adds `{"type": "eof"}` to close the script's stdin.
//!
//! The pump ([`crate::lifecycle::pump`]) owns the socket and the job's run, as for `/ws`: when
//! the socket goes, the run is stopped and recorded; this module maps Piston's protocol.

use crate::lifecycle::admission::Admitted;
use crate::lifecycle::body::NoBody;
use crate::lifecycle::error::PistonJson;
use crate::lifecycle::pump::{self, Flow, Link, Protocol, Watch};
use crate::lifecycle::{Reach, TrackedRun};
use crate::piston::job::{self as piston, SignalAction};
use crate::state::AppState;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;
use weir_sandbox::Event;

/// Piston's close codes (and the two standard ones weir also uses).
pub mod close {
    pub const ALREADY_INITIALIZED: u16 = 4000;
    pub const INIT_TIMEOUT: u16 = 4001;
    pub const NOTIFIED_ERROR: u16 = 4002;
    pub const NOT_INITIALIZED: u16 = 4003;
    pub const STDIN_ONLY: u16 = 4004;
    pub const INVALID_SIGNAL: u16 = 4005;
    pub const JOB_COMPLETED: u16 = 4999;
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
}

/// A connection that has not sent `init` by then is closed (4001), as Piston does.
pub const INIT_TIMEOUT: Duration = Duration::from_secs(1);

/// `GET /api/v2/connect`: admits the caller and upgrades.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    ws: WebSocketUpgrade,
    admitted: Admitted<NoBody, PistonJson>,
) -> Response {
    let connection_no = app.next_connection.fetch_add(1, Relaxed);
    let protocol = admitted.protocol.clone();
    let state = app.clone();
    pump::upgrade(&app, ws, protocol, move |socket| async move {
        let user = admitted.owner().to_string();
        let span = tracing::info_span!("piston", connection = connection_no, user = %user);
        let connection = Connection {
            app: state.clone(),
            user,
            run: None,
            initialized: false,
            signal: None,
            init_deadline: Instant::now() + INIT_TIMEOUT,
        };
        pump::pump(socket, &state, connection, Watch::default())
            .instrument(span)
            .await;
        tracing::info!("piston connection ended");
        drop(admitted); // releases the slot
    })
}

/// One Piston connection: its job (a run) once `init` has started it.
struct Connection {
    app: Arc<AppState>,
    user: String,
    run: Option<TrackedRun>,
    /// `init` has started a job (the connection takes no second one, even once it ended).
    initialized: bool,
    /// The signal a client's stop carried (reported in `exit`).
    signal: Option<&'static str>,
    init_deadline: Instant,
}

impl Protocol for Connection {
    fn run(&mut self) -> &mut Option<TrackedRun> {
        &mut self.run
    }

    async fn on_text(&mut self, link: &Link, text: &str) -> Flow {
        self.message(link, text).await
    }

    async fn on_binary(&mut self, link: &Link, data: &[u8]) -> Flow {
        match std::str::from_utf8(data) {
            Ok(text) => self.message(link, text).await,
            Err(_) => notify_error(link, "messages must be UTF-8 JSON").await,
        }
    }

    async fn on_event(&mut self, link: &Link, event: Option<Event>) -> Flow {
        self.forward(link, event).await
    }

    fn deadline(&self) -> Option<(Instant, u16, &'static str)> {
        (!self.initialized).then_some((
            self.init_deadline,
            close::INIT_TIMEOUT,
            "Initialization Timeout",
        ))
    }
}

/// Piston's error path: an `error` message, then close 4002.
async fn notify_error(link: &Link, message: impl Into<String>) -> Flow {
    send(link, json!({ "type": "error", "message": message.into() })).await;
    Flow::close(close::NOTIFIED_ERROR, "Notified Error")
}

async fn send(link: &Link, value: Value) {
    link.send(value.to_string()).await;
}

impl Connection {
    async fn message(&mut self, link: &Link, text: &str) -> Flow {
        let msg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return notify_error(link, format!("invalid JSON: {e}")).await,
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, self.initialized) {
            ("init", true) => Flow::close(close::ALREADY_INITIALIZED, "Already Initialized"),
            ("init", false) => self.init(link, &msg).await,
            ("data" | "signal" | "eof", false) => {
                Flow::close(close::NOT_INITIALIZED, "Not yet initialized")
            }
            ("data", true) => self.data(link, &msg).await,
            ("eof", true) => {
                if let Some(run) = &self.run {
                    run.control().close_stdin();
                }
                Flow::Continue
            }
            ("signal", true) => self.signal(&msg),
            (other, _) => {
                let m =
                    format!("unknown message type {other:?} (expected init, data, signal or eof)");
                notify_error(link, m).await
            }
        }
    }

    /// Text for the job's stdin.
    async fn data(&mut self, link: &Link, msg: &Value) -> Flow {
        if msg.get("stream").and_then(Value::as_str) != Some("stdin") {
            return Flow::close(close::STDIN_ONLY, "Can only write to stdin");
        }
        let Some(data) = msg.get("data").and_then(Value::as_str) else {
            return notify_error(link, "data must be a string").await;
        };
        let Some(run) = &self.run else {
            return Flow::Continue;
        };
        if let Err(e) = run.control().try_write_stdin(data.to_owned()) {
            // Not fatal: the script has simply not read what was sent before.
            send(link, json!({ "type": "error", "message": e.to_string() })).await;
        }
        Flow::Continue
    }

    async fn init(&mut self, link: &Link, msg: &Value) -> Flow {
        let app = &self.app;
        let (req, runtime) = match piston::job(msg, &app.config, app.sandbox.runtimes(), |r| {
            app.memory_default(r)
        }) {
            Ok(job) => job,
            Err(m) => return notify_error(link, m).await,
        };
        let run =
            match TrackedRun::start(&self.app.books(), &self.user, req, false, Reach::server())
                .await
            {
                Ok(run) => run,
                Err(e) => return notify_error(link, e.to_string()).await,
            };
        self.run = Some(run);
        self.initialized = true;
        let announce =
            json!({"type": "runtime", "language": runtime.language, "version": runtime.version});
        send(link, announce).await;
        send(link, json!({"type": "stage", "stage": "run"})).await;
        Flow::Continue
    }

    fn signal(&mut self, msg: &Value) -> Flow {
        let name = msg.get("signal").and_then(Value::as_str).unwrap_or("");
        let Some(action) = piston::signal(name) else {
            return Flow::close(close::INVALID_SIGNAL, "Invalid signal");
        };
        let Some(run) = &self.run else {
            return Flow::Continue;
        };
        let control = run.control();
        match action {
            SignalAction::Stop(signal) => {
                self.signal.get_or_insert(signal);
                control.stop();
            }
            SignalAction::Pause => control.pause(),
            SignalAction::Resume => control.resume(),
            SignalAction::Ignore => {}
        }
        Flow::Continue
    }

    /// Sends one run event; the run's `exit` ends the connection (4999, "Job Completed").
    async fn forward(&mut self, link: &Link, event: Option<Event>) -> Flow {
        match event {
            Some(Event::Output { stream, data }) => {
                let data = String::from_utf8_lossy(&data);
                send(
                    link,
                    json!({"type": "data", "stream": stream, "data": data}),
                )
                .await;
                Flow::Continue
            }
            // Piston jobs are never sessions: no cells end. Piston's protocol carries no images.
            Some(
                Event::State(_)
                | Event::Cell(_)
                | Event::Display(_)
                | Event::ClearOutput { .. }
                | Event::Call(_),
            ) => Flow::Continue,
            Some(Event::Exit(result)) => {
                let Some(mut run) = self.run.take() else {
                    return Flow::Continue;
                };
                let recorded = run.finish(&result).await;
                let mut exit = piston::exit_fields(&result, self.signal);
                exit["type"] = json!("exit");
                exit["stage"] = json!("run");
                send(link, exit).await;
                match recorded.outcome {
                    "shutdown" => Flow::close(close::GOING_AWAY, "server shutting down"),
                    _ => Flow::close(close::JOB_COMPLETED, "Job Completed"),
                }
            }
            None => {
                tracing::error!("run ended without an exit event");
                notify_error(link, "the sandbox lost the run").await
            }
        }
    }
}
