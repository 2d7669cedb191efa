//! Instances made ready ahead of demand, so starting a run waits neither for instantiation
//! (table initialisation and memory-slot setup, about a millisecond) nor for entering the
//! guest (the call into the component up to the runner's first question, ~50 µs).
//!
//! Filler threads (two per engine variant by default) instantiate stores with a placeholder
//! [`GuestState`], call the guest's `run` export and poll that call until the guest asks
//! `launch-config`, which waits for an [`Assignment`]. The call, which owns the store, is
//! parked in a bounded queue; [`WarmPool::take`] hands one out without waiting, the run sends
//! its own state (WASI context, limiter, stdio, scratch dir), and `launch-config` installs it
//! before it returns: the guest runs none of its own code before that. Isolation is unchanged:
//! a warm store serves exactly one run. When the queue is empty the run instantiates as before.

use crate::engine::Instantiator;
use crate::runtime::GuestCall;
use crate::store::{Assignment, GuestState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// A guest entered ahead of demand, waiting in `launch-config` for its run.
pub(crate) struct Entered {
    call: GuestCall,
    assign: oneshot::Sender<Box<GuestState>>,
    /// The guest's linear memory when it asked for its launch, bytes.
    pub memory: usize,
}

impl Entered {
    /// Hands the guest its run's state; the call then continues as that run's guest. Gives the
    /// state back if the guest has gone (it cannot have: its call is held here).
    pub fn assign(self, state: Box<GuestState>) -> Result<GuestCall, Box<GuestState>> {
        self.assign.send(state)?;
        Ok(self.call)
    }
}

/// The bounded queue of ready guests and the threads that fill it.
pub(crate) struct WarmPool {
    ready: Option<Mutex<Receiver<Entered>>>,
    closed: Arc<AtomicBool>,
    fillers: Vec<JoinHandle<()>>,
}

/// Longest a filler waits before trying again after it could not make a guest ready.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

impl WarmPool {
    /// Starts `fillers` threads filling a queue of `size` guests (none, and no thread, when
    /// either is 0). The fillers keep the process's priority: with a lower one (tried at nice
    /// 10) one filler fell behind under load, runs instantiated on the request path instead,
    /// and the server's memory grew 6-13 % over the soak test instead of 2 %. Several fillers
    /// claim a larger share of a saturated machine than one: at 100 WebSocket clients on two
    /// cores, one filler left 9 % of runs to instantiate on the request path (the bench's
    /// "runs instantiated on the request path" row).
    ///
    /// Each filler holds one guest beyond the queue while it waits for room, so the pool has
    /// at most `size + fillers` guests ([`slots`]).
    pub fn start(core: Instantiator, size: usize, fillers: usize) -> std::io::Result<Self> {
        let closed = Arc::new(AtomicBool::new(false));
        if slots(size, fillers) == 0 {
            return Ok(WarmPool {
                ready: None,
                closed,
                fillers: Vec::new(),
            });
        }
        let (tx, rx) = mpsc::sync_channel(size);
        let mut pool = WarmPool {
            ready: Some(Mutex::new(rx)),
            closed: closed.clone(),
            fillers: Vec::with_capacity(fillers),
        };
        for i in 0..fillers {
            let (core, tx, closed) = (core.clone(), tx.clone(), closed.clone());
            let filler = std::thread::Builder::new()
                .name(format!("weir-warm-{i}"))
                .spawn(move || fill(&core, &tx, &closed))?;
            pool.fillers.push(filler);
        }
        Ok(pool)
    }

    /// A ready guest, if one is waiting. Never blocks on instantiation.
    pub fn take(&self) -> Option<Entered> {
        let ready = self.ready.as_ref()?.lock().ok()?;
        ready.try_recv().ok()
    }
}

/// Pool slots a warm pool of `size` guests and `fillers` threads can occupy at once.
pub(crate) fn slots(size: usize, fillers: usize) -> usize {
    if size == 0 || fillers == 0 {
        0
    } else {
        size + fillers
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // Closing the queue makes a filler's next send fail, which ends it; one waiting to
        // retry is woken to see the flag.
        self.closed.store(true, Ordering::Release);
        drop(self.ready.take());
        for filler in &self.fillers {
            filler.thread().unpark();
        }
        for filler in self.fillers.drain(..) {
            let _ = filler.join();
        }
    }
}

/// Makes ready guests until the queue is closed; blocks while it is full. A guest that
/// cannot be made ready (every pool slot taken by runs, say) is retried after a delay that
/// doubles up to [`MAX_RETRY_DELAY`]: the pool is never given up for good.
fn fill(core: &Instantiator, tx: &SyncSender<Entered>, closed: &AtomicBool) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("warm pool filler disabled: cannot start its runtime: {e}");
            return;
        }
    };
    let mut delay = Duration::from_millis(10);
    while !closed.load(Ordering::Acquire) {
        let entered = match runtime.block_on(enter(core)) {
            Ok(entered) => entered,
            Err(e) => {
                tracing::warn!(retry_in = ?delay, "warm pool cannot make a guest ready: {e:#}");
                std::thread::park_timeout(delay);
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        };
        delay = Duration::from_millis(10);
        // Waits while the queue is full; fails once the pool has been dropped.
        if tx.send(entered).is_err() {
            return;
        }
    }
}

/// Instantiates a guest with a placeholder state and runs it until it waits for its run.
async fn enter(core: &Instantiator) -> wasmtime::Result<Entered> {
    let mut store = core.store(GuestState::placeholder(), None);
    let (assign, run) = oneshot::channel();
    let waiting = Arc::new(AtomicBool::new(false));
    store.data_mut().assignment = Some(Assignment::new(run, waiting.clone()));
    let peak = store.data().limiter.peak_handle();
    let guest = core.guest.clone();
    let mut call: GuestCall = Box::pin(async move {
        let result = guest.call(&mut store).await;
        (result, store)
    });
    // Poll until the guest waits in `launch-config` (a pending call that is not yet waiting
    // there has yielded on an epoch tick and has woken itself).
    let ended = std::future::poll_fn(|cx| match call.as_mut().poll(cx) {
        Poll::Ready((result, _)) => Poll::Ready(Some(result)),
        Poll::Pending if waiting.load(Ordering::Acquire) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    })
    .await;
    match ended {
        None => Ok(Entered {
            call,
            assign,
            memory: peak.load(Ordering::Relaxed),
        }),
        Some(Err(e)) => Err(wasmtime::format_err!(
            "the guest ended before asking for its run: {e:#}"
        )),
        Some(Ok(_)) => Err(wasmtime::format_err!(
            "the guest ended before asking for its run"
        )),
    }
}
