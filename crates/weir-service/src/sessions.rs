//! Stateful sessions (`/v1/sessions`, and the MCP session tools): a [`Session`] is one tracked
//! run in cell mode (`weir_sandbox::RunRequest::cells`) whose namespace lives across cells, with
//! its owner and last use; [`Sessions`] is the server's registry of them
//! (`crate::lifecycle::session` starts, runs and ends them).
//!
//! One cell runs at a time. A cell past its time limit is interrupted first (`KeyboardInterrupt`,
//! the session lives on); only if the guest does not end the cell within [`INTERRUPT_GRACE`] is
//! the run stopped, and the session with it. Every session holds one of the server's slots, so
//! the registry is bounded by `max_sessions`.

use crate::durable::{DurableStore, Record};
use crate::error::Error;
use crate::registry::Slot;
use crate::tracked::{Books, EndedBy, TrackedRun};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use weir_sandbox::{Cell, CellEnd, Collected, Event, RunControl, RunResult};
use weir_sandbox::{FileEntry, Limits, LiveDir, RunRequest, Snapshot};

/// How long a cell past its time limit has to take its `KeyboardInterrupt` before the session
/// is ended.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// One session: a run in cell mode and who owns it.
pub struct Session {
    pub id: String,
    pub user: String,
    pub runtime: String,
    pub created: SystemTime,
    /// The size limit of the run's scratch directory (the session's files).
    pub scratch_limit: u64,
    /// The limits its run was started with (a fork gets the same).
    pub limits: Limits,
    run: tokio::sync::Mutex<TrackedRun>,
    /// The control of its current run (a woken session's is its new run's).
    control: Mutex<RunControl>,
    last_used: Mutex<Instant>,
    /// Where the session is saved while it hibernates (its run stopped, its slot let go).
    hibernated: Mutex<Option<PathBuf>>,
    /// A hibernation was refused since the session's last use (it holds a file open).
    unsavable: AtomicBool,
    /// A hibernation is under way (it holds `run` while it saves).
    hibernating: AtomicBool,
    /// The caller asked to interrupt the running cell.
    interrupt_asked: AtomicBool,
    /// A cell was handed to the guest and its end has not been read: its `exec` was abandoned
    /// (the client hung up). The next `exec` reads past it first.
    unsettled: AtomicBool,
    slot: Mutex<Option<Slot>>,
    /// A durable session's saves (`crate::durable`).
    saves: Option<tokio::sync::Mutex<Saves>>,
    /// Where its cells' calls to the functions it declared go (`crate::callbacks`).
    pub callback: Option<reqwest::Url>,
}

/// Where a durable session's saves are.
#[derive(Debug, Default)]
pub struct Saves {
    /// The number of the last save written (0: none yet).
    pub seq: i64,
    /// Bytes of the last whole save, and of the saves of changes since: once those outweigh it,
    /// the next save is whole.
    base_bytes: u64,
    chain_bytes: u64,
    /// The last save was not written: the next is whole (as a restored instance's first save
    /// is by itself), and the session is not handed over before it.
    whole_next: bool,
}

/// What a cell did.
#[derive(Debug, Default)]
pub struct CellReport {
    pub output: Collected,
    /// How the cell ended; `None` when the session ended during it.
    pub end: Option<CellEnd>,
    /// The session's run ended (exit, a limit, or stopped after an interrupt went unanswered).
    pub exit: Option<RunResult>,
    /// The cell passed its time limit and was interrupted.
    pub timed_out: bool,
    /// The caller interrupted the cell.
    pub interrupted: bool,
    pub duration: Duration,
    /// A durable session's save after the cell: written, or why not.
    pub saved: Option<Result<(), String>>,
}

impl Session {
    /// A session around `run`, holding `slot` for as long as it lives.
    pub fn new(run: TrackedRun, limits: Limits, slot: Slot) -> Self {
        Session {
            id: run.id().to_string(),
            user: run.user().to_string(),
            runtime: run.runtime().to_string(),
            created: run.started(),
            scratch_limit: limits.scratch_bytes,
            limits,
            control: Mutex::new(run.control()),
            run: tokio::sync::Mutex::new(run),
            last_used: Mutex::new(Instant::now()),
            hibernated: Mutex::new(None),
            unsavable: AtomicBool::new(false),
            hibernating: AtomicBool::new(false),
            interrupt_asked: AtomicBool::new(false),
            unsettled: AtomicBool::new(false),
            slot: Mutex::new(Some(slot)),
            saves: None,
            callback: None,
        }
    }

    /// This session, its cells' calls to its declared functions sent to `callback`.
    pub fn answered_by(mut self, callback: Option<reqwest::Url>) -> Self {
        self.callback = callback;
        self
    }

    /// This session, durable: saved after every cell; `seq` is its last save's number (0: it
    /// has none yet).
    pub fn durable(mut self, seq: i64) -> Self {
        self.saves = Some(tokio::sync::Mutex::new(Saves {
            seq,
            ..Saves::default()
        }));
        self
    }

    /// Whether it is durable.
    pub fn is_durable(&self) -> bool {
        self.saves.is_some()
    }

    /// A durable session's saves, locked (`None` for another session): held across a cell and
    /// its save, so the session is never handed over between the two.
    pub async fn saves(&self) -> Option<tokio::sync::MutexGuard<'_, Saves>> {
        match &self.saves {
            Some(saves) => Some(saves.lock().await),
            None => None,
        }
    }

    /// Saves a durable session in `store` (nothing for another): what changed since its last
    /// save, or all of it when its saves of changes outweigh its last whole one, the last save
    /// failed, or it has none. A save above `max_bytes` is not written.
    pub async fn save(&self, store: &DurableStore, max_bytes: u64) -> Result<(), Error> {
        match self.saves().await {
            Some(mut saves) => self.save_locked(&mut saves, store, max_bytes).await,
            None => Ok(()),
        }
    }

    /// [`Session::save`], its saves already locked.
    pub async fn save_locked(
        &self,
        saves: &mut Saves,
        store: &DurableStore,
        max_bytes: u64,
    ) -> Result<(), Error> {
        let whole = saves.seq == 0 || saves.whole_next || saves.chain_bytes > saves.base_bytes;
        // Until this one is written, the next is whole: its changes would follow a save the
        // database lacks.
        saves.whole_next = true;
        let taken = self.control().save(whole).await.map_err(|e| match e {
            weir_sandbox::Error::Ended => Error::SessionEnded,
            e => Error::Sandbox(e),
        })?;
        let whole = !taken.is_changes();
        let bytes = tokio::task::spawn_blocking(move || taken.to_bytes())
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let size = bytes.len() as u64;
        if size > max_bytes {
            return Err(Error::SnapshotTooLarge {
                size,
                limit: weir_sandbox::human_bytes(max_bytes),
            });
        }
        saves.seq = match saves.seq {
            0 => {
                let record = Record {
                    id: self.id.clone(),
                    user: self.user.clone(),
                    runtime: self.runtime.clone(),
                    limits: self.limits,
                    created_ms: crate::history::unix_ms(self.created),
                };
                store.create(&record, &bytes).await?;
                1
            }
            last => store.save(&self.id, last, whole, &bytes).await?,
        };
        saves.whole_next = false;
        match whole {
            true => (saves.base_bytes, saves.chain_bytes) = (size, 0),
            false => saves.chain_bytes += size,
        }
        Ok(())
    }

    /// Marks the session used now: a hibernation that has not saved it yet gives up.
    pub fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.unsavable.store(false, Ordering::Relaxed);
    }

    /// Its current run's control.
    fn control(&self) -> RunControl {
        self.control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Where it is saved while it hibernates.
    fn hibernation(&self) -> Option<PathBuf> {
        self.hibernated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether it hibernates: saved, with no instance.
    pub fn is_hibernated(&self) -> bool {
        self.hibernation().is_some()
    }

    /// Whether it may be hibernated now: idle at least `after`, no cell running, not already
    /// hibernated, and not refused since its last use.
    pub fn hibernatable(&self, after: Duration) -> bool {
        self.idle_for() >= after
            && !self.busy()
            && !self.is_hibernated()
            && !self.unsavable.load(Ordering::Relaxed)
            && !self.ended()
    }

    /// Whether the session's run has ended (however it ended): the session is gone with it. A
    /// hibernated session has not ended.
    pub fn ended(&self) -> bool {
        !self.is_hibernated() && self.control().has_ended()
    }

    /// Waits out a hibernation under way (its caller then wakes the session if it completed).
    pub async fn settle_hibernation(&self) {
        while self.hibernating.load(Ordering::Acquire) {
            drop(self.run.lock().await);
        }
    }

    /// Hibernates the session if it has been idle for `after`: saves it as `path`, stops its
    /// run and lets its slot go. False when it is in use, already hibernated, or cannot be saved
    /// (a file it holds open: it is not tried again before its next use).
    pub async fn hibernate(&self, path: PathBuf, after: Duration) -> Result<bool, Error> {
        self.hibernating.store(true, Ordering::Release);
        let done = self.hibernate_now(path, after).await;
        self.hibernating.store(false, Ordering::Release);
        done
    }

    async fn hibernate_now(&self, path: PathBuf, after: Duration) -> Result<bool, Error> {
        let Ok(_run) = self.run.try_lock() else {
            return Ok(false);
        };
        // Used since it was picked: the use goes first.
        if self.idle_for() < after || self.is_hibernated() || self.ended() {
            return Ok(false);
        }
        let taken = match self.control().snapshot().await {
            Ok(taken) => taken,
            Err(weir_sandbox::Error::Unsaved(_)) => {
                self.unsavable.store(true, Ordering::Relaxed);
                return Ok(false);
            }
            Err(e) => return Err(Error::Sandbox(e)),
        };
        let file = path.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            std::fs::write(&file, taken.to_bytes()?)?;
            Ok(())
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        *self.hibernated.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
        self.control().stop();
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(true)
    }

    /// Wakes a hibernated session in a new instance on `slot` (`books` starts it); nothing for
    /// one that is live.
    pub async fn wake(&self, books: &Books, slot: Slot) -> Result<(), Error> {
        let mut run = self.run.lock().await;
        let Some(path) = self.hibernation() else {
            return Ok(());
        };
        let file = path.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> Result<Snapshot, Error> {
            Ok(Snapshot::from_bytes(&std::fs::read(&file)?)?)
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e)))??;
        let mut req = RunRequest::script(Vec::new());
        req.cells = true;
        req.limits = self.limits;
        req.runtime = Some(snapshot.runtime().to_string());
        req.restore = Some(Arc::new(snapshot));
        run.carry_tools(&mut req);
        let handle = books.sandbox.start(req).await?;
        *self.control.lock().unwrap_or_else(|p| p.into_inner()) = handle.control();
        run.resume_in(handle);
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(slot);
        *self.hibernated.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _ = std::fs::remove_file(&path);
        Ok(())
    }

    /// Removes its saved state, if it hibernates.
    fn forget_hibernation(&self) {
        if let Some(path) = self
            .hibernated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Records the end of a session whose run ended by itself with no `exec` reading it: with
    /// the run's own outcome when its exit can be read within a moment, else `stopped`. A cell
    /// being read records its own end.
    pub async fn record_unseen_end(&self) {
        let Ok(mut run) = self.run.try_lock() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(deadline, run.next_event()).await {
                Ok(Some(Event::Exit(result))) => {
                    run.finish(&result).await;
                    return;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return run.end(EndedBy::Closed).await,
            }
        }
    }

    /// Hands a durable session over to another process, if no cell runs in it and its last
    /// cell was saved: its run stopped here, its end not recorded (the session goes on
    /// elsewhere, under the same history row). False, and nothing done, otherwise.
    pub async fn hand_over(&self) -> bool {
        let Ok(mut run) = self.run.try_lock() else {
            return false;
        };
        let Some(Ok(saves)) = self.saves.as_ref().map(|s| s.try_lock()) else {
            return false;
        };
        if saves.seq == 0 || saves.whole_next {
            return false;
        }
        self.forget_hibernation();
        run.abandon();
        true
    }

    /// Ends a durable session another process took over meanwhile: its run stopped here, its
    /// end left to that process.
    pub async fn discard(&self) {
        self.forget_hibernation();
        self.run.lock().await.abandon();
    }

    /// Stops the session's run and records its end (`why`), once a cell being read is done.
    pub async fn record_end(&self, why: EndedBy) {
        self.control().stop();
        self.forget_hibernation();
        self.run.lock().await.end(why).await;
    }

    /// How long since the session's last cell ended (or it was created).
    pub fn idle_for(&self) -> Duration {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .elapsed()
    }

    /// Whether a cell is running.
    pub fn busy(&self) -> bool {
        self.run.try_lock().is_err()
    }

    /// Interrupts the running cell; false when none runs.
    pub fn interrupt(&self) -> bool {
        let asked = self.busy() && self.control().interrupt();
        if asked {
            self.interrupt_asked.store(true, Ordering::Release);
        }
        asked
    }

    /// Sends `data` to the running cell's stdin (an interactive cell waits for it), then end of
    /// file for this cell if `eof`. Never waits: a full queue is refused.
    pub fn write_stdin(&self, data: String, eof: bool) -> Result<(), Error> {
        if !self.busy() {
            return Err(Error::NoCell);
        }
        let control = self.control();
        control.try_write_stdin(data)?;
        if eof {
            control.end_input()?;
        }
        self.touch();
        Ok(())
    }

    /// Runs `op` on the session's directory on a blocking thread, holding the directory (it
    /// is not handed to another run until `op` is done); refused once the run has ended.
    async fn on_files<T: Send + 'static>(
        &self,
        op: impl FnOnce(&LiveDir) -> weir_sandbox::Result<T> + Send + 'static,
    ) -> Result<T, Error> {
        let dir = self.control().live_dir().ok_or(Error::FilesGone)?;
        tokio::task::spawn_blocking(move || op(&dir))
            .await
            .unwrap_or_else(|e| Err(weir_sandbox::Error::Io(std::io::Error::other(e))))
            .map_err(Error::from)
    }

    /// The session's files.
    pub async fn files(&self) -> Result<Vec<FileEntry>, Error> {
        self.on_files(|dir| dir.list()).await
    }

    /// One of the session's files, if it holds at most `max` bytes.
    pub async fn read_file(&self, path: String, max: u64) -> Result<Vec<u8>, Error> {
        self.on_files(move |dir| dir.read(&path, max)).await
    }

    /// Writes one of the session's files, within its scratch limit.
    pub async fn write_file(&self, path: String, data: axum::body::Bytes) -> Result<(), Error> {
        let limit = self.scratch_limit;
        self.on_files(move |dir| dir.write(&path, &data, limit))
            .await
    }

    /// How far its run reaches on the network, and the functions it declared (a fork gets
    /// both).
    pub async fn reach(&self) -> (crate::tracked::Reach, Option<weir_sandbox::Tools>) {
        let run = self.run.lock().await;
        (run.reach(), run.declared())
    }

    /// Snapshots the session between cells: refused while a cell runs.
    pub async fn snapshot(&self) -> Result<Snapshot, Error> {
        self.capture(false).await
    }

    /// Snapshots the session between cells to fork it: its pages shared copy-on-write with
    /// the sessions started from it ([`weir_sandbox::RunControl::fork`]); refused while a cell
    /// runs.
    pub async fn fork_snapshot(&self) -> Result<Snapshot, Error> {
        self.capture(true).await
    }

    async fn capture(&self, fork: bool) -> Result<Snapshot, Error> {
        if self.busy() {
            return Err(Error::CellBusy);
        }
        let control = self.control();
        let taken = match fork {
            true => control.fork().await,
            false => control.snapshot().await,
        };
        let taken = taken.map_err(|e| match e {
            weir_sandbox::Error::Ended => Error::SessionEnded,
            e => Error::Sandbox(e),
        })?;
        self.touch();
        Ok(taken)
    }

    /// Ends the session's run now (its instance is freed).
    pub fn stop(&self) {
        self.control().stop();
    }

    /// Runs one cell, waiting at most `timeout` before interrupting it; its calls to the
    /// session's declared functions are answered through `callbacks`.
    pub async fn exec(
        &self,
        cell: Cell,
        timeout: Duration,
        callbacks: &crate::callbacks::Callbacks,
    ) -> Result<CellReport, Error> {
        let mut run = match self.run.try_lock() {
            Ok(run) => run,
            // A hibernation checking whether the session is idle: it gives up, as it was used.
            Err(_) if self.hibernating.load(Ordering::Acquire) => self.run.lock().await,
            Err(_) => return Err(Error::CellBusy),
        };
        if self.unsettled.load(Ordering::Acquire) {
            self.settle(&mut run).await?;
        }
        self.interrupt_asked.store(false, Ordering::Release);
        let started = Instant::now();
        let control = self.control();
        control.send_cell(cell).map_err(|e| match e {
            weir_sandbox::Error::CellBusy => Error::CellBusy,
            _ => Error::SessionEnded,
        })?;
        // Dropped before the cell's end is read (the client hung up): interrupt the cell, and
        // leave its end for the next `exec` to read past.
        self.unsettled.store(true, Ordering::Release);
        let _abandon = Abandon(self);
        let mut report = CellReport::default();
        let mut clock = CellClock::new(timeout);
        loop {
            let event = tokio::select! {
                event = run.next_event() => event,
                () = clock.next() => {
                    // When it stops the run, the run's `Exit` follows.
                    if clock.fire(&control) == Phase::Interrupted {
                        report.timed_out = true;
                    }
                    continue;
                }
            };
            match event {
                Some(Event::Cell(end)) => {
                    report.end = Some(end);
                    break;
                }
                Some(Event::Call(call)) if self.callback.is_some() => {
                    if let Some(url) = &self.callback {
                        let answer = callbacks.call(url, &self.id, &call);
                        if answered_in_time(&control, &mut clock, call.id, answer).await {
                            report.timed_out = true;
                        }
                    }
                    report.output.push(Event::Call(call));
                }
                Some(Event::Exit(result)) => {
                    run.finish(&result).await;
                    report.exit = Some(result);
                    break;
                }
                Some(other) => report.output.push(other),
                None => break,
            }
        }
        self.unsettled.store(false, Ordering::Release);
        report.interrupted = self.interrupt_asked.swap(false, Ordering::AcqRel);
        report.duration = started.elapsed();
        self.touch();
        Ok(report)
    }
}

impl Session {
    /// Reads past an abandoned cell's output to its end (it was interrupted when abandoned);
    /// if it has not ended within [`INTERRUPT_GRACE`], the session is ended.
    async fn settle(&self, run: &mut TrackedRun) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + INTERRUPT_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, run.next_event()).await {
                Ok(Some(Event::Cell(_))) => {
                    self.unsettled.store(false, Ordering::Release);
                    return Ok(());
                }
                Ok(Some(Event::Exit(_)) | None) => return Err(Error::SessionEnded),
                Ok(Some(_)) => {}
                Err(_) => {
                    self.control().stop();
                    return Err(Error::SessionEnded);
                }
            }
        }
    }
}

/// Interrupts a cell whose `exec` is dropped before its end was read.
struct Abandon<'a>(&'a Session);

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.0.unsettled.load(Ordering::Acquire) {
            self.0.control().interrupt();
        }
    }
}

/// Where a cell is in its time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Within its limit.
    Running,
    /// Past it and interrupted; the grace period runs.
    Interrupted,
    /// Past the grace period: the run is stopped.
    Stopped,
}

/// Waits for the answer to call `id` and gives it to the guest, unless the cell's time limit
/// comes first: then the cell is interrupted (the call's wait ends with `KeyboardInterrupt`), or
/// stopped past its grace period, the answer dropped, and `true` returned.
async fn answered_in_time(
    control: &RunControl,
    clock: &mut CellClock,
    id: u64,
    answer: impl std::future::Future<Output = weir_sandbox::ToolResult>,
) -> bool {
    tokio::select! {
        result = answer => {
            // The call may have ended meanwhile (its own time limit): the guest has its error.
            let _ = control.answer_call(id, result);
            false
        }
        () = clock.next() => {
            clock.fire(control);
            true
        }
    }
}

/// A cell's time limit, then the grace period after its interrupt.
struct CellClock {
    phase: Phase,
    next: tokio::time::Instant,
}

impl CellClock {
    fn new(limit: Duration) -> Self {
        CellClock {
            phase: Phase::Running,
            next: tokio::time::Instant::now() + limit,
        }
    }

    /// Sleeps until the next step is due; for ever once the run is stopped.
    async fn next(&self) {
        match self.phase {
            Phase::Stopped => std::future::pending().await,
            _ => tokio::time::sleep_until(self.next).await,
        }
    }

    /// Takes the step that is due on the cell's run (`control`): interrupts it at its time
    /// limit, stops it past the grace period. Returns the phase it enters.
    fn fire(&mut self, control: &RunControl) -> Phase {
        self.phase = match self.phase {
            Phase::Running => {
                self.next = tokio::time::Instant::now() + INTERRUPT_GRACE;
                control.interrupt();
                Phase::Interrupted
            }
            _ => {
                control.stop();
                Phase::Stopped
            }
        };
        self.phase
    }
}

/// Why [`Sessions::expire`] removed a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Its run had ended by itself (a limit, a crash, its backstop) with no `exec` to read it.
    RunEnded,
    /// Idle past `session_idle_secs`.
    Idle,
}

/// The server's sessions by id.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

impl Sessions {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, session: Arc<Session>) {
        self.map().insert(session.id.clone(), session);
    }

    /// `user`'s session `id`; another user's is as absent as a missing one, and so is one whose
    /// run has ended (the reaper records and removes it).
    pub fn get(&self, id: &str, user: &str) -> Option<Arc<Session>> {
        self.map()
            .get(id)
            .filter(|k| k.user == user && !k.ended())
            .cloned()
    }

    /// Session `id`, whoever owns it (for the server's own use, never a client's lookup).
    pub fn find(&self, id: &str) -> Option<Arc<Session>> {
        self.map().get(id).cloned()
    }

    /// Removes a session and stops its run.
    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        let session = self.map().remove(id);
        if let Some(s) = &session {
            s.stop();
        }
        session
    }

    /// `user`'s live sessions, oldest first.
    pub fn of(&self, user: &str) -> Vec<Arc<Session>> {
        let mut list: Vec<_> = self
            .map()
            .values()
            .filter(|k| k.user == user && !k.ended())
            .cloned()
            .collect();
        list.sort_by_key(|k| k.created);
        list
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// How many sessions hibernate, in all and of `user`.
    pub fn hibernated(&self, user: &str) -> (usize, usize) {
        let map = self.map();
        let asleep = map.values().filter(|k| k.is_hibernated());
        asleep.fold((0, 0), |(all, theirs), k| {
            (all + 1, theirs + usize::from(k.user == user))
        })
    }

    /// The sessions that may be hibernated now ([`Session::hibernatable`]), longest idle first.
    pub fn hibernatable(&self, after: Duration) -> Vec<Arc<Session>> {
        let mut list: Vec<_> = (self.map().values())
            .filter(|k| k.hibernatable(after))
            .cloned()
            .collect();
        list.sort_by_key(|k| std::cmp::Reverse(k.idle_for()));
        list
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes (and stops) every session with no cell running whose run has ended, or that has
    /// been idle for longer than `idle`; says which.
    pub fn expire(&self, idle: Duration) -> Vec<(Arc<Session>, Expiry)> {
        let expired: Vec<(String, Expiry)> = self
            .map()
            .values()
            .filter(|k| !k.busy()) // a running `exec` reads its own session's end
            .filter_map(|k| match k.ended() {
                true => Some((k.id.clone(), Expiry::RunEnded)),
                false if k.idle_for() > idle => Some((k.id.clone(), Expiry::Idle)),
                false => None,
            })
            .collect();
        expired
            .into_iter()
            .filter_map(|(id, why)| Some((self.remove(&id)?, why)))
            .collect()
    }

    /// Removes (and stops) every session (shutdown).
    pub fn clear(&self) -> Vec<Arc<Session>> {
        let all: Vec<Arc<Session>> = self.map().drain().map(|(_, k)| k).collect();
        for k in &all {
            k.stop();
        }
        all
    }
}
