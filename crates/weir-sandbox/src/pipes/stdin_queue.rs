//! The caller's end of a run's stdin: a queue bounded in chunks and in bytes, and a close that
//! never waits.

use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Most bytes of stdin the guest has not read that a run's host side holds: past it, more input
/// waits (or is refused, for a caller that does not wait). One chunk is always taken when
/// nothing is queued, so a single write up to the message limit gets through.
pub const MAX_STDIN_QUEUED_BYTES: usize = 1 << 20;

/// The caller's end of a run's stdin: a queue bounded in chunks and in bytes
/// ([`MAX_STDIN_QUEUED_BYTES`]), and a close that never waits (end of file must get through even
/// while the queue is full of input the guest has not read).
#[derive(Clone)]
pub struct StdinSender {
    data: mpsc::Sender<Bytes>,
    closed: Arc<watch::Sender<bool>>,
    queued: Arc<QueuedBytes>,
}

/// The guest's end of [`StdinSender`].
pub struct StdinReceiver {
    pub(super) data: mpsc::Receiver<Bytes>,
    pub(super) closed: watch::Receiver<bool>,
    pub(super) queued: Arc<QueuedBytes>,
}

/// Bytes in a stdin queue, and the wake-up of a sender waiting for room.
#[derive(Default)]
pub(super) struct QueuedBytes {
    bytes: AtomicUsize,
    room: tokio::sync::Notify,
}

impl QueuedBytes {
    /// Counts `n` more bytes in, if they fit (or nothing is queued).
    fn reserve(&self, n: usize) -> bool {
        self.bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q.saturating_add(n) <= MAX_STDIN_QUEUED_BYTES).then(|| q + n)
            })
            .is_ok()
    }

    /// `n` bytes left the queue.
    pub(super) fn release(&self, n: usize) {
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }
}

impl StdinReceiver {
    /// The next chunk, if one is queued now.
    pub(super) fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
        let chunk = self.data.try_recv()?;
        self.queued.release(chunk.len());
        Ok(chunk)
    }
}

/// A stdin channel holding at most `chunks` chunks the guest has not read.
pub fn stdin_channel(chunks: usize) -> (StdinSender, StdinReceiver) {
    let (data_tx, data_rx) = mpsc::channel(chunks);
    let (closed_tx, closed_rx) = watch::channel(false);
    let queued = Arc::new(QueuedBytes::default());
    (
        StdinSender {
            data: data_tx,
            closed: Arc::new(closed_tx),
            queued: queued.clone(),
        },
        StdinReceiver {
            data: data_rx,
            closed: closed_rx,
            queued,
        },
    )
}

impl StdinSender {
    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Queues `data`, waiting while the queue is full (in chunks or bytes); false once stdin is
    /// closed or the run has ended.
    pub async fn send(&self, data: Bytes) -> bool {
        loop {
            if self.is_closed() {
                return false;
            }
            let room = self.queued.room.notified();
            if self.queued.reserve(data.len()) {
                break;
            }
            tokio::select! {
                () = room => {}
                () = self.data.closed() => return false,
            }
        }
        let n = data.len();
        let sent = self.data.send(data).await.is_ok();
        if !sent {
            self.queued.release(n);
        }
        sent
    }

    /// Queues `data` without waiting: `Full` when the queue holds as many chunks or bytes as it
    /// may.
    pub fn try_send(&self, data: Bytes) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        if self.is_closed() {
            return Err(mpsc::error::TrySendError::Closed(data));
        }
        if !self.queued.reserve(data.len()) {
            return Err(mpsc::error::TrySendError::Full(data));
        }
        let n = data.len();
        self.data
            .try_send(data)
            .inspect_err(|_| self.queued.release(n))
    }

    /// Ends the input of a session's running cell: it reads what was queued before, then end
    /// of file; the session's next cell gets its own. Fails like [`StdinSender::try_send`].
    pub fn end_input(&self) -> Result<(), mpsc::error::TrySendError<Bytes>> {
        self.try_send(Bytes::new())
    }

    /// Closes stdin at once: the guest reads what was queued before, then end of file.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}
