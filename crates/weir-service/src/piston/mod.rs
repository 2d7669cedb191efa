//! Piston's API (v2), so tools written for Piston (Discord bots, editors, graders) can switch to
//! weir by changing a URL: `GET /api/v2/runtimes`, `POST /api/v2/execute`, and the interactive
//! `GET /api/v2/connect` ([`connect`]). See docs/piston.md for what differs. [`job`] translates
//! between the two APIs.

pub mod connect;
pub mod job;

use crate::error::Error;
use crate::lifecycle::admission::Admitted;
use crate::lifecycle::error::PistonJson;
use crate::lifecycle::oneshot;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use job::{job, listing, stage, RUN_ID_HEADER};
use serde_json::{json, Value};
use std::sync::Arc;

/// Piston's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v2/runtimes", get(runtimes))
        .route("/api/v2/execute", post(execute))
        .route("/api/v2/connect", get(connect::upgrade))
}

/// Every runtime of the sandbox, the default first, each with weir's `status` (`ready`,
/// `preparing`, `failed: …`) beside Piston's fields.
async fn runtimes(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(
        state
            .sandbox
            .runtimes()
            .map(|r| {
                let mut entry = listing(r);
                entry["status"] = state.runtime_status(&r.name).into();
                entry
            })
            .collect(),
    )
}

/// `POST /api/v2/execute`: a Piston job, run to its end.
async fn execute(
    State(state): State<Arc<AppState>>,
    admitted: Admitted<Value, PistonJson>,
) -> Response {
    let memory_default = |r: &weir_sandbox::RuntimeInfo| state.memory_default(r);
    let runtimes = state.sandbox.runtimes();
    let (mut req, runtime) = match job(&admitted.body, &state.config, runtimes, memory_default) {
        Ok(job) => job,
        Err(m) => return Error::BadRequest(m).render::<PistonJson>(),
    };
    req.compile_scope = admitted.compile_scope();
    let finished = match oneshot::execute(&state, admitted.owner(), req, false).await {
        Ok(f) => f,
        Err(e) => return e.render::<PistonJson>(),
    };
    drop(admitted);
    let run = stage(&finished.collected, &finished.result, None);
    let mut response = Json(json!({
        "language": runtime.language,
        "version": runtime.version,
        "run": run,
    }))
    .into_response();
    if let Ok(id) = HeaderValue::from_str(&finished.id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(RUN_ID_HEADER), id);
    }
    response
}
