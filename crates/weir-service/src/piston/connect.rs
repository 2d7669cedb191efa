//! Piston's interactive WebSocket, `GET /api/v2/connect`: the client sends `init` (a Piston job)
//! within a second; the server answers `runtime` and `stage`, streams `data` (stdout/stderr),
//! takes `data` (stdin) and `signal`, ends with `exit` and closes with 4999. Misuse closes with
//! Piston's 4000-range codes. weir adds `{"type": "eof"}` to close the script's stdin.
//!
//! Like a `/ws` session, the connection's task owns its run: when the socket goes, the run's
//! store is dropped with it.

use crate::admission::{self, Body};
use crate::auth::ANONYMOUS;
use crate::history::RunRecord;
use crate::piston::job::{self as piston, SignalAction};
use crate::socket as server;
use crate::socket as session;
use crate::state::{AppState, WsQuery};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;
use weir_sandbox::{Event, RunHandle};

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

pub async fn upgrade(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let admitted = match admission::admit(&state, &query, &headers).await {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(Body::Message),
    };
    let session_no = state.next_session.fetch_add(1, Relaxed);
    let protocol = admitted.protocol.clone();
    let app = state.clone();
    server::upgrade(&state, ws, protocol, move |socket| async move {
        let user = admitted.user.clone().unwrap_or_else(|| ANONYMOUS.into());
        let span = tracing::info_span!("piston", session = session_no, user = %user);
        run(socket, app, user).instrument(span).await;
        drop(admitted);
    })
}

/// The connection's job once `init` has started it.
struct Job {
    id: String,
    handle: RunHandle,
    started: SystemTime,
    output_bytes: u64,
    /// The signal a client's stop carried (reported in `exit`).
    signal: Option<&'static str>,
    shutdown_stop: bool,
}

struct Connection {
    app: Arc<AppState>,
    user: String,
    out: mpsc::Sender<Message>,
    job: Option<Job>,
}

enum Step {
    InitTimeout,
    Shutdown,
    GraceOver,
    Frame(Option<Result<Message, axum::Error>>),
    Event(Option<Event>),
    Nothing,
}

/// How the connection ends: a close frame, or nothing (the peer is gone).
enum End {
    Close(u16, String),
    Gone,
}

fn close(code: u16, reason: &str) -> Option<End> {
    Some(End::Close(code, reason.into()))
}

async fn run(socket: WebSocket, app: Arc<AppState>, user: String) {
    let (sink, mut stream) = socket.split();
    let (out, _liveness, writer) = session::outbound(sink);
    let mut shutdown = app.shutdown.subscribe();
    let mut shutting_down = *shutdown.borrow();
    let mut grace: Option<Instant> = None;
    let init_deadline = Instant::now() + INIT_TIMEOUT;
    let mut c = Connection {
        app: app.clone(),
        user,
        out,
        job: None,
    };
    let end = loop {
        if shutting_down && c.job.is_none() {
            break End::Close(close::GOING_AWAY, "server shutting down".into());
        }
        let room = c.out.capacity() > 0;
        let step = tokio::select! {
            biased;
            _ = shutdown.changed(), if !shutting_down => Step::Shutdown,
            _ = session::sleep_until_opt(grace), if c.job.is_some() => Step::GraceOver,
            _ = tokio::time::sleep_until(init_deadline), if c.job.is_none() => Step::InitTimeout,
            frame = stream.next() => Step::Frame(frame),
            event = next_event(&mut c.job), if room => Step::Event(event),
            _ = c.out.reserve(), if !room => Step::Nothing,
        };
        let ended = match step {
            Step::InitTimeout => close(close::INIT_TIMEOUT, "Initialization Timeout"),
            Step::Shutdown => {
                shutting_down = true;
                grace = Some(Instant::now() + app.config.shutdown_grace());
                None
            }
            Step::GraceOver => {
                if let Some(job) = &mut c.job {
                    job.shutdown_stop = true;
                    job.handle.control().stop();
                }
                grace = None;
                None
            }
            Step::Frame(frame) => c.frame(frame).await,
            Step::Event(event) => c.forward(event).await,
            Step::Nothing => None,
        };
        if let Some(end) = ended {
            break end;
        }
    };
    if let Some(job) = c.job.take() {
        let record = RunRecord::abandoned(
            &job.id,
            &c.user,
            job.started,
            job.output_bytes,
            job.handle.runtime(),
        );
        drop(job); // frees the run's store
        app.abandoned(record).await;
    }
    let close = match end {
        End::Close(code, reason) => Some((code, reason)),
        End::Gone => None,
    };
    session::close_outbound(c.out, writer, close).await;
    tracing::info!("piston connection ended");
}

async fn next_event(job: &mut Option<Job>) -> Option<Event> {
    match job {
        Some(j) => j.handle.next_event_merged(session::MERGE_BYTES).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    async fn send(&self, value: Value) {
        let _ = self.out.send(Message::Text(value.to_string().into())).await;
    }

    /// Piston's error path: an `error` message, then close 4002.
    async fn notify_error(&self, message: impl Into<String>) -> Option<End> {
        self.send(json!({ "type": "error", "message": message.into() }))
            .await;
        close(close::NOTIFIED_ERROR, "Notified Error")
    }

    async fn frame(&mut self, frame: Option<Result<Message, axum::Error>>) -> Option<End> {
        match frame {
            Some(Ok(Message::Text(text))) => self.message(text.as_str()).await,
            Some(Ok(Message::Binary(bytes))) => match std::str::from_utf8(&bytes) {
                Ok(text) => self.message(text).await,
                Err(_) => self.notify_error("messages must be UTF-8 JSON").await,
            },
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
            Some(Ok(Message::Close(_))) | None => Some(End::Gone),
            Some(Err(e)) if session::is_too_big(&e) => close(close::TOO_BIG, "message too big"),
            Some(Err(_)) => Some(End::Gone),
        }
    }

    async fn message(&mut self, text: &str) -> Option<End> {
        let msg: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => return self.notify_error(format!("invalid JSON: {e}")).await,
        };
        let kind = msg.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, &self.job) {
            ("init", Some(_)) => close(close::ALREADY_INITIALIZED, "Already Initialized"),
            ("init", None) => self.init(&msg).await,
            ("data" | "signal" | "eof", None) => {
                close(close::NOT_INITIALIZED, "Not yet initialized")
            }
            ("data", Some(job)) => {
                if msg.get("stream").and_then(Value::as_str) != Some("stdin") {
                    return close(close::STDIN_ONLY, "Can only write to stdin");
                }
                let Some(data) = msg.get("data").and_then(Value::as_str) else {
                    return self.notify_error("data must be a string").await;
                };
                if let Err(e) = job.handle.control().try_write_stdin(data.to_owned()) {
                    // Not fatal: the script has simply not read what was sent before.
                    self.send(json!({ "type": "error", "message": e.to_string() }))
                        .await;
                }
                None
            }
            ("eof", Some(job)) => {
                job.handle.control().close_stdin();
                None
            }
            ("signal", Some(_)) => self.signal(&msg),
            (other, _) => {
                let m =
                    format!("unknown message type {other:?} (expected init, data, signal or eof)");
                self.notify_error(m).await
            }
        }
    }

    async fn init(&mut self, msg: &Value) -> Option<End> {
        let (req, runtime) = match piston::job(msg, &self.app.config, self.app.sandbox.runtimes()) {
            Ok(job) => job,
            Err(m) => return self.notify_error(m).await,
        };
        let handle = match self.app.sandbox.start(req).await {
            Ok(h) => h,
            Err(e) => return self.notify_error(e.to_string()).await,
        };
        self.app.metrics.runs_started.fetch_add(1, Relaxed);
        let id = handle.id().to_string();
        tracing::info!(run_id = %id, "piston job started");
        self.app
            .history
            .started(&id, &self.user, handle.runtime())
            .await;
        self.job = Some(Job {
            id,
            handle,
            started: SystemTime::now(),
            output_bytes: 0,
            signal: None,
            shutdown_stop: false,
        });
        let announce =
            json!({"type": "runtime", "language": runtime.language, "version": runtime.version});
        self.send(announce).await;
        self.send(json!({"type": "stage", "stage": "run"})).await;
        None
    }

    fn signal(&mut self, msg: &Value) -> Option<End> {
        let name = msg.get("signal").and_then(Value::as_str).unwrap_or("");
        let (Some(action), Some(job)) = (piston::signal(name), &mut self.job) else {
            return close(close::INVALID_SIGNAL, "Invalid signal");
        };
        let control = job.handle.control();
        match action {
            SignalAction::Stop(signal) => {
                job.signal.get_or_insert(signal);
                control.stop();
            }
            SignalAction::Pause => control.pause(),
            SignalAction::Resume => control.resume(),
            SignalAction::Ignore => {}
        }
        None
    }

    /// Sends one run event; the run's `exit` ends the connection (4999, "Job Completed").
    async fn forward(&mut self, event: Option<Event>) -> Option<End> {
        let job = self.job.as_mut()?;
        match event {
            Some(Event::Output { stream, data }) => {
                job.output_bytes += data.len() as u64;
                let data = String::from_utf8_lossy(&data);
                self.send(json!({"type": "data", "stream": stream, "data": data}))
                    .await;
                None
            }
            // Piston jobs are never sessions: no cells end. Piston's protocol carries no images.
            Some(Event::State(_) | Event::Cell(_) | Event::Display(_)) => None,
            Some(Event::Exit(result)) => {
                let job = self.job.take()?;
                let outcome = if job.shutdown_stop {
                    "shutdown"
                } else {
                    result.outcome.kind()
                };
                self.app
                    .metrics
                    .run_finished(outcome, result.duration, result.output_bytes);
                let record =
                    RunRecord::finished(&job.id, &self.user, job.started, outcome, &result, false);
                self.app.history.store(record, None).await;
                let mut exit = piston::exit_fields(&result, job.signal);
                exit["type"] = json!("exit");
                exit["stage"] = json!("run");
                self.send(exit).await;
                if job.shutdown_stop {
                    close(close::GOING_AWAY, "server shutting down")
                } else {
                    close(close::JOB_COMPLETED, "Job Completed")
                }
            }
            None => {
                tracing::error!("run ended without an exit event");
                self.notify_error("the sandbox lost the run").await
            }
        }
    }
}
