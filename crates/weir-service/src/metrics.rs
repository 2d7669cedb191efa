//! Server metrics, rendered in the Prometheus text format at `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;
use weir_sandbox::CacheStats;
use weir_sandbox::InstanceStarts;

/// Upper bounds (seconds) of the run-duration histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Outcomes counted separately (the protocol's outcome names).
pub const OUTCOMES: [&str; 12] = [
    "exited",
    "error",
    "timeout",
    "cpu_limit",
    "memory_limit",
    "output_limit",
    "disk_limit",
    "stack_overflow",
    "stopped",
    "idle",
    "shutdown",
    "crashed",
];

/// Reasons a connection can be refused.
pub const REJECTIONS: [&str; 6] = [
    "capacity",
    "user_capacity",
    "unauthorized",
    "host",
    "origin",
    "shutting_down",
];

#[derive(Default)]
pub struct Metrics {
    /// Open WebSocket connections (`/ws` and Piston's `connect`).
    pub connections_open: AtomicU64,
    /// Cells run in stateful sessions (`/v1/sessions`, MCP).
    pub cells_run: AtomicU64,
    /// Durable sessions' saves written, and those that could not be.
    pub durable_saves: AtomicU64,
    pub durable_save_failures: AtomicU64,
    /// Durable sessions taken over from another node.
    pub durable_takeovers: AtomicU64,
    pub runs_started: AtomicU64,
    finished: [AtomicU64; OUTCOMES.len()],
    rejected: [AtomicU64; REJECTIONS.len()],
    pub output_bytes: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    duration_count: AtomicU64,
    duration_micros: AtomicU64,
}

fn slot(names: &[&str], name: &str) -> usize {
    names
        .iter()
        .position(|n| *n == name)
        .unwrap_or(names.len() - 1)
}

impl Metrics {
    pub fn run_finished(&self, outcome: &str, duration: Duration, output_bytes: u64) {
        self.finished[slot(&OUTCOMES, outcome)].fetch_add(1, Relaxed);
        self.output_bytes.fetch_add(output_bytes, Relaxed);
        let secs = duration.as_secs_f64();
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            if secs <= *bound {
                count.fetch_add(1, Relaxed);
            }
        }
        self.duration_count.fetch_add(1, Relaxed);
        self.duration_micros
            .fetch_add(duration.as_micros() as u64, Relaxed);
    }

    pub fn rejected(&self, reason: &str) {
        self.rejected[slot(&REJECTIONS, reason)].fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition; `now` holds what the sandbox and the session registry
    /// report at this moment.
    pub fn render(&self, now: &Gauges) -> String {
        let mut s = String::new();
        for (name, help, kind, value) in self.scalars(now) {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let starts = [("warm", now.starts.warm), ("fresh", now.starts.fresh)];
        family(
            &mut s,
            ("weir_instance_starts_total", "from"),
            "Runs started, by where their guest instance came from: the warm pool, or \
             instantiated on the request path.",
            starts.into_iter(),
        );
        family(
            &mut s,
            ("weir_runs_finished_total", "outcome"),
            "Runs finished, by outcome.",
            loaded(&OUTCOMES, &self.finished),
        );
        family(
            &mut s,
            ("weir_connections_rejected_total", "reason"),
            "Connections refused, by reason.",
            loaded(&REJECTIONS, &self.rejected),
        );
        self.histogram(&mut s);
        s
    }

    /// The unlabelled metrics: name, help, type and value.
    fn scalars(&self, now: &Gauges) -> [(&'static str, &'static str, &'static str, u64); 14] {
        let connections = self.connections_open.load(Relaxed);
        [
            (
                "weir_connections_open",
                "Open WebSocket connections (/ws and Piston's connect).",
                "gauge",
                connections,
            ),
            (
                "weir_sessions_open",
                "Deprecated name of weir_connections_open.",
                "gauge",
                connections,
            ),
            (
                "weir_http_sessions_open",
                "Open stateful sessions (/v1/sessions and MCP).",
                "gauge",
                now.sessions as u64,
            ),
            (
                "weir_sessions_hibernated",
                "Stateful sessions hibernating: saved to disk, with no instance.",
                "gauge",
                now.hibernated as u64,
            ),
            (
                "weir_cells_total",
                "Cells run in stateful sessions.",
                "counter",
                self.cells_run.load(Relaxed),
            ),
            (
                "weir_durable_saves_total",
                "Durable sessions' saves written to their store.",
                "counter",
                self.durable_saves.load(Relaxed),
            ),
            (
                "weir_durable_save_failures_total",
                "Durable sessions' saves not written (the cell says why).",
                "counter",
                self.durable_save_failures.load(Relaxed),
            ),
            (
                "weir_durable_takeovers_total",
                "Durable sessions taken over from another node (it died, or handed them over).",
                "counter",
                self.durable_takeovers.load(Relaxed),
            ),
            (
                "weir_instances_live",
                "Guest instances alive.",
                "gauge",
                now.live_instances as u64,
            ),
            (
                "weir_runs_started_total",
                "Runs started.",
                "counter",
                self.runs_started.load(Relaxed),
            ),
            (
                "weir_compile_cache_hits_total",
                "Runs that loaded their program compiled by an earlier run.",
                "counter",
                now.cache.hits,
            ),
            (
                "weir_compile_cache_misses_total",
                "Runs that compiled their program, with the cache on.",
                "counter",
                now.cache.misses,
            ),
            (
                "weir_compile_cache_bytes",
                "Bytes of compiled programs the cache holds.",
                "gauge",
                now.cache.bytes as u64,
            ),
            (
                "weir_output_bytes_total",
                "Bytes scripts wrote to stdout and stderr.",
                "counter",
                self.output_bytes.load(Relaxed),
            ),
        ]
    }

    /// The run-duration histogram.
    fn histogram(&self, s: &mut String) {
        let _ = writeln!(s, "# HELP weir_run_duration_seconds Run wall time.\n# TYPE weir_run_duration_seconds histogram");
        for (bound, count) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                s,
                "weir_run_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                count.load(Relaxed)
            );
        }
        let count = self.duration_count.load(Relaxed);
        let _ = writeln!(s, "weir_run_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.duration_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            s,
            "weir_run_duration_seconds_sum {sum}\nweir_run_duration_seconds_count {count}"
        );
    }
}

/// What the sandbox and the session registry report when the metrics are rendered.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Stateful sessions open.
    pub sessions: usize,
    /// Of them, hibernating.
    pub hibernated: usize,
    pub live_instances: usize,
    pub starts: InstanceStarts,
    pub cache: CacheStats,
}

/// One counter family: `(name, label)`, its help, and each label value's count.
fn family<'a>(
    s: &mut String,
    (name, label): (&str, &str),
    help: &str,
    values: impl Iterator<Item = (&'a str, u64)>,
) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value, count) in values {
        let _ = writeln!(s, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

/// Each name beside its counter's value.
fn loaded<'a>(
    names: &'a [&'a str],
    counts: &'a [AtomicU64],
) -> impl Iterator<Item = (&'a str, u64)> + 'a {
    names
        .iter()
        .zip(counts)
        .map(|(name, count)| (*name, count.load(Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_histogram() {
        let m = Metrics::default();
        m.run_finished("timeout", Duration::from_millis(3), 10);
        m.rejected("capacity");
        let starts = InstanceStarts { warm: 5, fresh: 3 };
        let text = m.render(&Gauges {
            sessions: 1,
            hibernated: 0,
            live_instances: 2,
            starts,
            cache: CacheStats::default(),
        });
        assert!(text.contains("weir_instances_live 2\n"));
        assert!(text.contains("weir_runs_finished_total{outcome=\"timeout\"} 1\n"));
        assert!(text.contains("weir_connections_rejected_total{reason=\"capacity\"} 1\n"));
        assert!(text.contains("weir_run_duration_seconds_bucket{le=\"0.0025\"} 0\n"));
        assert!(text.contains("weir_run_duration_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("weir_run_duration_seconds_count 1\n"));
        assert!(text.contains("weir_output_bytes_total 10\n"));
        assert!(text.contains("weir_instance_starts_total{from=\"warm\"} 5\n"));
        assert!(text.contains("weir_instance_starts_total{from=\"fresh\"} 3\n"));
        m.connections_open.store(3, Relaxed);
        let text = m.render(&Gauges::default());
        assert!(text.contains("weir_connections_open 3\n"));
        assert!(
            text.contains("weir_sessions_open 3\n"),
            "the old name still reads"
        );
    }
}
