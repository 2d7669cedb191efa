//! The background lane: a tokio runtime of its own where a run continues once it is background
//! (`crate::priority`) — after its first output, after its foreground time, while it waits for
//! input. Its threads keep the process's own CPU priority by default: weir's priorities are
//! relative to weir's runs only. A background guest gives way to foreground runs at every epoch
//! tick (`crate::priority`), and being polled on threads of their own, older runs never hold
//! the caller's runtime workers that new runs start on.
//!
//! A lower OS priority for the lane ([`LanePriority::Idle`], or a nice value) is an opt-in for
//! machines that run nothing but weir. It lets the kernel preempt older runs for new ones at
//! once, but it ranks them below *every other process on the host* too: under `SCHED_IDLE`, two
//! ordinary busy processes on a 2-core host starved a 0.05 s script until its 10 s time limit
//! killed it, and at nice 15 a lane thread weighs 36 against 1024 for each normal thread.
//!
//! A run's driver future moves between the caller's runtime and this lane whenever its class
//! changes ([`drive`]); a future may be polled from any thread, and wasmtime's async calls are
//! `Send`, so the move is just handing the boxed future to the other runtime.

use crate::priority::Priority;
use crate::task::AbortOnDrop;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::Poll;
use tokio::runtime::{Builder, Handle, Runtime};

/// The background runtime. Dropping it stops its threads without waiting for them.
pub struct BackgroundLane {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl BackgroundLane {
    /// A lane of `threads` worker threads at `priority` (lowered on Linux only; elsewhere the
    /// threads keep the process's priority).
    pub fn start(threads: usize, priority: LanePriority) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("weir-bg")
            .on_thread_start(move || lower_this_thread(priority))
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(BackgroundLane {
            runtime: Some(runtime),
            handle,
        })
    }

    fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for BackgroundLane {
    fn drop(&mut self) {
        // The last owner may be a task of another runtime, where blocking is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The CPU priority of the lane's threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LanePriority {
    /// The process's own priority: background runs compete with the rest of the host exactly
    /// as foreground ones do. The default, and what `weir run` always uses.
    #[default]
    Process,
    /// Linux's `SCHED_IDLE` policy, for dedicated machines only: the threads run when no other
    /// thread *of the machine* wants the CPU, so any busy process on the host starves every
    /// background run (until its wall-time limit ends it).
    Idle,
    /// A nice value, 1–19, for dedicated machines only: the threads lose to every normal thread
    /// of the host by the same weight (nice 15: 36 against 1024), and the kernel still gives such
    /// a thread its full time slice once it runs, so a new run can wait behind it.
    Nice(i32),
}

impl LanePriority {
    /// `process` (or `0`), `idle`, or a nice value 1–19 (higher values are clamped); anything
    /// else is `None`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "process" | "0" => Some(LanePriority::Process),
            "idle" => Some(LanePriority::Idle),
            n => n
                .parse::<u32>()
                .ok()
                .map(|n| LanePriority::Nice(n.min(19) as i32)),
        }
    }
}

/// Lowers the calling thread's priority (Linux: per thread). Best effort: lowering one's own
/// priority needs no privilege, and a failure only leaves the thread where it was.
#[allow(unsafe_code)]
fn lower_this_thread(priority: LanePriority) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system calls on the calling thread, no pointers kept.
        let result = unsafe {
            match priority {
                LanePriority::Idle => {
                    let param = libc::sched_param { sched_priority: 0 };
                    libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
                }
                LanePriority::Process | LanePriority::Nice(..=0) => 0,
                LanePriority::Nice(nice) => {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
                }
            }
        };
        if result != 0 {
            tracing::debug!(
                ?priority,
                error = %std::io::Error::last_os_error(),
                "cannot lower a background thread's priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = priority;
}

/// A run's driver, shared by the task that owns the run and the lane task polling it. Whoever
/// polls it holds the lock for that one poll.
type Slot = Arc<Mutex<Option<Driver>>>;

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

fn lock(slot: &Slot) -> MutexGuard<'_, Option<Driver>> {
    // A panic inside a poll leaves nothing half-done that a later look could trip on.
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

/// Polls the driver in `slot` until it completes or is gone (`true`) or, when it is pending,
/// `stay()` says it should move to the other lane (`false`).
async fn poll_while(slot: &Slot, stay: impl Fn() -> bool) -> bool {
    std::future::poll_fn(|cx| {
        let mut driver = lock(slot);
        let Some(fut) = driver.as_mut() else {
            return Poll::Ready(true);
        };
        match fut.as_mut().poll(cx) {
            Poll::Ready(()) => {
                *driver = None;
                Poll::Ready(true)
            }
            Poll::Pending if stay() => Poll::Pending,
            Poll::Pending => Poll::Ready(false),
        }
    })
    .await
}

/// Drops the driver when the run's owner goes away: here and now, unless the lane is polling it
/// at this very moment (then the aborted lane task drops it when that poll returns). Aborting
/// alone would leave an abandoned run's store to a background thread, behind other runs.
struct DropDriver(Slot);

impl Drop for DropDriver {
    fn drop(&mut self) {
        let driver = match self.0.try_lock() {
            Ok(mut d) => d.take(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().take(),
            Err(TryLockError::WouldBlock) => None,
        };
        drop(driver); // outside the lock
    }
}

/// Drives a run's `driver` future to completion: polled in the calling task while the run is
/// foreground, on `lane` while it is background. The future moves only while it is pending;
/// the task that takes it over polls it at once, so its wakers follow it. A run made urgent
/// (stopped) is taken back from the lane at once.
pub(crate) async fn drive(driver: Driver, priority: Priority, lane: Arc<BackgroundLane>) {
    let slot: Slot = Arc::new(Mutex::new(Some(driver)));
    let _owner = DropDriver(slot.clone());
    loop {
        if !priority.is_background() {
            if poll_while(&slot, || !priority.is_background()).await {
                return;
            }
            continue;
        }
        let (class, on_lane) = (priority.clone(), slot.clone());
        let mut task = AbortOnDrop(
            lane.handle()
                .spawn(async move { poll_while(&on_lane, || class.is_background()).await }),
        );
        tokio::select! {
            done = &mut task.0 => match done {
                Ok(false) => {}
                // Done, or the driver panicked (a bug): the run's event channel closes and
                // its caller sees the run end.
                Ok(true) | Err(_) => return,
            },
            // Aborted: the lane task polls no more (a poll under way finishes first: the next
            // poll here waits for it on the lock).
            () = priority.urgent() => drop(task),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::CpuGate;
    use std::sync::Mutex;
    use std::task::Context;

    #[test]
    fn the_lane_priority_is_idle_or_a_nice_value() {
        assert_eq!(LanePriority::parse("idle"), Some(LanePriority::Idle));
        assert_eq!(LanePriority::parse("process"), Some(LanePriority::Process));
        assert_eq!(LanePriority::parse("0"), Some(LanePriority::Process));
        assert_eq!(LanePriority::parse(" 15\n"), Some(LanePriority::Nice(15)));
        assert_eq!(LanePriority::parse("40"), Some(LanePriority::Nice(19)));
        assert_eq!(LanePriority::parse("-1"), None);
        assert_eq!(LanePriority::parse("low"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    #[allow(unsafe_code)]
    fn idle_lane_threads_run_under_sched_idle() {
        let lane = BackgroundLane::start(1, LanePriority::Idle).expect("lane starts");
        // SAFETY: a plain query of the calling thread's policy.
        let policy = lane.handle().block_on(async {
            tokio::task::spawn(async { unsafe { libc::sched_getscheduler(0) } }).await
        });
        assert_eq!(policy.expect("task ran"), libc::SCHED_IDLE);
    }

    /// Pending `polls` times (waking itself), noting the thread of every poll; `on_poll(n)` runs
    /// at the n-th poll.
    struct Recorder<F: Fn(usize)> {
        polls: usize,
        seen: Arc<Mutex<Vec<String>>>,
        on_poll: F,
    }

    impl<F: Fn(usize) + Unpin> Future for Recorder<F> {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            let n = {
                let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                seen.push(name);
                seen.len()
            };
            (self.on_poll)(n);
            if n >= self.polls {
                return Poll::Ready(());
            }
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_driver_runs_on_the_lane_exactly_while_its_run_is_background() {
        let lane = Arc::new(BackgroundLane::start(1, LanePriority::Process).expect("lane starts"));
        let priority = Priority::new(Arc::new(CpuGate::default()));
        let grant = Mutex::new(Some(priority.grant()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let class = priority.clone();
        let recorder = Recorder {
            polls: 6,
            seen: seen.clone(),
            on_poll: move |n| match n {
                // Its first output, say: background from the second poll on.
                1 => drop(grant.lock().unwrap_or_else(|p| p.into_inner()).take()),
                // A REPL statement, say: foreground again from the fifth poll on.
                4 => std::mem::forget(class.grant()),
                _ => {}
            },
        };
        drive(Box::pin(recorder), priority, lane).await;
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let on_lane: Vec<bool> = seen.iter().map(|t| t == "weir-bg").collect();
        assert_eq!(on_lane, [false, true, true, true, false, false], "{seen:?}");
    }

    #[tokio::test]
    async fn an_urgent_run_is_taken_back_from_the_lane_at_once() {
        let lane = Arc::new(BackgroundLane::start(1, LanePriority::Process).expect("lane starts"));
        let priority = Priority::new(Arc::new(CpuGate::default())); // background from the start
        let seen = Arc::new(Mutex::new(Vec::<String>::new()));
        let (polled, mut polls) = tokio::sync::mpsc::unbounded_channel::<()>();
        let record = seen.clone();
        // Pending for good (never woken) until it is polled off the lane.
        let driver = Box::pin(std::future::poll_fn(move |_| {
            let name = std::thread::current().name().unwrap_or("").to_owned();
            let off_lane = name != "weir-bg";
            record.lock().unwrap_or_else(|p| p.into_inner()).push(name);
            let _ = polled.send(());
            if off_lane {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        let task = tokio::spawn(drive(driver, priority.clone(), lane));
        polls.recv().await; // polled once, on the lane; nothing will wake it there
        priority.make_urgent();
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the urgent run was polled again")
            .expect("drive returns");
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0], "weir-bg");
        assert_ne!(seen[1], "weir-bg");
    }

    #[tokio::test]
    async fn dropping_the_caller_drops_its_driver_even_while_the_lane_is_busy() {
        let lane = Arc::new(BackgroundLane::start(1, LanePriority::Process).expect("lane starts"));
        // The lane's only thread is busy for longer than the test waits.
        lane.handle()
            .spawn(async { std::thread::sleep(std::time::Duration::from_secs(20)) });
        let priority = Priority::new(Arc::new(CpuGate::default())); // background from the start
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let driver = Box::pin(async move {
            let _tx = tx; // dropped with the driver
            std::future::pending::<()>().await
        });
        let task = tokio::spawn(drive(driver, priority, lane));
        tokio::task::yield_now().await;
        task.abort();
        // The sender is dropped (not sent): the receiver sees the channel close.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        assert!(
            matches!(closed, Ok(Err(_))),
            "the driver outlived its caller"
        );
    }
}
