//! One WebSocket session: the task that owns the socket and the session's run.
//!
//! Everything a session holds lives in this task: its active run's handle (and through it the
//! run's store), its writer task, its timers. When the socket closes, drops or times out, the task
//! ends and everything it owns is dropped at once; there is nothing to release by hand.

use crate::history::RunRecord;
use crate::protocol::{self, code, Incoming, Request, RpcError, RunParams};
use crate::registry::SessionEnd;
use crate::socket::{close, close_outbound, is_too_big, outbound, sleep_until_opt, MERGE_BYTES};
use crate::state::AppState;
use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;
use weir_sandbox::transcript::{OutputLog, Transcript};
use weir_sandbox::RunResult;
use weir_sandbox::{Event, RunHandle};
use weir_sandbox::{RunRequest, StartError};

/// The owner of runs from sessions without a signed-in user.
pub use crate::auth::ANONYMOUS;

/// What a session needs from its creator.
pub struct SessionCtx {
    pub app: Arc<AppState>,
    pub session_no: u64,
    pub user: Option<String>,
    /// Changes when the same user logs in elsewhere, or the node loses its cluster database.
    pub ended: watch::Receiver<SessionEnd>,
}

struct Active {
    id: String,
    handle: RunHandle,
    seq: u64,
    shutdown_stop: bool,
    started: SystemTime,
    /// Output bytes forwarded so far.
    output_bytes: u64,
    /// The request and output of a run being recorded as a transcript.
    recording: Option<Box<(RunRequest, OutputLog)>>,
}

struct Session {
    app: Arc<AppState>,
    /// The signed-in user, or "anonymous": the owner of this session's runs in the history.
    user: String,
    /// Where this session's compiled programs are cached (`weir_sandbox::compile_cache`).
    compile_scope: weir_sandbox::compile_cache::CompileScope,
    out: mpsc::Sender<Message>,
    active: Option<Active>,
    recent_runs: VecDeque<Instant>,
    last_activity: Instant,
    shutting_down: bool,
}

/// What woke the session loop.
enum Step {
    Ended(SessionEnd),
    Shutdown,
    GraceOver,
    Frame(Option<Result<Message, axum::Error>>),
    Event(Option<Event>),
    Heartbeat,
    Idle,
    Nothing,
}

/// Why the session ends, and the close frame to send (if the socket is still there).
enum End {
    Close(u16, &'static str),
    Gone,
}

/// Runs a session to its end.
pub async fn run(socket: WebSocket, ctx: SessionCtx) {
    let span = tracing::info_span!(
        "session",
        session = ctx.session_no,
        user = ctx.user.as_deref().unwrap_or("-")
    );
    run_in_span(socket, ctx).instrument(span).await
}

async fn run_in_span(socket: WebSocket, mut ctx: SessionCtx) {
    let (sink, mut stream) = socket.split();
    let (out, liveness, writer) = outbound(sink);
    let mut shutdown = ctx.app.shutdown.subscribe();
    let mut s = Session {
        app: ctx.app.clone(),
        user: ctx.user.clone().unwrap_or_else(|| ANONYMOUS.into()),
        compile_scope: weir_sandbox::compile_cache::scope_for(
            ctx.user.as_deref(),
            Some(ctx.session_no),
        ),
        out,
        active: None,
        recent_runs: VecDeque::new(),
        last_activity: Instant::now(),
        shutting_down: *shutdown.borrow(),
    };
    let config = &ctx.app.config;
    let mut heartbeat = tokio::time::interval(config.heartbeat());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the peer last showed it was there: a pong, or taking frames off its socket.
    let mut last_alive = Instant::now();
    let mut progress = Some(0);
    let mut grace_deadline: Option<Instant> = None;
    let end = loop {
        if s.shutting_down && s.active.is_none() {
            break End::Close(close::GOING_AWAY, "server shutting down");
        }
        let idle_at = s.last_activity + config.session_idle();
        let room = s.out.capacity() > 0;
        let step = tokio::select! {
            biased;
            why = ended(&mut ctx.ended) => Step::Ended(why),
            _ = shutdown.changed(), if !s.shutting_down => Step::Shutdown,
            _ = sleep_until_opt(grace_deadline), if s.active.is_some() => Step::GraceOver,
            frame = stream.next() => Step::Frame(frame),
            event = next_event(&mut s.active), if room => Step::Event(event),
            _ = s.out.reserve(), if !room => Step::Nothing,
            _ = heartbeat.tick() => Step::Heartbeat,
            _ = tokio::time::sleep_until(idle_at), if s.active.is_none() => Step::Idle,
        };
        match step {
            Step::Ended(SessionEnd::DatabaseLost) => {
                break End::Close(
                    close::TRY_AGAIN_LATER,
                    "this node lost its cluster database",
                )
            }
            Step::Ended(_) => break End::Close(close::REPLACED, "logged in from another location"),
            Step::Shutdown => {
                s.shutting_down = true;
                grace_deadline = Some(Instant::now() + config.shutdown_grace());
            }
            Step::GraceOver => {
                if let Some(a) = &mut s.active {
                    a.shutdown_stop = true;
                    a.handle.control().stop();
                }
                grace_deadline = None;
            }
            Step::Frame(frame) => match frame {
                Some(Ok(Message::Text(text))) => {
                    s.last_activity = Instant::now();
                    s.handle_text(text.as_str()).await;
                }
                Some(Ok(Message::Binary(_))) => {
                    let e = RpcError::new(
                        None,
                        code::INVALID_REQUEST,
                        "binary frames are not supported; send JSON text",
                    );
                    s.send(e.to_json()).await;
                }
                Some(Ok(Message::Pong(_))) => last_alive = Instant::now(),
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(Message::Close(_))) | None => break End::Gone,
                Some(Err(e)) => break too_big_or_gone(&e),
            },
            Step::Event(event) => s.forward(event).await,
            Step::Heartbeat => {
                let now = liveness.progress();
                if now.is_none() || now != progress {
                    progress = now;
                    last_alive = Instant::now();
                }
                if last_alive.elapsed() > config.heartbeat() * 3 {
                    tracing::info!("peer stopped answering pings; dropping the session");
                    break End::Gone;
                }
                liveness.ping();
            }
            Step::Idle => break End::Close(close::IDLE, "idle timeout"),
            Step::Nothing => {}
        }
    };
    // Drop the run first: its store is freed before the socket is told goodbye.
    if let Some(active) = s.active.take() {
        let record = s.abandoned(&active);
        drop(active); // frees the run's store
        s.app.abandoned(record).await;
    }
    let close = match end {
        End::Close(code, reason) => Some((code, reason.to_string())),
        End::Gone => None,
    };
    close_outbound(s.out, writer, close).await;
    tracing::info!("session ended");
}

/// Resolves with the reason when the registry ends this session (its user logged in elsewhere,
/// or the node lost its cluster database); never for anonymous sessions (whose sender is
/// dropped at once).
async fn ended(rx: &mut watch::Receiver<SessionEnd>) -> SessionEnd {
    let why = rx
        .wait_for(|e| *e != SessionEnd::Open)
        .await
        .map(|why| *why);
    match why {
        Ok(why) => why,
        Err(_) => std::future::pending().await,
    }
}

fn too_big_or_gone(e: &axum::Error) -> End {
    if is_too_big(e) {
        End::Close(close::TOO_BIG, "message too big")
    } else {
        End::Gone
    }
}

async fn next_event(active: &mut Option<Active>) -> Option<Event> {
    match active {
        Some(a) => a.handle.next_event_merged(MERGE_BYTES).await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn send(&self, text: String) {
        let _ = self.out.send(Message::Text(text.into())).await;
    }

    async fn reply(&self, id: &Option<Value>, result: Result<Value, RpcError>) {
        match (id, result) {
            (Some(id), Ok(value)) => self.send(protocol::result(id, value)).await,
            (_, Err(e)) => self.send(e.to_json()).await,
            (None, Ok(_)) => {} // a notification gets no response
        }
    }

    async fn handle_text(&mut self, text: &str) {
        match protocol::parse(text) {
            Ok(Incoming { id, request }) => {
                let result = self.handle(&id, request).await;
                self.reply(&id, result).await;
            }
            Err(e) => self.send(e.to_json()).await,
        }
    }

    async fn handle(&mut self, id: &Option<Value>, request: Request) -> Result<Value, RpcError> {
        let err = |code, msg: String| RpcError::new(id.clone(), code, msg);
        match request {
            Request::Ping => Ok(json!("pong")),
            Request::Run(params) => self.start_run(*params).await.map_err(|(c, m)| err(c, m)),
            Request::Input { run_id, data } => {
                let control = self.control(id, &run_id)?;
                let len = data.len();
                match control.try_write_stdin(data) {
                    Ok(()) => Ok(json!({ "bytes": len })),
                    Err(m) => Err(err(code::LIMIT, m.to_string())),
                }
            }
            Request::Eof { run_id } => {
                let control = self.control(id, &run_id)?;
                control.close_stdin();
                Ok(json!(true))
            }
            Request::Stop { run_id } => {
                self.control(id, &run_id)?.stop();
                Ok(json!(true))
            }
            Request::Pause { run_id } => {
                self.control(id, &run_id)?.pause();
                Ok(json!(true))
            }
            Request::Resume { run_id } => {
                self.control(id, &run_id)?.resume();
                Ok(json!(true))
            }
            Request::Interrupt { run_id } => match self.control(id, &run_id)?.interrupt() {
                true => Ok(json!(true)),
                false => Err(err(
                    code::NOT_NOW,
                    "this run cannot be interrupted (its runtime does not support it)".into(),
                )),
            },
        }
    }

    /// The active run's control, or the "unknown run" error answering request `id`.
    fn control(
        &self,
        id: &Option<Value>,
        run_id: &str,
    ) -> Result<weir_sandbox::RunControl, RpcError> {
        match &self.active {
            Some(a) if a.id == run_id => Ok(a.handle.control()),
            _ => Err(RpcError::new(
                id.clone(),
                code::UNKNOWN_RUN,
                format!("unknown run {run_id:?}: it is not this session's active run"),
            )),
        }
    }

    /// Sends one run event to the client; `None` means the run vanished (reported as crashed).
    async fn forward(&mut self, event: Option<Event>) {
        let Some(active) = &mut self.active else {
            return;
        };
        if let (Some(rec), Some(e)) = (&mut active.recording, &event) {
            rec.1.observe(e);
        }
        let text = match event {
            Some(Event::Output { stream, data }) => {
                active.seq += 1;
                active.output_bytes += data.len() as u64;
                protocol::output(&active.id, stream, &data, active.seq)
            }
            Some(Event::State(state)) => protocol::state(&active.id, state),
            Some(Event::Display(image)) => protocol::display(&active.id, &image),
            // Runs started here are never sessions: no cells end.
            Some(Event::Cell(_)) => return,
            Some(Event::Exit(result)) => {
                let Some(active) = self.active.take() else {
                    return;
                };
                self.last_activity = Instant::now(); // the idle clock starts when the run ends
                self.finish(active, result).await
            }
            None => {
                tracing::error!("run ended without an exit event");
                if let Some(active) = self.active.take() {
                    let record = self.abandoned(&active);
                    self.app.abandoned(record).await;
                }
                return;
            }
        };
        self.send(text).await;
    }

    /// Counts and stores a finished run; returns its `exit` notification.
    async fn finish(&mut self, active: Active, result: RunResult) -> String {
        let outcome = if active.shutdown_stop {
            "shutdown"
        } else {
            result.outcome.kind()
        };
        self.app
            .metrics
            .run_finished(outcome, result.duration, result.output_bytes);
        let transcript = active.recording.and_then(|rec| {
            let (req, log) = *rec;
            let runtime = self.app.sandbox.runtime(Some(&result.runtime)).ok()?;
            Transcript::record(&req, runtime, &log, &result)
                .map_err(|e| tracing::warn!(error = %e, "cannot record the transcript"))
                .ok()
        });
        let url = transcript
            .as_ref()
            .map(|_| format!("/v1/runs/{}/transcript", active.id));
        let record = RunRecord::finished(
            &active.id,
            &self.user,
            active.started,
            outcome,
            &result,
            transcript.is_some(),
        );
        // Queued before the client hears of the exit, so the run can be fetched right after.
        self.app
            .history
            .store(record, transcript.map(|t| t.to_json()))
            .await;
        protocol::exit(&active.id, outcome, &result, url.as_deref())
    }

    /// The history record of a run that ended without an `exit` (its client went away).
    fn abandoned(&self, active: &Active) -> RunRecord {
        RunRecord::abandoned(
            &active.id,
            &self.user,
            active.started,
            active.output_bytes,
            active.handle.runtime(),
        )
    }

    /// Stops the active run (if any) and forwards its remaining events, ending with its `exit`.
    async fn finish_active(&mut self) {
        if let Some(a) = &self.active {
            a.handle.control().stop();
        }
        while self.active.is_some() {
            let event = next_event(&mut self.active).await;
            self.forward(event).await;
        }
    }

    fn rate_limited(&mut self) -> bool {
        let now = Instant::now();
        while self
            .recent_runs
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60))
        {
            self.recent_runs.pop_front();
        }
        if self.recent_runs.len() >= self.app.config.runs_per_minute as usize {
            return true;
        }
        self.recent_runs.push_back(now);
        false
    }

    async fn start_run(&mut self, params: RunParams) -> Result<Value, (i64, String)> {
        if self.shutting_down {
            return Err((code::LIMIT, "the server is shutting down".into()));
        }
        if self.rate_limited() {
            return Err((
                code::LIMIT,
                format!(
                    "too many runs: at most {} per minute per session",
                    self.app.config.runs_per_minute
                ),
            ));
        }
        self.finish_active().await;
        let config = &self.app.config;
        let record = params.record;
        let memory_given = params.limits.memory_bytes.is_some();
        let mut req = params.into_request(&config.limits, &config.max_limits);
        self.app.runtime_defaults(&mut req, memory_given);
        req.compile_scope = self.compile_scope.clone();
        let recording = record.then(|| Box::new((req.clone(), OutputLog::default())));
        let handle = self.app.sandbox.start(req).await.map_err(|e| match e {
            StartError::AtCapacity(_) | StartError::MemoryBudget { .. } => {
                (code::LIMIT, e.to_string())
            }
            StartError::Internal(_) => (code::INTERNAL, e.to_string()),
            _ => (code::INVALID_PARAMS, e.to_string()),
        })?;
        self.app
            .metrics
            .runs_started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = handle.id().to_string();
        tracing::info!(run_id = %id, "run started");
        self.app
            .history
            .started(&id, &self.user, handle.runtime())
            .await;
        self.active = Some(Active {
            id: id.clone(),
            handle,
            seq: 0,
            shutdown_stop: false,
            started: SystemTime::now(),
            output_bytes: 0,
            recording,
        });
        Ok(json!({ "run_id": id }))
    }
}
