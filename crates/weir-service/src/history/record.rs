//! What the run history stores and how long: a run's record and the retention settings.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Finished runs waiting for the writer; past this, a session waits (after its client has
/// already seen the run's `exit`).
pub(super) const QUEUE: usize = 1024;
/// Most runs stored in one transaction.
pub(super) const BATCH: usize = 256;
/// How often retention runs, at most.
pub(super) const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Where and how long runs are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// The SQLite database file (created when missing).
    pub path: PathBuf,
    /// Most runs kept; the oldest go first.
    pub max_runs: u64,
    /// Runs older than this are deleted, days.
    pub max_age_days: u64,
    /// Most bytes of messages and transcripts kept; the oldest runs go first.
    pub max_bytes: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            path: default_path(),
            max_runs: 100_000,
            max_age_days: 30,
            max_bytes: 1 << 30,
        }
    }
}

/// `$XDG_DATA_HOME/weir/history.sqlite3` (usually `~/.local/share/weir/`).
pub fn default_path() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("weir")
        .join("history.sqlite3")
}

/// One stored run: what `GET /v1/runs/{id}` returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    /// The signed-in user, or "anonymous".
    pub user: String,
    /// Unix time in milliseconds.
    pub started_at_ms: u64,
    pub finished_at_ms: u64,
    pub duration_ms: u64,
    pub outcome: String,
    pub code: i32,
    pub message: String,
    pub output_bytes: u64,
    pub output_truncated: bool,
    /// Whether a transcript was recorded (then at `/v1/runs/{id}/transcript`).
    pub recorded: bool,
    /// The runtime the run was in (empty for runs stored before runtimes were recorded).
    #[serde(default)]
    pub runtime: String,
    /// The node that ran it (`[cluster] node_id`; empty for runs stored before nodes were
    /// recorded).
    #[serde(default)]
    pub node: String,
    /// Its network requests (method, host, port, status, bytes), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network: Vec<weir_egress::RequestRecord>,
    /// The process that stored the run (the embedded history's owner id, `history::sqlite`);
    /// not shown to clients.
    #[serde(skip)]
    pub owner: String,
}

impl RunRecord {
    /// The record of a run that ended with `result`; `outcome` may differ from the result's
    /// (e.g. "shutdown").
    pub fn finished(
        id: &str,
        user: &str,
        started: SystemTime,
        outcome: &str,
        result: &weir_sandbox::RunResult,
        recorded: bool,
    ) -> Self {
        RunRecord {
            id: id.into(),
            user: user.into(),
            started_at_ms: unix_ms(started),
            finished_at_ms: unix_ms(SystemTime::now()),
            duration_ms: result.duration.as_millis() as u64,
            outcome: outcome.into(),
            code: result.outcome.exit_code(),
            message: result.message.clone(),
            output_bytes: result.output_bytes,
            output_truncated: result.output_truncated,
            recorded,
            runtime: result.runtime.clone(),
            node: String::new(),
            network: Vec::new(),
            owner: String::new(),
        }
    }

    /// The record of a run the server ended before it ended by itself: `stopped` (its owner
    /// closed it), `idle` or `shutdown`.
    pub fn ended_by_server(
        id: &str,
        user: &str,
        started: SystemTime,
        outcome: &str,
        output_bytes: u64,
        runtime: &str,
    ) -> Self {
        let now = SystemTime::now();
        let (code, message) = match outcome {
            "idle" => (
                weir_sandbox::Outcome::Idle.exit_code(),
                "The session was idle past its limit",
            ),
            "shutdown" => (
                weir_sandbox::Outcome::Stopped.exit_code(),
                "The server shut down",
            ),
            _ => (
                weir_sandbox::Outcome::Stopped.exit_code(),
                "The session was closed",
            ),
        };
        RunRecord {
            id: id.into(),
            user: user.into(),
            started_at_ms: unix_ms(started),
            finished_at_ms: unix_ms(now),
            duration_ms: now.duration_since(started).unwrap_or_default().as_millis() as u64,
            outcome: outcome.into(),
            code,
            message: message.into(),
            output_bytes,
            output_truncated: false,
            recorded: false,
            runtime: runtime.into(),
            node: String::new(),
            network: Vec::new(),
            owner: String::new(),
        }
    }

    /// The record of a run that has started and not ended (cluster mode stores it at the start).
    pub fn running(id: &str, user: &str, runtime: &str) -> Self {
        RunRecord {
            id: id.into(),
            user: user.into(),
            started_at_ms: unix_ms(SystemTime::now()),
            finished_at_ms: 0,
            duration_ms: 0,
            outcome: "running".into(),
            code: 0,
            message: "The run is running".into(),
            output_bytes: 0,
            output_truncated: false,
            recorded: false,
            runtime: runtime.into(),
            node: String::new(),
            network: Vec::new(),
            owner: String::new(),
        }
    }

    /// The record of a run that ended without an `exit` because its client went away.
    pub fn abandoned(
        id: &str,
        user: &str,
        started: SystemTime,
        output_bytes: u64,
        runtime: &str,
    ) -> Self {
        RunRecord {
            message: "The run was stopped because its client went away".into(),
            ..Self::ended_by_server(id, user, started, "stopped", output_bytes, runtime)
        }
    }
}

/// What the history keeps.
pub(super) struct Retention {
    pub(super) max_runs: u64,
    pub(super) max_age: Duration,
    pub(super) max_bytes: u64,
}

impl Retention {
    pub(super) fn of(config: &HistoryConfig) -> Self {
        Retention {
            max_runs: config.max_runs,
            max_age: Duration::from_secs(config.max_age_days.saturating_mul(86_400)),
            max_bytes: config.max_bytes,
        }
    }
}

/// Unix time in milliseconds.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A run's network requests as the history stores them: JSON, or empty for none.
pub(super) fn network_text(requests: &[weir_egress::RequestRecord]) -> String {
    match requests.is_empty() {
        true => String::new(),
        false => serde_json::to_string(requests).unwrap_or_default(),
    }
}

/// A run's network requests from their stored text (none for empty or unreadable text).
pub(super) fn network_from(text: &str) -> Vec<weir_egress::RequestRecord> {
    serde_json::from_str(text).unwrap_or_default()
}
