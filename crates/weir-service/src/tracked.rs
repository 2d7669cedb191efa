//! [`TrackedRun`]: a run an entry point started, and the one place its life is written down —
//! the `running` history row at its start, `weir_runs_started_total`, its output counted as it
//! is read, its transcript when it is recorded, and its end in the metrics and the history. An
//! entry point maps its protocol onto the run's events and nothing else.

use crate::error::Error;
use crate::history::{History, RunRecord};
use crate::metrics::Metrics;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::task::TaskTracker;
use weir_sandbox::{Event, RunControl, RunHandle, RunRequest, RunResult};
use weir_sandbox::{OutputLog, Transcript};

/// Why a run ended without its `exit` being read by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    /// Its client went away (a socket closed, a request dropped): `stopped`.
    ClientLeft,
    /// Its owner closed it (a session's `DELETE`): `stopped`.
    Closed,
    /// Idle past `session_idle_secs`: `idle`.
    Idle,
    /// The server shut down: `shutdown`.
    Shutdown,
}

impl EndedBy {
    fn outcome(self) -> &'static str {
        match self {
            EndedBy::ClientLeft | EndedBy::Closed => "stopped",
            EndedBy::Idle => "idle",
            EndedBy::Shutdown => "shutdown",
        }
    }
}

/// How a run's end was recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The outcome reported and stored: the result's, or `shutdown` when the server stopped
    /// the run at the end of its shutdown grace period.
    pub outcome: &'static str,
    /// Where the run's transcript can be fetched, for a run that asked for one.
    pub transcript: Option<String>,
}

/// The id a run is known by in the history.
enum HistoryId<'a> {
    /// The run's own, after a prefix.
    Prefixed(&'static str),
    /// This one (a session that started elsewhere).
    Given(&'a str),
}

/// Where runs start and their lives are written down (`crate::state::AppState::books`).
#[derive(Clone)]
pub struct Books {
    pub sandbox: weir_sandbox::Sandbox,
    pub metrics: Arc<Metrics>,
    pub history: Arc<History>,
    /// Owns the write of a run dropped unrecorded; shutdown waits for it.
    pub tasks: TaskTracker,
    /// Runs' network egress, when the server allows any host.
    pub network: Option<Arc<weir_egress::Network>>,
}

/// The network a run asks for: what the server allows, or that narrowed to the run's own
/// entries; and the secrets it declares beside the operator's.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    narrowed: Option<weir_egress::Allowlist>,
    secrets: weir_egress::RunSecrets,
}

impl Reach {
    /// Whatever the server allows, with the operator's secrets only.
    pub fn server() -> Reach {
        Reach::default()
    }

    /// No host at all, whatever the server allows.
    pub fn nowhere() -> Reach {
        Reach {
            narrowed: Some(weir_egress::Allowlist::default()),
            secrets: weir_egress::RunSecrets::default(),
        }
    }

    /// A request's `network` entries (none: whatever the server allows) and `secrets`.
    pub fn from_params(
        entries: Option<&[String]>,
        secrets: &std::collections::BTreeMap<String, weir_egress::SecretConfig>,
    ) -> Result<Reach, Error> {
        let bad = |e: weir_egress::Error| Error::BadRequest(e.to_string());
        let narrowed = entries
            .map(weir_egress::narrowing)
            .transpose()
            .map_err(bad)?;
        let secrets = weir_egress::RunSecrets::new(secrets).map_err(bad)?;
        Ok(Reach { narrowed, secrets })
    }

    /// Whether the run gives entries or secrets of its own.
    pub fn is_own(&self) -> bool {
        self.narrowed.is_some() || !self.secrets.is_empty()
    }
}

/// A started run and its record. Its events are read through it (counted, and logged for a
/// transcript); its end is recorded once, by [`TrackedRun::finish`] (it ended with an `exit`)
/// or [`TrackedRun::end`] (it did not); a run dropped before either is recorded `stopped`.
pub struct TrackedRun {
    handle: RunHandle,
    /// The id history knows it by: the run's, or its session's (`s…`).
    id: String,
    user: String,
    started: SystemTime,
    output_bytes: u64,
    /// The request and output of a run recorded as a transcript.
    recording: Option<Box<(RunRequest, OutputLog)>>,
    /// The server stopped it at the end of the shutdown grace period.
    stopped_for_shutdown: bool,
    recorded: bool,
    books: Books,
    /// Its network egress, when the server has one.
    network: Option<Arc<weir_egress::RunNetwork>>,
    /// The functions it was given (before its network was added to them).
    declared: Option<weir_sandbox::Tools>,
}

impl TrackedRun {
    /// Starts `req` for `user` (`record`: keep a transcript of it).
    pub async fn start(
        books: &Books,
        user: &str,
        req: RunRequest,
        record: bool,
        reach: Reach,
    ) -> Result<Self, Error> {
        Self::start_as(books, user, req, record, HistoryId::Prefixed(""), reach).await
    }

    /// Starts `req` as a stateful session for `user`: its id is the run's with an `s` before it.
    pub async fn start_session(
        books: &Books,
        user: &str,
        req: RunRequest,
        reach: Reach,
    ) -> Result<Self, Error> {
        Self::start_as(books, user, req, false, HistoryId::Prefixed("s"), reach).await
    }

    /// Starts `req` as `user`'s stateful session `id`, which started elsewhere (a durable
    /// session taken over from a node that died): its history row is this run's from now.
    pub async fn resume_session(
        books: &Books,
        user: &str,
        req: RunRequest,
        id: &str,
    ) -> Result<Self, Error> {
        Self::start_as(
            books,
            user,
            req,
            false,
            HistoryId::Given(id),
            Reach::server(),
        )
        .await
    }

    async fn start_as(
        books: &Books,
        user: &str,
        mut req: RunRequest,
        record: bool,
        id: HistoryId<'_>,
        reach: Reach,
    ) -> Result<Self, Error> {
        let declared = req.tools.clone();
        let network = match &books.network {
            Some(server) => Some(
                server
                    .for_run(reach.narrowed, reach.secrets)
                    .map_err(|e| Error::BadRequest(e.to_string()))?,
            ),
            None if !reach.secrets.is_empty() => {
                return Err(Error::BadRequest(
                    "secrets: this server allows no network ([network] allow)".into(),
                ))
            }
            None => None,
        };
        if let Some(network) = &network {
            network.give(&mut req);
        }
        let recording = record.then(|| Box::new((req.clone(), OutputLog::default())));
        let handle = books.sandbox.start(req).await?;
        let id = match id {
            HistoryId::Prefixed(prefix) => format!("{prefix}{}", handle.id()),
            HistoryId::Given(id) => id.to_string(),
        };
        books.metrics.runs_started.fetch_add(1, Relaxed);
        tracing::info!(run_id = %id, user, runtime = handle.runtime(), "run started");
        books.history.started(&id, user, handle.runtime()).await;
        Ok(TrackedRun {
            handle,
            id,
            user: user.to_string(),
            started: SystemTime::now(),
            output_bytes: 0,
            recording,
            stopped_for_shutdown: false,
            recorded: false,
            books: books.clone(),
            network,
            declared,
        })
    }

    /// What `req` (this run going on in a new instance: a session woken from hibernation)
    /// needs to call what this run calls: its functions, and its network egress with the same
    /// request count and log.
    pub fn carry_tools(&self, req: &mut RunRequest) {
        req.tools = self.declared.clone();
        if let Some(network) = &self.network {
            req.tools = Some(network.install(req.tools.take()));
        }
    }

    /// The functions it was given: a session forked from it is given them too.
    pub fn declared(&self) -> Option<weir_sandbox::Tools> {
        self.declared.clone()
    }

    /// How far this run reaches: a session forked from it reaches as far, with its secrets.
    pub fn reach(&self) -> Reach {
        match &self.network {
            Some(n) => Reach {
                narrowed: n.narrowed().cloned(),
                secrets: n.own_secrets().clone(),
            },
            None => Reach::server(),
        }
    }

    /// The network requests the run made so far, as its history keeps them.
    fn requests(&self) -> Vec<weir_egress::RequestRecord> {
        self.network
            .as_ref()
            .map(|n| n.requests())
            .unwrap_or_default()
    }

    /// The id the history knows the run by.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Who started it.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The runtime it runs in.
    pub fn runtime(&self) -> &str {
        self.handle.runtime()
    }

    /// When it started.
    pub fn started(&self) -> SystemTime {
        self.started
    }

    /// Output bytes read from it so far.
    pub fn output_bytes(&self) -> u64 {
        self.output_bytes
    }

    /// Goes on in `handle` (a session woken from hibernation: the same session, restored in a
    /// new instance). The run it replaces was stopped; its unread end is let go.
    pub fn resume_in(&mut self, handle: RunHandle) {
        self.handle = handle;
    }

    /// Its control: stdin, stop, pause, interrupt, cells, files.
    pub fn control(&self) -> RunControl {
        self.handle.control()
    }

    /// Its next event (`None`: its task ended without reporting).
    pub async fn next_event(&mut self) -> Option<Event> {
        let event = self.handle.next_event().await;
        self.observe(event.as_ref());
        event
    }

    /// Its next event, consecutive output of one stream merged up to `max` bytes.
    pub async fn next_event_merged(&mut self, max: usize) -> Option<Event> {
        let event = self.handle.next_event_merged(max).await;
        self.observe(event.as_ref());
        event
    }

    fn observe(&mut self, event: Option<&Event>) {
        if let Some(Event::Output { data, .. }) = event {
            self.output_bytes += data.len() as u64;
        }
        if let (Some(rec), Some(event)) = (&mut self.recording, event) {
            rec.1.observe(event);
        }
    }

    /// Stops it without recording its end: it goes on in another process, which records it (a
    /// durable session handed over).
    pub fn abandon(&mut self) {
        self.handle.control().stop();
        self.recorded = true;
    }

    /// Stops it because the shutdown grace period is over: its end reads `shutdown`.
    pub fn stop_for_shutdown(&mut self) {
        self.stopped_for_shutdown = true;
        self.handle.control().stop();
    }

    /// Records its end, read from its `exit`: counted, its transcript made, stored (before the
    /// client hears of it, so the run can be fetched right after).
    pub async fn finish(&mut self, result: &RunResult) -> Recorded {
        let outcome = match self.stopped_for_shutdown {
            true => "shutdown",
            false => result.outcome.kind(),
        };
        self.recorded = true;
        let books = &self.books;
        books
            .metrics
            .run_finished(outcome, result.duration, result.output_bytes);
        let transcript = self.recording.take().and_then(|rec| {
            let (req, log) = *rec;
            let runtime = books.sandbox.runtime(Some(&result.runtime)).ok()?;
            Transcript::record(&req, runtime, &log, result)
                .map_err(|e| tracing::warn!(error = %e, "cannot record the transcript"))
                .ok()
        });
        let mut record = RunRecord::finished(
            &self.id,
            &self.user,
            self.started,
            outcome,
            result,
            transcript.is_some(),
        );
        record.network = self.requests();
        // At debug: a second info line per run (its start is one) cost the 100-client WebSocket
        // p99 3 ms of 22 at ~1,500 runs/s on two cores, in `weir bench` side by side.
        tracing::debug!(run_id = %self.id, outcome, "run ended");
        books
            .history
            .store(record, transcript.as_ref().map(Transcript::to_json))
            .await;
        Recorded {
            outcome,
            transcript: transcript.map(|_| format!("/v1/runs/{}/transcript", self.id)),
        }
    }

    /// Records the end of a run whose `exit` was not read (`why`), and stops it.
    pub async fn end(&mut self, why: EndedBy) {
        self.handle.control().stop();
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        let record = self.count_unread(why);
        self.books.history.store(record, None).await;
    }

    /// Counts and logs the end of a run whose `exit` was not read; its history record.
    fn count_unread(&self, why: EndedBy) -> RunRecord {
        let outcome = why.outcome();
        let age = self.started.elapsed().unwrap_or_default();
        self.books
            .metrics
            .run_finished(outcome, age, self.output_bytes);
        tracing::info!(run_id = %self.id, outcome, ?why, "run ended");
        let runtime = self.handle.runtime();
        let mut record = match why {
            EndedBy::ClientLeft => RunRecord::abandoned(
                &self.id,
                &self.user,
                self.started,
                self.output_bytes,
                runtime,
            ),
            _ => RunRecord::ended_by_server(
                &self.id,
                &self.user,
                self.started,
                outcome,
                self.output_bytes,
                runtime,
            ),
        };
        record.network = self.requests();
        record
    }
}

/// A run dropped before its end was recorded (its client hung up mid-request) is recorded
/// `stopped`; the write is a task the server's shutdown waits for.
impl Drop for TrackedRun {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        let record = self.count_unread(EndedBy::ClientLeft);
        let history = self.books.history.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(
                self.books
                    .tasks
                    .spawn_on(async move { history.store(record, None).await }, &rt),
            ),
            Err(_) => {
                tracing::warn!(run_id = %self.id, "cannot store the end of a run dropped outside the runtime")
            }
        }
    }
}
