//! WebSocket plumbing shared by `/ws` sessions and Piston's `/api/v2/connect`: the upgrade, a
//! bounded outbound queue with its writer task and liveness, close codes, and message-size errors.

use crate::state::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::WebSocketUpgrade;
use axum::response::Response;
use futures_util::SinkExt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify};
use weir_sandbox::task::AbortOnDrop;

/// Frames queued towards a slow client before the session stops taking run events.
const OUT_QUEUE: usize = 32;

/// Most output bytes merged into one output message (`/ws` and `/api/v2/connect`).
pub(crate) const MERGE_BYTES: usize = 64 << 10;

/// Close codes the server uses.
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    /// The node cannot serve the session now (cluster mode: it lost its database).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const REPLACED: u16 = 4001;
    pub const IDLE: u16 = 4002;
}

pub(crate) use weir_sandbox::task::sleep_until_opt;

/// Whether a receive error means the peer sent a message over the size cap.
pub(crate) fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("too long") || text.contains("too big") || text.contains("space limit")
}

/// A session's outbound side: a bounded frame queue, the writer's [`Liveness`], and the task
/// that writes frames to the socket.
pub(crate) fn outbound(
    sink: futures_util::stream::SplitSink<WebSocket, Message>,
) -> (mpsc::Sender<Message>, Arc<Liveness>, AbortOnDrop) {
    let (out, frames) = mpsc::channel(OUT_QUEUE);
    let liveness = Arc::new(Liveness::default());
    let writer = tokio::spawn(write_frames(sink, frames, liveness.clone()));
    (out, liveness, AbortOnDrop(writer))
}

/// What tells a live peer from a dead one: pings that jump the queue, and output the peer
/// takes. A client reading a long output slowly may not reach a ping for a long time (behind
/// megabytes in the socket buffers); while the writer waits for the socket, the kernel judges
/// instead: every connection has a TCP user timeout (three heartbeat periods, at least 30 s;
/// `crate::server`), so a peer that stops taking data at all is disconnected, and the send
/// fails.
#[derive(Default)]
pub(crate) struct Liveness {
    ping: Notify,
    /// Frames of output (not pings) written to the socket so far.
    written: std::sync::atomic::AtomicU64,
    /// The writer is waiting for the socket to take a frame.
    sending: std::sync::atomic::AtomicBool,
}

impl Liveness {
    /// Sends a ping ahead of every queued frame.
    pub(crate) fn ping(&self) {
        self.ping.notify_one();
    }

    /// A number that changes whenever the peer takes output, and that cannot be told apart
    /// from progress while the writer waits on the socket (see the type's doc).
    pub(crate) fn progress(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        (!self.sending.load(Relaxed)).then(|| self.written.load(Relaxed))
    }
}

/// Ends a session's outbound side: queues the close frame (when the peer is still there to get
/// it), closes the queue, and gives the writer a second to send what is queued.
pub(crate) async fn close_outbound(
    out: mpsc::Sender<Message>,
    writer: AbortOnDrop,
    close: Option<(u16, String)>,
) {
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        let _ = out.try_send(Message::Close(Some(frame)));
    }
    drop(out);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.join()).await;
}

/// Sends queued frames until the queue closes or a close frame has gone out.
async fn write_frames(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut frames: mpsc::Receiver<Message>,
    liveness: Arc<Liveness>,
) {
    loop {
        // A ping jumps the queue: a client reading a long output slowly still sees it (and
        // answers) as soon as it has read what the socket already holds.
        let frame = tokio::select! {
            biased;
            () = liveness.ping.notified() => Message::Ping(Default::default()),
            frame = frames.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        let closing = matches!(frame, Message::Close(_));
        use std::sync::atomic::Ordering::Relaxed;
        // Pings do not count as output taken: a peer must answer them.
        let output = !matches!(frame, Message::Ping(_));
        liveness.sending.store(output, Relaxed);
        let sent = sink.send(frame).await;
        liveness.written.fetch_add(u64::from(output), Relaxed);
        liveness.sending.store(false, Relaxed);
        if sent.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}

/// Read and write buffer size of each WebSocket.
const WS_BUFFER_BYTES: usize = 8 << 10;

/// Upgrades an admitted connection: messages capped at `max_message_bytes`, the token's
/// subprotocol echoed, and `session` run as a task that shutdown waits for and that
/// `weir_sessions_open` counts.
pub(crate) fn upgrade<F, Fut>(
    state: &Arc<AppState>,
    ws: WebSocketUpgrade,
    protocol: Option<String>,
    session: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // axum's 128 KiB read and write buffers are sized for bulk transfer; a session mostly
    // carries small JSON messages, and its memory is counted per idle session.
    let ws = ws
        .max_message_size(state.config.max_message_bytes)
        .read_buffer_size(WS_BUFFER_BYTES)
        .write_buffer_size(WS_BUFFER_BYTES);
    let ws = match protocol {
        Some(p) => ws.protocols([p]),
        None => ws,
    };
    let state = state.clone();
    let tracker = state.tracker.clone();
    ws.on_upgrade(move |socket| {
        tracker.track_future(async move {
            state.metrics.sessions_open.fetch_add(1, Relaxed);
            session(socket).await;
            state.metrics.sessions_open.fetch_sub(1, Relaxed);
        })
    })
}
