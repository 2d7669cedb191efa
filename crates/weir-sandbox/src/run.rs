//! One run: its events, its control handle, and the driver task that owns its store.
//!
//! The driver polls the guest future alongside the caller's commands and the run's clocks:
//! stop drops the store at once; pause simply stops polling the guest (the epoch callback makes a
//! busy guest yield every tick, so it is frozen within one tick and uses no CPU); the wall-time
//! limit counts only while the guest is running, and the idle limit while it waits for input or
//! is paused.

use crate::background::BackgroundLane;
use crate::error::{Error, Result};
use crate::event::{Collected, Event, RunId, RunResult, RunState};
use crate::files::Returned;
use crate::interrupt::Interrupter;
use crate::launch::{Capture, Cell, SessionRequest};
use crate::limits::Limits;
use crate::outcome::Outcome;
use crate::pipes::{GuestStatus, GuestStdin, OutputLimitExceeded, OutputQueue, StdinSender};
use crate::priority::{Grant, Priority};
use crate::runtime::{CallResult, GuestCall, Runtime};
use crate::scratch::{LiveDir, Scratch};
use crate::snapshot::Snapshot;
use crate::store::GuestState;
use crate::task::AbortOnDrop;
use crate::variant::EngineVariant;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;
use wasmtime::{Store, Trap};

/// What the caller wants the run to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Desired {
    Run,
    Pause,
    Stop,
}

/// Commands to a run. Cloneable; every method is harmless once the run has ended.
#[derive(Clone)]
pub struct RunControl {
    desired: Arc<watch::Sender<Desired>>,
    stdin: StdinSender,
    priority: Priority,
    interrupter: Arc<Interrupter>,
    cells: Option<mpsc::Sender<SessionRequest>>,
    tools: Option<Arc<crate::tools::ToolBox>>,
    /// The run's scratch directory, while its store holds it.
    dir: Weak<Scratch>,
    /// Set once the guest will run no more (before its store, and directory, are let go).
    ended: Arc<AtomicBool>,
}

impl RunControl {
    /// Whether the run has ended (however it ended: its program finished, a limit, a stop, a
    /// crash). Its directory and instance are then gone or going.
    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }

    /// Answers call `id` to a function the run's caller answers (an [`Event::Call`]): the
    /// guest's call returns `result`'s value, or raises `weir.ToolError` with its message.
    /// Refused when no call `id` waits (answered already, timed out, interrupted, or unknown).
    pub fn answer_call(&self, id: u64, result: crate::tools::ToolResult) -> crate::Result<()> {
        match &self.tools {
            Some(tools) => tools.answer_call(id, result),
            None => Err(crate::Error::Tools("this run has no host functions".into())),
        }
    }

    /// The run's scratch directory, held for as long as the returned [`LiveDir`] lives; `None`
    /// once the run has ended. Work on a run's files through this, never through a stored path:
    /// an ended run's directory is emptied and handed to the next run.
    pub fn live_dir(&self) -> Option<LiveDir> {
        let dir = self.dir.upgrade().map(LiveDir::new)?;
        // Taken after the upgrade: a run that ends in between is refused, not served.
        (!self.has_ended()).then_some(dir)
    }

    /// Sends bytes to the guest's stdin, waiting while its queue is full. Returns false if the
    /// run has ended or stdin was closed.
    pub async fn write_stdin(&self, data: impl Into<Bytes>) -> bool {
        let data = data.into();
        if data.is_empty() {
            return true;
        }
        self.stdin.send(data).await
    }

    /// Sends bytes to stdin without waiting; fails when the run has ended or the guest has not
    /// read enough of what was sent before.
    pub fn try_write_stdin(&self, data: impl Into<Bytes>) -> Result<()> {
        let data = data.into();
        if data.is_empty() {
            return Ok(());
        }
        self.stdin.try_send(data).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::StdinFull,
            mpsc::error::TrySendError::Closed(_) => Error::Ended,
        })
    }

    /// Ends the input of a session's running interactive cell ([`Cell::interactive`]): once
    /// it has read what was sent, it reads end of file; later cells get their own input.
    pub fn end_input(&self) -> Result<()> {
        self.stdin.end_input().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::StdinFull,
            mpsc::error::TrySendError::Closed(_) => Error::Ended,
        })
    }

    /// Closes stdin: once the guest has read what was sent, it sees end of file. Never waits,
    /// also while stdin's queue is full.
    pub fn close_stdin(&self) {
        self.stdin.close();
    }

    /// Ends the run now (also while it waits for input or is paused). A background run ends in
    /// the foreground: whoever waits for its end does not wait behind other runs.
    pub fn stop(&self) {
        self.priority.make_urgent();
        self.desired.send_replace(Desired::Stop);
    }

    /// Raises `KeyboardInterrupt` in the guest's running code, as Ctrl-C would: within one
    /// epoch tick in a busy loop, at once in `time.sleep` or `input()`. The run goes on (a
    /// REPL shows the traceback and prompts again; a session's cell ends with it). False when
    /// nothing can take it: the runtime cannot be interrupted, or a session is between cells.
    pub fn interrupt(&self) -> bool {
        self.interrupter.request()
    }

    /// Hands a session its next cell. The cell's end arrives as [`Event::Cell`] after its
    /// output; one cell at a time.
    pub fn send_cell(&self, cell: Cell) -> Result<()> {
        let cells = self.cells.as_ref().ok_or(Error::NotASession)?;
        cells
            .try_send(SessionRequest::Cell(cell))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => Error::CellBusy,
                mpsc::error::TrySendError::Closed(_) => Error::Ended,
            })
    }

    /// Snapshots a session ([`Snapshot`]): taken once its running and queued cells have
    /// ended, while it waits for the next.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        self.capture(Capture::Snapshot).await
    }

    /// Snapshots a session to fork it: taken as [`RunControl::snapshot`] is, but its memory
    /// pages go into an anonymous memory file that this session and every session restored from
    /// the snapshot in this process map copy-on-write, sharing each page until one of them
    /// writes it (a fork then costs neither the copy nor the memory of its pages). Taken again
    /// before the session runs anything, it shares the same file (`python-sci`'s snapshots run
    /// its guest to let go of files, so each of its forks takes its pages afresh). Written out
    /// ([`Snapshot::to_bytes`]) it is an ordinary snapshot.
    pub async fn fork(&self) -> Result<Snapshot> {
        self.capture(Capture::Fork).await
    }

    /// Saves a session: a snapshot of what changed since its last save ([`Snapshot::apply`] it
    /// over that one), or of everything when `whole` or at its first save (a restored session's
    /// first save too). Taken as [`RunControl::snapshot`] is;
    /// a caller that could not keep a save asks for a whole one next.
    pub async fn save(&self, whole: bool) -> Result<Snapshot> {
        self.capture(match whole {
            true => Capture::WholeSave,
            false => Capture::Changes,
        })
        .await
    }

    async fn capture(&self, capture: Capture) -> Result<Snapshot> {
        let cells = self.cells.as_ref().ok_or(Error::NotASession)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        cells
            .send(SessionRequest::Snapshot(capture, tx))
            .await
            .map_err(|_| Error::Ended)?;
        rx.await.map_err(|_| Error::Ended)?
    }

    /// Freezes the guest: no CPU, and its wall-time clock stops.
    pub fn pause(&self) {
        self.desired.send_if_modified(|d| {
            let change = *d == Desired::Run;
            if change {
                *d = Desired::Pause;
            }
            change
        });
    }

    /// Resumes a paused run.
    pub fn resume(&self) {
        self.desired.send_if_modified(|d| {
            let change = *d == Desired::Pause;
            if change {
                *d = Desired::Run;
            }
            change
        });
    }
}

/// The caller's end of a run. Dropping it stops the run and frees its store.
pub struct RunHandle {
    id: RunId,
    control: RunControl,
    events: mpsc::Receiver<Event>,
    /// An event taken early by [`RunHandle::next_event_merged`], returned next.
    held: Option<Event>,
    runtime: String,
    _task: AbortOnDrop,
}

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> &RunId {
        &self.id
    }

    /// The name of the runtime the run is in.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// A handle to control the run (stdin, stop, pause) from elsewhere.
    pub fn control(&self) -> RunControl {
        self.control.clone()
    }

    /// The next event; `None` after `Exit`.
    pub async fn next_event(&mut self) -> Option<Event> {
        match self.held.take() {
            Some(event) => Some(event),
            None => self.events.recv().await,
        }
    }

    /// The next event, with output of the same stream that has already arrived merged into it
    /// (up to `max` bytes): a flood reaches a consumer as a few large chunks instead of one per
    /// line. Order is kept: an event of another kind waits for the next call.
    pub async fn next_event_merged(&mut self, max: usize) -> Option<Event> {
        let (stream, data) = match self.next_event().await? {
            Event::Output { stream, data } => (stream, data),
            other => return Some(other),
        };
        let mut merged: Option<bytes::BytesMut> = None;
        while merged.as_ref().map_or(data.len(), |m| m.len()) < max {
            match self.events.try_recv() {
                Ok(Event::Output {
                    stream: s,
                    data: more,
                }) if s == stream => merged
                    .get_or_insert_with(|| bytes::BytesMut::from(&data[..]))
                    .extend_from_slice(&more),
                Ok(other) => {
                    self.held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let data = merged.map_or(data, bytes::BytesMut::freeze);
        Some(Event::Output { stream, data })
    }

    /// Consumes the events until the run ends, collecting stdout and stderr.
    pub async fn collect(mut self) -> Collected {
        let mut out = Collected::default();
        while let Some(event) = self.next_event().await {
            out.push(event);
        }
        out
    }
}

/// Everything the driver task owns.
pub(crate) struct Driver {
    pub id: RunId,
    pub start: Start,
    pub variant: Arc<EngineVariant>,
    pub limits: Limits,
    pub events: mpsc::Sender<Event>,
    /// Keeps stdin open while the run lives: end of file comes only from `close_stdin`, not
    /// from the caller dropping its controls.
    pub stdin_open: StdinSender,
    pub status: watch::Receiver<GuestStatus>,
    pub pipes: Arc<OutputQueue>,
    pub stdin: GuestStdin,
    pub scratch_path: PathBuf,
    /// The run's directory, as the store holds it (for [`RunControl::live_dir`]).
    pub scratch: Weak<Scratch>,
    /// What the store counts of files the guest unlinked but holds open
    /// (`crate::store::UnlinkedFiles`): part of the directory's size.
    pub unlinked: Arc<AtomicU64>,
    /// The run's CPU class, foreground from the start (see [`crate::priority`]).
    pub foreground: Foreground,
    /// Where the driver is polled while the run is background.
    pub lane: Arc<BackgroundLane>,
    pub span: tracing::Span,
    pub interrupter: Arc<Interrupter>,
    /// A session's cells and snapshot requests (the callers' end).
    pub cells: Option<mpsc::Sender<SessionRequest>>,
    /// The run's host functions, whose declared ones the caller answers.
    pub tools: Option<Arc<crate::tools::ToolBox>>,
    /// Files to return when the program ends by itself.
    pub return_files: Vec<glob::Pattern>,
}

/// How a run's guest starts.
pub(crate) enum Start {
    /// A store holding the run's state: the driver instantiates the guest in it and calls it.
    Fresh(Store<GuestState>),
    /// A warm guest, entered ahead of demand and handed the run's state (`crate::warm`): its
    /// call owns the store, so a run stopped before it returns reads its peak memory here.
    Entered {
        call: GuestCall,
        peak: Arc<AtomicUsize>,
    },
}

/// A run's foreground grant and when it lapses (its first output ends it sooner).
pub(crate) struct Foreground {
    priority: Priority,
    grant: Option<Grant>,
    until: tokio::time::Instant,
    /// The class the driver last saw (`true`: background).
    seen_background: bool,
}

impl Foreground {
    /// Foreground from now, for as long as the sandbox's policy says.
    pub fn new(priority: Priority) -> Self {
        Foreground {
            grant: Some(priority.grant()),
            until: tokio::time::Instant::now() + priority.foreground_for(),
            priority,
            seen_background: false,
        }
    }

    /// Lets the run move to its lane if its class changed since the last look: pending once
    /// (the driver's poller moves a pending driver whose class changed; `crate::background`).
    async fn follow_class(&mut self) {
        let background = self.priority.is_background();
        if background != self.seen_background {
            self.seen_background = background;
            tokio::task::yield_now().await;
        }
    }

    fn renew(&mut self) {
        // The old grant goes first: dropped after the new one, it would mark the run background.
        self.end();
        self.grant = Some(self.priority.grant());
        self.until = tokio::time::Instant::now() + self.priority.foreground_for();
    }

    fn end(&mut self) {
        self.grant = None;
    }

    /// Completes when the grant lapses (never, without one).
    async fn lapsed(&self) {
        if self.grant.is_some() {
            tokio::time::sleep_until(self.until).await
        } else {
            std::future::pending().await
        }
    }
}

/// Spawns the driver task and returns the caller's handle, which gets the run's event receiver
/// and stdin sender.
pub(crate) fn spawn(d: Driver, events_rx: mpsc::Receiver<Event>, stdin: StdinSender) -> RunHandle {
    let (desired_tx, desired_rx) = watch::channel(Desired::Run);
    let priority = d.foreground.priority.clone();
    let ended = Arc::new(AtomicBool::new(false));
    let control = RunControl {
        desired: Arc::new(desired_tx),
        stdin,
        priority: priority.clone(),
        interrupter: d.interrupter.clone(),
        cells: d.cells.clone(),
        tools: d.tools.clone(),
        dir: d.scratch.clone(),
        ended: ended.clone(),
    };
    let id = d.id.clone();
    let runtime = d.variant.runtime.info().name.clone();
    let span = d.span.clone();
    let lane = d.lane.clone();
    let driver = Box::pin(d.run(desired_rx, Ended(ended)).instrument(span));
    let task = tokio::spawn(crate::background::drive(driver, priority, lane));
    RunHandle {
        id,
        control,
        events: events_rx,
        held: None,
        runtime,
        _task: AbortOnDrop(task),
    }
}

/// How one wait of the driver ended.
enum Wake<O> {
    Finished(O),
    Expired(Outcome),
    Changed,
    Stop,
}

/// Marks a run ended when its driver is done with the guest, or is dropped (aborted) before.
struct Ended(Arc<AtomicBool>);

impl Ended {
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.set();
    }
}

impl Driver {
    async fn run(self, mut desired: watch::Receiver<Desired>, ended: Ended) {
        let Driver {
            start,
            variant,
            limits,
            events,
            mut status,
            pipes,
            stdin,
            scratch_path,
            mut foreground,
            stdin_open: _stdin_open, // held until the run ends
            return_files,
            unlinked,
            tools,
            ..
        } = self;
        let started = Instant::now();
        let upkeep = Upkeep {
            disk: Disk {
                scratch_path: &scratch_path,
                scratch_limit: limits.scratch_bytes,
                unlinked: &unlinked,
            },
            foreground: &mut foreground,
        };
        let mut watch = Watch {
            desired: &mut desired,
            status: &mut status,
            events: &events,
            output: &pipes,
            limits: &limits,
        };
        let (finished, fuel_consumed, peak) = match start {
            Start::Fresh(store) => watch.fresh(store, &variant, upkeep).await,
            Start::Entered { call, peak } => watch.entered(call, peak, upkeep).await,
        };
        ended.set();
        foreground.end();
        drain(&pipes, &events).await;
        // What is left (freeing the instance, the exit) is background work unless stopped.
        foreground.follow_class().await;
        let returns = Returns {
            scratch_path: &scratch_path,
            patterns: &return_files,
            max_bytes: limits.output_bytes,
        };
        let settled = settle(finished, &*variant.runtime, &foreground.priority, returns).await;
        let result = RunResult {
            message: exit_message(&settled.outcome, settled.budget_hit, &limits),
            outcome: settled.outcome,
            duration: started.elapsed(),
            output_truncated: pipes.truncated(),
            output_bytes: pipes.written(),
            fuel_consumed,
            peak_memory: peak,
            input_read: stdin.read_log(),
            calls_made: (tools.as_ref())
                .map(|t| Box::new(t.take_log()))
                .filter(|calls| !calls.made.is_empty()),
            runtime: variant.runtime.info().name.clone(),
            files: settled.files,
        };
        tracing::info!(
            outcome = result.outcome.kind(),
            duration_ms = result.duration.as_millis() as u64,
            "run finished"
        );
        let _ = events.send(Event::Exit(result)).await;
    }
}

/// Where the files a run returns are found, and how many bytes of them it may return.
struct Returns<'a> {
    scratch_path: &'a Path,
    patterns: &'a [glob::Pattern],
    max_bytes: u64,
}

/// How a run ended, read from its store before the store is freed.
struct Settled {
    outcome: Outcome,
    /// The guest's memory could not grow because the host's memory budget was spent.
    budget_hit: bool,
    /// The files the run returns (none unless the program ended by itself).
    files: Returned,
}

/// Reads how the guest's call ended and the files it returns, then frees its store (after
/// giving way to foreground runs), so a caller that sees `Exit` sees the instance gone.
async fn settle(
    finished: Finished,
    runtime: &dyn Runtime,
    priority: &Priority,
    returns: Returns<'_>,
) -> Settled {
    let (result, store) = match finished {
        Ok(done) => done,
        Err(outcome) => {
            return Settled {
                outcome,
                budget_hit: false,
                files: Returned::default(),
            }
        }
    };
    let outcome = classify(result, &store, runtime);
    let budget_hit = store.data().limiter.budget_hit();
    // Read before the store goes: its scratch directory is emptied with it.
    let files = crate::files::collect(returns.scratch_path, returns.patterns, returns.max_bytes);
    // Freeing resets the instance's memory slot, a background run's largest step: it waits for
    // foreground runs first, as its guest did at every epoch tick.
    priority.give_way().await;
    drop(store);
    Settled {
        outcome,
        budget_hit,
        files,
    }
}

/// The result's message: a memory limit hit because the host's budget was spent says so.
fn exit_message(outcome: &Outcome, budget_hit: bool, limits: &Limits) -> String {
    match outcome {
        Outcome::MemoryLimit if budget_hit => {
            "Script's memory could not grow: the host's memory budget for all runs is spent"
                .to_string()
        }
        _ => outcome.message(limits),
    }
}

/// What the guest's call ended with: its result and its store, or why it was ended.
type Finished = Result<(CallResult, Store<GuestState>), Outcome>;

/// What [`Watch::supervise`] watches besides the guest.
struct Watch<'a> {
    desired: &'a mut watch::Receiver<Desired>,
    status: &'a mut watch::Receiver<GuestStatus>,
    events: &'a mpsc::Sender<Event>,
    output: &'a OutputQueue,
    limits: &'a Limits,
}

impl Watch<'_> {
    /// Instantiates and calls the guest in `store`. Returns how it ended, the fuel it used
    /// (metered runs) and its peak memory.
    async fn fresh(
        &mut self,
        mut store: Store<GuestState>,
        variant: &EngineVariant,
        upkeep: Upkeep<'_>,
    ) -> (Finished, Option<u64>, usize) {
        // Asked only of metered stores: on the others `get_fuel` builds an error, which
        // captures a backtrace when RUST_BACKTRACE is set (~0.1 ms before the first output).
        let metered = variant.metered();
        let initial_fuel = metered.then(|| store.get_fuel().ok()).flatten();
        let finished = {
            let call = call_guest(&mut store, variant);
            tokio::pin!(call);
            self.supervise(&mut call, upkeep).await
        };
        let fuel_left = metered.then(|| store.get_fuel().ok()).flatten();
        let fuel_consumed = match (initial_fuel, fuel_left) {
            (Some(start), Some(left)) => Some(start.saturating_sub(left)),
            _ => None,
        };
        let peak = store.data().limiter.peak();
        (finished.map(|result| (result, store)), fuel_consumed, peak)
    }

    /// Continues a warm guest's call (never metered: metered engines keep no warm pool). A
    /// run ended before the guest returned drops the call, and the store with it.
    async fn entered(
        &mut self,
        mut call: GuestCall,
        peak: Arc<AtomicUsize>,
        upkeep: Upkeep<'_>,
    ) -> (Finished, Option<u64>, usize) {
        let finished = self.supervise(&mut call.as_mut(), upkeep).await;
        drop(call);
        (finished, None, peak.load(Ordering::Relaxed))
    }

    /// Polls the guest until it finishes (`Ok`) or the run must end for another reason (`Err`).
    async fn supervise<O>(
        &mut self,
        call: &mut std::pin::Pin<&mut (impl std::future::Future<Output = O> + ?Sized)>,
        upkeep: Upkeep<'_>,
    ) -> Result<O, Outcome> {
        let Upkeep { disk, foreground } = upkeep;
        let mut disk_check = disk_checks();
        let mut clock = StateClock::new(self.limits);
        loop {
            foreground.follow_class().await;
            let want = *self.desired.borrow_and_update();
            let guest = *self.status.borrow_and_update();
            if want == Desired::Stop {
                return Err(Outcome::Stopped);
            }
            let state = run_state(want, guest);
            clock.see_waits(state, guest.waits, self).await;
            clock.see_state(state, foreground, self).await;
            let on_expiry = if state == RunState::Running {
                Outcome::Timeout
            } else {
                Outcome::Idle
            };
            let (events, output) = (self.events, self.output);
            let wake = tokio::select! {
                biased;
                changed = self.desired.changed() => if changed.is_ok() { Wake::Changed } else { Wake::Stop },
                _ = self.status.changed() => Wake::Changed,
                _ = tokio::time::sleep_until(clock.deadline) => Wake::Expired(on_expiry),
                permit = events.reserve(), if output.has_queued() => {
                    if let (Ok(permit), Some(chunk)) = (permit, output.pop()) {
                        permit.send(chunk);
                    }
                    Wake::Changed
                }
                _ = output.data_queued(), if !output.has_queued() => Wake::Changed,
                _ = foreground.lapsed() => {
                    foreground.end();
                    Wake::Changed
                }
                _ = disk_check.tick() => {
                    if disk.full() {
                        Wake::Expired(Outcome::DiskLimit)
                    } else {
                        Wake::Changed
                    }
                }
                result = call.as_mut(), if state != RunState::Paused => Wake::Finished(result),
            };
            match wake {
                Wake::Finished(result) => return Ok(result),
                Wake::Expired(outcome) => return Err(outcome),
                Wake::Stop => return Err(Outcome::Stopped),
                Wake::Changed => {}
            }
        }
    }
}

async fn call_guest(store: &mut Store<GuestState>, variant: &EngineVariant) -> CallResult {
    variant.instantiator.guest.call(store).await
}

/// How often the scratch directory's size is checked while a run is active.
const DISK_CHECK: Duration = Duration::from_millis(100);

/// What the driver looks after besides the guest and the caller: the run's scratch directory
/// and its size limit, and the run's CPU class.
struct Upkeep<'a> {
    disk: Disk<'a>,
    foreground: &'a mut Foreground,
}

/// The disk a run's files take: its scratch directory, and the files the guest unlinked but
/// holds open (counted by its store).
struct Disk<'a> {
    scratch_path: &'a Path,
    scratch_limit: u64,
    unlinked: &'a AtomicU64,
}

impl Disk<'_> {
    /// Whether the run's files, listed or unlinked but open, pass its scratch limit.
    fn full(&self) -> bool {
        let unlinked = self.unlinked.load(Ordering::Relaxed);
        unlinked > self.scratch_limit
            || crate::scratch::exceeds(self.scratch_path, self.scratch_limit - unlinked)
    }
}

/// The disk checks of a run: the first comes one period in, not before the guest has even
/// started.
fn disk_checks() -> tokio::time::Interval {
    let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + DISK_CHECK, DISK_CHECK);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    checks
}

/// The state a run is in, from what the caller wants and what the guest does.
fn run_state(want: Desired, guest: GuestStatus) -> RunState {
    match (want, guest) {
        (Desired::Pause, _) => RunState::Paused,
        (_, g) if g.waiting_input && g.in_repl => RunState::Repl,
        (_, g) if g.waiting_input => RunState::WaitingInput,
        _ => RunState::Running,
    }
}

/// The state the caller last saw and its clock: wall time counts only while the guest runs,
/// idle time while it waits for input or is paused.
struct StateClock {
    /// The state last reported.
    shown: Option<RunState>,
    /// How many waits for input the guest had started at the last look.
    seen_waits: u64,
    /// The wall time left when the run last stopped running (all of it before it first runs).
    wall_left: Duration,
    /// When the current state's clock runs out: wall time while running, idle time otherwise.
    deadline: tokio::time::Instant,
}

impl StateClock {
    fn new(limits: &Limits) -> Self {
        StateClock {
            shown: None,
            seen_waits: 0,
            wall_left: limits.wall(),
            deadline: tokio::time::Instant::now(),
        }
    }

    /// Reports a wait the guest began anew while the caller saw it waiting all along: it got
    /// input, ran and waits again, all between two looks. The caller sees it run and wait again;
    /// the idle clock starts afresh (and a REPL's next statement gets its full wall time).
    async fn see_waits(&mut self, state: RunState, waits: u64, watch: &Watch<'_>) {
        if waits == self.seen_waits {
            return;
        }
        self.seen_waits = waits;
        if self.shown == Some(state) && matches!(state, RunState::WaitingInput | RunState::Repl) {
            if state == RunState::Repl {
                self.wall_left = watch.limits.wall();
            }
            drain(watch.output, watch.events).await;
            let _ = watch.events.send(Event::State(RunState::Running)).await;
            let _ = watch.events.send(Event::State(state)).await;
            self.deadline = tokio::time::Instant::now() + watch.limits.idle();
        }
    }

    /// Reports a change of state (after the output printed before it) and switches clocks:
    /// running keeps the wall time left, each REPL statement gets it whole and starts in the
    /// foreground, and waiting or paused runs on the idle clock in the background.
    async fn see_state(&mut self, state: RunState, foreground: &mut Foreground, watch: &Watch<'_>) {
        if self.shown == Some(state) {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.shown == Some(RunState::Running) {
            self.wall_left = self.deadline.saturating_duration_since(now);
        }
        if self.shown == Some(RunState::Repl) && state == RunState::Running {
            self.wall_left = watch.limits.wall(); // each REPL statement gets the full time limit
            foreground.renew(); // and starts in the foreground
        }
        if state != RunState::Running {
            foreground.end(); // waiting or paused: background until the next statement
        }
        self.deadline = now
            + if state == RunState::Running {
                self.wall_left
            } else {
                watch.limits.idle()
            };
        drain(watch.output, watch.events).await; // output printed before the change comes first
        let _ = watch.events.send(Event::State(state)).await;
        self.shown = Some(state);
    }
}

/// Delivers all queued output, waiting for the consumer as needed.
async fn drain(output: &OutputQueue, events: &mpsc::Sender<Event>) {
    while let Some(chunk) = output.pop() {
        if events.send(chunk).await.is_err() {
            return;
        }
    }
}

/// Maps what the guest call returned to an outcome.
fn classify(result: CallResult, store: &Store<GuestState>, runtime: &dyn Runtime) -> Outcome {
    let data = store.data();
    let memory_hit = data.limiter.hit();
    let exited = |code| runtime.exited(code, data.host.uncaught.as_ref(), memory_hit);
    let error = match result {
        Ok(Ok(())) => return Outcome::Exited { code: 0 },
        Ok(Err(())) => return exited(1),
        Err(e) => e,
    };
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return exited(exit.0);
    }
    if error.downcast_ref::<OutputLimitExceeded>().is_some() {
        return Outcome::OutputLimit;
    }
    if let Some(outcome) = runtime.trapped(&error) {
        return outcome;
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Outcome::CpuLimit,
        Some(Trap::StackOverflow) => Outcome::StackOverflow,
        _ if memory_hit => Outcome::MemoryLimit,
        _ => Outcome::Crashed {
            detail: format!("{error:#}"),
        },
    }
}
