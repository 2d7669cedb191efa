//! What a run reports: its id, its output chunks and states in order, and how it ended.

use crate::files::Returned;
use crate::outcome::Outcome;
use bytes::Bytes;
use serde::Serialize;
use std::time::Duration;

/// A run's identifier: 32 hex digits, unique across restarts and cluster nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RunId(String);

impl RunId {
    /// A fresh id: 128 bits (32 hex digits) from two SipHash keys the standard library seeds
    /// from the operating system's randomness, over the time: unique across every node of a
    /// cluster as a random UUID is.
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let half = || {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(now);
            h.finish()
        };
        RunId(format!("{:016x}{:016x}", half(), half()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    /// Standard output.
    Stdout = 0,
    /// Standard error.
    Stderr = 1,
}

/// What the run is doing, as the caller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Running the program.
    Running,
    /// Waiting for input on stdin.
    WaitingInput,
    /// Paused by the caller.
    Paused,
    /// Waiting for the next REPL statement.
    Repl,
}

/// How a run ended, with everything a caller may want to show or record.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// How it ended.
    pub outcome: Outcome,
    /// The outcome in words, for people.
    pub message: String,
    /// Wall time from start to end, including paused time.
    pub duration: Duration,
    /// Some output was cut (line cap or total cap).
    pub output_truncated: bool,
    /// Bytes the script wrote to stdout and stderr.
    pub output_bytes: u64,
    /// Fuel the run consumed (metered runs only).
    pub fuel_consumed: Option<u64>,
    /// Largest linear memory the guest reached, bytes.
    pub peak_memory: usize,
    /// What the guest read from stdin, in order (when the request asked to record it).
    pub input_read: Option<ReadLog>,
    /// The host-function calls the guest made, with their answers, and the calls it was
    /// allowed (recorded runs only, `RunRequest::record_input`; for transcripts).
    pub calls_made: Option<Box<crate::tools::CallsMade>>,
    /// The name of the runtime that ran it ([`crate::RuntimeInfo::name`]).
    pub runtime: String,
    /// The files [`crate::RunRequest::return_files`] asked for.
    pub files: Returned,
}

/// The exception a session's cell raised (its traceback went to stderr).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CellException {
    /// The exception's type, e.g. `ZeroDivisionError` or `KeyboardInterrupt`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its message.
    pub message: String,
}

/// How a session's cell ended (a run in cell mode, [`crate::RunControl::send_cell`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CellEnd {
    /// The `repr` of the cell's last expression, when it was one and its value not `None`.
    pub value: Option<String>,
    /// The value's MIME bundle when it has more than text (a DataFrame's `text/html`, a
    /// figure's `image/png`); [`CellEnd::result`] gives every value's bundle.
    pub rich: Option<Bundle>,
    /// The exception the cell raised.
    pub exception: Option<CellException>,
}

impl CellEnd {
    /// The last expression's value as a MIME bundle (`text/plain` is its `repr`), as a notebook's
    /// `execute_result` carries it; `None` when the cell had no value.
    pub fn result(&self) -> Option<Bundle> {
        match (&self.rich, &self.value) {
            (Some(rich), _) => Some(rich.clone()),
            (None, Some(text)) => Some(Bundle::text(text)),
            (None, None) => None,
        }
    }
}

/// A Jupyter MIME bundle: one value in several formats (`data`: MIME type → content; binary
/// formats as base64 text, JSON formats as JSON, the rest as text), with metadata per format
/// (`image/png` → `{"width", "height"}`). `text/plain` is always present.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Bundle {
    /// MIME type → the value in that format.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// MIME type (or any key) → metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl Bundle {
    /// A bundle of plain text alone.
    pub fn text(text: &str) -> Self {
        let mut data = serde_json::Map::new();
        data.insert("text/plain".into(), text.into());
        Bundle {
            data,
            metadata: serde_json::Map::new(),
        }
    }

    /// The bytes it holds as JSON text would (what it counts against the output limit).
    pub fn bytes(&self) -> u64 {
        fn size(map: &serde_json::Map<String, serde_json::Value>) -> u64 {
            map.iter()
                .map(|(k, v)| {
                    let value = match v {
                        serde_json::Value::String(s) => s.len() as u64,
                        other => serde_json::to_vec(other).map_or(0, |b| b.len() as u64),
                    };
                    k.len() as u64 + value
                })
                .sum()
        }
        size(&self.data) + size(&self.metadata)
    }

    /// The text form (`text/plain`), or `""`.
    pub fn plain(&self) -> &str {
        self.data
            .get("text/plain")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }
}

/// Something the program displayed (`display(x)`, a matplotlib figure): a MIME bundle delivered
/// in order with the output, its bytes counted against the output limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Display {
    /// What it shows, in every format it has.
    pub bundle: Bundle,
    /// The id it was shown under (`display(x, display_id=…)`): a later display with the same
    /// id and `update` replaces it.
    pub display_id: Option<String>,
    /// It replaces the output shown under `display_id` (`update_display`), not shown anew.
    pub update: bool,
}

/// What a run reports, in order. `Exit` is always the last event.
#[derive(Debug, Clone)]
pub enum Event {
    /// Bytes the program wrote.
    Output {
        /// Which stream.
        stream: StreamKind,
        /// The bytes.
        data: Bytes,
    },
    /// The run changed state.
    State(RunState),
    /// A session's cell ended; its output came before this.
    Cell(CellEnd),
    /// The program displayed something (`display(x)`, `plt.show()`, a figure open when a cell
    /// or the program ended).
    Display(Display),
    /// The program cleared what it displayed and printed so far (`clear_output`); with `wait`,
    /// only once the next output arrives.
    ClearOutput {
        /// Clear when the next output arrives, not now.
        wait: bool,
    },
    /// The program called a function its caller answers (`crate::Tools::declare`): answer
    /// with `RunControl::answer_call`. Its output so far came before this.
    Call(crate::tools::Call),
    /// The run ended (always the last event).
    Exit(RunResult),
}

/// The reads a guest made from stdin: each chunk is what one read returned, in order, and `eof`
/// says whether it then read end of file. Recorded for transcripts; replayed exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadLog {
    /// What each read returned, in order.
    pub chunks: Vec<Bytes>,
    /// The guest then read end of file.
    pub eof: bool,
}

/// Everything a run printed, and how it ended.
#[derive(Debug, Default)]
pub struct Collected {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
    /// stdout and stderr interleaved in the order they were written.
    pub output: Vec<u8>,
    /// The states the run reported, in order.
    pub states: Vec<RunState>,
    /// The cells that ended, in order (sessions only).
    pub cells: Vec<CellEnd>,
    /// What the program displayed, in order: what it cleared (`clear_output`) is gone, and an
    /// update replaced the display it names.
    pub displays: Vec<Display>,
    /// A `clear_output(wait=True)` waits for the next display.
    clear_pending: bool,
    /// Calls to functions the caller answers (a collector answers none: each times out).
    pub calls: Vec<crate::tools::Call>,
    /// How the run ended (`None` only if it never reported).
    pub result: Option<RunResult>,
}

impl Collected {
    /// Adds one event.
    pub fn push(&mut self, event: Event) {
        match event {
            Event::Output { stream, data } => {
                match stream {
                    StreamKind::Stdout => self.stdout.extend_from_slice(&data),
                    StreamKind::Stderr => self.stderr.extend_from_slice(&data),
                }
                self.output.extend_from_slice(&data);
            }
            Event::State(s) => self.states.push(s),
            Event::Cell(c) => self.cells.push(c),
            Event::Display(d) => self.display(d),
            Event::ClearOutput { wait: true } => self.clear_pending = true,
            Event::ClearOutput { wait: false } => self.displays.clear(),
            Event::Call(call) => self.calls.push(call),
            Event::Exit(result) => self.result = Some(result),
        }
    }

    fn display(&mut self, display: Display) {
        if display.update {
            if let Some(shown) = self
                .displays
                .iter_mut()
                .find(|d| d.display_id.is_some() && d.display_id == display.display_id)
            {
                shown.bundle = display.bundle;
            }
            return;
        }
        if std::mem::take(&mut self.clear_pending) {
            self.displays.clear();
        }
        self.displays.push(display);
    }

    /// stdout as text (invalid UTF-8 replaced).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    /// stderr as text (invalid UTF-8 replaced).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    /// The outcome (`Crashed` if the run task vanished without reporting, which is a bug).
    pub fn outcome(&self) -> Outcome {
        self.result
            .as_ref()
            .map(|r| r.outcome.clone())
            .unwrap_or(Outcome::Crashed {
                detail: "the run ended without reporting".into(),
            })
    }
}
