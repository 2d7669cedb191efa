//! Starting, running and ending stateful sessions ([`crate::sessions`]): what `/v1/sessions` and
//! the MCP session tools share. Idle sessions, and sessions whose run ended by itself, are
//! removed by [`reap`], each recorded.

use crate::durable::{Take, Taken, HANDOFF};
use crate::error::Error;
use crate::protocol::LimitParams;
use crate::registry::Slot;
use crate::sessions::{CellReport, Expiry, Session, INTERRUPT_GRACE};
use crate::snapshots::SnapshotMeta;
use crate::state::AppState;
use crate::tracked::{EndedBy, Reach, TrackedRun};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;
use weir_sandbox::{Cell, Program, RunRequest, Snapshot};

/// What a session is started with (`POST /v1/sessions`'s body, MCP's `session_create`).
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
    /// Start from this stored snapshot (`/v1/snapshots`) instead of an empty namespace: its
    /// runtime, files and environment come with it (`runtime`, `files` and `env` must be absent).
    pub snapshot: Option<String>,
    /// Save it after every cell, so that it outlives the server process running it
    /// (`crate::durable`: a SQLite file on one node, the cluster's database in cluster mode).
    #[serde(default)]
    pub durable: bool,
    /// The hosts its cells may reach: the server's `[network] allow` narrowed to these, never
    /// widened. Absent: whatever the server allows.
    pub network: Option<Vec<String>>,
    /// Secrets of its own, `NAME: {value, hosts}` (docs/code-mode.md).
    #[serde(default)]
    pub secrets: BTreeMap<String, weir_egress::SecretConfig>,
    /// Functions its cells may call, answered by `callback_url` (docs/code-mode.md).
    #[serde(default)]
    pub functions: Vec<crate::protocol::FunctionParams>,
    /// Where its cells' calls are sent, signed (the operator allows it: `[callbacks] allow`).
    pub callback_url: Option<String>,
}

impl super::body::Params for CreateParams {
    const WHAT: &'static str = "session";
}

/// What a cell is run with (`POST /v1/sessions/{id}/exec`'s body, MCP's `session_exec`).
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

impl super::body::Params for ExecParams {
    const WHAT: &'static str = "cell";
}

/// A session's request for the sandbox: an empty program, then cells. A cell's time limit is
/// the exec's; the run's own wall limit only backs it up, past the longest cell and its
/// interrupt grace. Idle expiry is the server's (`session_idle_secs`).
fn request(app: &AppState, params: CreateParams, from: Option<Arc<Snapshot>>) -> RunRequest {
    let config = &app.config;
    let mut req = RunRequest::script(Vec::new());
    req.program = Program::Code(String::new());
    req.cells = true;
    req.runtime = match &from {
        Some(from) => Some(from.runtime().to_string()),
        None => params.runtime,
    };
    req.restore = from;
    req.files = params
        .files
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    req.env = params.env.into_iter().collect();
    let mut limits = params.limits.apply(&config.limits, &config.max_limits);
    let backstop = config.max_limits.wall_ms + INTERRUPT_GRACE.as_millis() as u64;
    limits.wall_ms = backstop + 5_000;
    limits.idle_ms = config.session_idle().as_millis() as u64 + 60_000;
    req.limits = limits;
    app.runtime_defaults(&mut req, params.limits.memory_bytes.is_some());
    req
}

/// A cell's time limit: asked for, else the server's default, at most the server's maximum.
fn cell_timeout(app: &AppState, asked: Option<u64>) -> Duration {
    let config = &app.config;
    let ms = asked
        .unwrap_or(config.limits.wall_ms)
        .clamp(1, config.max_limits.wall_ms);
    Duration::from_millis(ms)
}

/// Starts a session for `user` on `slot` and registers it: empty, or from one of the user's
/// stored snapshots (`params.snapshot`).
pub async fn start(
    app: &AppState,
    user: &str,
    params: CreateParams,
    slot: Slot,
) -> Result<Arc<Session>, Error> {
    let durable = params.durable;
    if durable && app.durable.is_none() {
        return Err(Error::BadRequest(
            "durable sessions are unavailable on this server: their store could not be opened \
             (its log says why)"
                .into(),
        ));
    }
    let from = match &params.snapshot {
        None => None,
        Some(_)
            if params.runtime.is_some() || !params.files.is_empty() || !params.env.is_empty() =>
        {
            return Err(Error::BadRequest(
                "a session from a snapshot takes its runtime, files and environment from the \
                 snapshot: leave out runtime, files and env"
                    .into(),
            ))
        }
        Some(id) => Some(Arc::new(load(app, id, user).await?)),
    };
    let reach = Reach::from_params(params.network.as_deref(), &params.secrets)?;
    if durable && reach.is_own() {
        // A node taking a durable session over knows its owner and limits, not its own entries
        // or secrets.
        return Err(Error::BadRequest(
            "a durable session reaches what the server allows, with the server's secrets: leave \
             out network and secrets"
                .into(),
        ));
    }
    let callback = (app.callbacks)
        .for_run(params.callback_url.as_deref(), !params.functions.is_empty())
        .map_err(Error::BadRequest)?;
    let tools = crate::protocol::declared(&params.functions).map_err(Error::BadRequest)?;
    if durable && tools.is_some() {
        return Err(Error::BadRequest(
            "a durable session declares no functions (a node taking it over would not have \
             them): leave out functions"
                .into(),
        ));
    }
    let mut req = request(app, params, from);
    req.tools = tools;
    let session = launch(app, user, req, slot, durable, (reach, callback)).await?;
    if durable {
        // Saved before it is announced: it survives its node from its first request on.
        if let Err(e) = save(app, &session).await {
            end(app, &session.id, EndedBy::Closed).await;
            return Err(e);
        }
    }
    Ok(session)
}

/// Starts the session `req` describes for `user` on `slot` and registers it.
async fn launch(
    app: &AppState,
    user: &str,
    req: RunRequest,
    slot: Slot,
    durable: bool,
    (reach, callback): (Reach, Option<reqwest::Url>),
) -> Result<Arc<Session>, Error> {
    let limits = req.limits;
    let run = TrackedRun::start_session(&app.books(), user, req, reach).await?;
    let session = Session::new(run, limits, slot).answered_by(callback);
    let session = Arc::new(match durable {
        true => session.durable(0),
        false => session,
    });
    app.sessions.insert(session.clone());
    Ok(session)
}

/// `user`'s session `id`: live on this node, or a durable session whose node has died, taken
/// over and restored here from its last save (on a slot of the server's and of its user's).
pub async fn find(app: &AppState, id: &str, user: &str) -> Result<Arc<Session>, Error> {
    let missing = || Error::NotFound(format!("no session {id:?}"));
    if let Some(session) = app.sessions.get(id, user) {
        return Ok(session);
    }
    let Some(store) = &app.durable else {
        return Err(missing());
    };
    if !is_session_id(id) {
        return Err(missing());
    }
    let span = tracing::info_span!("take_over", session_id = %id);
    let deadline = tokio::time::Instant::now() + HANDOFF;
    let mut asked: Option<tokio::time::Instant> = None;
    loop {
        let (node, key) = {
            // One takeover at a time on this node (not held while waiting for another node): a
            // second request for the same session finds it restored.
            let _one = app.adopting.lock().await;
            match app.sessions.find(id) {
                Some(session) if session.user == user && !session.ended() => return Ok(session),
                // Its run ended here (the reaper records it and deletes its saves): not
                // brought back from its last save.
                Some(_) => return Err(missing()),
                None => {}
            }
            match store.take(id, user).await? {
                Take::Missing => return Err(missing()),
                Take::Taken(taken) => {
                    let adopted = adopt(app, taken).instrument(span.clone()).await;
                    if adopted.is_err() {
                        // Not restored here: its row names no live holder, for the next try.
                        let _ = store.release(id).await;
                    }
                    return adopted;
                }
                Take::Held { node, key } => (node, key),
            }
        };
        // Key 0: another process on this machine, which cannot be asked.
        if key == 0 || tokio::time::Instant::now() >= deadline {
            return Err(Error::SessionElsewhere {
                id: id.to_string(),
                node,
            });
        }
        if asked.is_none_or(|at| at.elapsed() >= ASK_AGAIN) {
            store.ask(id, key).await?;
            asked = Some(tokio::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// How often a node waiting for a session another node holds asks for it again (that node
/// keeps it while a cell runs).
const ASK_AGAIN: Duration = Duration::from_millis(500);

/// Lets durable session `id` go, as another node asked (its requests now reach that node): a
/// live one only between cells and once its last cell is saved, its run stopped here and its
/// history row left to the node that takes it; one not live here (a takeover that could not
/// restore it) has its row let go all the same. One running a cell is kept (the asking node
/// asks again).
async fn release(app: &AppState, id: &str) {
    let Some(store) = &app.durable else {
        return;
    };
    // No takeover here meanwhile: a request for it on this node waits, then takes it back only
    // once it is let go.
    let _one = app.adopting.lock().await;
    if let Some(session) = app.sessions.find(id) {
        if !session.is_durable() || !session.hand_over().await {
            return;
        }
        app.sessions.remove(id);
    }
    match store.release(id).await {
        Ok(()) => tracing::info!(session_id = %id, "durable session let go for another node"),
        Err(e) => {
            tracing::warn!(session_id = %id, error = %e, "cannot hand a durable session over")
        }
    }
}

/// Whether `id` is spelled as session ids are (`s` and 32 hex digits): others are not looked up.
fn is_session_id(id: &str) -> bool {
    id.len() == 33 && id.starts_with('s') && id[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Restores a durable session taken over from its node and registers it here.
async fn adopt(app: &AppState, taken: Taken) -> Result<Arc<Session>, Error> {
    let Taken { record, seq, saves } = taken;
    let snapshot = tokio::task::spawn_blocking(move || fold(saves))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    let user = (record.user != crate::auth::ANONYMOUS).then_some(record.user.as_str());
    let slot = super::admission::slot(app, user).await?;
    let mut req = RunRequest::script(Vec::new());
    req.cells = true;
    req.limits = record.limits;
    req.runtime = Some(snapshot.runtime().to_string());
    req.restore = Some(Arc::new(snapshot));
    let run = TrackedRun::resume_session(&app.books(), &record.user, req, &record.id).await?;
    let session = Arc::new(Session::new(run, record.limits, slot).durable(seq));
    app.sessions.insert(session.clone());
    app.metrics
        .durable_takeovers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(session_id = %record.id, seq, "durable session taken over");
    Ok(session)
}

/// A durable session's state: its saves (the first whole), each laid over the one before.
fn fold(saves: Vec<Vec<u8>>) -> Result<Snapshot, Error> {
    let saves = saves
        .iter()
        .map(|bytes| Snapshot::from_bytes(bytes))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Snapshot::fold(saves)?)
}

/// Saves a durable session (nothing for another). One that another node took over meanwhile
/// ends here, its record left to that node.
pub async fn save(app: &AppState, session: &Session) -> Result<(), Error> {
    match session.saves().await {
        Some(mut saves) => save_locked(app, session, &mut saves).await,
        None => Ok(()),
    }
}

/// [`save`], the session's saves already locked.
async fn save_locked(
    app: &AppState,
    session: &Session,
    saves: &mut crate::sessions::Saves,
) -> Result<(), Error> {
    let Some(store) = &app.durable else {
        return Ok(());
    };
    let span = tracing::debug_span!("save", session_id = %session.id);
    let max = app.config.snapshots.max_bytes;
    let saved = session
        .save_locked(saves, store, max)
        .instrument(span)
        .await;
    let counter = match &saved {
        Ok(()) => &app.metrics.durable_saves,
        Err(_) => &app.metrics.durable_save_failures,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Err(Error::SessionMoved(_)) = &saved {
        if let Some(gone) = app.sessions.remove(&session.id) {
            gone.discard().await;
        }
    }
    saved
}

/// Deletes an ended durable session's saves (nothing for another session).
async fn forget(app: &AppState, session: &Session) {
    let (Some(store), true) = (&app.durable, session.is_durable()) else {
        return;
    };
    if let Err(e) = store.remove(&session.id).await {
        tracing::warn!(session_id = %session.id, error = %e, "cannot delete a durable session's saves");
    }
}

/// `user`'s stored snapshot `id`, read and checked.
async fn load(app: &AppState, id: &str, user: &str) -> Result<Snapshot, Error> {
    let (_, bytes) = app.snapshots.read(id, user).await?;
    tokio::task::spawn_blocking(move || Ok(Snapshot::from_bytes(&bytes)?))
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// A new session of `session`'s owner on `slot`, starting where `session` is now (its running
/// cell, if any, ends first) and going its own way from there.
pub async fn fork(app: &AppState, session: &Session, slot: Slot) -> Result<Arc<Session>, Error> {
    wake(app, session).await?;
    let from = Arc::new(session.fork_snapshot().await?);
    let mut req = RunRequest::script(Vec::new());
    req.cells = true;
    req.limits = session.limits;
    req.runtime = Some(from.runtime().to_string());
    req.restore = Some(from);
    let (reach, declared) = session.reach().await;
    req.tools = declared;
    let calls = (reach, session.callback.clone());
    launch(app, &session.user, req, slot, false, calls).await
}

/// Stores a snapshot of `session` (taken once its running cell ends) for its owner.
pub async fn snapshot(app: &AppState, session: &Session) -> Result<SnapshotMeta, Error> {
    wake(app, session).await?;
    let taken = session.snapshot().await?;
    let bytes = tokio::task::spawn_blocking(move || taken.to_bytes())
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
    (app.snapshots)
        .put(&session.user, &session.runtime, bytes)
        .await
}

/// Wakes `session` if it hibernates: restored in a new instance, on a slot of the server's and
/// of its user's (refused as a new session would be when none is free).
pub async fn wake(app: &AppState, session: &Session) -> Result<(), Error> {
    session.settle_hibernation().await;
    if !session.is_hibernated() {
        return Ok(());
    }
    let user = (session.user != crate::auth::ANONYMOUS).then_some(session.user.as_str());
    let slot = super::admission::slot(app, user).await?;
    let span = tracing::info_span!("wake", session_id = %session.id);
    session.wake(&app.books(), slot).instrument(span).await
}

/// Hibernates the sessions idle past `hibernate_after_secs`, within the node's and each user's
/// caps on hibernated sessions; each one saved to the hibernation directory.
async fn hibernate(app: &AppState, after: Duration) {
    let dir = app.config.snapshot_dir().join(HIBERNATED);
    for session in app.sessions.hibernatable(after) {
        let (all, theirs) = app.sessions.hibernated(&session.user);
        if all >= app.config.max_hibernated_sessions || theirs >= app.config.max_hibernated_per_user
        {
            continue;
        }
        let path = dir.join(format!("{}.snap", session.id));
        match session.hibernate(path, after).await {
            Ok(true) => tracing::debug!(session_id = %session.id, "session hibernated"),
            Ok(false) => {}
            Err(e) => tracing::warn!(session_id = %session.id, error = %e, "cannot hibernate"),
        }
    }
}

/// Where hibernated sessions are saved, under the snapshot directory.
const HIBERNATED: &str = "hibernated";

/// Empties the hibernation directory (sessions do not outlive their server process) and makes
/// sure it exists.
pub fn clear_hibernated(app: &AppState) {
    let dir = app.config.snapshot_dir().join(HIBERNATED);
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "sessions cannot hibernate");
    }
}

/// Runs one cell in `session` (woken first if it hibernates), counting it in the metrics; a
/// session whose run ended is removed (its end recorded).
pub async fn run_cell(
    app: &AppState,
    session: &Session,
    params: ExecParams,
) -> Result<CellReport, Error> {
    // In use from now: a hibernation that has not saved it yet gives up.
    session.touch();
    wake(app, session).await?;
    let cell = Cell {
        code: params.code,
        stdin: params.stdin.unwrap_or_default().into(),
        interactive: params.interactive,
    };
    let span = tracing::info_span!("cell", session_id = %session.id);
    // A durable session's saves stay locked from the cell to its save: it is not handed over
    // between the two.
    let mut saves = session.saves().await;
    let mut result = session
        .exec(cell, cell_timeout(app, params.timeout_ms), &app.callbacks)
        .instrument(span)
        .await;
    if let (Ok(report), Some(saves)) = (&mut result, saves.as_mut()) {
        if report.exit.is_none() {
            report.saved = Some(
                save_locked(app, session, saves)
                    .await
                    .map_err(|e| e.to_string()),
            );
        }
    }
    drop(saves);
    match &result {
        // The run ended by itself before the cell could start.
        Err(Error::SessionEnded) => {
            if app.sessions.remove(&session.id).is_some() {
                session.record_unseen_end().await;
                forget(app, session).await;
            }
        }
        Err(_) => {}
        Ok(report) => {
            app.metrics
                .cells_run
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // The session ended during the cell (its end is recorded by the cell's read).
            if report.exit.is_some() {
                app.sessions.remove(&session.id);
                forget(app, session).await;
            }
        }
    }
    result
}

/// Removes session `id` and records its end (`why`). Returns whether it existed.
pub async fn end(app: &AppState, id: &str, why: EndedBy) -> bool {
    let Some(session) = app.sessions.remove(id) else {
        return false;
    };
    session.record_end(why).await;
    forget(app, &session).await;
    true
}

/// Removes sessions whose run has ended and idle ones every so often (a quarter of
/// `session_idle_secs` or of `hibernate_after_secs`, at most a second) until dropped: an idle
/// one is recorded `idle`, an ended one with its run's own outcome; hibernates the sessions
/// idle past `hibernate_after_secs`.
pub async fn reap(app: Arc<AppState>) {
    let idle = app.config.session_idle();
    let asleep = app.config.hibernate_after_secs.map(Duration::from_secs);
    let shortest = asleep.map_or(idle, |a| a.min(idle));
    let every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    if asleep.is_some() {
        clear_hibernated(&app);
    }
    let mut tick = tokio::time::interval(every);
    let mut pruned = tokio::time::Instant::now();
    let (mut asked, _listening) = match &app.durable {
        Some(store) => store.asked(),
        None => (tokio::sync::mpsc::channel(1).1, None),
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(id) = asked.recv() => {
                release(&app, &id).await;
                continue;
            }
        }
        for (session, why) in app.sessions.expire(idle) {
            match why {
                Expiry::Idle => session.record_end(EndedBy::Idle).await,
                Expiry::RunEnded => session.record_unseen_end().await,
            }
            forget(&app, &session).await;
        }
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = tokio::time::Instant::now();
            prune(&app, idle).await;
        }
        if let Some(after) = asleep {
            hibernate(&app, after).await;
        }
    }
}

/// Deletes the snapshots past `max_age_days` and the durable sessions of gone processes idle
/// past `idle`.
async fn prune(app: &AppState, idle: Duration) {
    if let Err(e) = app.snapshots.sweep().await {
        tracing::warn!(error = %e, "cannot delete old snapshots");
    }
    if let Some(store) = &app.durable {
        match store.prune(idle).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(sessions = n, "idle durable sessions of gone nodes deleted"),
            Err(e) => tracing::warn!(error = %e, "cannot prune durable sessions"),
        }
    }
}

/// How often the reaper deletes old snapshots and the durable sessions of gone processes idle
/// past `session_idle_secs`.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Ends every session (shutdown), each recorded `shutdown`; durable sessions' saves stay, for
/// another node (or this one, restarted) to take them over.
pub async fn end_all(app: &AppState) {
    for session in app.sessions.clear() {
        session.record_end(EndedBy::Shutdown).await;
    }
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
