//! `/ws`: weir's JSON-RPC protocol over a WebSocket (docs/protocol.md), for the browser IDE and
//! any client that wants to stream a run: `run` starts one (at most one at a time per
//! connection), `input`/`eof`/`stop`/`pause`/`resume`/`interrupt` control it, and its output,
//! state changes, figures and `exit` come back as notifications. A signed-in user holds one
//! connection at a time: a new login closes the previous one with 4001 (across nodes in cluster
//! mode). The pump ([`crate::lifecycle::pump`]) owns the socket and the run; this module maps the
//! protocol.

use crate::error::Error;
use crate::lifecycle::admission::{self, Admitted};
use crate::lifecycle::body::NoBody;
use crate::lifecycle::error::Text;
use crate::lifecycle::pump::{self, Flow, Link, Protocol, Watch};
use crate::lifecycle::{Reach, TrackedRun};
use crate::protocol::{self, code, Incoming, Request, RpcError, RunParams};
use crate::state::AppState;
use axum::extract::{State, WebSocketUpgrade};
use axum::response::Response;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;
use weir_sandbox::{Event, RunResult};

/// A connection idle this long (no run, no message) is closed with 4002.
pub const IDLE: u16 = 4002;

/// `GET /ws`: admits the caller, registers their login, and upgrades.
pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    ws: WebSocketUpgrade,
    admitted: Admitted<NoBody, Text>,
) -> Response {
    let connection_no = app.next_connection.fetch_add(1, Relaxed);
    let user = admitted.user.clone();
    let login = match app.registry.register(user.as_deref(), connection_no).await {
        Ok(login) => login,
        Err(e) => return admission::login_refused::<Text>(&app, e),
    };
    let protocol = admitted.protocol.clone();
    let state = app.clone();
    pump::upgrade(&app, ws, protocol, move |socket| async move {
        let span = tracing::info_span!(
            "connection",
            connection = connection_no,
            user = user.as_deref().unwrap_or("-")
        );
        let watch = Watch {
            heartbeat: Some(state.config.heartbeat()),
            login: Some(login.ended.clone()),
        };
        let connection = Connection::new(state.clone(), &admitted, connection_no);
        pump::pump(socket, &state, connection, watch)
            .instrument(span)
            .await;
        state.registry.unregister(user.as_deref(), connection_no);
        drop(login); // releases the user's cluster lock
        drop(admitted); // and their slot
    })
}

/// One `/ws` connection's protocol state.
struct Connection {
    app: Arc<AppState>,
    /// The signed-in user, or "anonymous": the owner of this connection's runs.
    user: String,
    /// Where this connection's compiled programs are cached (`weir_sandbox::CompileScope`).
    compile_scope: weir_sandbox::CompileScope,
    run: Option<TrackedRun>,
    /// The active run's output notifications so far (`seq`).
    seq: u64,
    recent_runs: VecDeque<Instant>,
    last_activity: Instant,
}

impl Protocol for Connection {
    fn run(&mut self) -> &mut Option<TrackedRun> {
        &mut self.run
    }

    async fn on_text(&mut self, link: &Link, text: &str) -> Flow {
        self.last_activity = Instant::now();
        match protocol::parse(text) {
            Ok(Incoming { id, request }) => {
                let result = self.handle(link, &id, request).await;
                reply(link, &id, result).await;
            }
            Err(e) => link.send(e.to_json()).await,
        }
        Flow::Continue
    }

    async fn on_binary(&mut self, link: &Link, _: &[u8]) -> Flow {
        let e = RpcError::new(
            None,
            code::INVALID_REQUEST,
            "binary frames are not supported; send JSON text",
        );
        link.send(e.to_json()).await;
        Flow::Continue
    }

    async fn on_event(&mut self, link: &Link, event: Option<Event>) -> Flow {
        if let Some(text) = self.notification(event).await {
            link.send(text).await;
        }
        Flow::Continue
    }

    fn deadline(&self) -> Option<(Instant, u16, &'static str)> {
        let idle_at = self.last_activity + self.app.config.session_idle();
        self.run
            .is_none()
            .then_some((idle_at, IDLE, "idle timeout"))
    }
}

/// Answers request `id` (a notification gets no answer, unless it failed).
async fn reply(link: &Link, id: &Option<Value>, result: Result<Value, RpcError>) {
    match (id, result) {
        (Some(id), Ok(value)) => link.send(protocol::result(id, value)).await,
        (_, Err(e)) => link.send(e.to_json()).await,
        (None, Ok(_)) => {}
    }
}

impl Connection {
    fn new<B, D>(app: Arc<AppState>, admitted: &Admitted<B, D>, connection_no: u64) -> Self {
        Connection {
            user: admitted.owner().to_string(),
            compile_scope: weir_sandbox::CompileScope::of(
                admitted.user.as_deref(),
                Some(connection_no),
            ),
            app,
            run: None,
            seq: 0,
            recent_runs: VecDeque::new(),
            last_activity: Instant::now(),
        }
    }

    async fn handle(
        &mut self,
        link: &Link,
        id: &Option<Value>,
        request: Request,
    ) -> Result<Value, RpcError> {
        let err = |code, msg: String| RpcError::new(id.clone(), code, msg);
        match request {
            Request::Ping => Ok(json!("pong")),
            Request::Run(params) => self
                .start_run(link, *params)
                .await
                .map_err(|(c, m)| err(c, m)),
            Request::Input { run_id, data } => {
                let control = self.control(id, &run_id)?;
                let len = data.len();
                match control.try_write_stdin(data) {
                    Ok(()) => Ok(json!({ "bytes": len })),
                    Err(m) => Err(err(code::LIMIT, m.to_string())),
                }
            }
            Request::Eof { run_id } => {
                self.control(id, &run_id)?.close_stdin();
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
            Request::Return {
                run_id,
                call_id,
                result,
            } => match self.control(id, &run_id)?.answer_call(call_id, result) {
                Ok(()) => Ok(json!(true)),
                Err(e) => Err(err(code::NOT_NOW, e.to_string())),
            },
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
        match &self.run {
            Some(run) if run.id() == run_id => Ok(run.control()),
            _ => Err(RpcError::new(
                id.clone(),
                code::UNKNOWN_RUN,
                format!("unknown run {run_id:?}: it is not this session's active run"),
            )),
        }
    }

    /// The notification for one run event; the `exit` records the run first. `None` means the
    /// run vanished (the pump records it `stopped`).
    async fn notification(&mut self, event: Option<Event>) -> Option<String> {
        let run = self.run.as_mut()?;
        match event? {
            Event::Output { stream, data } => {
                self.seq += 1;
                Some(protocol::output(run.id(), stream, &data, self.seq))
            }
            Event::State(state) => Some(protocol::state(run.id(), state)),
            Event::Display(shown) => Some(protocol::display(run.id(), &shown)),
            Event::ClearOutput { wait } => Some(protocol::clear_output(run.id(), wait)),
            Event::Call(call) => Some(protocol::call(run.id(), &call)),
            // Runs started here are never sessions: no cells end.
            Event::Cell(_) => None,
            Event::Exit(result) => {
                let mut run = self.run.take()?;
                self.last_activity = Instant::now(); // the idle clock starts when the run ends
                Some(finish(&mut run, &result).await)
            }
        }
    }

    /// Stops the active run (if any) and forwards its remaining events, ending with its `exit`.
    async fn finish_active(&mut self, link: &Link) {
        if let Some(run) = &self.run {
            run.control().stop();
        }
        while let Some(run) = self.run.as_mut() {
            let event = run.next_event().await;
            let vanished = event.is_none();
            if let Some(text) = self.notification(event).await {
                link.send(text).await;
            }
            if vanished {
                self.run = None;
            }
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

    async fn start_run(&mut self, link: &Link, params: RunParams) -> Result<Value, (i64, String)> {
        if link.shutting_down() {
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
        self.finish_active(link).await;
        let config = &self.app.config;
        let record = params.record;
        let memory_given = params.limits.memory_bytes.is_some();
        if params.callback_url.is_some() {
            return Err((
                code::INVALID_PARAMS,
                "callback_url is for POST /v1/runs: a /ws client answers calls itself".into(),
            ));
        }
        let tools = protocol::declared(&params.functions).map_err(|e| (code::INVALID_PARAMS, e))?;
        let reach = Reach::from_params(params.network.as_deref(), &params.secrets)
            .map_err(|e| (code::INVALID_PARAMS, e.to_string()))?;
        let mut req = params.into_request(&config.limits, &config.max_limits);
        req.tools = tools;
        self.app.runtime_defaults(&mut req, memory_given);
        req.compile_scope = self.compile_scope.clone();
        let run = TrackedRun::start(&self.app.books(), &self.user, req, record, reach)
            .await
            .map_err(start_error)?;
        let id = run.id().to_string();
        self.run = Some(run);
        self.seq = 0;
        Ok(json!({ "run_id": id }))
    }
}

/// Records a run that ended with `result`; its `exit` notification.
async fn finish(run: &mut TrackedRun, result: &RunResult) -> String {
    let recorded = run.finish(result).await;
    protocol::exit(
        run.id(),
        recorded.outcome,
        result,
        recorded.transcript.as_deref(),
    )
}

/// The JSON-RPC error for a run that could not start.
fn start_error(e: Error) -> (i64, String) {
    use weir_sandbox::Error as Sandbox;
    let code = match e {
        Error::Sandbox(Sandbox::AtCapacity(_) | Sandbox::MemoryBudget { .. }) => code::LIMIT,
        Error::Sandbox(Sandbox::Internal(_)) => code::INTERNAL,
        _ => code::INVALID_PARAMS,
    };
    (code, e.to_string())
}
