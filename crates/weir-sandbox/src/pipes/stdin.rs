//! The guest's stdin: what the caller queued (or a transcript's recorded reads), and the waits
//! the run driver watches.

use super::stdin_queue::StdinReceiver;
use crate::event::ReadLog;
use crate::interrupt::Interrupter;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use wasmtime_wasi::cli::{IsTerminal, StdinStream};
use wasmtime_wasi::p2::{InputStream, Pollable, StreamError, StreamResult};

/// What the guest's activity looks like from its stdin, watched by the run driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestStatus {
    /// The guest is blocked reading stdin and nothing is buffered.
    pub waiting_input: bool,
    /// The script finished and the interactive console runs.
    pub in_repl: bool,
    /// How many times the guest has started waiting for input: a new wait is visible even when
    /// the driver never saw the guest run in between.
    pub waits: u64,
}

/// How a run's stdin behaves.
#[derive(Debug, Clone, Default)]
pub struct StdinMode {
    /// Keep every chunk the guest reads, in order (for transcripts).
    pub record: bool,
    /// Give the guest exactly these reads first (replaying a transcript); afterwards the stream
    /// behaves as if the caller sent nothing more.
    pub replay: Option<ReadLog>,
    /// Deterministic runs: a read only returns data after the guest has waited for it, so the
    /// guest takes the same path whether or not the data had already arrived.
    pub gated: bool,
}

/// The guest's stdin: bytes from the caller (or a replayed [`ReadLog`]), and the waiting state
/// the driver watches.
#[derive(Clone)]
pub struct GuestStdin {
    state: Arc<tokio::sync::Mutex<StdinState>>,
}

struct StdinState {
    rx: StdinReceiver,
    /// Replay: the recorded reads still to give, in place of the caller's channel.
    replay: Option<(VecDeque<Bytes>, bool)>,
    buffered: Bytes,
    eof: bool,
    gated: bool,
    /// (gated) the guest has waited since its last successful read.
    armed: bool,
    status: watch::Sender<GuestStatus>,
    log: Option<ReadLog>,
    interrupter: Arc<Interrupter>,
    /// An interrupt ended the last wait: the next read returns an empty line, so the guest's
    /// `input()` returns and raises the interrupt's `KeyboardInterrupt` on the spot.
    interrupted: bool,
}

impl GuestStdin {
    /// The guest's end of a run's stdin channel, reporting its waits on `status`; a wait ends
    /// early when `interrupter` is asked to interrupt the guest.
    pub fn new(
        rx: StdinReceiver,
        status: watch::Sender<GuestStatus>,
        mode: StdinMode,
        interrupter: Arc<Interrupter>,
    ) -> Self {
        GuestStdin {
            state: Arc::new(tokio::sync::Mutex::new(StdinState {
                rx,
                replay: mode.replay.map(|r| (r.chunks.into(), r.eof)),
                buffered: Bytes::new(),
                eof: false,
                gated: mode.gated,
                armed: false,
                status,
                log: mode.record.then(ReadLog::default),
                interrupter,
                interrupted: false,
            })),
        }
    }

    /// A session's next cell: its stdin is `data`, then end of file, or (`interactive`) what the
    /// caller sends while it runs. Nothing an earlier cell left unread reaches it.
    pub async fn begin_cell(&self, data: Bytes, interactive: bool) {
        let mut state = self.state.lock().await;
        state.buffered = data;
        state.eof = !interactive;
        state.interrupted = false;
    }

    /// A session's cell ended: what it left unread, in the buffer or in the caller's channel,
    /// is dropped. Called while the guest waits in a host call, so the lock is free.
    pub fn end_cell(&self) {
        if let Ok(mut state) = self.state.try_lock() {
            state.buffered = Bytes::new();
            while state.rx.try_recv().is_ok() {}
            state.eof = true;
        }
    }

    /// What the guest read so far (`None` unless recording).
    pub fn read_log(&self) -> Option<ReadLog> {
        self.state.try_lock().ok().and_then(|s| s.log.clone())
    }
}

impl StdinState {
    fn take_message(&mut self, msg: Option<Bytes>) {
        match msg {
            // The end of a session cell's input (`StdinSender::end_input`).
            Some(b) if b.is_empty() => self.eof = true,
            Some(b) => self.buffered = b,
            None => self.eof = true,
        }
    }

    fn poll_buffer(&mut self) {
        if !self.buffered.is_empty() || self.eof {
            return;
        }
        if let Some((chunks, eof_after)) = &mut self.replay {
            match chunks.pop_front() {
                Some(chunk) => self.buffered = chunk,
                None if *eof_after => self.eof = true,
                None => {} // nothing more was recorded: the guest will wait
            }
            return;
        }
        // Closing is seen after the data: whatever was queued before the close is read first.
        let closed = *self.rx.closed.borrow();
        match self.rx.try_recv() {
            Ok(msg) => self.take_message(Some(msg)),
            Err(mpsc::error::TryRecvError::Empty) => self.eof = closed,
            Err(mpsc::error::TryRecvError::Disconnected) => self.eof = true,
        }
    }

    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if std::mem::take(&mut self.interrupted) {
            return Ok(Bytes::from_static(b"\n"));
        }
        if self.gated && !self.armed {
            return Ok(Bytes::new());
        }
        self.poll_buffer();
        if self.buffered.is_empty() {
            if self.eof {
                if let Some(log) = &mut self.log {
                    log.eof = true;
                }
                return Err(StreamError::Closed);
            }
            return Ok(Bytes::new());
        }
        let n = size.min(self.buffered.len());
        let chunk = self.buffered.split_to(n);
        self.armed = false;
        if let Some(log) = &mut self.log {
            log.chunks.push(chunk.clone());
        }
        Ok(chunk)
    }

    async fn wait(&mut self) {
        self.poll_buffer();
        if self.buffered.is_empty() && !self.eof && self.interrupter.in_flight() {
            self.interrupted = true;
            return;
        }
        if self.buffered.is_empty() && !self.eof {
            self.status.send_modify(|s| {
                s.waiting_input = true;
                s.waits += 1;
            });
            let StdinReceiver {
                data,
                closed,
                queued,
            } = &mut self.rx;
            let closed = async { closed.wait_for(|closed| *closed).await.is_ok() };
            let next = async {
                let chunk = data.recv().await;
                queued.release(chunk.as_ref().map_or(0, Bytes::len));
                chunk
            };
            let interrupter = self.interrupter.clone();
            tokio::select! {
                msg = next => self.take_message(msg),
                // Closed: take what was queued before, else end of file.
                true = closed => self.poll_buffer(),
                () = interrupter.requested() => self.interrupted = interrupter.deliver(),
                else => self.eof = true,
            }
            self.status.send_modify(|s| s.waiting_input = false);
        }
        self.armed = true;
    }
}

impl IsTerminal for GuestStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for GuestStdin {
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        // Only WASIp3 guests use this; weir's guest is WASIp2 and never asks for it.
        Box::new(tokio::io::empty())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestStdin {
    async fn ready(&mut self) {
        self.state.lock().await.wait().await;
    }
}

#[async_trait::async_trait]
impl InputStream for GuestStdin {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        match self.state.try_lock() {
            Ok(mut state) => state.read(size),
            // Only one guest task exists per store, so this cannot race in practice; report
            // "nothing yet" rather than trapping.
            Err(_) => Ok(Bytes::new()),
        }
    }
}
