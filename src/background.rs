//! The background lane: a tokio runtime whose threads run at a lower OS priority, where a run
//! continues once it is background (`crate::priority`) — after its first output, after its
//! foreground time, while it waits for input. The kernel, not a cooperative check, then makes
//! every new run's way to its first output preempt the rest of older runs: their guests, their
//! exits and the resetting of their memory slots.
//!
//! A run's driver future moves between the caller's runtime and this lane whenever its class
//! changes ([`drive`]); a future may be polled from any thread, and wasmtime's async calls are
//! `Send`, so the move is just handing the boxed future to the other runtime.

use crate::priority::Priority;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::runtime::{Builder, Handle, Runtime};

/// The background runtime. Dropping it stops its threads without waiting for them.
pub struct BackgroundLane {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl BackgroundLane {
    /// A lane of `threads` worker threads at nice value `nice` (0–19; Linux only, elsewhere the
    /// threads keep their priority).
    pub fn start(threads: usize, nice: i32) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("weir-bg")
            .on_thread_start(move || lower_this_thread(nice))
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

/// Sets the calling thread's nice value (Linux: per thread). Best effort: raising one's own
/// nice value needs no privilege, and a failure only leaves the thread at its priority.
pub fn lower_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    if nice > 0 {
        // SAFETY: plain system calls on the calling thread, no pointers involved.
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
        };
        if result != 0 {
            tracing::debug!(
                nice,
                error = %std::io::Error::last_os_error(),
                "cannot lower a background thread's priority"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// Polls `fut` until it completes (`true`) or, when it is pending, `stay()` says it should move
/// to the other lane (`false`).
async fn poll_while<F: Future<Output = ()> + ?Sized>(
    fut: &mut Pin<Box<F>>,
    stay: impl Fn() -> bool,
) -> bool {
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(()) => Poll::Ready(true),
        Poll::Pending if stay() => Poll::Pending,
        Poll::Pending => Poll::Ready(false),
    })
    .await
}

/// Aborts the lane task when dropped: the run's owner going away takes its driver with it.
struct AbortLaneTask<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortLaneTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Driver = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Drives a run's `driver` future to completion: polled in the calling task while the run is
/// foreground, on `lane` while it is background. The future moves only while it is pending;
/// the task that takes it over polls it at once, so its wakers follow it.
pub(crate) async fn drive(driver: Driver, priority: Priority, lane: Arc<BackgroundLane>) {
    let mut driver = driver;
    loop {
        if poll_while(&mut driver, || !priority.is_background()).await {
            return;
        }
        let class = priority.clone();
        let mut task = AbortLaneTask(lane.handle().spawn(async move {
            let done = poll_while(&mut driver, || class.is_background()).await;
            (done, driver)
        }));
        match (&mut task.0).await {
            Ok((true, _)) => return,
            Ok((false, back)) => driver = back,
            // The driver panicked (a bug): the run's event channel closes and its caller sees
            // the run end without an exit.
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::priority::CpuGate;
    use std::sync::Mutex;
    use std::task::Context;

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
        let lane = Arc::new(BackgroundLane::start(1, 0).expect("lane starts"));
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
    async fn dropping_the_caller_drops_a_driver_on_the_lane() {
        let lane = Arc::new(BackgroundLane::start(1, 0).expect("lane starts"));
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
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), rx).await;
        assert!(
            matches!(closed, Ok(Err(_))),
            "the driver outlived its caller"
        );
    }
}
