//! Per-run limits, their defaults, and the memory `ResourceLimiter` that enforces one of them.
//!
//! Every limit has a default suited to an interactive IDE run; every one can be overridden by the
//! caller (CLI flag, environment variable, protocol parameter).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The hard ceiling on any run's memory: one pooling-allocator slot.
pub const MAX_MEMORY_BYTES: u64 = 2 << 30;

/// What one run may consume. `None` for `cpu_fuel` means "not metered".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Wall-clock time the run may be active (paused time does not count), milliseconds.
    pub wall_ms: u64,
    /// Fuel units (roughly wasm instructions); `None` leaves CPU unmetered.
    pub cpu_fuel: Option<u64>,
    /// Linear memory the guest may grow to, bytes.
    pub memory_bytes: u64,
    /// Total bytes the script may write to stdout and stderr together.
    pub output_bytes: u64,
    /// Longest line kept; the rest of a longer line is cut with a visible marker.
    pub line_bytes: u64,
    /// Total size of the scratch directory: the caller's files and what the script writes.
    pub scratch_bytes: u64,
    /// How long a REPL (or a paused run) may sit idle before it is ended, milliseconds.
    pub idle_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            wall_ms: 10_000,
            cpu_fuel: None,
            memory_bytes: 256 << 20,
            output_bytes: 1 << 20,
            line_bytes: 64 << 10,
            scratch_bytes: 64 << 20,
            idle_ms: 300_000,
        }
    }
}

impl Limits {
    /// These limits, none above `max`'s (an unmetered run stays unmetered).
    pub fn capped_by(self, max: &Limits) -> Limits {
        Limits {
            wall_ms: self.wall_ms.min(max.wall_ms),
            cpu_fuel: match (self.cpu_fuel, max.cpu_fuel) {
                (Some(asked), Some(most)) => Some(asked.min(most)),
                (asked, _) => asked,
            },
            memory_bytes: self.memory_bytes.min(max.memory_bytes),
            output_bytes: self.output_bytes.min(max.output_bytes),
            line_bytes: self.line_bytes.min(max.line_bytes),
            scratch_bytes: self.scratch_bytes.min(max.scratch_bytes),
            idle_ms: self.idle_ms.min(max.idle_ms),
        }
    }

    /// Checks that every limit is usable.
    pub fn validate(&self) -> Result<()> {
        let non_zero = [
            ("wall_ms", self.wall_ms),
            ("memory_bytes", self.memory_bytes),
            ("output_bytes", self.output_bytes),
            ("line_bytes", self.line_bytes),
            ("idle_ms", self.idle_ms),
        ];
        if let Some((name, _)) = non_zero.iter().find(|(_, v)| *v == 0) {
            return Err(Error::ZeroLimit { name });
        }
        if self.cpu_fuel == Some(0) {
            return Err(Error::ZeroLimit { name: "cpu_fuel" });
        }
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(Error::MemoryTooLarge {
                asked: self.memory_bytes,
                max: MAX_MEMORY_BYTES,
            });
        }
        Ok(())
    }

    /// The wall-time limit (at most [`MAX_DURATION`]: a deadline that far away must still be
    /// representable).
    pub fn wall(&self) -> Duration {
        Duration::from_millis(self.wall_ms).min(MAX_DURATION)
    }

    /// The idle limit (at most [`MAX_DURATION`]).
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms).min(MAX_DURATION)
    }
}

/// Human form of a byte count: "64 MiB", "1 MiB", "512 B".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{} {unit}", n / size);
        }
        if n >= size {
            return format!("{:.1} {unit}", n as f64 / size as f64);
        }
    }
    format!("{n} B")
}

/// Human form of a duration in milliseconds: "3 s", "250 ms", "1.5 s".
pub fn human_ms(ms: u64) -> String {
    if ms >= 1000 && ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else if ms >= 1000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{ms} ms")
    }
}

/// The longest duration any limit or token lifetime may have: ten years.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses "2s", "500ms", "1m" (humantime) or a bare number of seconds, up to [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration> {
    let invalid = |reason: String| Error::InvalidDuration {
        value: s.to_string(),
        reason,
    };
    let too_long = || invalid("longer than the maximum of 10 years".into());
    let parsed = match s.trim().parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs >= 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| too_long())?
        }
        _ => humantime::parse_duration(s.trim()).map_err(|e| invalid(e.to_string()))?,
    };
    if parsed > MAX_DURATION {
        return Err(too_long());
    }
    Ok(parsed)
}

/// Parses "64MiB", "1 MB", "4096" (bytes).
pub fn parse_bytes(s: &str) -> Result<u64> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| Error::InvalidSize {
            value: s.to_string(),
            reason: e.to_string(),
        })
}

/// Enforces `memory_bytes`: growth past it is refused (CPython sees a failed allocation and
/// raises `MemoryError`), and the refusal is remembered so the outcome can say why.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    denied: bool,
    peak: usize,
    /// `peak`, readable after the store is gone (a run stopped inside a warm instance's call,
    /// which owns the store; `crate::warm`).
    shared_peak: Arc<AtomicUsize>,
    /// What the run has taken from the host's memory budget, if there is one.
    charge: Option<Charge>,
    /// The budget refused a growth.
    budget_denied: bool,
}

/// The host's memory budget for guests: bytes of linear memory that all live runs together have
/// grown beyond their guest's initial image. The initial image is copy-on-write and mostly
/// shared (an idle instance costs under a megabyte of it), so it is not counted; what a run
/// grows is memory of its own. Each run's [`MemoryLimiter`] takes from it as the guest grows and
/// gives everything back when the store goes.
#[derive(Debug)]
pub struct MemoryBudget {
    limit: u64,
    taken: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        MemoryBudget {
            limit,
            taken: AtomicU64::new(0),
        }
    }

    /// Three quarters of the host's memory (`MemTotal` in `/proc/meminfo`), if it can be read.
    pub fn default_bytes() -> Option<u64> {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024 / 4 * 3)
    }

    /// Bytes not taken.
    pub fn left(&self) -> u64 {
        self.limit
            .saturating_sub(self.taken.load(Ordering::Acquire))
    }

    /// Takes `n` bytes, if that many are left.
    fn take(&self, n: u64) -> bool {
        self.taken
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                t.checked_add(n).filter(|&sum| sum <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.taken.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one store has taken from the [`MemoryBudget`]: its memory's growth past its first size.
#[derive(Debug)]
struct Charge {
    budget: Arc<MemoryBudget>,
    /// The memory's first size (the guest's initial image), bytes.
    base: Option<usize>,
    taken: u64,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(self.taken);
    }
}

impl MemoryLimiter {
    /// A limiter that grants up to `limit` bytes of linear memory.
    pub fn new(limit: u64) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            denied: false,
            peak: 0,
            shared_peak: Arc::new(AtomicUsize::new(0)),
            charge: None,
            budget_denied: false,
        }
    }

    /// Also takes what the memory grows past its first size from `budget`; a growth the budget
    /// cannot cover is refused as one past the limit.
    pub fn with_budget(mut self, budget: Option<Arc<MemoryBudget>>) -> Self {
        self.charge = budget.map(|budget| Charge {
            budget,
            base: None,
            taken: 0,
        });
        self
    }

    /// The most the guest's memory may grow to, bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the host's memory budget (not the run's own limit) refused a growth.
    pub fn budget_hit(&self) -> bool {
        self.budget_denied
    }

    /// The peak, as a handle that outlives the store.
    pub fn peak_handle(&self) -> Arc<AtomicUsize> {
        self.shared_peak.clone()
    }

    /// Whether the guest ever asked for more memory than it may have.
    pub fn hit(&self) -> bool {
        self.denied
    }

    /// Largest linear-memory size the guest reached, bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Records memory the guest already has (a warm instance's initial memory, granted before
    /// this limiter was installed).
    pub fn starts_at(&mut self, bytes: usize) {
        self.record(bytes);
        if let Some(charge) = &mut self.charge {
            charge.base.get_or_insert(bytes);
        }
    }

    /// Takes the growth to `desired` bytes from the budget, if there is one; false when it
    /// cannot cover it.
    fn charge(&mut self, desired: usize) -> bool {
        let Some(charge) = &mut self.charge else {
            return true;
        };
        let base = *charge.base.get_or_insert(desired);
        let grown = desired.saturating_sub(base) as u64;
        let more = grown.saturating_sub(charge.taken);
        if more == 0 {
            return true;
        }
        if !charge.budget.take(more) {
            return false;
        }
        charge.taken += more;
        true
    }

    fn record(&mut self, bytes: usize) {
        self.peak = self.peak.max(bytes);
        self.shared_peak.store(self.peak, Ordering::Relaxed);
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.denied = true;
            return Ok(false);
        }
        if !self.charge(desired) {
            self.denied = true;
            self.budget_denied = true;
            return Ok(false);
        }
        self.record(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_human_units() {
        assert_eq!(parse_bytes("64MiB").ok(), Some(64 << 20));
        assert_eq!(parse_bytes("4096").ok(), Some(4096));
        assert_eq!(parse_duration("2s").ok(), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            parse_duration("1.5").ok(),
            Some(Duration::from_millis(1500))
        );
        assert!(parse_bytes("lots").is_err());
        assert!(parse_duration("soon").is_err());
        // Values past any clock's range are refused, not a panic.
        for huge in ["1e20", "1e300", "100000000000000000000s", "11y"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        assert_eq!(parse_duration("3650d").ok(), Some(MAX_DURATION));
        let too_long = parse_duration("11y").map(|_| ()).unwrap_err();
        assert_eq!(
            too_long.to_string(),
            "invalid duration \"11y\": longer than the maximum of 10 years"
        );
    }

    #[test]
    fn formats_human_units() {
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_ms(3000), "3 s");
        assert_eq!(human_ms(250), "250 ms");
    }

    #[test]
    fn rejects_unusable_limits() {
        let zero = Limits {
            wall_ms: 0,
            ..Limits::default()
        };
        assert!(matches!(
            zero.validate(),
            Err(Error::ZeroLimit { name: "wall_ms" })
        ));
        let huge = Limits {
            memory_bytes: MAX_MEMORY_BYTES + 1,
            ..Limits::default()
        };
        assert!(huge.validate().is_err());
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn the_budget_counts_growth_past_the_first_size_and_is_given_back() {
        use wasmtime::ResourceLimiter;
        let budget = Arc::new(MemoryBudget::new(3 << 20));
        let mut a = MemoryLimiter::new(1 << 30).with_budget(Some(budget.clone()));
        assert!(
            a.memory_growing(0, 10 << 20, None).unwrap(),
            "the image is free"
        );
        assert!(a.memory_growing(10 << 20, 12 << 20, None).unwrap());
        assert_eq!(budget.left(), 1 << 20);
        let mut b = MemoryLimiter::new(1 << 30).with_budget(Some(budget.clone()));
        assert!(b.memory_growing(0, 10 << 20, None).unwrap());
        assert!(!b.memory_growing(10 << 20, 12 << 20, None).unwrap());
        assert!(b.hit() && b.budget_hit());
        drop(a);
        assert_eq!(budget.left(), 3 << 20, "a store's share comes back with it");
        assert!(b.memory_growing(10 << 20, 12 << 20, None).unwrap());
    }

    #[test]
    fn limiter_refuses_and_remembers() {
        use wasmtime::ResourceLimiter;
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        assert!(!l.hit());
        assert!(!l.memory_growing(0, 2 << 20, None).unwrap());
        assert!(l.hit());
        assert_eq!(l.peak(), 1 << 19);
    }
}
