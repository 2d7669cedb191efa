//! The guest's stdout and stderr: one ordered queue between the guest's writes and the run's
//! event channel, with the output caps (`super::budget`) applied on the way in.

use super::budget::OutputBudget;
use crate::event::{Display, Event, StreamKind};
use crate::priority::Priority;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// Largest chunk one guest write may hand over; with the event channel's capacity this bounds
/// the memory one run can hold in flight.
pub const CHUNK_BYTES: usize = 16 << 10;

/// The trap that ends a run whose output passed its cap.
#[derive(Debug, thiserror::Error)]
#[error("output limit exceeded")]
pub struct OutputLimitExceeded;

/// What a display or a `clear_output` costs of the output cap beyond its bundle: an event held
/// until it is delivered, so a loop of empty displays ends at the cap as a loop of prints does.
pub const EVENT_BYTES: u64 = 64;

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
    Marker(Box<Event>),
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
        self.lock().budget.truncated()
    }

    /// Bytes the guest wrote to stdout and stderr together (before any cutting).
    pub fn written(&self) -> u64 {
        self.lock().budget.total_written()
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
        state.segments.push_back(Segment::Marker(Box::new(event)));
        drop(state);
        self.data.notify_one();
    }

    /// Queues a display behind the output so far. Its bytes count against the output cap: a
    /// display past it is dropped, and the run ends as one whose text passed it.
    pub fn push_display(&self, display: Display) -> Result<(), OutputLimitExceeded> {
        if !self
            .lock()
            .budget
            .charge_image(display.bundle.bytes() + EVENT_BYTES)
        {
            return Err(OutputLimitExceeded);
        }
        self.push_marker(Event::Display(display));
        Ok(())
    }

    /// Queues a call to a function the run's caller answers behind the output so far, charged
    /// its arguments' bytes and [`EVENT_BYTES`] of the cap.
    pub fn push_call(&self, call: crate::tools::Call) -> Result<(), OutputLimitExceeded> {
        let bytes = (call.args.to_string().len() + call.name.len()) as u64;
        if !self.lock().budget.charge_image(bytes + EVENT_BYTES) {
            return Err(OutputLimitExceeded);
        }
        self.push_marker(Event::Call(call));
        Ok(())
    }

    /// Queues a `clear_output` behind the output so far, charged [`EVENT_BYTES`] of the cap.
    pub fn push_clear(&self, wait: bool) -> Result<(), OutputLimitExceeded> {
        if !self.lock().budget.charge_image(EVENT_BYTES) {
            return Err(OutputLimitExceeded);
        }
        self.push_marker(Event::ClearOutput { wait });
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
            Segment::Marker(event) => return Some(*event),
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
        let charged = state.budget.charge(kind, bytes);
        let data = charged.data;
        if !data.is_empty() {
            if self.priority.demote() {
                self.demoted.store(true, Ordering::Release);
            }
            if state.segments.is_empty() {
                if let Ok(permit) = self.events.try_reserve() {
                    permit.send(Event::Output { stream: kind, data });
                    return ok_unless(charged.over_cap);
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
        ok_unless(charged.over_cap)
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

impl crate::tools::CallSink for OutputQueue {
    fn push_call(&self, call: crate::tools::Call) -> Result<(), String> {
        OutputQueue::push_call(self, call).map_err(|_| "the run's output limit is reached".into())
    }
}
