//! Runs answered in one HTTP response (`POST /v1/runs`, Piston's `POST /api/v2/execute`): start,
//! collect everything the run printed (bounded by its output limit), count it in the metrics and
//! store it in the run history like any session's run.

use crate::history::RunRecord;
use crate::outcome::Outcome;
use crate::run::{Collected, RunResult};
use crate::sandbox::{RunRequest, StartError};
use crate::server::AppState;
use crate::transcript::{OutputLog, Transcript};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

/// A run that has ended.
pub struct Finished {
    pub id: String,
    /// What the run printed (its `result` is moved to [`Finished::result`]).
    pub collected: Collected,
    pub result: RunResult,
    /// Where the recorded transcript can be fetched, for runs that asked for one.
    pub transcript: Option<String>,
}

/// Starts `req` for `user`, waits for it to end, and records it. Dropping the future (the
/// client hung up) drops the run and frees its store.
pub async fn execute(
    app: &AppState,
    user: &str,
    req: RunRequest,
    record: bool,
) -> Result<Finished, StartError> {
    let started = SystemTime::now();
    let mut recording = record.then(|| (req.clone(), OutputLog::default()));
    let mut handle = app.sandbox.start(req).await?;
    app.metrics.runs_started.fetch_add(1, Relaxed);
    let id = handle.id().to_string();
    tracing::info!(run_id = %id, user, "one-shot run started");
    let mut collected = Collected::default();
    while let Some(event) = handle.next_event().await {
        if let Some((_, log)) = &mut recording {
            log.observe(&event);
        }
        collected.push(event);
    }
    let result = collected.result.take().unwrap_or_else(vanished);
    let outcome = result.outcome.kind();
    app.metrics
        .run_finished(outcome, result.duration, result.output_bytes);
    let transcript = recording.and_then(|(req, log)| {
        Transcript::record(&req, &log, &result)
            .map_err(|e| tracing::warn!(error = %e, "cannot record the transcript"))
            .ok()
    });
    let record = RunRecord::finished(&id, user, started, outcome, &result, transcript.is_some());
    app.history
        .store(record, transcript.as_ref().map(Transcript::to_json))
        .await;
    Ok(Finished {
        transcript: transcript.map(|_| format!("/v1/runs/{id}/transcript")),
        id,
        collected,
        result,
    })
}

/// The result of a run whose task ended without reporting (a weir bug, reported as crashed).
fn vanished() -> RunResult {
    RunResult {
        outcome: Outcome::Crashed {
            detail: "the run ended without reporting".into(),
        },
        message: "The sandbox lost the run (a weir bug)".into(),
        duration: Duration::ZERO,
        output_truncated: false,
        output_bytes: 0,
        fuel_consumed: None,
        peak_memory: 0,
        input_read: None,
    }
}

/// The HTTP status for a run that could not start.
pub fn start_status(e: &StartError) -> StatusCode {
    match e {
        StartError::AtCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
        StartError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        StartError::Scratch(crate::scratch::ScratchError::TooLarge { .. }) => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

/// An HTTP body as a JSON value, whatever its `Content-Type` (Piston clients send `text/plain`
/// as often as `application/json`).
pub fn json_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Value, (StatusCode, String)> {
    let body = body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request body is larger than the {} limit",
                crate::limits::human_bytes(limit as u64)
            ),
        ),
        status => (status, rejection.body_text()),
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}
