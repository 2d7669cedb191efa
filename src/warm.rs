//! Instances kept instantiated ahead of demand, so starting a run does not wait for
//! instantiation (table initialisation and memory-slot setup, about a millisecond).
//!
//! One thread per engine variant instantiates stores with a placeholder [`GuestState`] and
//! parks them in a bounded queue; [`WarmPool::take`] hands one out without waiting, and the run
//! then swaps its own state (WASI context, limiter, stdio, scratch dir) into the store before the
//! guest runs a single instruction. Isolation is unchanged: a warm store has never run guest code
//! and serves exactly one run. When the queue is empty the run instantiates as before.

use crate::engine::Instantiator;
use crate::sandbox::GuestState;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;
use std::thread::JoinHandle;
use wasmtime::Store;
use wasmtime_wasi::p2::bindings::Command;

/// A store whose guest is instantiated but has not started.
pub(crate) struct Instantiated {
    pub store: Store<GuestState>,
    pub command: Command,
}

/// The bounded queue of ready instances and the thread that fills it.
pub(crate) struct WarmPool {
    ready: Option<Mutex<Receiver<Instantiated>>>,
    filler: Option<JoinHandle<()>>,
}

impl WarmPool {
    /// Starts filling a queue of `size` instances (none, and no thread, when `size` is 0). The
    /// filler keeps the process's priority: with a lower one (tried at nice 10) it fell behind
    /// under load, runs instantiated on the request path instead, and the server's memory grew
    /// 6-13 % over the soak test instead of 2 %.
    pub fn start(core: Instantiator, size: usize) -> std::io::Result<Self> {
        if size == 0 {
            return Ok(WarmPool {
                ready: None,
                filler: None,
            });
        }
        let (tx, rx) = mpsc::sync_channel(size);
        let filler = std::thread::Builder::new()
            .name("weir-warm".into())
            .spawn(move || fill(&core, &tx))?;
        Ok(WarmPool {
            ready: Some(Mutex::new(rx)),
            filler: Some(filler),
        })
    }

    /// A ready instance, if one is waiting. Never blocks on instantiation.
    pub fn take(&self) -> Option<Instantiated> {
        let ready = self.ready.as_ref()?.lock().ok()?;
        ready.try_recv().ok()
    }
}

impl Drop for WarmPool {
    fn drop(&mut self) {
        // Closing the queue makes the filler's next send fail, which ends it.
        drop(self.ready.take());
        if let Some(filler) = self.filler.take() {
            let _ = filler.join();
        }
    }
}

/// Instantiates stores until the queue is closed; blocks while it is full.
fn fill(core: &Instantiator, tx: &SyncSender<Instantiated>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!("warm pool disabled: cannot start its runtime: {e}");
            return;
        }
    };
    loop {
        let instance = match runtime.block_on(core.instantiate_placeholder()) {
            Ok(instance) => instance,
            Err(e) => {
                tracing::warn!("warm pool stopped: cannot instantiate the guest: {e:#}");
                return;
            }
        };
        // Waits while the queue is full; fails once the pool has been dropped.
        if tx.send(instance).is_err() {
            return;
        }
    }
}
