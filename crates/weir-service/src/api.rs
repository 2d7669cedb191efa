//! weir's own HTTP API under `/v1` (docs/protocol.md): one-shot runs (`POST /v1/runs`) and the
//! run history.
//!
//! Callers identify themselves as on the WebSocket: with a secret configured, a token (`weir
//! token`) as `Authorization: Bearer TOKEN` or `?token=`; without one, everyone is "anonymous".
//! A run is only shown to the user who started it; to anyone else it does not exist.

use crate::error::Error;
use crate::lifecycle::admission::{Admitted, Identified};
use crate::lifecycle::body::{self, Json as Body};
use crate::lifecycle::error::WeirJson;
use crate::lifecycle::oneshot;
use crate::protocol::{self, RunParams};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use weir_sandbox::Data;

impl body::Params for RunParams {
    const WHAT: &'static str = "run";
}

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/runs", post(create_run))
        .route("/v1/runs/{id}", get(run_metadata))
        .route("/v1/runs/{id}/transcript", get(run_transcript))
        .route("/v1/runtimes", get(runtimes))
}

/// The runtimes a run may name (`runtime` in `run` params and `POST /v1/runs`), the default
/// first. Public like `/healthz`: it says what the server hosts, nothing about anyone's runs.
async fn runtimes(State(state): State<Arc<AppState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .sandbox
        .runtimes()
        .enumerate()
        .map(|(i, r)| {
            json!({
                "name": r.name,
                "language": r.language,
                "version": r.version,
                "aliases": r.aliases,
                "build": r.build,
                "default": i == 0,
                "status": state.runtime_status(&r.name),
                "display": state.sandbox.policy(Some(&r.name)).is_ok_and(|p| p.display),
            })
        })
        .collect();
    Json(Value::Array(list))
}

fn not_found(id: &str) -> Error {
    Error::NotFound(format!("no run {id:?}"))
}

/// Reads from the history; a miss, or a record `settled` does not accept (a run still stored
/// `running`), flushes the write queue and reads once more, so a run whose `exit` the client has
/// just seen is found as it ended even if its end is still queued.
async fn read_flushed<T, F, Fut>(
    state: &AppState,
    read: F,
    settled: impl Fn(&T) -> bool,
) -> Result<Option<T>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, Error>>,
{
    match read().await {
        Ok(Some(found)) if settled(&found) => Ok(Some(found)),
        Ok(_) => {
            state.history.flush().await;
            read().await
        }
        other => other,
    }
}

async fn run_metadata(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    caller: Identified,
) -> Result<Response, Error> {
    let read = read_flushed(
        &state,
        || state.history.get(&id),
        |r| r.outcome != "running",
    );
    match read.await? {
        Some(run) if run.user == caller.user => Ok(Json(run).into_response()),
        _ => Err(not_found(&id)),
    }
}

async fn run_transcript(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    caller: Identified,
) -> Result<Response, Error> {
    let read = read_flushed(&state, || state.history.transcript(&id), |t| t.1.is_some());
    match read.await? {
        Some((owner, Some(transcript))) if owner == caller.user => {
            Ok(([(header::CONTENT_TYPE, "application/json")], transcript).into_response())
        }
        Some((owner, None)) if owner == caller.user => Err(Error::NotFound(format!(
            "run {id:?} was not recorded (start it with \"record\": true)"
        ))),
        _ => Err(not_found(&id)),
    }
}

/// `POST /v1/runs`: the `/ws` protocol's `run` params (stdin is closed after `stdin`); answers
/// when the run ends with everything it printed and how it ended.
async fn create_run(
    State(state): State<Arc<AppState>>,
    admitted: Admitted<Body<RunParams>, WeirJson>,
) -> Result<Response, Error> {
    let owner = admitted.owner().to_string();
    let compile_scope = admitted.compile_scope();
    let Body(params) = admitted.body;
    let callback = (state.callbacks)
        .for_run(params.callback_url.as_deref(), !params.functions.is_empty())
        .map_err(Error::BadRequest)?;
    let tools = protocol::declared(&params.functions).map_err(Error::BadRequest)?;
    let reach = oneshot::Reach::from_params(params.network.as_deref(), &params.secrets)?;
    let record = params.record;
    let config = &state.config;
    let memory_given = params.limits.memory_bytes.is_some();
    let mut req = params.into_request(&config.limits, &config.max_limits);
    req.tools = tools;
    state.runtime_defaults(&mut req, memory_given);
    req.compile_scope = compile_scope;
    let finished = oneshot::execute_with(&state, &owner, req, record, callback, reach).await?;
    drop(admitted.slot);
    let result = &finished.result;
    let mut body = protocol::exit_params(
        &finished.id,
        finished.outcome,
        result,
        finished.transcript.as_deref(),
    );
    body["stdout"] = json!(Data::from_bytes(&finished.collected.stdout));
    body["stderr"] = json!(Data::from_bytes(&finished.collected.stderr));
    body["display"] = finished
        .collected
        .displays
        .iter()
        .map(protocol::display_value)
        .collect();
    Ok(Json(body).into_response())
}
