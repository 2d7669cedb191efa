//! Runs answered in one response (`POST /v1/runs`, Piston's `POST /api/v2/execute`, MCP's
//! `run_python`): start, collect everything the run printed (bounded by its output limit), and
//! record it ([`TrackedRun`]).

use super::shutdown::{Notice, Shutdown};
use crate::error::Error;
use crate::state::AppState;
pub use crate::tracked::Reach;
use crate::tracked::TrackedRun;
use std::time::Duration;
use weir_sandbox::{Collected, RunRequest, RunResult};
use weir_sandbox::{Event, Outcome};

/// A run that has ended.
pub struct Finished {
    pub id: String,
    /// What the run printed (its `result` is moved to [`Finished::result`]).
    pub collected: Collected,
    pub result: RunResult,
    /// Where the recorded transcript can be fetched, for runs that asked for one.
    pub transcript: Option<String>,
    /// The outcome reported and recorded: the result's, or `shutdown` when the server stopped
    /// the run at the end of its shutdown grace period.
    pub outcome: &'static str,
}

/// Starts `req` for `user`, waits for it to end, and records it. Dropping the future (the
/// client hung up) drops the run, which frees its store and records it `stopped`. stdin holds
/// the request's text and is then closed: nobody can type into a one-shot run, so `input()`
/// past the text reads end of file. On shutdown the run may finish for the grace period, then
/// it is stopped.
pub async fn execute(
    app: &AppState,
    user: &str,
    req: RunRequest,
    record: bool,
) -> Result<Finished, Error> {
    execute_with(app, user, req, record, None, Reach::server()).await
}

/// [`execute`], with the run's calls to the functions it declared sent to `callback`
/// (`crate::callbacks`) and answered with the receiver's answer. Without one, a call waits
/// for its time limit. The run reaches the network as `reach` says.
pub async fn execute_with(
    app: &AppState,
    user: &str,
    mut req: RunRequest,
    record: bool,
    callback: Option<reqwest::Url>,
    reach: Reach,
) -> Result<Finished, Error> {
    req.close_stdin = true;
    let mut run = TrackedRun::start(&app.books(), user, req, record, reach).await?;
    let mut shutdown = Shutdown::new(app.shutdown.subscribe(), app.config.shutdown_grace());
    let mut collected = Collected::default();
    loop {
        let event = tokio::select! {
            event = run.next_event() => event,
            notice = shutdown.next() => {
                if notice == Notice::GraceOver {
                    run.stop_for_shutdown();
                }
                continue;
            }
        };
        let Some(event) = event else { break };
        if let (Event::Call(call), Some(url)) = (&event, &callback) {
            let id = run.id().to_string();
            let answer = app.callbacks.call(url, &id, call);
            tokio::pin!(answer);
            // The callback is bounded by its attempts' time limits; at the end of the shutdown
            // grace period the run stops instead.
            let answered = loop {
                tokio::select! {
                    result = &mut answer => break Some(result),
                    notice = shutdown.next() => if notice == Notice::GraceOver {
                        run.stop_for_shutdown();
                        break None;
                    },
                }
            };
            if let Some(result) = answered {
                // The call may have timed out meanwhile: its guest has its ToolError.
                let _ = run.control().answer_call(call.id, result);
            }
        }
        collected.push(event);
    }
    let result = collected
        .result
        .take()
        .unwrap_or_else(|| vanished(run.runtime().to_string()));
    let recorded = run.finish(&result).await;
    Ok(Finished {
        id: run.id().to_string(),
        collected,
        result,
        transcript: recorded.transcript,
        outcome: recorded.outcome,
    })
}

/// The result of a run whose task ended without reporting (a weir bug, reported as crashed).
fn vanished(runtime: String) -> RunResult {
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
        calls_made: None,
        runtime,
        files: Default::default(),
    }
}
