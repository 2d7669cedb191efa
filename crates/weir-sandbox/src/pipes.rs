//! The guest's stdio: bounded output pipes with caps, and an interactive stdin fed by the caller.
//!
//! Output: stdout and stderr chunks go into the run's one bounded event channel, so their order is
//! kept and a slow consumer makes the guest wait (a write permit is only granted while the channel
//! has room). Nothing here buffers more than one chunk per stream.
//!
//! Input: the caller's bytes arrive through a bounded channel; while the guest waits for them the
//! stream tells the run driver, which reports `waiting_input` and switches to the idle clock.

use crate::event::{Display, Event, ReadLog, StreamKind};
use crate::interrupt::Interrupter;
use crate::limits::human_bytes;
use crate::priority::Priority;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch, Notify};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};

/// Largest chunk one guest write may hand over; with the event channel's capacity this bounds
/// the memory one run can hold in flight.
pub const CHUNK_BYTES: usize = 16 << 10;

/// The trap that ends a run whose output passed its cap.
#[derive(Debug, thiserror::Error)]
#[error("output limit exceeded")]
pub struct OutputLimitExceeded;

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

/// Accounting shared by stdout and stderr: total bytes and per-stream line state.
#[derive(Debug)]
struct OutputBudget {
    /// Bytes written in earlier cells of a session.
    earlier: u64,
    written: u64,
    cap: u64,
    line_cap: u64,
    line_len: [u64; 2],
    cutting_line: [bool; 2],
    truncated: bool,
}

/// What one guest write turns into.
struct Admitted {
    data: Bytes,
    over_cap: bool,
}

/// Cuts `data` to at most `max` bytes without splitting a UTF-8 sequence.
fn utf8_prefix(data: &[u8], max: usize) -> usize {
    if max >= data.len() {
        return data.len();
    }
    let mut end = max;
    while end > 0 && max - end < 3 && (data[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    if (data[end] & 0xC0) == 0x80 {
        max
    } else {
        end
    }
}

impl OutputBudget {
    fn new(cap: u64, line_cap: u64) -> Self {
        OutputBudget {
            earlier: 0,
            written: 0,
            cap,
            line_cap,
            line_len: [0; 2],
            cutting_line: [false; 2],
            truncated: false,
        }
    }

    /// A new cell's budget: the cap applies to each cell of a session on its own.
    fn begin_cell(&mut self) {
        self.earlier = self.earlier.saturating_add(self.written);
        self.written = 0;
        self.line_len = [0; 2];
        self.cutting_line = [false; 2];
    }

    /// Applies the total cap and the line cap to one write of `stream`.
    fn admit(&mut self, stream: StreamKind, data: &[u8]) -> Admitted {
        let remaining = self.cap.saturating_sub(self.written);
        let over_cap = data.len() as u64 > remaining;
        let kept = if over_cap {
            &data[..utf8_prefix(data, remaining as usize)]
        } else {
            data
        };
        self.written = self.written.saturating_add(data.len() as u64);
        let mut out = BytesMut::with_capacity(kept.len() + 64);
        for piece in kept.split_inclusive(|b| *b == b'\n') {
            self.admit_line_piece(stream as usize, piece, &mut out);
        }
        if over_cap {
            self.truncated = true;
            if !out.is_empty() && !out.ends_with(b"\n") {
                out.extend_from_slice(b"\n");
            }
            let notice = format!(
                "[output truncated: the script wrote more than {}]\n",
                human_bytes(self.cap)
            );
            out.extend_from_slice(notice.as_bytes());
        }
        Admitted {
            data: out.freeze(),
            over_cap,
        }
    }

    /// `piece` holds at most one newline, at its end.
    fn admit_line_piece(&mut self, s: usize, piece: &[u8], out: &mut BytesMut) {
        let ends_line = piece.ends_with(b"\n");
        let body = if ends_line {
            &piece[..piece.len() - 1]
        } else {
            piece
        };
        if !self.cutting_line[s] {
            let room = self.line_cap.saturating_sub(self.line_len[s]) as usize;
            if body.len() <= room {
                out.extend_from_slice(body);
                self.line_len[s] += body.len() as u64;
            } else {
                out.extend_from_slice(&body[..utf8_prefix(body, room)]);
                let marker = format!(
                    " [truncated: line longer than {}]",
                    human_bytes(self.line_cap)
                );
                out.extend_from_slice(marker.as_bytes());
                self.cutting_line[s] = true;
                self.truncated = true;
            }
        }
        if ends_line {
            out.extend_from_slice(b"\n");
            self.line_len[s] = 0;
            self.cutting_line[s] = false;
        }
    }
}

/// Output on its way from the guest to the caller, shared by stdout and stderr.
///
/// A write goes straight into the event channel when the consumer keeps up and nothing is queued;
/// otherwise it joins a small ordered queue (at most [`CHUNK_BYTES`]) that the run driver drains
/// as the consumer frees room, merging consecutive writes of a stream into one chunk. The guest
/// waits only when that queue is full: backpressure with batching, and stdout/stderr order kept.
pub struct OutputQueue {
    state: Mutex<QueueState>,
    events: mpsc::Sender<Event>,
    data: Notify,
    space: Notify,
    /// A background run gives way to foreground runs before writing on.
    priority: Priority,
    /// The run's first output has just made it background: the guest pauses once at its next
    /// write check, so its driver can move to the background lane before it runs on.
    demoted: AtomicBool,
}

struct QueueState {
    budget: OutputBudget,
    segments: VecDeque<Segment>,
    queued: usize,
}

/// What waits in the queue: output, or an event that must reach the caller after it.
enum Segment {
    Output(StreamKind, BytesMut),
    Marker(Event),
}

impl OutputQueue {
    /// A queue delivering to `events`, capped at `cap` bytes in all and `line_cap` per line.
    pub fn new(
        events: mpsc::Sender<Event>,
        cap: u64,
        line_cap: u64,
        priority: Priority,
    ) -> Arc<Self> {
        Arc::new(OutputQueue {
            state: Mutex::new(QueueState {
                budget: OutputBudget::new(cap, line_cap),
                segments: VecDeque::new(),
                queued: 0,
            }),
            events,
            data: Notify::new(),
            space: Notify::new(),
            priority,
            demoted: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // The lock is never held across a panic point that leaves the state inconsistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The WASI stdout or stderr backed by this queue.
    pub fn stream(self: &Arc<Self>, kind: StreamKind) -> GuestOutput {
        GuestOutput {
            queue: self.clone(),
            kind,
        }
    }

    /// Whether any output was cut (line cap or total cap).
    pub fn truncated(&self) -> bool {
        self.lock().budget.truncated
    }

    /// Bytes the guest wrote to stdout and stderr together (before any cutting).
    pub fn written(&self) -> u64 {
        let state = self.lock();
        state.budget.earlier + state.budget.written
    }

    /// Starts a session's next cell: it gets the whole output cap again.
    pub fn begin_cell(&self) {
        self.lock().budget.begin_cell();
    }

    /// Queues `event` behind the output written so far, so the caller sees it after that output
    /// (a session's cell end). Never waits: at most one marker per cell is ever queued.
    pub fn push_marker(&self, event: Event) {
        let mut state = self.lock();
        if state.segments.is_empty() {
            match self.events.try_reserve() {
                Ok(permit) => return permit.send(event),
                Err(mpsc::error::TrySendError::Closed(())) => return,
                Err(mpsc::error::TrySendError::Full(())) => {}
            }
        }
        state.segments.push_back(Segment::Marker(event));
        drop(state);
        self.data.notify_one();
    }

    /// Queues an image behind the output so far. Its bytes count against the output cap: an
    /// image past it is dropped, and the run ends as one whose text passed it.
    pub fn push_display(&self, display: Display) -> Result<(), OutputLimitExceeded> {
        {
            let mut state = self.lock();
            let budget = &mut state.budget;
            let n = display.data.len() as u64;
            let over = n > budget.cap.saturating_sub(budget.written);
            budget.written = budget.written.saturating_add(n);
            if over {
                budget.truncated = true;
                return Err(OutputLimitExceeded);
            }
        }
        self.push_marker(Event::Display(display));
        Ok(())
    }

    /// Whether output (or an event behind it) is waiting to be delivered.
    pub fn has_queued(&self) -> bool {
        !self.lock().segments.is_empty()
    }

    /// Waits until the guest queues output (returns at once if some is queued).
    pub async fn data_queued(&self) {
        loop {
            let notified = self.data.notified();
            if self.has_queued() {
                return;
            }
            notified.await;
        }
    }

    /// Takes the oldest queued chunk, making room for the guest.
    pub fn pop(&self) -> Option<Event> {
        let mut state = self.lock();
        let (stream, data) = match state.segments.pop_front()? {
            Segment::Output(stream, data) => (stream, data),
            Segment::Marker(event) => return Some(event),
        };
        state.queued -= data.len();
        drop(state);
        self.space.notify_one();
        Some(Event::Output {
            stream,
            data: data.freeze(),
        })
    }

    fn push(&self, kind: StreamKind, bytes: &[u8]) -> Result<(), OutputLimitExceeded> {
        let mut state = self.lock();
        let admitted = state.budget.admit(kind, bytes);
        let data = admitted.data;
        if !data.is_empty() {
            if self.priority.demote() {
                self.demoted.store(true, Ordering::Release);
            }
            if state.segments.is_empty() {
                if let Ok(permit) = self.events.try_reserve() {
                    permit.send(Event::Output { stream: kind, data });
                    return ok_unless(admitted.over_cap);
                }
            }
            state.queued += data.len();
            match state.segments.back_mut() {
                Some(Segment::Output(k, tail))
                    if *k == kind && tail.len() + data.len() <= CHUNK_BYTES =>
                {
                    tail.extend_from_slice(&data)
                }
                _ => state
                    .segments
                    .push_back(Segment::Output(kind, BytesMut::from(&data[..]))),
            }
            drop(state);
            self.data.notify_one();
        }
        ok_unless(admitted.over_cap)
    }

    fn room(&self) -> usize {
        CHUNK_BYTES.saturating_sub(self.lock().queued)
    }
}

fn ok_unless(over_cap: bool) -> Result<(), OutputLimitExceeded> {
    if over_cap {
        Err(OutputLimitExceeded)
    } else {
        Ok(())
    }
}

/// One of the guest's output streams (a `StdoutStream` for the WASI context).
pub struct GuestOutput {
    queue: Arc<OutputQueue>,
    kind: StreamKind,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(GuestOutput {
            queue: self.queue.clone(),
            kind: self.kind,
        })
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        // Only WASIp3 guests use this; weir's guest is WASIp2 and never asks for it.
        Box::new(tokio::io::sink())
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {
        loop {
            let notified = self.queue.space.notified();
            if self.queue.room() > 0 || self.queue.events.is_closed() {
                break;
            }
            notified.await;
        }
        if self.queue.demoted.swap(false, Ordering::AcqRel) {
            // Pending once: the driver sees the run background and moves it to its lane.
            tokio::task::yield_now().await;
        }
        // A flooding guest resumes here rather than at an epoch tick: give way here too.
        self.queue.priority.give_way().await;
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.queue.events.is_closed() {
            return Err(StreamError::Closed);
        }
        self.queue
            .push(self.kind, &bytes)
            .map_err(|e| StreamError::Trap(e.into()))
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Queued output is delivered by the run driver, before the run's `Exit` at the latest.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.queue.events.is_closed() {
            return Err(StreamError::Closed);
        }
        if self.queue.demoted.load(Ordering::Acquire) {
            return Ok(0); // the guest then waits on `ready`, which yields once
        }
        Ok(self.queue.room())
    }
}

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
    data: mpsc::Receiver<Bytes>,
    closed: watch::Receiver<bool>,
    queued: Arc<QueuedBytes>,
}

/// Bytes in a stdin queue, and the wake-up of a sender waiting for room.
#[derive(Default)]
struct QueuedBytes {
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
    fn release(&self, n: usize) {
        if n > 0 {
            self.bytes.fetch_sub(n, Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }
}

impl StdinReceiver {
    /// The next chunk, if one is queued now.
    fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn admit_all(budget: &mut OutputBudget, data: &[u8]) -> (String, bool) {
        let a = budget.admit(StreamKind::Stdout, data);
        (String::from_utf8_lossy(&a.data).into_owned(), a.over_cap)
    }

    #[test]
    fn passes_output_within_limits_unchanged() {
        let mut b = OutputBudget::new(1000, 100);
        assert_eq!(
            admit_all(&mut b, b"hello\nworld\n"),
            ("hello\nworld\n".into(), false)
        );
        assert!(!b.truncated);
    }

    #[test]
    fn cuts_long_lines_with_a_marker_and_resumes_after_newline() {
        let mut b = OutputBudget::new(1 << 20, 4);
        let (out, _) = admit_all(&mut b, b"abcdefgh");
        assert_eq!(out, "abcd [truncated: line longer than 4 B]");
        let (out, _) = admit_all(&mut b, b"ijk\nok\n");
        assert_eq!(out, "\nok\n");
    }

    #[test]
    fn stops_at_the_total_cap_with_a_notice() {
        let mut b = OutputBudget::new(10, 100);
        let (out, over) = admit_all(&mut b, b"0123456789abc");
        assert!(over);
        assert!(b.truncated);
        assert_eq!(
            out,
            "0123456789\n[output truncated: the script wrote more than 10 B]\n"
        );
    }

    #[test]
    fn never_splits_a_utf8_sequence() {
        let s = "ééé".as_bytes(); // 6 bytes, 2 per char
        assert_eq!(utf8_prefix(s, 3), 2);
        assert_eq!(utf8_prefix(s, 4), 4);
        assert_eq!(utf8_prefix(s, 10), 6);
    }

    #[test]
    fn line_cap_is_exact_across_chunks() {
        for chunk in [1usize, 7, 4096, 8192, 10_000] {
            let mut b = OutputBudget::new(1 << 30, 1000);
            let mut out = Vec::new();
            let line = vec![b'x'; 5000];
            for piece in line.chunks(chunk) {
                out.extend_from_slice(&b.admit(StreamKind::Stdout, piece).data);
            }
            let xs = out.iter().filter(|c| **c == b'x').count();
            assert_eq!(xs, 1000, "chunk size {chunk}");
        }
    }
}
