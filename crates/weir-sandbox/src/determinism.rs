//! Deterministic mode: everything the guest can observe that would differ between two runs of
//! the same script is replaced by something derived from a seed and from the guest's own work.
//!
//! - Random bytes (`wasi:random/random`, `/insecure`, `/insecure-seed`) come from ChaCha20
//!   generators seeded from the run's seed, so `random`, `os.urandom`, `uuid4` and `secrets` repeat.
//! - Both clocks are virtual: they start at a fixed instant (wall clock 2000-01-01T00:00:00Z) and
//!   advance with the fuel the guest has consumed ([`FUEL_PER_NS`]: about real speed on a current
//!   x86-64 core), plus whatever it slept.
//!   `time.sleep(s)` (any `wasi:clocks` subscription) advances the virtual clock by `s` and returns
//!   at once.
//! - CPU is bounded by fuel (the same instruction every time); the wall-time limit only remains as
//!   a generous safety net ([`MIN_WALL_MS`]).
//!
//! The clock functions are installed for every run (shadowing wasmtime-wasi's); a run that is not
//! deterministic gets wasmtime-wasi's real clocks through them unchanged.

use crate::interrupt::Interrupter;
use crate::limits::Limits;
use chacha20::rand_core::{SeedableRng, TryRng};
use chacha20::ChaCha20Rng;
use std::sync::{Arc, Mutex};
use wasmtime::component::{Linker, Resource};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::bindings::clocks::{monotonic_clock, wall_clock};
use wasmtime_wasi::p2::bindings::filesystem::types as fs;
use wasmtime_wasi::p2::{DynPollable, Pollable};
use wasmtime_wasi::{WasiCtxBuilder, WasiView};

/// Fuel a deterministic run gets when the caller sets none (about 6 s of guest CPU here).
pub const DEFAULT_FUEL: u64 = 50_000_000_000;
/// The wall-time limit of a deterministic run is raised to at least this, so that fuel and not
/// the machine's speed decides when a busy script stops.
pub const MIN_WALL_MS: u64 = 120_000;
/// Fuel per virtual nanosecond (compiled guest code burns about 8 fuel per ns here).
pub const FUEL_PER_NS: u64 = 8;
/// The virtual wall clock's reading at start: 2000-01-01T00:00:00Z.
pub const WALL_START_SECS: u64 = 946_684_800;
/// The virtual monotonic clock's reading at start, nanoseconds.
pub const MONOTONIC_START_NS: u64 = 1_000_000_000;

/// The host's monotonic clock as every run's guest reads it (not in deterministic mode): one
/// clock for the process, [`MONOTONIC_START_NS`] at its first reading. It is installed as each
/// run's WASI monotonic clock, and a runtime that answers `clock_time_get` itself
/// (`runtime::sci`) reads the same one, so a deadline the guest computes from its readings (an
/// absolute `poll_oneoff` timer: `time.sleep`) is one the WASI implementation waits for, never
/// one offset by the server's uptime.
#[derive(Debug, Clone, Copy, Default)]
pub struct HostMonotonic;

impl HostMonotonic {
    /// The clock's reading, nanoseconds.
    pub fn now_ns() -> u64 {
        static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        MONOTONIC_START_NS.saturating_add(origin.elapsed().as_nanos() as u64)
    }
}

impl wasmtime_wasi::HostMonotonicClock for HostMonotonic {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        HostMonotonic::now_ns()
    }
}

const MONOTONIC: &str = "wasi:clocks/monotonic-clock@0.2.12";
const WALL: &str = "wasi:clocks/wall-clock@0.2.12";

/// The seed of a deterministic run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub u64);

impl Seed {
    /// The limits a deterministic run actually runs with: fuel always set, wall time a safety net.
    pub fn limits(self, mut limits: Limits) -> Limits {
        limits.cpu_fuel.get_or_insert(DEFAULT_FUEL);
        limits.wall_ms = limits.wall_ms.max(MIN_WALL_MS);
        limits
    }

    /// Points the WASI context's random sources at generators derived from the seed; returns
    /// them, so that where they are can be read and set (a session's snapshot keeps it).
    pub fn seed_random(self, b: &mut WasiCtxBuilder) -> SeededRandom {
        let random = SeededRandom {
            seed: self,
            secure: SharedRng::new(ChaCha20Rng::seed_from_u64(self.0)),
            insecure: SharedRng::new(ChaCha20Rng::seed_from_u64(self.0 ^ 0x0123_4567_89ab_cdef)),
        };
        b.secure_random(random.secure.clone())
            .insecure_random(random.insecure.clone())
            .insecure_random_seed(u128::from(self.0) << 64 | 0x9e37_79b9_7f4a_7c15);
        random
    }
}

/// A deterministic run's random sources.
#[derive(Clone)]
pub struct SeededRandom {
    pub seed: Seed,
    secure: SharedRng,
    insecure: SharedRng,
}

impl SeededRandom {
    /// How far each source has gone: `(secure, insecure)`, in 32-bit words.
    pub fn positions(&self) -> (u128, u128) {
        (self.secure.word_pos(), self.insecure.word_pos())
    }

    /// Moves each source to where [`SeededRandom::positions`] said another run's was.
    pub fn set_positions(&self, (secure, insecure): (u128, u128)) {
        self.secure.set_word_pos(secure);
        self.insecure.set_word_pos(insecure);
    }
}

impl std::fmt::Debug for SeededRandom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededRandom").finish_non_exhaustive()
    }
}

/// A generator the WASI context draws from while the host can read and set its position.
#[derive(Clone)]
struct SharedRng(Arc<Mutex<ChaCha20Rng>>);

impl SharedRng {
    fn new(rng: ChaCha20Rng) -> Self {
        SharedRng(Arc::new(Mutex::new(rng)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha20Rng> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn word_pos(&self) -> u128 {
        self.lock().get_word_pos()
    }

    fn set_word_pos(&self, pos: u128) {
        self.lock().set_word_pos(pos);
    }
}

impl TryRng for SharedRng {
    type Error = std::convert::Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.lock().try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.lock().try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.lock().try_fill_bytes(dst)
    }
}

/// Which clocks (and file identities) a run's guest sees.
#[derive(Debug, Clone)]
pub enum GuestClock {
    /// wasmtime-wasi's: the host's real time and files.
    Real,
    /// Virtual time and file identities (deterministic runs).
    Virtual(VirtualClock),
}

/// Most distinct files a deterministic run numbers; past this, files share one identity.
const MAX_FILE_IDS: usize = 100_000;

/// Virtual time: fuel consumed so far (at [`FUEL_PER_NS`]) plus time slept. Also the run's file
/// identities: files are numbered in the order the guest first looks at them, so `st_ino` does
/// not depend on the host's inode numbers.
#[derive(Debug, Clone)]
pub struct VirtualClock {
    /// Fuel the guest had when its current budget was given.
    fuel_at_start: u64,
    /// Virtual time before the current budget, and every sleep.
    base_ns: u64,
    file_ids: std::collections::HashMap<(u64, u64), u64>,
    /// Identities handed out before the run started (a restored session's): new ones follow.
    ids_before: u64,
}

impl VirtualClock {
    /// A clock at its start, for a guest that begins with `fuel_at_start` fuel.
    pub fn new(fuel_at_start: u64) -> Self {
        VirtualClock {
            fuel_at_start,
            base_ns: 0,
            file_ids: std::collections::HashMap::new(),
            ids_before: 0,
        }
    }

    pub(crate) fn file_id(&mut self, real: (u64, u64)) -> u64 {
        let next = self.ids_before + self.file_ids.len() as u64 + 1;
        if self.file_ids.len() >= MAX_FILE_IDS {
            return *self.file_ids.get(&real).unwrap_or(&0);
        }
        *self.file_ids.entry(real).or_insert(next)
    }

    /// File identities handed out so far.
    pub(crate) fn ids_issued(&self) -> u64 {
        self.ids_before + self.file_ids.len() as u64
    }

    fn elapsed_ns(&self, fuel_left: u64) -> u64 {
        (self.fuel_at_start.saturating_sub(fuel_left) / FUEL_PER_NS).saturating_add(self.base_ns)
    }

    /// Fuel burnt since the last whole virtual nanosecond, the guest holding `fuel_left`.
    pub(crate) fn sub_ns_fuel(&self, fuel_left: u64) -> u64 {
        self.fuel_at_start.saturating_sub(fuel_left) % FUEL_PER_NS
    }

    /// Goes on from another run's clock (a restored session's): `elapsed_ns` of virtual time
    /// and `sub_ns_fuel` toward the next nanosecond, `ids` file identities behind it, the guest
    /// holding `fuel_left` now.
    pub(crate) fn resume(&mut self, elapsed_ns: u64, sub_ns_fuel: u64, ids: u64, fuel_left: u64) {
        self.base_ns = elapsed_ns;
        self.fuel_at_start = fuel_left.saturating_add(sub_ns_fuel % FUEL_PER_NS);
        self.file_ids.clear();
        self.ids_before = ids;
    }
}

/// A store's data that carries a run's [`GuestClock`]: what the clocks installed by
/// [`add_to_linker`] read.
pub trait ClockView: WasiView + Send + 'static {
    /// The run's clock.
    fn clock(&self) -> &GuestClock;
    /// The run's clock, to advance it.
    fn clock_mut(&mut self) -> &mut GuestClock;
    /// What ends a real-clock sleep early (`crate::interrupt`); `None`: nothing does.
    fn interrupter(&self) -> Option<Arc<Interrupter>> {
        None
    }
}

/// A real-clock sleep that an interrupt ends early, raising `KeyboardInterrupt` in the guest
/// as it returns (`time.sleep`).
struct Sleep {
    until: tokio::time::Instant,
    interrupter: Arc<Interrupter>,
}

#[async_trait::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        if self.interrupter.in_flight() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(self.until) => {}
            () = self.interrupter.requested() => {
                self.interrupter.deliver();
            }
        }
    }
}

/// A sleep of `ns` on the real clock: interruptible when the run has an interrupter.
fn real_sleep<T: ClockView>(
    store: &mut StoreContextMut<'_, T>,
    ns: u64,
) -> wasmtime::Result<Resource<DynPollable>> {
    use wasmtime_wasi::clocks::WasiClocksView;
    let Some(interrupter) = store.data().interrupter() else {
        return monotonic_clock::Host::subscribe_duration(&mut store.data_mut().clocks(), ns);
    };
    let until = tokio::time::Instant::now() + std::time::Duration::from_nanos(ns);
    let table = store.data_mut().ctx().table;
    let sleep = table.push(Sleep { until, interrupter })?;
    wasmtime_wasi::p2::subscribe(table, sleep)
}

/// The virtual clock's state and the guest's remaining fuel, if this run is deterministic.
pub(crate) fn virtual_now<T: ClockView>(store: &StoreContextMut<'_, T>) -> Option<u64> {
    match store.data().clock() {
        GuestClock::Real => None,
        GuestClock::Virtual(c) => Some(c.elapsed_ns(store.get_fuel().unwrap_or(0))),
    }
}

/// Moves the virtual clock forward by `ns` (a sleep).
pub(crate) fn advance<T: ClockView>(store: &mut StoreContextMut<'_, T>, ns: u64) {
    if let GuestClock::Virtual(c) = store.data_mut().clock_mut() {
        c.base_ns = c.base_ns.saturating_add(ns);
    }
}

/// A pollable that is ready at once (after one yield, like wasmtime-wasi's past deadlines).
struct Ready {
    yielded: bool,
}

#[async_trait::async_trait]
impl Pollable for Ready {
    async fn ready(&mut self) {
        if !self.yielded {
            self.yielded = true;
            tokio::task::yield_now().await;
        }
    }
}

fn ready_pollable<T: ClockView>(
    store: &mut StoreContextMut<'_, T>,
) -> wasmtime::Result<Resource<DynPollable>> {
    let table = store.data_mut().ctx().table;
    let ready = table.push(Ready { yielded: false })?;
    wasmtime_wasi::p2::subscribe(table, ready)
}

type Store<'a, T> = StoreContextMut<'a, T>;

/// Installs weir's clocks and file metadata over wasmtime-wasi's (call after
/// `wasmtime_wasi::p2::add_to_linker_async`).
pub fn add_to_linker<T: ClockView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let result = add_clocks(linker).and_then(|()| add_file_metadata(linker));
    linker.allow_shadowing(false);
    result
}

const FILESYSTEM: &str = "wasi:filesystem/types@0.2.12";

type Fd = Resource<fs::Descriptor>;
type FsReturn<T> = wasmtime::Result<(Result<T, fs::ErrorCode>,)>;

/// An `FsResult` as the component sees it: an error code, or a trap for host failures.
fn to_wit<T>(r: wasmtime_wasi::p2::FsResult<T>) -> FsReturn<T> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

/// Deterministic runs see every file time as the virtual clock's start.
fn virtual_stat<T: ClockView>(
    store: &Store<'_, T>,
    mut st: fs::DescriptorStat,
) -> fs::DescriptorStat {
    if matches!(store.data().clock(), GuestClock::Virtual(_)) {
        let start = Some(wall_clock::Datetime {
            seconds: WALL_START_SECS,
            nanoseconds: 0,
        });
        st.data_access_timestamp = start;
        st.data_modification_timestamp = start;
        st.status_change_timestamp = start;
    }
    st
}

/// Deterministic runs see files numbered in the order they were first looked at.
fn virtual_hash<T: ClockView>(
    store: &mut Store<'_, T>,
    h: fs::MetadataHashValue,
) -> fs::MetadataHashValue {
    match store.data_mut().clock_mut() {
        GuestClock::Virtual(c) => fs::MetadataHashValue {
            upper: 0,
            lower: c.file_id((h.upper, h.lower)),
        },
        GuestClock::Real => h,
    }
}

fn add_file_metadata<T: ClockView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use fs::HostDescriptor as D;
    use wasmtime_wasi::filesystem::WasiFilesystemView;
    let mut types = linker.instance(FILESYSTEM).map_err(wasm_err)?;
    types
        .func_wrap_async("[method]descriptor.stat", |mut store, (fd,): (Fd,)| {
            Box::new(async move {
                let st = D::stat(&mut store.data_mut().filesystem(), fd).await;
                to_wit(st.map(|st| virtual_stat(&store, st)))
            })
        })
        .map_err(wasm_err)?;
    types
        .func_wrap_async(
            "[method]descriptor.stat-at",
            |mut store, (fd, flags, path): (Fd, fs::PathFlags, String)| {
                Box::new(async move {
                    let st = D::stat_at(&mut store.data_mut().filesystem(), fd, flags, path).await;
                    to_wit(st.map(|st| virtual_stat(&store, st)))
                })
            },
        )
        .map_err(wasm_err)?;
    types
        .func_wrap_async(
            "[method]descriptor.metadata-hash",
            |mut store, (fd,): (Fd,)| {
                Box::new(async move {
                    let h = D::metadata_hash(&mut store.data_mut().filesystem(), fd).await;
                    to_wit(h.map(|h| virtual_hash(&mut store, h)))
                })
            },
        )
        .map_err(wasm_err)?;
    types
        .func_wrap_async(
            "[method]descriptor.metadata-hash-at",
            |mut store, (fd, flags, path): (Fd, fs::PathFlags, String)| {
                Box::new(async move {
                    let h =
                        D::metadata_hash_at(&mut store.data_mut().filesystem(), fd, flags, path)
                            .await;
                    to_wit(h.map(|h| virtual_hash(&mut store, h)))
                })
            },
        )
        .map_err(wasm_err)?;
    Ok(())
}

fn wasm_err(e: wasmtime::Error) -> anyhow::Error {
    anyhow::anyhow!("{e:#}")
}

fn add_clocks<T: ClockView>(linker: &mut Linker<T>) -> anyhow::Result<()> {
    use monotonic_clock::Host as Mono;
    use wall_clock::Host as Wall;
    use wasmtime_wasi::clocks::WasiClocksView;
    let mut mono = linker.instance(MONOTONIC).map_err(wasm_err)?;
    mono.func_wrap("now", |mut store: Store<'_, T>, (): ()| {
        Ok((match virtual_now(&store) {
            Some(ns) => MONOTONIC_START_NS + ns,
            None => Mono::now(&mut store.data_mut().clocks())?,
        },))
    })
    .map_err(wasm_err)?;
    mono.func_wrap("resolution", |mut store: Store<'_, T>, (): ()| {
        Ok((match virtual_now(&store) {
            Some(_) => 1,
            None => Mono::resolution(&mut store.data_mut().clocks())?,
        },))
    })
    .map_err(wasm_err)?;
    mono.func_wrap(
        "subscribe-duration",
        |mut store: Store<'_, T>, (ns,): (u64,)| match virtual_now(&store) {
            Some(_) => {
                advance(&mut store, ns);
                Ok((ready_pollable(&mut store)?,))
            }
            None => Ok((real_sleep(&mut store, ns)?,)),
        },
    )
    .map_err(wasm_err)?;
    mono.func_wrap(
        "subscribe-instant",
        |mut store: Store<'_, T>, (when,): (u64,)| match virtual_now(&store) {
            Some(now) => {
                advance(&mut store, when.saturating_sub(MONOTONIC_START_NS + now));
                Ok((ready_pollable(&mut store)?,))
            }
            None => {
                let now = Mono::now(&mut store.data_mut().clocks())?;
                Ok((real_sleep(&mut store, when.saturating_sub(now))?,))
            }
        },
    )
    .map_err(wasm_err)?;
    let mut wall = linker.instance(WALL).map_err(wasm_err)?;
    wall.func_wrap("now", |mut store: Store<'_, T>, (): ()| {
        Ok((match virtual_now(&store) {
            Some(ns) => wall_clock::Datetime {
                seconds: WALL_START_SECS + ns / 1_000_000_000,
                nanoseconds: (ns % 1_000_000_000) as u32,
            },
            None => Wall::now(&mut store.data_mut().clocks())?,
        },))
    })
    .map_err(wasm_err)?;
    wall.func_wrap("resolution", |mut store: Store<'_, T>, (): ()| {
        Ok((match virtual_now(&store) {
            Some(_) => wall_clock::Datetime {
                seconds: 0,
                nanoseconds: 1,
            },
            None => Wall::resolution(&mut store.data_mut().clocks())?,
        },))
    })
    .map_err(wasm_err)?;
    Ok(())
}
