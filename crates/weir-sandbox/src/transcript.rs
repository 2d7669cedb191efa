//! Transcripts: a recorded run as a versioned, human-readable JSON document (docs/transcripts.md).
//!
//! A transcript holds everything needed to run the same program again in deterministic mode (guest
//! identity, seed, limits, program, files, args, env, the stdin reads the guest made) and what the
//! run produced (stdout/stderr in order, outcome, exit code, fuel). Bytes are JSON strings when
//! they are valid UTF-8 and `{"base64": "..."}` otherwise.

use crate::determinism::Seed;
use crate::error::{Error, Result};
use crate::limits::Limits;

use crate::event::{Display, Event, ReadLog, RunResult, StreamKind};
use crate::request::{split_env, Program, RunRequest};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The `format` field of every transcript.
pub const FORMAT: &str = "weir-transcript";
/// The version of the document layout this weir writes and reads.
pub const VERSION: u32 = 1;

/// A recorded run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    /// Always `weir-transcript`.
    pub format: String,
    /// The format's version.
    pub version: u32,
    /// The weir that recorded it (informational: replays compare the guest, not weir).
    pub weir_version: String,
    /// The guest build that recorded it.
    pub guest: GuestIdentity,
    /// The deterministic run's seed.
    pub seed: u64,
    /// The limits the run had (fuel always set: transcripts are deterministic runs).
    pub limits: Limits,
    /// What ran.
    pub program: ProgramDoc,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// Extra files in the scratch directory.
    pub files: Vec<FileDoc>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    /// `sys.argv[1:]`.
    pub args: Vec<String>,
    /// The guest's whole environment, as `KEY=VALUE`, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default)]
    /// A REPL followed the program.
    pub repl: bool,
    /// What the guest read from stdin.
    pub stdin: StdinDoc,
    /// The host-function calls it made, with their answers (absent when it made none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calls: Option<CallsDoc>,
    /// What the run produced.
    pub expected: Expected,
}

/// Which runtime and guest build a transcript belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuestIdentity {
    /// The runtime that ran it (replay runs it there); transcripts without one name `python`.
    #[serde(default = "default_runtime")]
    pub runtime: String,
    /// What the guest was built from (compared on replay).
    pub build: String,
    /// The component's sha256 on the recording machine (informational).
    pub sha256: String,
    /// The language version inside it.
    pub python: String,
}

fn default_runtime() -> String {
    crate::runtime::python::NAME.into()
}

impl GuestIdentity {
    /// The identity of `runtime`'s guest in this weir.
    pub fn of(runtime: &crate::RuntimeInfo) -> Self {
        GuestIdentity {
            runtime: runtime.name.clone(),
            build: runtime.build.clone(),
            sha256: runtime.sha256.clone(),
            python: runtime.version.clone(),
        }
    }
}

/// The program: a named script, or `-c` code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ProgramDoc {
    /// A named script.
    Script {
        /// Its file name.
        filename: String,
        /// Its bytes.
        source: Data,
    },
    /// Code run with `-c`.
    Code {
        /// The code.
        code: String,
    },
}

/// An extra file placed in the scratch directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDoc {
    /// Relative path in the scratch directory.
    pub path: String,
    /// Its bytes.
    pub content: Data,
}

/// What the guest read from stdin: one entry per read, then whether it read end of file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdinDoc {
    #[serde(default)]
    /// What each read returned, in order.
    pub reads: Vec<Data>,
    /// The guest then read end of file.
    #[serde(default)]
    pub eof: bool,
}

/// The host-function calls a run made (`crate::Tools`), which its replay answers again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallsDoc {
    /// Calls the run was allowed; those past it were refused without being answered.
    pub max_calls: u32,
    /// Each answered call, in order.
    pub made: Vec<CallDoc>,
}

/// One call: the function, its arguments, and the value it returned or the error it raised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallDoc {
    /// The function's name.
    pub name: String,
    /// Its keyword arguments.
    pub args: serde_json::Value,
    /// What it returned (absent: `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    /// The message of the `ToolError` it raised instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl CallsDoc {
    fn of(calls: &crate::tools::CallsMade) -> Self {
        let made = calls
            .made
            .iter()
            .map(|c| {
                let (value, error) = match &c.result {
                    Ok(serde_json::Value::Null) => (None, None),
                    Ok(value) => (Some(value.clone()), None),
                    Err(why) => (None, Some(why.clone())),
                };
                CallDoc {
                    name: c.name.clone(),
                    args: c.args.clone(),
                    value,
                    error,
                }
            })
            .collect();
        CallsDoc {
            max_calls: calls.max_calls,
            made,
        }
    }

    /// The functions a replay gives the program: the recorded answers, in order.
    fn tools(&self) -> crate::tools::Tools {
        let made = self
            .made
            .iter()
            .map(|c| crate::tools::CallRecord {
                name: c.name.clone(),
                args: c.args.clone(),
                result: match &c.error {
                    Some(why) => Err(why.clone()),
                    None => Ok(c.value.clone().unwrap_or(serde_json::Value::Null)),
                },
            })
            .collect();
        crate::tools::Tools::replaying(self.max_calls, made)
    }
}

/// What the run produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Output in order; consecutive writes to the same stream are joined.
    pub output: Vec<OutputDoc>,
    /// The outcome's kind, e.g. `exited`.
    pub outcome: String,
    /// The exit status `weir run` gave (the script's code, or the limit's fixed code).
    pub code: i32,
    /// The outcome in words.
    pub message: String,
    #[serde(default)]
    /// Some output was cut.
    pub output_truncated: bool,
    /// Fuel the run consumed.
    pub fuel_consumed: Option<u64>,
}

/// One stretch of output: `{"stdout": "..."}` or `{"stderr": "..."}`; or, in order with it,
/// something the program displayed (`{"display": {"data": …}}`) or its `clear_output`
/// (`{"clear_output": {"wait": false}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputDoc {
    /// Written to stdout.
    Stdout(Data),
    /// Written to stderr.
    Stderr(Data),
    /// Displayed.
    Display(DisplayDoc),
    /// Cleared.
    ClearOutput {
        /// Once the next output arrives.
        wait: bool,
    },
}

/// A display as a transcript records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisplayDoc {
    /// MIME type → value.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Per-format metadata.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The id it was shown under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_id: Option<String>,
    /// It replaced the display shown under that id.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub update: bool,
}

impl DisplayDoc {
    fn of(display: &Display) -> Self {
        DisplayDoc {
            data: display.bundle.data.clone(),
            metadata: display.bundle.metadata.clone(),
            display_id: display.display_id.clone(),
            update: display.update,
        }
    }
}

impl OutputDoc {
    /// Which stream it was written to (`None` for a display or a clear).
    pub fn stream(&self) -> Option<StreamKind> {
        match self {
            OutputDoc::Stdout(_) => Some(StreamKind::Stdout),
            OutputDoc::Stderr(_) => Some(StreamKind::Stderr),
            OutputDoc::Display(_) | OutputDoc::ClearOutput { .. } => None,
        }
    }

    /// The bytes written (`None` for a display or a clear).
    pub fn data(&self) -> Option<&Data> {
        match self {
            OutputDoc::Stdout(d) | OutputDoc::Stderr(d) => Some(d),
            OutputDoc::Display(_) | OutputDoc::ClearOutput { .. } => None,
        }
    }
}

/// Bytes, written as text where they are valid UTF-8 and JSON's escapes do not more than double
/// them, base64 otherwise: output full of control characters (each `\u00XX` in JSON, six bytes
/// for one) would make a response six times the output it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Data {
    /// Valid UTF-8, as text.
    Text(String),
    /// Not UTF-8 (or mostly control characters), as base64.
    Binary {
        /// The bytes in base64.
        base64: String,
    },
}

impl Data {
    /// Text when the bytes are valid UTF-8 and JSON-escaped take at most twice their size,
    /// base64 otherwise.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) if json_escaped_len(bytes) <= bytes.len().saturating_mul(2) => {
                Data::Text(s.to_owned())
            }
            _ => Data::Binary {
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            },
        }
    }

    /// The bytes (an error for invalid base64).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        match self {
            Data::Text(s) => Ok(s.clone().into_bytes()),
            Data::Binary { base64 } => base64::engine::general_purpose::STANDARD
                .decode(base64)
                .map_err(|e| Error::NotATranscript(format!("bad base64: {e}"))),
        }
    }
}

/// The length of `bytes` as a JSON string's contents: two bytes for `"`, `\\` and the control
/// characters with a short escape, six for the other control characters.
pub fn json_escaped_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

/// Output collected in order, joining consecutive chunks of the same stream, with what the
/// program displayed between them.
#[derive(Debug, Default, Clone)]
pub struct OutputLog {
    parts: Vec<OutputDoc>,
    /// The bytes of the last part, when it is a stretch of a stream still growing.
    open: Option<(StreamKind, Vec<u8>)>,
}

impl OutputLog {
    /// Adds output, joined to the previous stretch when it is on the same stream.
    pub fn push(&mut self, stream: StreamKind, data: &[u8]) {
        match &mut self.open {
            Some((s, buf)) if *s == stream => buf.extend_from_slice(data),
            open => {
                if let Some((s, buf)) = open.replace((stream, data.to_vec())) {
                    self.parts.push(stream_doc(s, &buf));
                }
            }
        }
    }

    fn push_doc(&mut self, doc: OutputDoc) {
        if let Some((s, buf)) = self.open.take() {
            self.parts.push(stream_doc(s, &buf));
        }
        self.parts.push(doc);
    }

    /// Feeds an event; returns the result when it is the run's `Exit`.
    pub fn observe(&mut self, event: &Event) -> Option<RunResult> {
        match event {
            Event::Output { stream, data } => {
                self.push(*stream, data);
                None
            }
            Event::Display(display) => {
                self.push_doc(OutputDoc::Display(DisplayDoc::of(display)));
                None
            }
            Event::ClearOutput { wait } => {
                self.push_doc(OutputDoc::ClearOutput { wait: *wait });
                None
            }
            // A recorded run's calls come with its result (`RunResult::calls_made`): a call to a
            // declared function is answered, not output.
            Event::State(_) | Event::Cell(_) | Event::Call(_) => None,
            Event::Exit(result) => Some(result.clone()),
        }
    }

    /// The output as the transcript stores it.
    pub fn docs(&self) -> Vec<OutputDoc> {
        let mut docs = self.parts.clone();
        if let Some((s, buf)) = &self.open {
            docs.push(stream_doc(*s, buf));
        }
        docs
    }
}

fn stream_doc(stream: StreamKind, data: &[u8]) -> OutputDoc {
    match stream {
        StreamKind::Stdout => OutputDoc::Stdout(Data::from_bytes(data)),
        StreamKind::Stderr => OutputDoc::Stderr(Data::from_bytes(data)),
    }
}

impl Expected {
    /// What a run produced, as recorded.
    pub fn of(output: &OutputLog, result: &RunResult) -> Self {
        Expected {
            output: output.docs(),
            outcome: result.outcome.kind().into(),
            code: result.outcome.exit_code(),
            message: result.message.clone(),
            output_truncated: result.output_truncated,
            fuel_consumed: result.fuel_consumed,
        }
    }

    /// What the run displayed and cleared, in order.
    pub fn displays(&self) -> Vec<&OutputDoc> {
        self.output
            .iter()
            .filter(|o| o.stream().is_none())
            .collect()
    }

    /// All of one stream's bytes.
    pub fn stream_bytes(&self, stream: StreamKind) -> Vec<u8> {
        self.output
            .iter()
            .filter(|o| o.stream() == Some(stream))
            .filter_map(|o| o.data())
            .flat_map(|d| d.to_bytes().unwrap_or_default())
            .collect()
    }
}

impl Transcript {
    /// Builds the transcript of a finished deterministic run, which ran in `runtime`.
    pub fn record(
        req: &RunRequest,
        runtime: &crate::RuntimeInfo,
        output: &OutputLog,
        result: &RunResult,
    ) -> Result<Self> {
        let seed = req.deterministic.ok_or(Error::NotDeterministic)?;
        if !req.mounts.is_empty() {
            return Err(Error::HasMounts);
        }
        if req.restore.is_some() {
            return Err(Error::RestoredRun);
        }
        let input = result.input_read.clone().unwrap_or_default();
        Ok(Transcript {
            format: FORMAT.into(),
            version: VERSION,
            weir_version: env!("CARGO_PKG_VERSION").into(),
            guest: GuestIdentity::of(runtime),
            seed: seed.0,
            limits: req.effective_limits(),
            program: match &req.program {
                Program::Script { filename, source } => ProgramDoc::Script {
                    filename: filename.clone(),
                    source: Data::from_bytes(source),
                },
                Program::Code(code) => ProgramDoc::Code { code: code.clone() },
            },
            files: req
                .files
                .iter()
                .map(|(path, content)| FileDoc {
                    path: path.clone(),
                    content: Data::from_bytes(content),
                })
                .collect(),
            args: req.args.clone(),
            env: req.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            repl: req.repl,
            stdin: StdinDoc {
                reads: input.chunks.iter().map(|c| Data::from_bytes(c)).collect(),
                eof: input.eof,
            },
            calls: result.calls_made.as_deref().map(CallsDoc::of),
            expected: Expected::of(output, result),
        })
    }

    /// Reads and checks a transcript file (format and version; not the guest build).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::ReadTranscript {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text)
    }

    /// Reads a transcript from its JSON text.
    pub fn parse(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::NotATranscript(e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(Error::NotATranscript(format!(
                "the \"format\" field must be \"{FORMAT}\""
            )));
        }
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => {
                return Err(Error::TranscriptVersion {
                    version: v as u32,
                    supported: VERSION,
                })
            }
            None => return Err(Error::NotATranscript("no \"version\" field".into())),
        }
        serde_json::from_value(value).map_err(|e| Error::NotATranscript(e.to_string()))
    }

    /// Pretty JSON with a trailing newline, as fixtures are stored.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Refuses a transcript recorded with another guest build.
    pub fn check_guest(&self, current: &crate::RuntimeInfo) -> Result<()> {
        if self.guest.build != current.build {
            return Err(Error::OtherGuest {
                recorded: self.guest.build.clone(),
                current: current.build.clone(),
            });
        }
        Ok(())
    }

    /// The request that runs this transcript's program again, with its recorded input.
    pub fn request(&self) -> Result<RunRequest> {
        let mut req = RunRequest::script(Vec::new());
        req.program = match &self.program {
            ProgramDoc::Script { filename, source } => Program::Script {
                filename: filename.clone(),
                source: source.to_bytes()?,
            },
            ProgramDoc::Code { code } => Program::Code(code.clone()),
        };
        req.files = self
            .files
            .iter()
            .map(|f| Ok((f.path.clone(), f.content.to_bytes()?)))
            .collect::<Result<_>>()?;
        req.args = self.args.clone();
        req.env = self
            .env
            .iter()
            .map(|kv| {
                split_env(kv)
                    .ok_or_else(|| Error::NotATranscript(format!("env entry {kv:?} has no '='")))
            })
            .collect::<Result<_, _>>()?;
        req.limits = self.limits;
        req.repl = self.repl;
        req.runtime = Some(self.guest.runtime.clone());
        req.deterministic = Some(Seed(self.seed));
        req.replay_input = Some(ReadLog {
            chunks: self
                .stdin
                .reads
                .iter()
                .map(|d| d.to_bytes().map(Bytes::from))
                .collect::<Result<_, _>>()?,
            eof: self.stdin.eof,
        });
        req.tools = self.calls.as_ref().map(CallsDoc::tools);
        Ok(req)
    }
}

/// Outcomes decided from outside the guest while it waited for input. A replay reproduces them
/// by ending the run where the recorded input runs out.
pub fn ended_from_outside(outcome: &str) -> bool {
    matches!(outcome, "stopped" | "idle" | "shutdown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_text_unless_its_json_would_more_than_double_it() {
        assert_eq!(Data::from_bytes(b"hi\n"), Data::Text("hi\n".into()));
        assert_eq!(Data::from_bytes(b"\n\n\n"), Data::Text("\n\n\n".into()));
        let controls = vec![1u8; 1000];
        let data = Data::from_bytes(&controls);
        assert!(matches!(data, Data::Binary { .. }), "{data:?}");
        assert!(serde_json::to_string(&data).unwrap().len() < 2 * controls.len());
        assert_eq!(data.to_bytes().unwrap(), controls);
        assert!(matches!(Data::from_bytes(&[0xff]), Data::Binary { .. }));
    }
}
