//! CPU priority between runs, so a new short run never queues behind long-running or flooding
//! ones.
//!
//! A run is *foreground* from its start until its first output, for at most [`FOREGROUND_FOR`]
//! by default, and again for each REPL statement. After that, and while it waits for input or
//! is paused, it is *background*. Two mechanisms act on the class:
//! - a background run's driver is polled on the background lane (`crate::background`), threads
//!   of its own, so older runs never hold the workers new runs start on;
//! - a background run gives way to foreground ones after every epoch tick, whenever its
//!   output stream has room again, and before its instance is freed: it waits while any
//!   foreground run exists, for [`MAX_GIVE_WAY`] (by default) at least, and then for its turn:
//!   background runs that waited their longest resume [`BACKGROUND_TURN`] apart, so together
//!   they keep about one thread busy while new runs keep coming, and each still progresses.
//!
//! All of this is weir's own doing, at the process's CPU priority: no run ever yields to the
//! rest of the host (`crate::background`).
//!
//! Without this, 100 flooding guests and one `print("hello")` share both cores equally and the
//! hello run waits for hundreds of milliseconds; and 100 clients running scripts in a loop get
//! their first output only after a full share of every other run's work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long a run (or a REPL statement) stays foreground at most, by default.
pub const FOREGROUND_FOR: Duration = Duration::from_millis(20);

/// Longest a background run waits for foreground runs in one go, by default.
pub const MAX_GIVE_WAY: Duration = Duration::from_millis(5);

/// While foreground runs exist, background runs that have waited their longest resume one at a
/// time, this far apart: together they then keep about one thread busy, whatever their number.
pub const BACKGROUND_TURN: Duration = Duration::from_millis(2);

/// The foreground runs of one sandbox, and its policy.
pub struct CpuGate {
    foreground: AtomicUsize,
    quiet: Notify,
    foreground_for: Duration,
    max_give_way: Duration,
    /// The latest resumption reserved by a background run that waited its longest.
    last_turn: std::sync::Mutex<tokio::time::Instant>,
}

impl Default for CpuGate {
    fn default() -> Self {
        CpuGate::new(FOREGROUND_FOR, MAX_GIVE_WAY)
    }
}

impl CpuGate {
    /// A gate whose runs are foreground for `foreground_for` at most and give way for `max_give_way` at most in one go.
    pub fn new(foreground_for: Duration, max_give_way: Duration) -> Self {
        CpuGate {
            foreground: AtomicUsize::new(0),
            quiet: Notify::new(),
            foreground_for,
            max_give_way,
            last_turn: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// When a background run starting to wait now may resume if foreground runs remain: after
    /// the longest give-way, and [`BACKGROUND_TURN`] after the previous such resumption.
    fn reserve_turn(&self) -> tokio::time::Instant {
        let mut last = self.last_turn.lock().unwrap_or_else(|p| p.into_inner());
        let turn = (tokio::time::Instant::now() + self.max_give_way).max(*last + BACKGROUND_TURN);
        *last = turn;
        turn
    }

    /// Runs that are foreground right now.
    pub fn foreground_runs(&self) -> usize {
        self.foreground.load(Ordering::Acquire)
    }

    /// Waits until no run is foreground, or until this run's turn (see [`BACKGROUND_TURN`]):
    /// the longest give-way at the soonest.
    async fn give_way(&self) {
        if self.foreground_runs() == 0 {
            return;
        }
        let quiet = self.quiet.notified();
        tokio::pin!(quiet);
        // Registered before the second look, so a run ending in between still wakes us.
        quiet.as_mut().enable();
        if self.foreground_runs() == 0 {
            return;
        }
        let _ = tokio::time::timeout_at(self.reserve_turn(), quiet).await;
    }
}

/// One run's class: set by its driver (through [`Grant`]s) and by its first output, acted on by
/// its store's epoch callback, its output streams and the lane that polls it
/// (`crate::background`).
#[derive(Clone)]
pub struct Priority {
    gate: Arc<CpuGate>,
    class: Arc<Class>,
}

#[derive(Default)]
struct Class {
    /// Foreground by a grant (counted in the gate).
    granted: AtomicBool,
    /// The run is being stopped: it finishes in the foreground, so whatever waits for its end
    /// (a new run of the same session) does not wait behind background work.
    urgent: AtomicBool,
    /// Signalled when the run becomes urgent.
    urgent_now: Notify,
}

impl Priority {
    /// A background run of `gate` (until granted foreground).
    pub fn new(gate: Arc<CpuGate>) -> Self {
        Priority {
            gate,
            class: Arc::default(),
        }
    }

    /// The priority of a store waiting in the warm pool, which runs no guest code.
    pub fn placeholder() -> Self {
        Priority::new(Arc::new(CpuGate::default()))
    }

    /// Whether the run is in its background phase.
    pub fn is_background(&self) -> bool {
        !self.class.granted.load(Ordering::Acquire) && !self.class.urgent.load(Ordering::Acquire)
    }

    /// Waits while foreground runs exist (for a bounded time), if this run is background.
    pub async fn give_way(&self) {
        if self.is_background() {
            self.gate.give_way().await;
        }
    }

    /// What a background run does at an epoch tick: let other tasks run, then give way.
    pub async fn yield_then_give_way(self) {
        tokio::task::yield_now().await;
        self.give_way().await;
    }

    /// How long a grant should last.
    pub fn foreground_for(&self) -> Duration {
        self.gate.foreground_for
    }

    /// Makes the run foreground until the grant is dropped or [`Priority::demote`] is called.
    pub fn grant(&self) -> Grant {
        if !self.class.granted.swap(true, Ordering::AcqRel) {
            self.gate.foreground.fetch_add(1, Ordering::AcqRel);
        }
        Grant {
            priority: self.clone(),
        }
    }

    /// Ends the run's foreground grant, if it has one (its first output does this): returns
    /// whether it had one.
    pub fn demote(&self) -> bool {
        // A plain load first: every output write calls this, and almost all find no grant.
        if !self.class.granted.load(Ordering::Acquire)
            || !self.class.granted.swap(false, Ordering::AcqRel)
        {
            return false;
        }
        if self.gate.foreground.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.gate.quiet.notify_waiters();
        }
        true
    }

    /// Keeps the run foreground from now on, whatever its grants (it is being stopped).
    pub fn make_urgent(&self) {
        self.class.urgent.store(true, Ordering::Release);
        self.class.urgent_now.notify_waiters();
    }

    /// Completes once the run is urgent (at once if it already is).
    pub async fn urgent(&self) {
        let now = self.class.urgent_now.notified();
        tokio::pin!(now);
        // Registered before the look, so a `make_urgent` in between still wakes us.
        now.as_mut().enable();
        if self.class.urgent.load(Ordering::Acquire) {
            return;
        }
        now.await
    }
}

/// A run's foreground status; dropping it makes the run background (if it still is foreground).
pub struct Grant {
    priority: Priority,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.priority.demote();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_count_foreground_runs_and_set_the_class() {
        let gate = Arc::new(CpuGate::default());
        let a = Priority::new(gate.clone());
        let b = Priority::new(gate.clone());
        assert!(a.is_background());
        let ga = a.grant();
        let gb = b.grant();
        assert_eq!(gate.foreground_runs(), 2);
        assert!(!a.is_background());
        drop(ga);
        assert!(a.is_background());
        assert!(!b.is_background());
        drop(gb);
        assert_eq!(gate.foreground_runs(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_run_waits_until_the_last_grant_ends() {
        let gate = Arc::new(CpuGate::default());
        let background = Priority::new(gate.clone());
        let grant = Priority::new(gate.clone()).grant();
        let start = tokio::time::Instant::now();
        let waiting = tokio::spawn(async move { background.give_way().await });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "gave way while a run is foreground");
        drop(grant);
        waiting.await.expect("give_way returns");
        // The clock is paused: it had not moved, so the wait ended with the grant, not the cap.
        assert!(start.elapsed() < MAX_GIVE_WAY);
    }

    #[tokio::test(start_paused = true)]
    async fn background_runs_that_waited_their_longest_resume_one_turn_apart() {
        let gate = Arc::new(CpuGate::default());
        let _grant = Priority::new(gate.clone()).grant();
        let start = tokio::time::Instant::now();
        let waits: Vec<_> = (0..3)
            .map(|_| {
                let run = Priority::new(gate.clone());
                tokio::spawn(async move {
                    run.give_way().await;
                    start.elapsed()
                })
            })
            .collect();
        let mut resumed = Vec::new();
        for wait in waits {
            resumed.push(wait.await.expect("give_way returns"));
        }
        resumed.sort();
        assert_eq!(
            resumed,
            [
                MAX_GIVE_WAY,
                MAX_GIVE_WAY + BACKGROUND_TURN,
                MAX_GIVE_WAY + BACKGROUND_TURN * 2
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_are_capped_and_foreground_runs_never_wait() {
        let gate = Arc::new(CpuGate::default());
        let foreground = Priority::new(gate.clone());
        let _grant = foreground.grant();
        let start = tokio::time::Instant::now();
        foreground.give_way().await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        Priority::new(gate.clone()).give_way().await;
        assert_eq!(start.elapsed(), MAX_GIVE_WAY);
    }
}
