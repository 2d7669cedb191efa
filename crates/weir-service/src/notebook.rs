//! Stateful sessions over HTTP, for notebooks and agents (docs/sessions.md): `POST /v1/sessions`
//! starts one (a run in cell mode, `crate::kernel`), cells run in its namespace with
//! `POST /v1/sessions/{id}/exec` (the last expression's value comes back, as in a REPL), a cell
//! is interrupted with `KeyboardInterrupt`, files go in and out, `DELETE` ends it.
//!
//! Creating a session passes the same admission as every entry point and holds a session slot
//! until it ends; every other request needs the same `Host`, `Origin` and token checks. A
//! session is its creator's alone: to anyone else it does not exist (404).

use crate::admission::{self, Body};
use crate::api::error;
use crate::auth::ANONYMOUS;
use crate::history::RunRecord;
use crate::kernel::{CellReport, ExecError, Expiry, Kernel};
use crate::oneshot;
use crate::protocol::LimitParams;
use crate::state::{AppState, WsQuery};
use axum::extract::{FromRequestParts, Path, Query, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use weir_sandbox::files::FileError;
use weir_sandbox::transcript::Data;
use weir_sandbox::{Cell, Program, RunRequest};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions", post(create).get(list))
        .route("/v1/sessions/{id}", get(describe).delete(close))
        .route("/v1/sessions/{id}/exec", post(exec))
        .route("/v1/sessions/{id}/interrupt", post(interrupt))
        .route("/v1/sessions/{id}/stdin", post(stdin))
        .route("/v1/sessions/{id}/files", get(list_files))
        .route(
            "/v1/sessions/{id}/files/{*path}",
            get(read_file).put(write_file),
        )
}

/// `POST /v1/sessions`'s body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// The runtime, by name or alias; the server's default without one.
    pub runtime: Option<String>,
    /// Limits for every cell (`wall_ms` is a cell's default time limit).
    #[serde(default)]
    pub limits: LimitParams,
    /// Files placed in the working directory first: relative path → text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The guest's environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// `POST /v1/sessions/{id}/exec`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecParams {
    /// The cell's source.
    pub code: String,
    /// What the cell reads from stdin first; end of file after it unless `interactive`.
    pub stdin: Option<String>,
    /// The cell's `input()` waits for `POST /v1/sessions/{id}/stdin` instead of reading end of
    /// file (interrupt it, or let its time limit, to stop waiting).
    #[serde(default)]
    pub interactive: bool,
    /// The cell's time limit; the session's default and the server's maximum apply.
    pub timeout_ms: Option<u64>,
}

/// Why a request about a session is answered with an error.
pub enum Denied {
    /// Host, Origin or token refused.
    Refused(admission::Refusal),
    /// No such session for this caller (whoever else owns it).
    Missing(String),
    /// A query string that does not parse.
    BadQuery(String),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Refused(refusal) => refusal.into_response(Body::Error),
            Denied::Missing(id) => error(StatusCode::NOT_FOUND, format!("no session {id:?}")),
            Denied::BadQuery(message) => error(StatusCode::BAD_REQUEST, message),
        }
    }
}

/// The caller's session named by the path's `{id}`: extracting it runs the checks (`Host`,
/// `Origin`, token) and the ownership test, so a handler that takes one can only see its own.
pub struct Owned(pub Arc<Kernel>);

impl FromRequestParts<Arc<AppState>> for Owned {
    type Rejection = Denied;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Denied> {
        let Query(query) = Query::<WsQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| Denied::BadQuery(e.body_text()))?;
        let id = RawPathParams::from_request_parts(parts, state)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(name, _)| *name == "id")
                    .map(|(_, value)| value.to_string())
            })
            .unwrap_or_default();
        kernel(state, &id, &query, &parts.headers).map(Owned)
    }
}

/// Who is asking, for requests about an existing session.
fn who(state: &AppState, query: &WsQuery, headers: &HeaderMap) -> Result<String, Denied> {
    match admission::identify(state, query, headers) {
        Ok((user, _)) => Ok(user.unwrap_or_else(|| ANONYMOUS.into())),
        Err(refusal) => {
            state.metrics.rejected(refusal.reason);
            Err(Denied::Refused(refusal))
        }
    }
}

/// The caller's session `id`, or the 404 anyone else gets.
fn kernel(
    state: &AppState,
    id: &str,
    query: &WsQuery,
    headers: &HeaderMap,
) -> Result<Arc<Kernel>, Denied> {
    let user = who(state, query, headers)?;
    state
        .kernels
        .get(id, &user)
        .ok_or_else(|| Denied::Missing(id.to_string()))
}

/// A session's request for the sandbox: an empty program, then cells. A cell's time limit is
/// the exec's; the run's own wall limit only backs it up, past the longest cell and its
/// interrupt grace. Idle expiry is the server's (`session_idle_secs`).
pub fn session_request(state: &AppState, params: CreateParams) -> RunRequest {
    let config = &state.config;
    let mut req = RunRequest::script(Vec::new());
    req.program = Program::Code(String::new());
    req.cells = true;
    req.runtime = params.runtime;
    req.files = params
        .files
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    req.env = params.env.into_iter().collect();
    let mut limits = params.limits.apply(&config.limits, &config.max_limits);
    let backstop = config.max_limits.wall_ms + crate::kernel::INTERRUPT_GRACE.as_millis() as u64;
    limits.wall_ms = backstop + 5_000;
    limits.idle_ms = config.session_idle().as_millis() as u64 + 60_000;
    req.limits = limits;
    state.runtime_defaults(&mut req, params.limits.memory_bytes.is_some());
    req
}

/// A cell's time limit: asked for, else the server's default, at most the server's maximum.
pub fn cell_timeout(state: &AppState, asked: Option<u64>) -> Duration {
    let config = &state.config;
    let ms = asked
        .unwrap_or(config.limits.wall_ms)
        .clamp(1, config.max_limits.wall_ms);
    Duration::from_millis(ms)
}

/// Removes session `id` and records its end (`outcome`: `stopped`, `idle`, `shutdown`) as a
/// run's, in the metrics and the run history. Returns whether it existed.
pub async fn end(state: &AppState, id: &str, outcome: &str) -> bool {
    let Some(k) = state.kernels.remove(id) else {
        return false;
    };
    ended(state, &k, outcome).await;
    true
}

/// Counts and stores the end of session `k`, already removed.
async fn ended(state: &AppState, k: &Kernel, outcome: &str) {
    state
        .metrics
        .run_finished(outcome, k.age(), k.output_bytes());
    tracing::info!(session_id = %k.id, outcome, "session ended");
    let record = RunRecord::ended_by_server(
        &k.id,
        &k.user,
        k.created,
        outcome,
        k.output_bytes(),
        &k.runtime,
    );
    state.history.store(record, None).await;
}

/// Removes sessions whose run has ended and idle ones every so often (a quarter of
/// `session_idle_secs`, at most a second) until dropped: an idle one counts as a run ended
/// `idle`, an ended one with its run's own outcome.
pub async fn reap(state: Arc<AppState>) {
    let idle = state.config.session_idle();
    let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        for (k, why) in state.kernels.expire(idle) {
            match why {
                Expiry::Idle => ended(&state, &k, "idle").await,
                Expiry::RunEnded => run_ended(&state, &k).await,
            }
        }
    }
}

/// Counts and stores the end of session `k` (removed) whose run ended with no `exec` reading
/// it: with the run's own outcome when its exit can be read, else as `stopped`.
async fn run_ended(state: &AppState, k: &Kernel) {
    match k.unseen_exit().await {
        Some(exit) => finished(state, k, &exit).await,
        None => ended(state, k, "stopped").await,
    }
}

/// Counts and stores session `k`'s run, ended with `exit`.
async fn finished(state: &AppState, k: &Kernel, exit: &weir_sandbox::RunResult) {
    let outcome = exit.outcome.kind();
    state
        .metrics
        .run_finished(outcome, exit.duration, exit.output_bytes);
    tracing::info!(session_id = %k.id, outcome, "session ended");
    let record = RunRecord::finished(&k.id, &k.user, k.created, outcome, exit, false);
    state.history.store(record, None).await;
}

/// Ends every session (shutdown), each recorded as a run ended `shutdown`.
pub async fn end_all(state: &AppState) {
    for k in state.kernels.clear() {
        ended(state, &k, "shutdown").await;
    }
}

/// Starts a session for `user` on `slot`: its id, and the kernel (registered).
pub async fn start(
    state: &AppState,
    user: &str,
    params: CreateParams,
    slot: admission::Slot,
) -> Result<Arc<Kernel>, weir_sandbox::StartError> {
    let req = session_request(state, params);
    let scratch_limit = req.limits.scratch_bytes;
    let run = state.sandbox.start(req).await?;
    let id = format!("s{}", run.id());
    let kernel = Arc::new(Kernel::new(id, user.to_string(), run, scratch_limit, slot));
    state.kernels.insert(kernel.clone());
    state.metrics.runs_started.fetch_add(1, Relaxed);
    tracing::info!(session_id = %kernel.id, user, runtime = %kernel.runtime, "session started");
    state
        .history
        .started(&kernel.id, user, &kernel.runtime)
        .await;
    Ok(kernel)
}

async fn create(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    // Host, Origin and token first; the slot only once the body is in.
    if let Err(refusal) = admission::precheck(&state, &query, &headers) {
        return refusal.into_response(Body::Error);
    }
    let params: Option<CreateParams> =
        match oneshot::request_params(&state, &headers, body, "session").await {
            Ok(p) => p,
            Err((status, message)) => return error(status, message),
        };
    let admitted = match admission::admit(&state, &query, &headers).await {
        Ok(a) => a,
        Err(refusal) => return refusal.into_response(Body::Error),
    };
    let user = admitted.user.unwrap_or_else(|| ANONYMOUS.into());
    match start(&state, &user, params.unwrap_or_default(), admitted.permit).await {
        Ok(k) => (StatusCode::CREATED, Json(describe_json(&state, &k))).into_response(),
        Err(e) => error(oneshot::start_status(&e), e.to_string()),
    }
}

fn describe_json(state: &AppState, k: &Kernel) -> Value {
    json!({
        "session_id": k.id,
        "runtime": k.runtime,
        "busy": k.busy(),
        "idle_ms": k.idle_for().as_millis() as u64,
        "idle_timeout_ms": state.config.session_idle().as_millis() as u64,
    })
}

async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
) -> Response {
    let user = match who(&state, &query, &headers) {
        Ok(u) => u,
        Err(denied) => return denied.into_response(),
    };
    // Without a secret every caller is "anonymous": callers cannot be told apart, so a session
    // is reachable only through the id its creation returned (128 random bits, a capability)
    // and no listing shows one caller another's.
    if state.config.secret.is_none() {
        return Json(json!([])).into_response();
    }
    let all: Vec<Value> = state
        .kernels
        .of(&user)
        .iter()
        .map(|k| describe_json(&state, k))
        .collect();
    Json(Value::Array(all)).into_response()
}

async fn describe(State(state): State<Arc<AppState>>, Owned(k): Owned) -> Response {
    Json(describe_json(&state, &k)).into_response()
}

async fn close(State(state): State<Arc<AppState>>, Owned(k): Owned) -> Response {
    end(&state, &k.id, "stopped").await;
    StatusCode::NO_CONTENT.into_response()
}

async fn exec(
    State(state): State<Arc<AppState>>,
    Owned(k): Owned,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let params: ExecParams = match oneshot::request_params(&state, &headers, body, "cell").await {
        Ok(p) => p,
        Err((status, message)) => return error(status, message),
    };
    match run_cell(&state, &k, params).await {
        Ok(report) => Json(report_json(&report)).into_response(),
        Err(ExecError::Busy) => error(StatusCode::CONFLICT, ExecError::Busy.to_string()),
        Err(ExecError::Ended) => error(
            StatusCode::NOT_FOUND,
            format!("session {:?} has ended", k.id),
        ),
    }
}

/// Runs one cell in `k`, counting it in the metrics; a session whose run ended is removed.
pub async fn run_cell(
    state: &AppState,
    k: &Kernel,
    params: ExecParams,
) -> Result<CellReport, ExecError> {
    let cell = Cell {
        code: params.code,
        stdin: params.stdin.unwrap_or_default().into(),
        interactive: params.interactive,
    };
    let result = k.exec(cell, cell_timeout(state, params.timeout_ms)).await;
    match &result {
        // The run ended by itself before the cell could start.
        Err(ExecError::Ended) => {
            if state.kernels.remove(&k.id).is_some() {
                run_ended(state, k).await;
            }
        }
        Err(ExecError::Busy) => {}
        Ok(report) => {
            state.metrics.cells_run.fetch_add(1, Relaxed);
            // The session ended during the cell: counted and stored with the run's own outcome.
            if let Some(exit) = &report.exit {
                if state.kernels.remove(&k.id).is_some() {
                    finished(state, k, exit).await;
                }
            }
        }
    }
    result
}

/// How a cell ended, in words: `ok`, `error`, `interrupted`, `timeout`, or the run's outcome
/// when the session ended.
pub fn cell_outcome(report: &CellReport) -> &'static str {
    match (&report.end, &report.exit) {
        _ if report.timed_out => "timeout",
        (Some(end), _) if end.exception.is_none() => "ok",
        (Some(_), _) if report.interrupted => "interrupted",
        (Some(_), _) => "error",
        (None, Some(exit)) => exit.outcome.kind(),
        (None, None) => "crashed",
    }
}

/// A cell's report as `exec` answers it.
pub fn report_json(report: &CellReport) -> Value {
    let end = report.end.clone().unwrap_or_default();
    let mut body = json!({
        "outcome": cell_outcome(report),
        "result": end.value,
        "stdout": Data::from_bytes(&report.output.stdout),
        "stderr": Data::from_bytes(&report.output.stderr),
        "display": report.output.displays.iter().map(crate::protocol::display_value).collect::<Vec<_>>(),
        "duration_ms": report.duration.as_millis() as u64,
        "session_ended": report.exit.is_some(),
    });
    if let Some(e) = end.exception {
        body["error"] = json!(e);
    }
    if let Some(exit) = &report.exit {
        body["message"] = json!(exit.message);
    }
    body
}

async fn interrupt(Owned(k): Owned) -> Response {
    match k.interrupt() {
        true => Json(json!({ "interrupted": true })).into_response(),
        false => error(StatusCode::CONFLICT, "no cell is running in this session"),
    }
}

/// `POST /v1/sessions/{id}/stdin`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinParams {
    /// Text for the running cell's stdin.
    #[serde(default)]
    pub data: String,
    /// Then end of file for this cell.
    #[serde(default)]
    pub eof: bool,
}

async fn stdin(
    State(state): State<Arc<AppState>>,
    Owned(k): Owned,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let params: StdinParams = match oneshot::request_params(&state, &headers, body, "input").await {
        Ok(p) => p,
        Err((status, message)) => return error(status, message),
    };
    let bytes = params.data.len();
    match k.write_stdin(params.data, params.eof) {
        Ok(()) => Json(json!({ "bytes": bytes })).into_response(),
        Err(crate::kernel::InputError::NoCell) => {
            error(StatusCode::CONFLICT, "no cell is running in this session")
        }
        Err(crate::kernel::InputError::Stdin(e)) => {
            error(StatusCode::TOO_MANY_REQUESTS, e.to_string())
        }
    }
}

fn file_error(e: FileError) -> Response {
    let status = match &e {
        FileError::BadPath(_) | FileError::BadPattern { .. } | FileError::Refused { .. } => {
            StatusCode::BAD_REQUEST
        }
        FileError::NotFound(_) | FileError::Ended => StatusCode::NOT_FOUND,
        FileError::TooLarge { .. } | FileError::ScratchFull { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        FileError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

async fn list_files(Owned(k): Owned) -> Response {
    match k.files().await {
        Ok(list) => Json(list).into_response(),
        Err(e) => file_error(e),
    }
}

async fn read_file(
    State(state): State<Arc<AppState>>,
    Owned(k): Owned,
    Path((_, path)): Path<(String, String)>,
) -> Response {
    match k
        .read_file(path, state.config.max_message_bytes as u64)
        .await
    {
        Ok(data) => ([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response(),
        Err(e) => file_error(e),
    }
}

async fn write_file(
    State(state): State<Arc<AppState>>,
    Owned(k): Owned,
    Path((_, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let body = match oneshot::request_bytes(&state, &headers, body).await {
        Ok(b) => b,
        Err((status, message)) => return error(status, message),
    };
    match k.write_file(path, body).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => file_error(e),
    }
}
