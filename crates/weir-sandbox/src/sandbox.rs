//! The sandbox: owns the engines and builds one fresh, isolated `Store` per run.
//!
//! A store sees only what its request gives it: its scratch directory (as `/sandbox`, its working
//! directory), explicitly mounted host directories, the request's args and env, and stdio pipes.
//! No host environment variable, file or socket is reachable.

use crate::background::BackgroundLane;
use crate::compile_cache::{CachePut, CacheSlot, CompileCache, Key};
use crate::determinism::{GuestClock, VirtualClock};
use crate::engine::EngineSettings;
use crate::error::{Error, Result};
use crate::event::{Event, RunId, StreamKind};
use crate::interrupt::Interrupter;
use crate::launch::{CellInbox, HostState, Launch, SessionRequest};
use crate::limits::{Limits, MemoryBudget, MemoryLimiter};
use crate::pipes::{GuestStatus, GuestStdin, OutputQueue, StdinMode, StdinSender};
use crate::priority::{CpuGate, Priority};
use crate::request::{Program, RunRequest};
use crate::run::{self, Foreground, RunHandle};
use crate::runtime::{python::CPython, GuestSetup, Policy, Runtime, RuntimeInfo};
use crate::scratch::{Scratch, ScratchDirs};
use crate::store::{GuestState, Parts};
use crate::variant::EngineVariant;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx};

pub use crate::scratch::{GUEST_DIR, SITE_DIR};

/// Events a run may have in flight towards a slow consumer before the guest has to wait.
const EVENT_QUEUE: usize = 16;
/// Stdin chunks the caller may have queued before `write_stdin` waits.
const STDIN_QUEUE: usize = 16;

/// The sandbox. Cheap to clone; every clone shares the engines and the instance slots.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EngineSettings,
    /// The runtimes, the default first.
    runtimes: Vec<Engines>,
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
    /// The host's memory budget for guests (`EngineSettings::memory_budget_bytes`).
    memory: Option<Arc<MemoryBudget>>,
}

/// One runtime's engines: the plain one, loaded with the sandbox (or, for a runtime added with
/// [`Sandbox::with_lazy_runtimes`], by its first run or [`Sandbox::prepare`]), and the
/// fuel-metered one, loaded by the first metered run.
struct Engines {
    runtime: Arc<dyn Runtime>,
    plain: tokio::sync::OnceCell<Arc<EngineVariant>>,
    fueled: tokio::sync::OnceCell<Arc<EngineVariant>>,
    /// Why preparing the runtime failed, if it did (a later run tries again).
    failed: std::sync::Mutex<Option<String>>,
}

/// Whether a runtime can take runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeStatus {
    /// Loaded: runs start at once.
    Ready,
    /// Not loaded yet: the first run (or [`Sandbox::prepare`]) loads it, which takes minutes
    /// the first time on a machine and seconds after.
    NotLoaded,
    /// The last attempt to load it failed, for this reason.
    Failed(String),
}

impl Engines {
    fn lazy(runtime: Arc<dyn Runtime>) -> Self {
        Engines {
            runtime,
            plain: tokio::sync::OnceCell::new(),
            fueled: tokio::sync::OnceCell::new(),
            failed: std::sync::Mutex::new(None),
        }
    }

    fn load(settings: &EngineSettings, runtime: Arc<dyn Runtime>) -> anyhow::Result<Self> {
        let plain = EngineVariant::load(settings, runtime.clone(), false)?;
        let engines = Engines::lazy(runtime);
        // A new cell: cannot already be set.
        let _ = engines.plain.set(Arc::new(plain));
        Ok(engines)
    }

    fn status(&self) -> RuntimeStatus {
        if self.plain.initialized() {
            return RuntimeStatus::Ready;
        }
        match self.failed.lock().map(|f| f.clone()) {
            Ok(Some(reason)) => RuntimeStatus::Failed(reason),
            _ => RuntimeStatus::NotLoaded,
        }
    }

    /// The engine variant, loaded on a blocking thread first if needed.
    async fn variant(&self, settings: &EngineSettings, fuel: bool) -> Result<Arc<EngineVariant>> {
        let cell = match fuel {
            true => &self.fueled,
            false => &self.plain,
        };
        let settings = settings.clone();
        let runtime = self.runtime.clone();
        let loaded = cell
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || EngineVariant::load(&settings, runtime, fuel))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))?
                    .map(Arc::new)
                    .map_err(|e| Error::Internal(format!("{e:#}")))
            })
            .await
            .cloned();
        if let (Err(e), Ok(mut failed)) = (&loaded, self.failed.lock()) {
            *failed = Some(e.to_string());
        }
        loaded
    }
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
    /// Runs that took a warm instance.
    pub warm: u64,
    /// Runs that instantiated their own.
    pub fresh: u64,
}

impl Sandbox {
    /// [`Sandbox::standard`]: the default runtime, CPython ([`CPython`]), loaded now (its guest
    /// compiled once if it is not cached), and `python-sci` on first use. Blocking.
    pub fn load(settings: EngineSettings) -> Result<Self> {
        Sandbox::standard(settings)
    }

    /// Loads the engine and these runtimes (the first is the default). Blocking.
    pub fn with_runtimes(
        settings: EngineSettings,
        runtimes: Vec<Arc<dyn Runtime>>,
    ) -> Result<Self> {
        if runtimes.is_empty() {
            return Err(Error::Load(anyhow::anyhow!(
                "a sandbox needs at least one runtime"
            )));
        }
        Sandbox::with_lazy_runtimes(settings, runtimes, Vec::new())
    }

    /// The standard runtimes: `python` (the default, loaded now) and `python-sci` (loaded by
    /// its first run or by [`Sandbox::prepare`]). Blocking.
    pub fn standard(settings: EngineSettings) -> Result<Self> {
        Sandbox::with_lazy_runtimes(
            settings,
            vec![Arc::new(CPython)],
            vec![
                Arc::new(crate::runtime::sci::SciPython),
                Arc::new(crate::runtime::js::QuickJs),
                Arc::new(crate::runtime::rb::CRuby),
            ],
        )
    }

    /// Loads `eager` now (the first is the default) and `lazy` on first use. Blocking.
    pub fn with_lazy_runtimes(
        settings: EngineSettings,
        eager: Vec<Arc<dyn Runtime>>,
        lazy: Vec<Arc<dyn Runtime>>,
    ) -> Result<Self> {
        if eager.is_empty() {
            return Err(Error::Load(anyhow::anyhow!(
                "a sandbox needs at least one runtime loaded at start"
            )));
        }
        let mut runtimes = eager
            .into_iter()
            .map(|runtime| Engines::load(&settings, runtime))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(Error::Load)?;
        runtimes.extend(lazy.into_iter().map(Engines::lazy));
        let slots = Arc::new(Semaphore::new(settings.max_instances as usize));
        let cpu = Arc::new(CpuGate::new(settings.foreground_for, settings.max_give_way));
        let scratch_dirs = ScratchDirs::new().map_err(|e| {
            Error::Load(anyhow::anyhow!(
                "cannot create the scratch directory root: {e}"
            ))
        })?;
        let lane = BackgroundLane::start(settings.background_threads, settings.background_priority)
            .map_err(|e| Error::Load(anyhow::anyhow!("cannot start the background lane: {e}")))?;
        Ok(Sandbox {
            inner: Arc::new(Inner {
                compile_cache: Arc::new(CompileCache::new(settings.compile_cache_bytes)),
                starts: StartCounts::default(),
                memory: settings
                    .memory_budget_bytes
                    .map(|b| Arc::new(MemoryBudget::new(b))),
                settings,
                runtimes,
                slots,
                cpu,
                scratch_dirs,
                lane: Arc::new(lane),
            }),
        })
    }

    /// [`Sandbox::load`] on a blocking thread.
    pub async fn load_async(settings: EngineSettings) -> Result<Self> {
        tokio::task::spawn_blocking(move || Sandbox::load(settings))
            .await
            .map_err(|e| Error::Load(e.into()))?
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

    /// The settings the sandbox was loaded with.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// What the runtimes are, the default first.
    pub fn runtimes(&self) -> impl Iterator<Item = &RuntimeInfo> {
        self.inner.runtimes.iter().map(|e| e.runtime.info())
    }

    /// The runtime a request that names none runs in, when it is not the default: for a script
    /// whose file's extension belongs to another language than the default's, the first runtime
    /// listing it ([`RuntimeInfo::runs_file`]: `hello.js`); else the first other runtime that
    /// claims its program ([`Runtime::claims`]; `python-sci` claims a program importing a module
    /// only it has).
    pub fn auto_runtime(&self, req: &RunRequest) -> Option<String> {
        if let Program::Script { filename, .. } = &req.program {
            let mut listing = self.inner.runtimes.iter().map(|e| e.runtime.info());
            let default_runs_it = self
                .inner
                .runtimes
                .first()
                .is_some_and(|e| e.runtime.info().runs_file(filename));
            if !default_runs_it {
                if let Some(info) = listing.find(|i| i.runs_file(filename)) {
                    return Some(info.name.clone());
                }
            }
        }
        let source = match &req.program {
            Program::Code(code) => code.as_str(),
            Program::Script { source, .. } => std::str::from_utf8(source).ok()?,
        };
        self.inner
            .runtimes
            .iter()
            .skip(1)
            .find(|e| e.runtime.claims(source))
            .map(|e| e.runtime.info().name.clone())
    }

    /// The runtime `req` runs in: the one it names, else [`Sandbox::auto_runtime`]'s, else the
    /// default.
    pub fn select(&self, req: &RunRequest) -> Result<&RuntimeInfo> {
        let name = req.runtime.clone().or_else(|| self.auto_runtime(req));
        self.runtime(name.as_deref())
    }

    /// What the runtime `name` selects asks for its runs ([`Runtime::policy`]).
    pub fn policy(&self, name: Option<&str>) -> Result<Policy> {
        self.engines(name).map(|e| e.runtime.policy())
    }

    /// Whether the runtime `name` selects can take runs now.
    pub fn runtime_status(&self, name: &str) -> Result<RuntimeStatus> {
        self.engines(Some(name)).map(Engines::status)
    }

    /// Loads the runtime `name` selects, if it is not loaded yet: its plain engine, then its
    /// fuel-metered one (metered and deterministic runs use it), each compiled once per machine
    /// (minutes the first time for `python-sci`). Runs of it wait for this; a server calls it in
    /// the background at start.
    pub async fn prepare(&self, name: &str) -> Result<()> {
        let engines = self.engines(Some(name))?;
        engines.variant(&self.inner.settings, false).await?;
        engines.variant(&self.inner.settings, true).await?;
        Ok(())
    }

    /// The runtime `name` selects (its name or an alias); `None`: the default.
    pub fn runtime(&self, name: Option<&str>) -> Result<&RuntimeInfo> {
        self.engines(name).map(|e| e.runtime.info())
    }

    fn engines(&self, name: Option<&str>) -> Result<&Engines> {
        let runtimes = &self.inner.runtimes;
        let Some(name) = name else {
            // `with_runtimes` refuses an empty list.
            return runtimes
                .first()
                .ok_or_else(|| Error::Internal("the sandbox has no runtime".into()));
        };
        runtimes
            .iter()
            .find(|e| e.runtime.info().answers_to(name))
            .ok_or_else(|| Error::UnknownRuntime {
                name: name.to_string(),
                known: self
                    .runtimes()
                    .map(|r| r.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The engine variant for this runtime and these limits: fuel metering needs its own
    /// compiled code.
    async fn variant(&self, runtime: Option<&str>, limits: &Limits) -> Result<Arc<EngineVariant>> {
        let engines = self.engines(runtime)?;
        engines
            .variant(&self.inner.settings, limits.cpu_fuel.is_some())
            .await
    }

    /// Starts a run in a fresh store. The returned handle owns the run: dropping it stops the
    /// run and frees everything it holds.
    pub async fn start(&self, req: RunRequest) -> Result<RunHandle> {
        let req = self.restoring(req)?;
        let limits = self.admissible_limits(&req)?;
        if let Some(from) = &req.restore {
            if from.memory_bytes() > limits.memory_bytes {
                return Err(Error::Unsaved(format!(
                    "the snapshot's session uses {} of memory, above this run's limit of {}",
                    crate::limits::human_bytes(from.memory_bytes()),
                    crate::limits::human_bytes(limits.memory_bytes)
                )));
            }
        }
        let return_files = crate::files::patterns(&req.return_files)?;
        let runtime = req.runtime.clone().or_else(|| self.auto_runtime(&req));
        let variant = self.variant(runtime.as_deref(), &limits).await?;
        let slot = self.take_slot()?;
        let io = self.run_io(&req, &limits);
        let scratch = Arc::new(Scratch::create(
            &self.inner.scratch_dirs,
            &req,
            limits.scratch_bytes,
        )?);
        let unlinked = Arc::new(AtomicU64::new(0));
        let site = self.site(&req, &variant);
        let setup = variant.instantiator.guest.setup();
        refuse_mounts(&req, setup, &variant)?;
        let (wasi, opened) =
            wasi_context(&req, setup, &scratch, &io.pipes, &io.stdin, site.as_deref())?;
        let (host, cells) = self.host_state(&req, &limits, &variant, &io, site.is_some(), opened);
        let tools = host.tools.clone();
        let RunIo {
            events: (events_tx, events_rx),
            stdin_tx,
            status: (status_tx, status_rx),
            interrupter,
            stdin,
            priority,
            foreground,
            pipes,
        } = io;
        let state = GuestState::new(Parts {
            wasi,
            limiter: MemoryLimiter::new(limits.memory_bytes).with_budget(self.inner.memory.clone()),
            host,
            status: status_tx,
            clock: guest_clock(&req, &limits),
            priority,
            interrupter: interrupter.clone(),
            slot,
            scratch: scratch.clone(),
            unlinked: unlinked.clone(),
        });
        let start = self.enter(&variant, state, &limits);
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
                scratch_path: scratch.path().to_path_buf(),
                scratch: Arc::downgrade(&scratch),
                unlinked,
                foreground,
                lane: self.inner.lane.clone(),
                span,
                interrupter,
                cells,
                tools,
                return_files,
            },
            events_rx,
            stdin_tx,
        ))
    }

    /// `req` as the session its snapshot (if any) restores: the snapshot's runtime, files,
    /// environment and arguments, once its build is this sandbox's.
    fn restoring(&self, mut req: RunRequest) -> Result<RunRequest> {
        let Some(from) = req.restore.clone() else {
            return Ok(req);
        };
        // A deterministic session's snapshot restores as a deterministic session with its seed;
        // another cannot start a deterministic run.
        match (req.deterministic, from.seed()) {
            (_, Some(seed)) if req.deterministic.is_none_or(|s| s.0 == seed) => {
                req.deterministic = Some(crate::determinism::Seed(seed));
            }
            (None, None) => {}
            _ => {
                return Err(Error::Unsaved(
                    "a snapshot restores deterministic only with its own seed, and only a \
                     deterministic session's"
                        .into(),
                ))
            }
        }
        // The runtime the request names, else the snapshot's: another runtime's snapshot, or
        // another build's, is refused.
        let info = match req.runtime.as_deref() {
            Some(name) => self.runtime(Some(name))?,
            None => self
                .runtime(Some(from.runtime()))
                .map_err(|_| Error::SnapshotBuild {
                    runtime: from.runtime().to_string(),
                    build: from.build().to_string(),
                    current: "no such runtime".into(),
                })?,
        };
        from.check_build(&info.name, &info.build)?;
        req.runtime = Some(info.name.clone());
        req.cells = true;
        req.repl = false;
        req.program = Program::Code(String::new());
        req.files = from
            .files()
            .map(|(p, b)| (p.to_string(), b.to_vec()))
            .collect();
        req.env = from.env().to_vec();
        req.args = from.args().to_vec();
        Ok(req)
    }

    /// The limits `req` runs with, once they are valid, its environment can be given to the
    /// guest and the host's memory budget left covers its memory limit.
    fn admissible_limits(&self, req: &RunRequest) -> Result<Limits> {
        let limits = req.effective_limits();
        limits.validate()?;
        if let Some((name, _)) = req.env.iter().find(|(k, v)| !valid_env(k, v)) {
            return Err(Error::BadEnv(name.clone()));
        }
        if let Some(budget) = &self.inner.memory {
            if budget.left() < limits.memory_bytes {
                return Err(Error::MemoryBudget {
                    left: crate::limits::human_bytes(budget.left()),
                    limit: crate::limits::human_bytes(limits.memory_bytes),
                });
            }
        }
        Ok(limits)
    }

    /// One of the sandbox's instance slots, held by the run's store until it is dropped.
    fn take_slot(&self) -> Result<OwnedSemaphorePermit> {
        self.inner
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::AtCapacity(self.inner.settings.max_instances))
    }

    /// A run's channels, stdio and CPU class: its stdin holds `req`'s input (closed after it
    /// when asked), its output is capped by `limits`, and it starts in the foreground.
    fn run_io(&self, req: &RunRequest, limits: &Limits) -> RunIo {
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
        // A session takes interrupts only while a cell runs.
        let interrupter = Arc::new(match req.cells {
            true => Interrupter::default(),
            false => Interrupter::armed(),
        });
        let stdin = GuestStdin::new(
            stdin_rx,
            status_tx.clone(),
            StdinMode {
                record: req.record_input,
                replay: req.replay_input.clone(),
                gated: req.deterministic.is_some(),
            },
            interrupter.clone(),
        );
        let priority = Priority::new(self.inner.cpu.clone());
        let foreground = Foreground::new(priority.clone());
        let pipes = OutputQueue::new(
            events_tx.clone(),
            limits.output_bytes,
            limits.line_bytes,
            priority.clone(),
        );
        RunIo {
            events: (events_tx, events_rx),
            stdin_tx,
            status: (status_tx, status_rx),
            interrupter,
            stdin,
            priority,
            foreground,
            pipes,
        }
    }

    /// The package site a run of `variant` imports from: the request's package root (else the
    /// sandbox's) has one for the runtime.
    fn site(&self, req: &RunRequest, variant: &EngineVariant) -> Option<PathBuf> {
        req.packages
            .as_ref()
            .or(self.inner.settings.packages.as_ref())
            .map(|root| root.join(&variant.runtime.info().name))
            .filter(|dir| dir.is_dir())
    }

    /// What the guest's host functions hold for this run: its launch (argv, environment,
    /// working directory, site), where images go and, for a session, the cells' inbox (with the
    /// number of directories its WASI context opens, `preopens`). Also returns the callers' end
    /// of that inbox.
    fn host_state(
        &self,
        req: &RunRequest,
        limits: &Limits,
        variant: &EngineVariant,
        io: &RunIo,
        has_site: bool,
        opened: Opened,
    ) -> (HostState, Option<mpsc::Sender<SessionRequest>>) {
        let setup = variant.instantiator.guest.setup();
        let mut host = self.launch(req, limits, &variant.runtime.info().name);
        host.launch.args = argv(req);
        host.launch.env = environment(req, setup);
        host.launch.cwd = GUEST_DIR.to_string();
        host.output = Some(crate::launch::DisplayOutput(io.pipes.clone()));
        host.scratch_bytes = limits.scratch_bytes;
        host.tools = (req.tools.clone())
            .filter(|tools| !tools.is_empty())
            .map(|tools| Arc::new(crate::tools::ToolBox::new(tools, req.record_input)));
        if has_site {
            host.launch.path = vec![SITE_DIR.to_string()];
        }
        if !req.cells {
            return (host, None);
        }
        let (tx, rx) = mpsc::channel(1);
        host.launch.repl = false;
        host.launch.cells = true;
        host.cells = Some(CellInbox {
            requests: rx,
            restore: req.restore.clone(),
            saved: Default::default(),
            mapped: Default::default(),
            last_fork: None,
            calls: 0,
            random: opened.random,
            runtime: variant.runtime.info().name.clone(),
            build: variant.runtime.info().build.clone(),
            env: req.env.clone(),
            args: req.args.clone(),
            stdin: io.stdin.clone(),
            output: io.pipes.clone(),
            // A deterministic run's virtual clock is its fuel: it is not refilled.
            fuel: limits.cpu_fuel.filter(|_| req.deterministic.is_none()),
            reports: Default::default(),
            preopens: opened.preopens,
        });
        (host, Some(tx))
    }

    /// How the run's guest starts: a warm instance handed `state` when the pool has one the
    /// memory limit allows, else a fresh store. Counted in [`Sandbox::instance_starts`].
    fn enter(&self, variant: &EngineVariant, mut state: GuestState, limits: &Limits) -> run::Start {
        let start = match variant.warm.take() {
            // A warm guest already holds its initial memory: usable when the limit allows it.
            Some(warm) if warm.memory as u64 <= limits.memory_bytes => {
                state.limiter.starts_at(warm.memory);
                let peak = state.limiter.peak_handle();
                match warm.assign(Box::new(state)) {
                    Ok(call) => run::Start::Entered { call, peak },
                    Err(state) => fresh(variant, *state, limits),
                }
            }
            _ => fresh(variant, state, limits),
        };
        let counter = match start {
            run::Start::Entered { .. } => &self.inner.starts.warm,
            run::Start::Fresh(_) => &self.inner.starts.fresh,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        start
    }
}

/// What a run is given before its store exists: its channels, its stdio and its CPU class.
struct RunIo {
    /// The run's events: the guest's side, and the caller's.
    events: (mpsc::Sender<Event>, mpsc::Receiver<Event>),
    stdin_tx: StdinSender,
    /// The guest's status: the store's side, and the driver's.
    status: (watch::Sender<GuestStatus>, watch::Receiver<GuestStatus>),
    interrupter: Arc<Interrupter>,
    stdin: GuestStdin,
    priority: Priority,
    foreground: Foreground,
    pipes: Arc<OutputQueue>,
}

/// Refuses host directories the runtime cannot mount: a guest with a fixed layout takes only a
/// site mount.
fn refuse_mounts(req: &RunRequest, setup: &GuestSetup, variant: &EngineVariant) -> Result<()> {
    let Some(m) = req
        .mounts
        .iter()
        .find(|m| setup.site_placeholder.is_some() && m.guest != SITE_DIR)
    else {
        return Ok(());
    };
    Err(Error::Mount {
        path: m.host.display().to_string(),
        reason: format!(
            "the {} runtime cannot mount directories; pass files instead",
            variant.runtime.info().name
        ),
    })
}

/// The guest's clocks: virtual, driven by its fuel, for a deterministic metered run; else real.
fn guest_clock(req: &RunRequest, limits: &Limits) -> GuestClock {
    match (req.deterministic, limits.cpu_fuel) {
        (Some(_), Some(fuel)) => GuestClock::Virtual(VirtualClock::new(fuel)),
        _ => GuestClock::Real,
    }
}

/// A run in a store of its own, instantiated by the run's driver.
fn fresh(variant: &EngineVariant, state: GuestState, limits: &Limits) -> run::Start {
    run::Start::Fresh(variant.instantiator.store(state, limits.cpu_fuel))
}

impl Sandbox {
    /// How the guest launches the program: with its bytes when they are surely what the script's
    /// file holds, and with the compile cache (`crate::compile_cache`) when the run may use it.
    fn launch(&self, req: &RunRequest, limits: &Limits, runtime: &str) -> HostState {
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
        let key = Key::new(runtime, scope, name, source);
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

/// Whether `name=value` can be an entry of the guest's environment.
fn valid_env(name: &str, value: &str) -> bool {
    !name.is_empty() && !name.contains(['=', '\0']) && !value.contains('\0')
}

/// The run's environment: the runtime's variables, then the run's own (which win).
fn environment(req: &RunRequest, setup: &GuestSetup) -> Vec<(String, String)> {
    let own = |k: &String| req.env.iter().any(|(name, _)| name == k);
    setup
        .env
        .iter()
        .filter(|(k, _)| !own(k))
        .cloned()
        .chain(req.env.iter().cloned())
        .collect()
}

/// What a run's WASI context opens for the guest: how many directories, and a deterministic
/// run's random sources.
struct Opened {
    preopens: usize,
    random: Option<crate::determinism::SeededRandom>,
}

/// The run's WASI context, and what it opens for the guest.
fn wasi_context(
    req: &RunRequest,
    setup: &GuestSetup,
    scratch: &Scratch,
    pipes: &Arc<OutputQueue>,
    stdin: &GuestStdin,
    site: Option<&Path>,
) -> Result<(WasiP1Ctx, Opened)> {
    let mut b = WasiCtx::builder();
    let mut preopens = 0;
    b.stdin(stdin.clone())
        .stdout(pipes.stream(StreamKind::Stdout))
        .stderr(pipes.stream(StreamKind::Stderr))
        .args(&argv(req))
        .envs(&environment(req, setup))
        .initial_cwd(GUEST_DIR)
        .monotonic_clock(crate::determinism::HostMonotonic)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .allow_blocking_current_thread(true);
    let random = req.deterministic.map(|seed| seed.seed_random(&mut b));
    for (host, guest) in &setup.mounts {
        b.preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| Error::Internal(format!("cannot mount {guest}: {e:#}")))?;
        preopens += 1;
    }
    b.preopened_dir(scratch.path(), GUEST_DIR, FsPerms::ReadWrite)
        .map_err(|e| Error::Internal(format!("cannot open scratch dir: {e:#}")))?;
    preopens += 1;
    // A guest with a fixed layout always has its site directory: the site, or a mount there (the
    // compile step of `weir packages`), or an empty placeholder.
    let placeholder = setup.site_placeholder.as_deref();
    let site = match req.mounts.iter().any(|m| m.guest == SITE_DIR) {
        true => None,
        false => site.or(placeholder),
    };
    if let Some(dir) = site {
        b.preopened_dir(dir, SITE_DIR, FsPerms::ReadOnly)
            .map_err(|e| Error::Mount {
                path: dir.display().to_string(),
                reason: format!("{e:#}"),
            })?;
        preopens += 1;
    }
    for m in &req.mounts {
        let perms = if m.read_only {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        b.preopened_dir(&m.host, &m.guest, perms)
            .map_err(|e| Error::Mount {
                path: m.host.display().to_string(),
                reason: format!("{e:#}"),
            })?;
        preopens += 1;
    }
    Ok((b.build_p1(), Opened { preopens, random }))
}
