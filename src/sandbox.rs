//! The sandbox: owns the engines and builds one fresh, isolated `Store` per run.
//!
//! A store sees only what its request gives it: its scratch directory (as `/sandbox`, its working
//! directory), explicitly mounted host directories, the request's args and env, and stdio pipes.
//! No host environment variable, file or socket is reachable.

use crate::background::BackgroundLane;
use crate::compile_cache::{CachePut, CacheSlot, CompileCache, CompileScope, Key};
use crate::determinism::{GuestClock, Seed, VirtualClock};
use crate::engine::{EngineSettings, EngineVariant};
use crate::host::{HostState, Launch};
use crate::limits::{LimitError, Limits, MemoryLimiter};
use crate::pipes::{GuestStatus, GuestStdin, OutputQueue, ReadLog, StdinMode};
use crate::priority::{CpuGate, Priority};
use crate::run::{self, Foreground, RunHandle, RunId, StreamKind};
use crate::scratch::{Scratch, ScratchDirs, ScratchError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxView, WasiView};

/// Where the scratch directory appears inside the guest (also its working directory).
pub const GUEST_DIR: &str = "/sandbox";

/// Events a run may have in flight towards a slow consumer before the guest has to wait.
const EVENT_QUEUE: usize = 16;
/// Stdin chunks the caller may have queued before `write_stdin` waits.
const STDIN_QUEUE: usize = 16;

/// What the user's program is.
#[derive(Debug, Clone)]
pub enum Program {
    /// A script file, written to the scratch dir under `filename` and run as `__main__`.
    Script { filename: String, source: Vec<u8> },
    /// Source run as `python -c CODE`.
    Code(String),
}

/// A host directory the caller explicitly exposes to the guest, at the same absolute path.
#[derive(Debug, Clone)]
pub struct Mount {
    pub host: PathBuf,
    pub guest: String,
    pub read_only: bool,
}

/// Everything a run needs. Build with [`RunRequest::script`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub program: Program,
    /// Extra files placed in the scratch dir (relative paths).
    pub files: Vec<(String, Vec<u8>)>,
    /// `sys.argv[1:]`.
    pub args: Vec<String>,
    /// The guest's whole environment.
    pub env: Vec<(String, String)>,
    pub limits: Limits,
    /// Start an interactive console after the script (`python -i`).
    pub repl: bool,
    /// Bytes available on stdin from the start.
    pub stdin: Option<Vec<u8>>,
    /// Close stdin after `stdin` (the guest then sees EOF instead of waiting).
    pub close_stdin: bool,
    pub mounts: Vec<Mount>,
    /// Keep what the guest read from stdin, in order, in the result (for transcripts).
    pub record_input: bool,
    /// Give the guest exactly these reads first (replaying a transcript); when they run out
    /// (and `eof` is false) the guest waits for input as if the caller had sent nothing more.
    pub replay_input: Option<ReadLog>,
    /// Deterministic mode (seeded randomness, virtual clocks, fuel): see [`crate::determinism`].
    pub deterministic: Option<Seed>,
    /// Runs share compiled programs (`crate::compile_cache`) only within one scope: the server
    /// uses the user (or the connection, for anonymous ones; anonymous one-shot requests use no
    /// cache). Default: the empty scope.
    pub compile_scope: CompileScope,
    /// Ceilings on the limits the run gets, applied last (after deterministic mode's defaults):
    /// the server sets its configured maximum. `None`: no ceiling.
    pub max_limits: Option<Limits>,
}

impl RunRequest {
    /// A script named `main.py` with default limits.
    pub fn script(source: impl Into<Vec<u8>>) -> Self {
        RunRequest {
            program: Program::Script {
                filename: "main.py".into(),
                source: source.into(),
            },
            files: Vec::new(),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            repl: false,
            stdin: None,
            close_stdin: false,
            mounts: Vec::new(),
            record_input: false,
            replay_input: None,
            deterministic: None,
            compile_scope: CompileScope::default(),
            max_limits: None,
        }
    }

    /// The limits the run actually gets (deterministic runs are always metered by fuel).
    pub fn effective_limits(&self) -> Limits {
        let limits = match self.deterministic {
            Some(seed) => seed.limits(self.limits),
            None => self.limits,
        };
        match &self.max_limits {
            Some(max) => limits.capped_by(max),
            None => limits,
        }
    }
}

/// Splits an environment entry `KEY=VALUE` at its first `=`.
pub fn split_env(entry: &str) -> Option<(String, String)> {
    entry
        .split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Limits(#[from] LimitError),
    #[error(transparent)]
    Scratch(#[from] ScratchError),
    #[error("all {0} sandbox slots are in use; try again shortly")]
    AtCapacity(u32),
    #[error("cannot mount {path}: {reason}")]
    Mount { path: String, reason: String },
    #[error("the sandbox failed to start the run: {0}")]
    Internal(String),
}

/// A store's data: the WASI context and everything the run's host side tracks.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) host: HostState,
    pub(crate) status: watch::Sender<GuestStatus>,
    pub(crate) clock: GuestClock,
    pub(crate) priority: Priority,
    /// `None` only while the store waits in the warm pool, before any run owns it.
    _holdings: Option<Holdings>,
    /// Set only in a warm store: what its guest, entered ahead of demand, waits for in
    /// `launch-config` (`crate::warm`).
    pub(crate) assignment: Option<crate::warm::Assignment>,
}

/// What a run holds for as long as its store lives.
struct Holdings {
    _slot: OwnedSemaphorePermit,
    _scratch: Scratch,
}

impl GuestState {
    /// The state of a warm-pool store: no stdio, files, args or environment, and the engine's
    /// largest memory limit. Replaced by the run's own state before the guest starts.
    pub(crate) fn placeholder() -> Self {
        GuestState {
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(crate::limits::MAX_MEMORY_BYTES),
            host: HostState::new(Launch::plain(String::new(), None, false), CacheSlot::Closed),
            status: watch::channel(GuestStatus::default()).0,
            clock: GuestClock::Real,
            priority: Priority::placeholder(),
            _holdings: None,
            assignment: None,
        }
    }

    /// Installs a run's state in a store whose guest has already been entered (a warm
    /// instance waiting in `launch-config`): everything but the resource table, which holds
    /// whatever the guest has opened so far. The guest has run no code of its own yet.
    pub(crate) fn take_over(&mut self, mut run: Box<GuestState>) {
        std::mem::swap(&mut run.table, &mut self.table);
        run.limiter.starts_at(self.limiter.peak());
        *self = *run;
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The sandbox. Cheap to clone; every clone shares the engines and the instance slots.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EngineSettings,
    plain: Arc<EngineVariant>,
    fueled: tokio::sync::OnceCell<Arc<EngineVariant>>,
    slots: Arc<Semaphore>,
    /// Which runs are foreground (`crate::priority`).
    cpu: Arc<CpuGate>,
    /// The runs' scratch directories (`crate::scratch`).
    scratch_dirs: Arc<ScratchDirs>,
    /// Where background runs continue (`crate::background`).
    lane: Arc<BackgroundLane>,
    /// Programs compiled by earlier runs (`crate::compile_cache`).
    compile_cache: Arc<CompileCache>,
    /// How runs got their instance.
    starts: StartCounts,
}

/// How many runs took a warm instance and how many instantiated their own on the request
/// path (the warm pool was empty, the run is metered, or its memory limit is below a warm
/// instance's size).
#[derive(Debug, Default)]
struct StartCounts {
    warm: AtomicU64,
    fresh: AtomicU64,
}

/// [`Sandbox::instance_starts`]: runs started from a warm instance and from a fresh one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InstanceStarts {
    pub warm: u64,
    pub fresh: u64,
}

impl Sandbox {
    /// Loads the engine and the guest (compiling it once if it is not cached). Blocking.
    pub fn load(settings: EngineSettings) -> anyhow::Result<Self> {
        let plain = Arc::new(EngineVariant::load(&settings, false)?);
        let slots = Arc::new(Semaphore::new(settings.max_instances as usize));
        let cpu = Arc::new(CpuGate::new(settings.foreground_for, settings.max_give_way));
        let scratch_dirs = ScratchDirs::new()
            .map_err(|e| anyhow::anyhow!("cannot create the scratch directory root: {e}"))?;
        let lane = BackgroundLane::start(settings.background_threads, settings.background_priority)
            .map_err(|e| anyhow::anyhow!("cannot start the background lane: {e}"))?;
        Ok(Sandbox {
            inner: Arc::new(Inner {
                compile_cache: Arc::new(CompileCache::new(settings.compile_cache_bytes)),
                starts: StartCounts::default(),
                settings,
                plain,
                fueled: tokio::sync::OnceCell::new(),
                slots,
                cpu,
                scratch_dirs,
                lane: Arc::new(lane),
            }),
        })
    }

    /// [`Sandbox::load`] on a blocking thread.
    pub async fn load_async(settings: EngineSettings) -> anyhow::Result<Self> {
        tokio::task::spawn_blocking(move || Sandbox::load(settings)).await?
    }

    /// Deletes every run's scratch directory now, runs still alive included (their files
    /// vanish under them): for a process about to exit whatever still holds the sandbox.
    pub fn close_scratch(&self) {
        self.inner.scratch_dirs.remove_all();
    }

    /// Guest instances alive right now (stores not yet dropped).
    pub fn live_instances(&self) -> usize {
        self.inner.settings.max_instances as usize - self.inner.slots.available_permits()
    }

    /// What the compile cache holds and how it has served (`crate::compile_cache`).
    pub fn compile_cache_stats(&self) -> crate::compile_cache::CacheStats {
        self.inner.compile_cache.stats()
    }

    /// How the runs so far got their instance: warm from the pool or instantiated fresh.
    pub fn instance_starts(&self) -> InstanceStarts {
        let starts = &self.inner.starts;
        InstanceStarts {
            warm: starts.warm.load(Ordering::Relaxed),
            fresh: starts.fresh.load(Ordering::Relaxed),
        }
    }

    /// Runs in their foreground phase right now (`crate::priority`).
    pub fn foreground_runs(&self) -> usize {
        self.inner.cpu.foreground_runs()
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// The engine variant for these limits: fuel metering needs its own compiled code.
    async fn variant(&self, limits: &Limits) -> Result<Arc<EngineVariant>, StartError> {
        if limits.cpu_fuel.is_none() {
            return Ok(self.inner.plain.clone());
        }
        let settings = self.inner.settings.clone();
        self.inner
            .fueled
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || EngineVariant::load(&settings, true))
                    .await
                    .map_err(|e| StartError::Internal(e.to_string()))?
                    .map(Arc::new)
                    .map_err(|e| StartError::Internal(format!("{e:#}")))
            })
            .await
            .cloned()
    }

    /// Starts a run in a fresh store. The returned handle owns the run: dropping it stops the
    /// run and frees everything it holds.
    pub async fn start(&self, req: RunRequest) -> Result<RunHandle, StartError> {
        let limits = req.effective_limits();
        limits.validate()?;
        let variant = self.variant(&limits).await?;
        let slot = self
            .inner
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| StartError::AtCapacity(self.inner.settings.max_instances))?;
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let (stdin_tx, stdin_rx) = crate::pipes::stdin_channel(STDIN_QUEUE);
        let (status_tx, status_rx) = watch::channel(GuestStatus::default());
        if let Some(data) = req.stdin.clone().filter(|d| !d.is_empty()) {
            // The queue is empty and has room: this cannot fail.
            let _ = stdin_tx.try_send(data.into());
        }
        if req.close_stdin {
            stdin_tx.close();
        }
        let stdin = GuestStdin::new(
            stdin_rx,
            status_tx.clone(),
            StdinMode {
                record: req.record_input,
                replay: req.replay_input.clone(),
                gated: req.deterministic.is_some(),
            },
        );
        let priority = Priority::new(self.inner.cpu.clone());
        let foreground = Foreground::new(priority.clone());
        let pipes = OutputQueue::new(
            events_tx.clone(),
            limits.output_bytes,
            limits.line_bytes,
            priority.clone(),
        );
        let scratch = Scratch::create(&self.inner.scratch_dirs, &req, limits.scratch_bytes)?;
        let scratch_path = scratch.path().to_path_buf();
        let wasi = wasi_context(&req, &scratch, &pipes, &stdin)?;
        let mut host = self.launch(&req, &limits);
        host.launch.args = argv(&req);
        host.launch.env = req.env.clone();
        host.launch.cwd = GUEST_DIR.to_string();
        let mut state = GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryLimiter::new(limits.memory_bytes),
            host,
            status: status_tx,
            clock: match (req.deterministic, limits.cpu_fuel) {
                (Some(_), Some(fuel)) => GuestClock::Virtual(VirtualClock::new(fuel)),
                _ => GuestClock::Real,
            },
            priority,
            _holdings: Some(Holdings {
                _slot: slot,
                _scratch: scratch,
            }),
            assignment: None,
        };
        let start = match variant.warm.take() {
            // A warm guest already holds its initial memory: usable when the limit allows it.
            Some(warm) if warm.memory as u64 <= limits.memory_bytes => {
                state.limiter.starts_at(warm.memory);
                let peak = state.limiter.peak_handle();
                match warm.assign(Box::new(state)) {
                    Ok(call) => run::Start::Entered { call, peak },
                    Err(state) => fresh(&variant, *state, &limits),
                }
            }
            _ => fresh(&variant, state, &limits),
        };
        let counter = match start {
            run::Start::Entered { .. } => &self.inner.starts.warm,
            run::Start::Fresh(_) => &self.inner.starts.fresh,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let id = RunId::new();
        let span = tracing::info_span!("run", run_id = %id);
        tracing::debug!(parent: &span, ?limits, seed = ?req.deterministic, "run starting");
        Ok(run::spawn(
            run::Driver {
                id,
                start,
                variant,
                limits,
                events: events_tx,
                stdin_open: stdin_tx.clone(),
                status: status_rx,
                pipes,
                stdin,
                scratch_path,
                foreground,
                lane: self.inner.lane.clone(),
                span,
            },
            events_rx,
            stdin_tx,
        ))
    }
}

/// A run in a store of its own, instantiated by the run's driver.
fn fresh(variant: &EngineVariant, state: GuestState, limits: &Limits) -> run::Start {
    run::Start::Fresh(variant.instantiator.store(state, limits.cpu_fuel))
}

impl Sandbox {
    /// How the guest launches the program: with its bytes when they are surely what the script's
    /// file holds, and with the compile cache (`crate::compile_cache`) when the run may use it.
    fn launch(&self, req: &RunRequest, limits: &Limits) -> HostState {
        let (mut launch, name, source) = match &req.program {
            Program::Script { filename, source } => {
                // A caller's file of the same name, or a mount, could put other bytes there.
                let base = Path::new(filename).file_name();
                let shadowed = !req.mounts.is_empty()
                    || req
                        .files
                        .iter()
                        .any(|(f, _)| Path::new(f).file_name() == base);
                if shadowed {
                    let launch = Launch::plain(filename.clone(), None, req.repl);
                    return HostState::new(launch, CacheSlot::Closed);
                }
                let mut launch = Launch::plain(filename.clone(), None, req.repl);
                launch.source = Some(source.clone());
                (launch, filename.as_str(), source.as_slice())
            }
            Program::Code(code) => (
                Launch::plain(String::new(), Some(code.clone()), req.repl),
                "<string>",
                code.as_bytes(),
            ),
        };
        let Some(scope) = req.compile_scope.name() else {
            return HostState::new(launch, CacheSlot::Closed);
        };
        let cache = &self.inner.compile_cache;
        // Fuel, and the virtual clock it drives, must not depend on what ran before.
        if !cache.enabled() || limits.cpu_fuel.is_some() || req.deterministic.is_some() {
            return HostState::new(launch, CacheSlot::Closed);
        }
        let key = Key::new(scope, name, source);
        match cache.get(&key) {
            Some(code) => {
                launch.compiled = Some(code.to_vec());
                HostState::new(launch, CacheSlot::Closed)
            }
            None => {
                launch.cache_compiled = true;
                let put = CachePut {
                    cache: cache.clone(),
                    key,
                };
                HostState::new(launch, CacheSlot::Open(put))
            }
        }
    }
}

fn argv(req: &RunRequest) -> Vec<String> {
    let first = match &req.program {
        Program::Script { filename, .. } => filename.clone(),
        Program::Code(_) => "-c".into(),
    };
    std::iter::once(first)
        .chain(req.args.iter().cloned())
        .collect()
}

fn wasi_context(
    req: &RunRequest,
    scratch: &Scratch,
    pipes: &Arc<OutputQueue>,
    stdin: &GuestStdin,
) -> Result<WasiCtx, StartError> {
    let mut b = WasiCtx::builder();
    b.stdin(stdin.clone())
        .stdout(pipes.stream(StreamKind::Stdout))
        .stderr(pipes.stream(StreamKind::Stderr))
        .args(&argv(req))
        .envs(&req.env)
        .initial_cwd(GUEST_DIR)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true);
    if let Some(seed) = req.deterministic {
        seed.seed_random(&mut b);
    }
    b.preopened_dir(scratch.path(), GUEST_DIR, FsPerms::ReadWrite)
        .map_err(|e| StartError::Internal(format!("cannot open scratch dir: {e:#}")))?;
    for m in &req.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&m.host, &m.guest, perms)
            .map_err(|e| StartError::Mount {
                path: m.host.display().to_string(),
                reason: format!("{e:#}"),
            })?;
    }
    Ok(b.build())
}
