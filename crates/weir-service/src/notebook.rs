//! Stateful sessions over HTTP, for notebooks and agents (docs/sessions.md): `POST /v1/sessions`
//! starts one (a run in cell mode, [`crate::lifecycle::session`]), cells run in its namespace
//! with `POST /v1/sessions/{id}/exec` (the last expression's value comes back, as in a REPL), a
//! cell is interrupted with `KeyboardInterrupt`, files go in and out, `DELETE` ends it.
//!
//! Creating a session passes the admission every entry point passes and holds a slot until it
//! ends; every other request needs the same `Host`, `Origin` and token checks. A session is its
//! creator's alone: to anyone else it does not exist (404).

use crate::error::Error;
use crate::lifecycle::admission::{Admitted, Identified};
use crate::lifecycle::body::{self, Json as Body, Raw};
use crate::lifecycle::error::WeirJson;
use crate::lifecycle::session::{self, cell_outcome, CreateParams, ExecParams};
use crate::lifecycle::EndedBy;
use crate::sessions::{CellReport, Session};
use crate::snapshots::SnapshotMeta;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Path, RawPathParams, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use weir_sandbox::Data;

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
        .route("/v1/sessions/{id}/snapshot", post(take_snapshot))
        .route("/v1/sessions/{id}/fork", post(fork))
        .route("/v1/snapshots", get(list_snapshots))
        .route(
            "/v1/snapshots/{id}",
            get(describe_snapshot).delete(delete_snapshot),
        )
}

/// The caller's session named by the path's `{id}`: extracting it runs the caller checks
/// (`Host`, `Origin`, token) and the ownership test, so a handler that takes one can only see
/// its own.
pub struct Owned(pub Arc<Session>);

impl FromRequestParts<Arc<AppState>> for Owned {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, Error> {
        let caller = Identified::from_request_parts(parts, app).await?;
        let id = RawPathParams::from_request_parts(parts, app)
            .await
            .ok()
            .and_then(|params| {
                params
                    .iter()
                    .find(|(name, _)| *name == "id")
                    .map(|(_, value)| value.to_string())
            })
            .unwrap_or_default();
        session::find(app, &id, &caller.user).await.map(Owned)
    }
}

/// The caller's session named by the path's `{id}` ([`Owned`]), woken first if it hibernates:
/// for the requests that work on its run's files.
pub struct Awake(pub Arc<Session>);

impl FromRequestParts<Arc<AppState>> for Awake {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<AppState>) -> Result<Self, Error> {
        let Owned(s) = Owned::from_request_parts(parts, app).await?;
        session::wake(app, &s).await?;
        Ok(Awake(s))
    }
}

async fn create(
    State(state): State<Arc<AppState>>,
    admitted: Admitted<Body<Option<CreateParams>>, WeirJson>,
) -> Result<Response, Error> {
    let user = admitted.owner().to_string();
    let Body(params) = admitted.body;
    let session = session::start(&state, &user, params.unwrap_or_default(), admitted.slot).await?;
    Ok((StatusCode::CREATED, Json(describe_json(&state, &session))).into_response())
}

fn describe_json(state: &AppState, s: &Session) -> Value {
    json!({
        "session_id": s.id,
        "runtime": s.runtime,
        "busy": s.busy(),
        "hibernated": s.is_hibernated(),
        "durable": s.is_durable(),
        "idle_ms": s.idle_for().as_millis() as u64,
        "idle_timeout_ms": state.config.session_idle().as_millis() as u64,
    })
}

async fn list(State(state): State<Arc<AppState>>, caller: Identified) -> Json<Value> {
    // Without a secret every caller is "anonymous": callers cannot be told apart, so a session
    // is reachable only through the id its creation returned (128 random bits, a capability)
    // and no listing shows one caller another's.
    if state.config.secret.is_none() {
        return Json(json!([]));
    }
    let all: Vec<Value> = state
        .sessions
        .of(&caller.user)
        .iter()
        .map(|s| describe_json(&state, s))
        .collect();
    Json(Value::Array(all))
}

async fn describe(State(state): State<Arc<AppState>>, Owned(s): Owned) -> Json<Value> {
    Json(describe_json(&state, &s))
}

async fn close(State(state): State<Arc<AppState>>, Owned(s): Owned) -> StatusCode {
    session::end(&state, &s.id, EndedBy::Closed).await;
    StatusCode::NO_CONTENT
}

async fn exec(
    State(state): State<Arc<AppState>>,
    Owned(s): Owned,
    Body(params): Body<ExecParams>,
) -> Result<Json<Value>, Error> {
    match session::run_cell(&state, &s, params).await {
        Ok(report) => Ok(Json(report_json(&report))),
        Err(Error::SessionEnded) => Err(Error::NotFound(format!("session {:?} has ended", s.id))),
        Err(e) => Err(e),
    }
}

/// A cell's report as `exec` answers it.
pub fn report_json(report: &CellReport) -> Value {
    let end = report.end.clone().unwrap_or_default();
    let mut body = json!({
        "outcome": cell_outcome(report),
        "result": end.value,
        "result_bundle": end.result().as_ref().map(crate::protocol::bundle_value),
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
    match &report.saved {
        Some(Ok(())) => body["saved"] = json!(true),
        Some(Err(why)) => {
            body["saved"] = json!(false);
            body["save_error"] = json!(why);
        }
        None => {}
    }
    body
}

async fn interrupt(Owned(s): Owned) -> Result<Json<Value>, Error> {
    match s.interrupt() {
        true => Ok(Json(json!({ "interrupted": true }))),
        false => Err(Error::NoCell),
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

impl body::Params for StdinParams {
    const WHAT: &'static str = "input";
}

async fn stdin(Owned(s): Owned, Body(params): Body<StdinParams>) -> Result<Json<Value>, Error> {
    let bytes = params.data.len();
    match s.write_stdin(params.data, params.eof) {
        Ok(()) => Ok(Json(json!({ "bytes": bytes }))),
        // The run has not read the input already sent, or has ended: this input is not taken.
        Err(Error::Sandbox(e)) => Err(Error::Full(e.to_string())),
        Err(e) => Err(e),
    }
}

async fn list_files(Awake(s): Awake) -> Result<Response, Error> {
    Ok(Json(s.files().await?).into_response())
}

async fn read_file(
    State(state): State<Arc<AppState>>,
    Awake(s): Awake,
    Path((_, path)): Path<(String, String)>,
) -> Result<Response, Error> {
    let data = s
        .read_file(path, state.config.max_message_bytes as u64)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

/// `PUT /v1/sessions/{id}/files/{path}`: 204; for a durable session whose save after the
/// write failed, 200 `{"saved": false, "save_error"}` (the file is written; the next cell's
/// save holds it).
async fn write_file(
    State(state): State<Arc<AppState>>,
    Awake(s): Awake,
    Path((_, path)): Path<(String, String)>,
    Raw(body): Raw,
) -> Result<Response, Error> {
    s.write_file(path, body).await?;
    match session::save(&state, &s).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => {
            let why = e.to_string();
            tracing::warn!(session_id = %s.id, error = %why, "a written file is not saved yet");
            Ok(Json(json!({ "saved": false, "save_error": why })).into_response())
        }
    }
}

/// `POST /v1/sessions/{id}/snapshot`: the session's state, stored for its owner (201).
async fn take_snapshot(
    State(state): State<Arc<AppState>>,
    Owned(s): Owned,
) -> Result<Response, Error> {
    let meta = session::snapshot(&state, &s).await?;
    Ok((StatusCode::CREATED, Json(meta)).into_response())
}

/// `POST /v1/sessions/{id}/fork`: a new session (its own id and slot, the same owner) starting
/// where this one is (201).
async fn fork(
    State(state): State<Arc<AppState>>,
    Owned(s): Owned,
    admitted: Admitted<body::NoBody, WeirJson>,
) -> Result<Response, Error> {
    let forked = session::fork(&state, &s, admitted.slot).await?;
    Ok((StatusCode::CREATED, Json(describe_json(&state, &forked))).into_response())
}

/// The snapshot the path's `{id}` names, if the caller owns it.
async fn describe_snapshot(
    State(state): State<Arc<AppState>>,
    caller: Identified,
    Path(id): Path<String>,
) -> Result<Json<SnapshotMeta>, Error> {
    Ok(Json(state.snapshots.meta(&id, &caller.user).await?))
}

async fn delete_snapshot(
    State(state): State<Arc<AppState>>,
    caller: Identified,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    state.snapshots.delete(&id, &caller.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's snapshots, newest first (none without a secret: as for sessions, the id is the
/// capability then).
async fn list_snapshots(
    State(state): State<Arc<AppState>>,
    caller: Identified,
) -> Result<Json<Vec<SnapshotMeta>>, Error> {
    if state.config.secret.is_none() {
        return Ok(Json(Vec::new()));
    }
    Ok(Json(state.snapshots.of(&caller.user).await?))
}
