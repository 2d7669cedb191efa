//! All wasmtime policy in one place: engine configuration, the pooling allocator, the one epoch
//! ticker per engine, and the policy every store gets (memory limiter, fuel, epoch deadline).

use crate::background::LanePriority;
use crate::limits::MAX_MEMORY_BYTES;
use crate::runtime::{Footprint, Loaded};
use crate::store::GuestState;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

/// Engine knobs; every one has a default and can be overridden by the embedder.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Most guest instances alive at once (pooling-allocator slots).
    pub max_instances: u32,
    /// wasm stack; large enough that deep C recursion in CPython raises `RecursionError`.
    pub max_wasm_stack: usize,
    /// How often the epoch ticker fires: the granularity of stop, pause and timeouts.
    pub epoch_tick: Duration,
    /// Where precompiled guests are cached.
    pub cache_dir: PathBuf,
    /// Bytes of each freed linear memory kept resident and reset with `memcpy` from the image
    /// (only the pages the run dirtied, found with Linux's PAGEMAP_SCAN; see
    /// `vendor/wasmtime/WEIR-PATCH.md`) instead of `madvise` and copy-on-write faults in the
    /// next run. A hello run dirties ~1.8 MB. The cost: a freed slot holds up to this much
    /// memory until it is reused, so the process keeps the high-water mark of concurrent runs
    /// (at most `max_instances` x this). `$WEIR_KEEP_RESIDENT`; 0 keeps nothing.
    pub keep_resident: usize,
    /// Bytes at the top of each freed fiber stack zeroed with `memset` and kept resident; the
    /// rest of the stack is given back to the kernel (`madvise`) after every run, so a run that
    /// recursed deep (up to the 34 MiB stack) leaves no memory behind in the pool.
    /// `$WEIR_STACK_KEEP_RESIDENT`.
    pub stack_keep_resident: usize,
    /// Initialise funcref tables lazily (on first use) rather than at instantiation. Off by
    /// default: eager initialisation measured 5 % faster runs and 25 % less memory per instance.
    pub table_lazy_init: bool,
    /// How long a new run (or REPL statement) has priority over longer runs, at most: its first
    /// output ends it sooner (`crate::priority`).
    pub foreground_for: Duration,
    /// Longest a background run waits for foreground runs in one go (`crate::priority`).
    pub max_give_way: Duration,
    /// CPU priority of the threads background runs continue on (`crate::background`): by
    /// default the process's own, so no run yields to the rest of the host.
    /// `$WEIR_BACKGROUND_NICE`: `idle` (`SCHED_IDLE`) or a nice value 1–19, opt-ins for
    /// dedicated machines only: they rank background runs below every other process there.
    pub background_priority: LanePriority,
    /// Worker threads of the background lane; by default one per CPU.
    /// `$WEIR_BACKGROUND_THREADS`.
    pub background_threads: usize,
    /// Instances kept instantiated ahead of demand per engine variant (`crate::warm`), so a
    /// run's start does not wait for instantiation. 0 turns the warm pool off.
    pub warm_instances: usize,
    /// Threads filling the warm pool (`crate::warm`); by default two.
    /// `$WEIR_WARM_FILLERS`.
    pub warm_fillers: usize,
    /// Bytes of compiled programs kept for re-runs (`crate::compile_cache`); 0 turns the cache
    /// off. `$WEIR_COMPILE_CACHE_BYTES`.
    pub compile_cache_bytes: usize,
    /// The operator's package sites, for runs that name none
    /// ([`crate::RunRequest::packages`]); none by default.
    pub packages: Option<PathBuf>,
    /// The host's memory budget for guests, bytes: what all live runs together may grow their
    /// linear memory beyond their guest's initial image ([`crate::limits::MemoryBudget`]). A
    /// run is refused at start while the budget left is less than its memory limit, and a
    /// growth past the budget fails as one past the run's own limit. Default: three quarters of
    /// the host's memory (`MemTotal`); `$WEIR_MEMORY_BUDGET` (bytes); `None`: no budget.
    pub memory_budget_bytes: Option<u64>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_instances: env_usize("WEIR_MAX_INSTANCES").map_or(1100, |n| n as u32),
            max_wasm_stack: 32 << 20,
            epoch_tick: Duration::from_millis(2),
            cache_dir: default_cache_dir(),
            keep_resident: env_usize("WEIR_KEEP_RESIDENT").unwrap_or(4 << 20),
            stack_keep_resident: env_usize("WEIR_STACK_KEEP_RESIDENT").unwrap_or(256 << 10),
            table_lazy_init: env_usize("WEIR_TABLE_LAZY_INIT").is_some_and(|v| v != 0),
            warm_instances: env_usize("WEIR_WARM_INSTANCES").unwrap_or(4),
            warm_fillers: env_usize("WEIR_WARM_FILLERS").unwrap_or(2),
            compile_cache_bytes: env_usize("WEIR_COMPILE_CACHE_BYTES").unwrap_or(64 << 20),
            foreground_for: env_ms("WEIR_FOREGROUND_MS").unwrap_or(crate::priority::FOREGROUND_FOR),
            max_give_way: env_ms("WEIR_GIVE_WAY_MS").unwrap_or(crate::priority::MAX_GIVE_WAY),
            background_priority: std::env::var("WEIR_BACKGROUND_NICE")
                .ok()
                .and_then(|v| LanePriority::parse(&v))
                .unwrap_or_default(),
            background_threads: env_usize("WEIR_BACKGROUND_THREADS")
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            packages: None,
            memory_budget_bytes: env_usize("WEIR_MEMORY_BUDGET")
                .map(|b| b as u64)
                .or_else(crate::limits::MemoryBudget::default_bytes),
        }
    }
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

fn env_ms(name: &str) -> Option<Duration> {
    env_usize(name).map(|ms| Duration::from_millis(ms as u64))
}

/// `$WEIR_CACHE_DIR`, else the user's cache directory, else the system temp dir.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WEIR_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("weir")
}

/// The warm pool's size on one engine variant. Metered runs count the fuel instantiation burns
/// (start functions run wasm), and a deterministic run must burn the same fuel every time: they
/// always instantiate fresh, so the metered engine keeps no warm pool.
pub(crate) fn warm_instances(settings: &EngineSettings, fuel: bool) -> usize {
    if fuel {
        0
    } else {
        settings.warm_instances
    }
}

/// An engine for guests with this footprint: `extra_slots` instances beyond the runs' own (the
/// warm pool's) share its pool.
pub(crate) fn engine(
    settings: &EngineSettings,
    footprint: Footprint,
    fuel: bool,
    extra_slots: usize,
) -> anyhow::Result<Engine> {
    Engine::new(&config(settings, footprint, fuel, extra_slots))
        .map_err(|e| anyhow::anyhow!("cannot configure the wasm engine: {e:#}"))
}

fn config(
    settings: &EngineSettings,
    footprint: Footprint,
    fuel: bool,
    extra_slots: usize,
) -> Config {
    // Warm instances occupy pool slots too, beyond the runs' own.
    let n = (settings.max_instances as usize + extra_slots).max(1) as u32;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n * footprint.core_instances)
        .total_memories(n * footprint.memories)
        .total_tables(n * footprint.tables)
        .total_gc_heaps(n * footprint.gc_heaps)
        .total_stacks(n)
        .max_core_instances_per_component(footprint.core_instances)
        .max_memories_per_component(footprint.memories)
        .max_tables_per_component(footprint.tables)
        .max_memory_size(footprint.max_memory_bytes.min(MAX_MEMORY_BYTES) as usize)
        .table_elements(100_000)
        .max_core_instance_size(4 << 20)
        .max_component_instance_size(4 << 20)
        .linear_memory_keep_resident(settings.keep_resident)
        .table_keep_resident(settings.keep_resident.min(1 << 20))
        .async_stack_keep_resident(settings.stack_keep_resident)
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .consume_fuel(fuel)
        // No wasm backtrace on traps: every run ends in one (`exit-with-code` unwinds as a
        // trap), and capturing the frames cost 7-20 % of hello throughput. Outcomes and their
        // messages never use it.
        .wasm_backtrace_max_frames(None)
        .max_wasm_stack(settings.max_wasm_stack)
        .async_stack_size(settings.max_wasm_stack + (2 << 20))
        // Freed stacks are zeroed: the top `stack_keep_resident` bytes with memset, the rest
        // decommitted. Without it a pooled stack kept every page a run touched (a deep
        // recursion: 34 MiB per stack, for ever) and the next tenant's run got it unzeroed.
        .async_stack_zeroing(true)
        .memory_init_cow(true)
        .table_lazy_init(settings.table_lazy_init)
        .parallel_compilation(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

/// Increments one engine's epoch every tick until dropped.
pub(crate) struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    pub(crate) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })?;
        Ok(EpochTicker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What instantiating the guest needs: cheap to clone and shared with the warm-pool thread.
#[derive(Clone)]
pub(crate) struct Instantiator {
    pub(crate) engine: Engine,
    pub(crate) guest: Arc<dyn Loaded>,
    pub(crate) fuel: bool,
}

impl Instantiator {
    /// A store for `state`, with the engine's policy applied: the memory limiter, fuel (on
    /// metered engines) and an epoch deadline of one tick.
    pub(crate) fn store(&self, state: GuestState, fuel: Option<u64>) -> Store<GuestState> {
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm(&mut store, self.fuel, fuel);
        // Yield to the executor on every epoch tick: the driver can then stop, pause or time
        // out the run, and a busy guest never holds a worker thread for more than one tick.
        // A background run then also gives way to foreground ones (`crate::priority`).
        store.epoch_deadline_callback(|mut ctx| {
            // A busy guest takes a requested interrupt here, within one tick.
            if ctx.data().interrupter.pending() {
                ctx.data().interrupter.deliver();
            }
            // Files it unlinked but holds open count in its scratch limit.
            ctx.data_mut().recount_unlinked();
            let priority = &ctx.data().priority;
            Ok(if priority.is_background() {
                UpdateDeadline::YieldCustom(1, Box::pin(priority.clone().yield_then_give_way()))
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        store
    }
}

/// Sets a store's fuel (metered engines only) and its epoch deadline to one tick from now.
/// Called when a store is created and again when a warm store is handed to its run.
pub(crate) fn arm(store: &mut Store<GuestState>, metered: bool, fuel: Option<u64>) {
    if metered {
        // Cannot fail: the engine meters fuel.
        let _ = store.set_fuel(fuel.unwrap_or(u64::MAX));
    }
    store.set_epoch_deadline(1);
}
