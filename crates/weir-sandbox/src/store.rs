//! A store's data ([`GuestState`]): the WASI context and everything the run's host side tracks,
//! and what a runtime's host functions may do with it.

use crate::compile_cache::{CacheSlot, MAX_ENTRY_BYTES};
use crate::determinism::{ClockView, GuestClock};
use crate::event::{CellEnd, Display, Event};
use crate::interrupt::Interrupter;
use crate::launch::{take_launch, Cell, CellPhase, HostState, Launch, SessionRequest, Uncaught};
use crate::limits::MemoryLimiter;
use crate::pipes::GuestStatus;
use crate::priority::Priority;
use crate::scratch::Scratch;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{oneshot, watch, OwnedSemaphorePermit};
use wasmtime::StoreContextMut;
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// A store's data: the WASI context and everything the run's host side tracks. A runtime's host
/// functions see it through [`launch`] and the methods below.
pub struct GuestState {
    /// The WASI context and its resource table. A preview-1 context also serves preview 2
    /// ([`WasiView`]): one type for component guests and core-module guests alike.
    wasi: WasiP1Ctx,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) host: HostState,
    pub(crate) status: watch::Sender<GuestStatus>,
    pub(crate) clock: GuestClock,
    pub(crate) priority: Priority,
    /// Interrupts the guest's running code (`crate::interrupt`).
    pub(crate) interrupter: Arc<Interrupter>,
    /// `None` only while the store waits in the warm pool, before any run owns it.
    _holdings: Option<Holdings>,
    /// Set only in a warm store: what its guest, entered ahead of demand, waits for when it
    /// asks for its launch (`crate::warm`).
    pub(crate) assignment: Option<Assignment>,
    /// Bytes of the files the guest holds open that no directory lists any more.
    pub(crate) unlinked: UnlinkedFiles,
    /// A session's linear memory, `(address, bytes)`: handed back to the operating system when
    /// the store goes ([`GuestState::release_on_drop`]).
    released: Option<(usize, usize)>,
}

/// What a run holds for as long as its store lives.
struct Holdings {
    _slot: OwnedSemaphorePermit,
    _scratch: Arc<Scratch>,
}

/// How often a running guest's open files are counted ([`UnlinkedFiles`]).
const UNLINKED_RECOUNT: std::time::Duration = std::time::Duration::from_millis(100);

/// The bytes of files a guest keeps open after unlinking them: they still take disk space, but
/// no directory walk finds them, so the store counts them from its open descriptors (every
/// [`UNLINKED_RECOUNT`], from the epoch callback while the guest runs: only a running guest can
/// write). The run's driver adds the figure to the scratch directory's size.
pub(crate) struct UnlinkedFiles {
    bytes: Arc<AtomicU64>,
    counted: std::time::Instant,
}

impl UnlinkedFiles {
    pub(crate) fn new(bytes: Arc<AtomicU64>) -> Self {
        UnlinkedFiles {
            bytes,
            counted: std::time::Instant::now(),
        }
    }
}

/// The parts of a run's state, before its store exists.
pub(crate) struct Parts {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryLimiter,
    pub host: HostState,
    pub status: watch::Sender<GuestStatus>,
    pub clock: GuestClock,
    pub priority: Priority,
    pub interrupter: Arc<Interrupter>,
    pub slot: OwnedSemaphorePermit,
    pub scratch: Arc<Scratch>,
    /// Where the store reports its unlinked open files' bytes ([`UnlinkedFiles`]).
    pub unlinked: Arc<AtomicU64>,
}

impl GuestState {
    /// A run's state: it holds the run's instance slot and scratch directory until the store
    /// is dropped.
    pub(crate) fn new(parts: Parts) -> Self {
        GuestState {
            wasi: parts.wasi,
            limiter: parts.limiter,
            host: parts.host,
            status: parts.status,
            clock: parts.clock,
            priority: parts.priority,
            interrupter: parts.interrupter,
            _holdings: Some(Holdings {
                _slot: parts.slot,
                _scratch: parts.scratch,
            }),
            assignment: None,
            unlinked: UnlinkedFiles::new(parts.unlinked),
            released: None,
        }
    }

    /// The state of a warm-pool store: no stdio, files, args or environment, and the engine's
    /// largest memory limit. Replaced by the run's own state before the guest starts.
    pub(crate) fn placeholder() -> Self {
        GuestState {
            wasi: WasiCtx::builder().build_p1(),
            limiter: MemoryLimiter::new(crate::limits::MAX_MEMORY_BYTES),
            host: HostState::new(Launch::plain(String::new(), None, false), CacheSlot::Closed),
            status: watch::channel(GuestStatus::default()).0,
            clock: GuestClock::Real,
            priority: Priority::placeholder(),
            interrupter: Arc::new(Interrupter::armed()),
            _holdings: None,
            assignment: None,
            unlinked: UnlinkedFiles::new(Arc::default()),
            released: None,
        }
    }

    /// Installs a run's state in a store whose guest has already been entered (a warm
    /// instance waiting for its launch): everything but the resource table, which holds
    /// whatever the guest has opened so far. The guest has run no code of its own yet.
    pub(crate) fn take_over(&mut self, mut run: Box<GuestState>) {
        std::mem::swap(run.wasi.ctx().table, self.wasi.ctx().table);
        run.limiter.starts_at(self.limiter.peak());
        run.interrupter.take_target_from(&self.interrupter);
        *self = *run;
    }

    /// For a session: `Some`, with the snapshot it starts from, if any (taken: the session does
    /// not keep it).
    pub(crate) fn session_start(&mut self) -> Option<Option<Arc<crate::snapshot::Snapshot>>> {
        self.host.cells.as_mut().map(|inbox| inbox.restore.take())
    }

    /// The run's working directory, while the run holds it.
    pub(crate) fn scratch(&self) -> Option<Arc<Scratch>> {
        self._holdings.as_ref().map(|h| h._scratch.clone())
    }

    /// Records the exception the user's program did not catch (the run's outcome names it).
    pub fn report_uncaught(&mut self, uncaught: Uncaught) {
        self.host.uncaught = Some(uncaught);
    }

    /// Offers the program as the guest compiled it to the compile cache (`crate::compile_cache`),
    /// if this run may fill it; taken at most once per run. Empty: nothing to keep.
    pub fn offer_compiled(&mut self, code: Vec<u8>) {
        self.host.cache_slot.offer(code);
    }

    /// Largest compiled program the compile cache keeps, bytes: a runtime need not read more
    /// from its guest.
    pub const MAX_COMPILED_BYTES: usize = MAX_ENTRY_BYTES;

    /// The interrupter of this store's run: a runtime attaches its guest's memory to it right
    /// after instantiation ([`Interrupter::attach`]).
    pub fn interrupter(&self) -> &Interrupter {
        &self.interrupter
    }

    /// A session's cell's own code starts (`true`) or has returned: only in between are
    /// interrupts delivered into the guest (one asked for earlier waits; one written and not yet
    /// raised when the code returns is withdrawn), so none can land in the runner's code around
    /// the cell. Outside a running cell, ignored.
    pub fn cell_code(&mut self, running: bool) {
        if let CellPhase::Running { end: None, .. } = self.host.cell {
            self.interrupter.set_open(running);
        }
    }

    /// A session's cell reports how it ended. The end reaches the caller, after the cell's
    /// output, once the host's call that runs the cell has returned ([`end_cell`]); a later
    /// report replaces an earlier one. Delivery of interrupts closes (as after the cell's code),
    /// whoever reports: a cell's code that reports for itself only makes itself
    /// uninterruptible, and its time limit still stops it. Outside a cell, ignored.
    pub fn cell_done(&mut self, end: CellEnd) {
        if let CellPhase::Running { end: reported, .. } = &mut self.host.cell {
            *reported = Some(end);
            self.interrupter.set_open(false);
        }
    }

    /// The source of the session's running cell, for a guest that takes it from the host
    /// (python-sci's runner); `None` outside a cell.
    pub fn cell_source(&self) -> Option<&str> {
        match &self.host.cell {
            CellPhase::Running { code, .. } => Some(code),
            CellPhase::Idle => None,
        }
    }

    /// A session's cell ended the session with `status` (`sys.exit`), or did not (`None`):
    /// reported with the cell's end by a guest whose call cannot return it (python-sci's runner);
    /// a later report replaces an earlier one. Outside a cell, ignored.
    pub fn cell_exit(&mut self, status: Option<i32>) {
        if let (CellPhase::Running { .. }, Some(inbox)) = (&self.host.cell, &mut self.host.cells) {
            inbox.reports.exit = status;
        }
    }

    /// The program displayed something: queued behind its output, counted against the output
    /// cap (past it, the run ends as one whose output passed it).
    pub fn display(&mut self, display: Display) -> wasmtime::Result<()> {
        match &self.host.output {
            Some(output) => output.0.push_display(display).map_err(wasmtime::Error::new),
            None => Ok(()),
        }
    }

    /// The program cleared its output (`clear_output`): queued behind its output. Each one is
    /// counted against the output cap as a byte, so a loop of them ends at the cap too.
    pub fn clear_output(&mut self, wait: bool) -> wasmtime::Result<()> {
        match &self.host.output {
            Some(output) => output.0.push_clear(wait).map_err(wasmtime::Error::new),
            None => Ok(()),
        }
    }

    /// The guest's REPL has started (only a run that asked for one has one, and it starts once;
    /// a script claiming it gains nothing).
    pub fn repl_started(&mut self) {
        let host = &mut self.host;
        if host.launch.repl && !std::mem::replace(&mut host.repl_started, true) {
            self.status.send_modify(|s| s.in_repl = true);
        }
    }
}

/// The launch the guest asks for: what program to run, and how. A warm guest (entered ahead of
/// demand, `crate::warm`) waits here for its run, whose state then replaces the placeholder. The
/// guest asks once; the bytes move rather than copy (asked again, it gets the rest).
pub async fn launch(store: &mut StoreContextMut<'_, GuestState>) -> wasmtime::Result<Launch> {
    if let Some(assignment) = store.data_mut().assignment.take() {
        let run = assignment.wait().await?;
        store.data_mut().take_over(run);
        store.set_epoch_deadline(1);
    }
    Ok(take_launch(&mut store.data_mut().host.launch))
}

impl GuestState {
    /// Hands the guest's memory back to the operating system when the store goes, instead of
    /// keeping its pages resident in the pool's slot for the next instance there (what a short
    /// run's slot does, `EngineSettings::keep_resident`). For sessions: a session ends after a
    /// long life (closed, expired, or hibernated, when freeing its memory is the point), and its
    /// slot's next user pays a few hundred page faults instead of the host holding megabytes.
    ///
    /// # Safety
    ///
    /// `base` must be the start of the store's only linear memory, in a pooled slot that stays
    /// reserved for at least `len` bytes while the instance lives; the memory is never shared.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn release_on_drop(&mut self, base: std::ptr::NonNull<u8>, len: usize) {
        self.released = Some((base.as_ptr() as usize, len));
    }
}

impl Drop for GuestState {
    fn drop(&mut self) {
        // The instance (and its memory) goes with the store, right after its data.
        self.interrupter.detach();
        if let Some((base, len)) = self.released {
            // SAFETY: `release_on_drop`'s contract: the range is the guest's own memory in its
            // reserved slot, still mapped (the store drops its data before its instances) and no
            // longer used (the guest runs no more). `MADV_DONTNEED` on the slot's private
            // mapping drops the guest's pages: the image's come back from the file, the rest as
            // zeros — what the pool's reset makes of them anyway, before the slot's next use.
            #[allow(unsafe_code)]
            unsafe {
                libc::madvise(base as *mut libc::c_void, len, libc::MADV_DONTNEED);
            }
        }
    }
}

/// Ends a session's cell: its end (if the guest reported one; else a bare end, so the caller
/// never waits) is queued behind its output, its input closes, and interrupts are withdrawn
/// until the next cell.
pub(crate) fn end_cell(state: &mut GuestState) {
    let Some(inbox) = state.host.cells.as_mut() else {
        return;
    };
    if let CellPhase::Running { end, .. } = std::mem::take(&mut state.host.cell) {
        inbox.stdin.end_cell();
        inbox
            .output
            .push_marker(Event::Cell(end.unwrap_or_default()));
    }
    state.interrupter.set_armed(false);
}

/// A host-function call from the guest (`crate::tools`): the result as JSON text, or the
/// error the guest raises as `weir.ToolError` (`Some`), or `None` when an interrupt ended the
/// wait — taken here, so the guest raises it itself as `KeyboardInterrupt`.
pub(crate) async fn call_tool(
    store: &mut StoreContextMut<'_, GuestState>,
    name: &str,
    args: &str,
) -> std::result::Result<String, Option<String>> {
    let state = store.data_mut();
    let Some(tools) = state.host.tools.clone() else {
        return Err(Some(match name {
            crate::tools::NETWORK_FUNCTION => "this run has no network access".into(),
            _ => "this run has no host functions".into(),
        }));
    };
    let interrupter = state.interrupter.clone();
    let Some(output) = state.host.output.clone() else {
        return Err(Some("this run has no caller to answer".into()));
    };
    let sink: &dyn crate::tools::CallSink = &*output.0;
    match tools.call(name, args, sink, interrupter.requested()).await {
        Ok(value) => Ok(value),
        Err(crate::tools::Failure::Error(why)) => Err(Some(why)),
        Err(crate::tools::Failure::Interrupted) => {
            interrupter.take();
            Err(None)
        }
    }
}

/// What the session's caller asks next, waited for while the run counts as idle (as at a REPL
/// prompt); `None` when the caller closed the session, or for a run that is not a session.
pub(crate) async fn next_request(
    store: &mut StoreContextMut<'_, GuestState>,
) -> Option<SessionRequest> {
    let state = store.data_mut();
    let inbox = state.host.cells.as_mut()?;
    let status = &state.status;
    // Entered once per idle spell: a snapshot taken meanwhile leaves the session waiting, so
    // any number of them add no state change (no event) for a caller that reads none.
    if !status.borrow().waiting_input {
        status.send_modify(|s| {
            s.in_repl = true;
            s.waiting_input = true;
            s.waits += 1;
        });
    }
    let request = inbox.requests.recv().await;
    if !matches!(request, Some(SessionRequest::Snapshot(..))) {
        // The cell runs: an `input()` in it waits for input (`RunState::WaitingInput`), not
        // for the next cell.
        status.send_modify(|s| {
            s.waiting_input = false;
            s.in_repl = false;
        });
    }
    request
}

/// Starts a session's cell: its output cap, its stdin and its fuel afresh, interrupts armed.
/// Returns its source.
pub(crate) async fn begin_cell(store: &mut StoreContextMut<'_, GuestState>, cell: Cell) -> String {
    let state = store.data_mut();
    let Some(inbox) = state.host.cells.as_mut() else {
        return cell.code;
    };
    inbox.output.begin_cell();
    inbox.stdin.begin_cell(cell.stdin, cell.interactive).await;
    inbox.reports.exit = None;
    let fuel = inbox.fuel;
    state.host.cell = CellPhase::Running {
        code: cell.code.clone(),
        end: None,
    };
    state.interrupter.set_armed(true);
    if let Some(fuel) = fuel {
        // Each cell gets its own CPU budget. Cannot fail: only metered runs have one.
        let _ = store.set_fuel(fuel);
    }
    cell.code
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        self.wasi.ctx()
    }
}

impl GuestState {
    /// Counts the bytes of the files the guest holds open but no directory lists (opened, then
    /// unlinked), at most every [`UNLINKED_RECOUNT`].
    pub(crate) fn recount_unlinked(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if self.unlinked.counted.elapsed() < UNLINKED_RECOUNT {
            return;
        }
        self.unlinked.counted = std::time::Instant::now();
        let table = self.wasi.ctx().table;
        let bytes = table
            .iter_mut()
            .filter_map(|entry| match entry.downcast_ref::<Descriptor>() {
                Some(Descriptor::File(file)) => file.file.metadata().ok(),
                _ => None,
            })
            .filter(|meta| meta.nlink() == 0)
            .fold(0u64, |sum, meta| sum.saturating_add(meta.len()));
        self.unlinked.bytes.store(bytes, Ordering::Relaxed);
    }

    /// Files and directories a session's guest holds open beyond those its WASI context opened
    /// for it (`CellInbox::preopens`): what a snapshot cannot keep, since the host's side of
    /// an open descriptor is not in the guest's memory. 0 outside a session.
    pub(crate) fn open_descriptors(&mut self) -> usize {
        let Some(preopens) = self.host.cells.as_ref().map(|i| i.preopens) else {
            return 0;
        };
        let table = self.wasi.ctx().table;
        let open = table
            .iter_mut()
            .filter(|entry| entry.downcast_ref::<Descriptor>().is_some())
            .count();
        open.saturating_sub(preopens)
    }

    /// The preview-1 view of the WASI context, for core-module guests.
    pub fn wasi_p1(&mut self) -> &mut WasiP1Ctx {
        &mut self.wasi
    }

    /// The WASI context and the run's clock, borrowed together.
    pub(crate) fn wasi_and_clock(&mut self) -> (&mut WasiP1Ctx, &mut GuestClock) {
        (&mut self.wasi, &mut self.clock)
    }
}

impl ClockView for GuestState {
    fn clock(&self) -> &GuestClock {
        &self.clock
    }

    fn clock_mut(&mut self) -> &mut GuestClock {
        &mut self.clock
    }

    fn interrupter(&self) -> Option<Arc<Interrupter>> {
        Some(self.interrupter.clone())
    }
}

/// What a warm guest waits for when it asks for its launch (kept in the placeholder state).
pub(crate) struct Assignment {
    run: oneshot::Receiver<Box<GuestState>>,
    waiting: Arc<AtomicBool>,
}

impl Assignment {
    /// An assignment that `run` fulfils; `waiting` turns true once the guest waits for it.
    pub fn new(run: oneshot::Receiver<Box<GuestState>>, waiting: Arc<AtomicBool>) -> Self {
        Assignment { run, waiting }
    }

    /// Waits for the run that takes this guest.
    pub async fn wait(self) -> wasmtime::Result<Box<GuestState>> {
        self.waiting.store(true, Ordering::Release);
        self.run
            .await
            .map_err(|_| wasmtime::format_err!("the warm instance was discarded before any run"))
    }
}
