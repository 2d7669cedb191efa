//! The WebSocket pump shared by `/ws` and Piston's `/api/v2/connect`: the upgrade, one task per
//! connection that owns the socket and the connection's run, a bounded outbound queue with its
//! writer task and liveness (pings), backpressure (a run's events are read only while the queue
//! has room), the shutdown grace period, and the close. A front end maps its protocol
//! ([`Protocol`]) and nothing else.

use super::shutdown::{Notice, Shutdown};
use crate::registry::LoginEnd;
use crate::state::AppState;
use crate::tracked::{EndedBy, TrackedRun};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::extract::WebSocketUpgrade;
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use weir_sandbox::AbortOnDrop;
use weir_sandbox::{sleep_until_opt, Event};

/// Frames queued towards a slow client before the session stops taking run events.
const OUT_QUEUE: usize = 32;

/// Most output bytes merged into one output message (`/ws` and `/api/v2/connect`).
const MERGE_BYTES: usize = 64 << 10;

/// Close codes the pump uses (a front end adds its own).
pub mod close {
    pub const GOING_AWAY: u16 = 1001;
    pub const TOO_BIG: u16 = 1009;
    /// The node cannot serve the connection now (cluster mode: it lost its database).
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The user logged in elsewhere (`/ws`).
    pub const REPLACED: u16 = 4001;
}

/// Whether a receive error means the peer sent a message over the size cap.
fn is_too_big(e: &axum::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("too long") || text.contains("too big") || text.contains("space limit")
}

/// A connection's outbound side: a bounded frame queue, the writer's [`Liveness`], and the task
/// that writes frames to the socket.
fn outbound(
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
struct Liveness {
    ping: Notify,
    /// Frames of output (not pings) written to the socket so far.
    written: std::sync::atomic::AtomicU64,
    /// The writer is waiting for the socket to take a frame.
    sending: std::sync::atomic::AtomicBool,
}

impl Liveness {
    /// Sends a ping ahead of every queued frame.
    fn ping(&self) {
        self.ping.notify_one();
    }

    /// A number that changes whenever the peer takes output, and that cannot be told apart
    /// from progress while the writer waits on the socket (see the type's doc).
    fn progress(&self) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        (!self.sending.load(Relaxed)).then(|| self.written.load(Relaxed))
    }
}

/// Ends a connection's outbound side: queues the close frame (when the peer is still there to
/// get it), closes the queue, and gives the writer a second to send what is queued.
async fn close_outbound(
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
/// subprotocol echoed, and `connection` run as a task that shutdown waits for and that
/// `weir_connections_open` counts.
pub fn upgrade<F, Fut>(
    state: &Arc<AppState>,
    ws: WebSocketUpgrade,
    protocol: Option<String>,
    connection: F,
) -> Response
where
    F: FnOnce(WebSocket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // axum's 128 KiB read and write buffers are sized for bulk transfer; a connection mostly
    // carries small JSON messages, and its memory is counted per idle connection.
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
            state.metrics.connections_open.fetch_add(1, Relaxed);
            connection(socket).await;
            state.metrics.connections_open.fetch_sub(1, Relaxed);
        })
    })
}

/// What a front end answers a message or an event with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Close the connection with this code and reason.
    Close(u16, String),
}

impl Flow {
    /// [`Flow::Close`] with a static reason.
    pub fn close(code: u16, reason: &str) -> Self {
        Flow::Close(code, reason.to_string())
    }
}

/// The connection's sending half, as a front end sees it.
pub struct Link {
    out: mpsc::Sender<Message>,
    shutting_down: bool,
}

impl Link {
    /// Queues a text message (waits while the queue is full: the peer reads slowly).
    pub async fn send(&self, text: String) {
        let _ = self.out.send(Message::Text(text.into())).await;
    }

    /// Whether the server is shutting down (a front end starts no new run then).
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }
}

/// A WebSocket front end: its protocol over one connection that holds at most one run at a
/// time. The pump reads the run's events while the outbound queue has room, stops the run when
/// the shutdown grace period is over, and records it `stopped` if the connection ends before
/// its `exit`.
pub trait Protocol: Send {
    /// The connection's run, if one is active; a front end that reads its `exit` takes it out
    /// and records it ([`TrackedRun::finish`]).
    fn run(&mut self) -> &mut Option<TrackedRun>;

    /// A text message from the peer.
    fn on_text(&mut self, link: &Link, text: &str) -> impl Future<Output = Flow> + Send;

    /// A binary message from the peer.
    fn on_binary(&mut self, link: &Link, data: &[u8]) -> impl Future<Output = Flow> + Send;

    /// The run's next event; `None`: its task ended without reporting (a weir bug), and the
    /// pump drops the run after this.
    fn on_event(&mut self, link: &Link, event: Option<Event>) -> impl Future<Output = Flow> + Send;

    /// When the connection ends by itself, and with which close code and reason: an idle
    /// timeout, Piston's `init` timeout.
    fn deadline(&self) -> Option<(Instant, u16, &'static str)>;
}

/// How the pump watches a connection besides its protocol.
#[derive(Default)]
pub struct Watch {
    /// Ping every this often; a peer that neither answers nor takes output for three periods
    /// is dropped.
    pub heartbeat: Option<Duration>,
    /// The connection's login (`/ws`): changes when the user logs in elsewhere or the node
    /// loses its cluster database.
    pub login: Option<watch::Receiver<LoginEnd>>,
}

/// What woke the pump.
enum Step {
    Flow(Flow),
    Shutdown(Notice),
    Frame(Option<Result<Message, axum::Error>>),
    Event(Option<Event>),
    Heartbeat,
    Gone,
}

/// Runs the connection to its end: the peer leaves, the protocol closes it, its deadline
/// passes, its login ends, or the server shuts down (with no run, or once the run has ended).
/// A run still active then is stopped and recorded before the peer is told goodbye.
pub async fn pump<P: Protocol>(socket: WebSocket, app: &AppState, mut protocol: P, watch: Watch) {
    let Watch {
        heartbeat,
        mut login,
    } = watch;
    let (sink, mut stream) = socket.split();
    let (out, liveness, writer) = outbound(sink);
    let mut shutdown = Shutdown::new(app.shutdown.subscribe(), app.config.shutdown_grace());
    let mut link = Link {
        out,
        shutting_down: false,
    };
    let mut pings = heartbeat.map(interval);
    let mut alive = Alive::default();
    let end = loop {
        link.shutting_down = shutdown.is_begun();
        if link.shutting_down && protocol.run().is_none() {
            break Some((close::GOING_AWAY, "server shutting down".to_string()));
        }
        let room = link.out.capacity() > 0;
        let deadline = protocol.deadline();
        let step = tokio::select! {
            biased;
            why = login_ended(&mut login) => Step::Flow(login_close(why)),
            notice = shutdown.next() => Step::Shutdown(notice),
            () = sleep_until_opt(deadline.map(|d| d.0)) => match deadline {
                Some((_, code, reason)) => Step::Flow(Flow::close(code, reason)),
                None => Step::Flow(Flow::Continue),
            },
            frame = stream.next() => Step::Frame(frame),
            event = next_event(protocol.run()), if room => Step::Event(event),
            _ = link.out.reserve(), if !room => Step::Flow(Flow::Continue),
            () = tick(&mut pings) => Step::Heartbeat,
        };
        let flow = match step {
            Step::Flow(flow) => flow,
            Step::Shutdown(notice) => {
                if let (Notice::GraceOver, Some(run)) = (notice, protocol.run().as_mut()) {
                    run.stop_for_shutdown();
                }
                Flow::Continue
            }
            Step::Frame(frame) => match frame_step(frame, &mut alive) {
                Step::Frame(Some(Ok(Message::Text(text)))) => {
                    protocol.on_text(&link, text.as_str()).await
                }
                Step::Frame(Some(Ok(Message::Binary(data)))) => {
                    protocol.on_binary(&link, &data).await
                }
                Step::Flow(flow) => flow,
                Step::Gone => break None,
                _ => Flow::Continue,
            },
            Step::Event(event) => {
                let vanished = event.is_none();
                let flow = protocol.on_event(&link, event).await;
                if vanished {
                    protocol.run().take();
                }
                flow
            }
            Step::Heartbeat => match alive.check(&liveness, heartbeat) {
                true => Flow::Continue,
                false => break None,
            },
            Step::Gone => break None,
        };
        if let Flow::Close(code, reason) = flow {
            break Some((code, reason));
        }
    };
    if let Some(mut run) = protocol.run().take() {
        run.end(EndedBy::ClientLeft).await;
    }
    close_outbound(link.out, writer, end).await;
}

/// Sorts a frame: a message for the protocol (left as [`Step::Frame`]), a pong (the peer is
/// alive), the peer gone, or one too big (close 1009).
fn frame_step(frame: Option<Result<Message, axum::Error>>, alive: &mut Alive) -> Step {
    match frame {
        Some(Ok(Message::Pong(_))) => {
            alive.at = Instant::now();
            Step::Flow(Flow::Continue)
        }
        Some(Ok(Message::Ping(_))) => Step::Flow(Flow::Continue),
        Some(Ok(Message::Close(_))) | None => Step::Gone,
        Some(Err(e)) if is_too_big(&e) => {
            Step::Flow(Flow::close(close::TOO_BIG, "message too big"))
        }
        Some(Err(_)) => Step::Gone,
        message => Step::Frame(message),
    }
}

/// When the peer last showed it was there: a pong, or taking frames off its socket.
struct Alive {
    at: Instant,
    progress: Option<u64>,
}

impl Default for Alive {
    fn default() -> Self {
        Alive {
            at: Instant::now(),
            progress: Some(0),
        }
    }
}

impl Alive {
    /// On a heartbeat: whether the peer is still there (it answered or took output within
    /// three periods); pings it again if so.
    fn check(&mut self, liveness: &Liveness, every: Option<Duration>) -> bool {
        let now = liveness.progress();
        if now.is_none() || now != self.progress {
            self.progress = now;
            self.at = Instant::now();
        }
        if every.is_some_and(|every| self.at.elapsed() > every * 3) {
            tracing::info!("peer stopped answering pings; dropping the connection");
            return false;
        }
        liveness.ping();
        true
    }
}

fn interval(every: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

/// The next heartbeat; never without one.
async fn tick(pings: &mut Option<tokio::time::Interval>) {
    match pings {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn next_event(run: &mut Option<TrackedRun>) -> Option<Event> {
    match run {
        Some(run) => run.next_event_merged(MERGE_BYTES).await,
        None => std::future::pending().await,
    }
}

/// Resolves with the reason when the registry ends the connection's login (its user logged in
/// elsewhere, or the node lost its cluster database); never for a connection without one.
async fn login_ended(rx: &mut Option<watch::Receiver<LoginEnd>>) -> LoginEnd {
    let why = match rx {
        Some(rx) => rx.wait_for(|e| *e != LoginEnd::Open).await.map(|why| *why),
        None => std::future::pending().await,
    };
    match why {
        Ok(why) => why,
        Err(_) => std::future::pending().await,
    }
}

fn login_close(why: LoginEnd) -> Flow {
    match why {
        LoginEnd::DatabaseLost => Flow::close(
            close::TRY_AGAIN_LATER,
            "this node lost its cluster database",
        ),
        _ => Flow::close(close::REPLACED, "logged in from another location"),
    }
}
