//! The browser-IDE protocol: JSON-RPC 2.0, one message per WebSocket text frame (docs/protocol.md).
//!
//! Parsing turns a frame into a typed [`Request`] or an [`RpcError`] that names what was wrong;
//! the builders produce the server's responses and notifications.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use weir_sandbox::Data;
use weir_sandbox::Limits;
use weir_sandbox::Seed;
use weir_sandbox::{Program, RunRequest};
use weir_sandbox::{RunResult, RunState, StreamKind};

/// JSON-RPC error codes used by weir.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    /// The `run_id` is not this session's active run.
    pub const UNKNOWN_RUN: i64 = -32001;
    /// A limit refused the request (rate, capacity, shutting down).
    pub const LIMIT: i64 = -32002;
    /// The run cannot take the request now (`interrupt` with nothing to interrupt).
    pub const NOT_NOW: i64 = -32003;
}

/// Limits a client may ask for; anything absent takes the server's default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitParams {
    pub wall_ms: Option<u64>,
    pub cpu_fuel: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub output_bytes: Option<u64>,
}

impl LimitParams {
    /// The client's limits on top of `defaults`, each capped at `max`.
    pub fn apply(&self, defaults: &Limits, max: &Limits) -> Limits {
        Limits {
            wall_ms: self.wall_ms.unwrap_or(defaults.wall_ms),
            cpu_fuel: self.cpu_fuel.or(defaults.cpu_fuel),
            memory_bytes: self.memory_bytes.unwrap_or(defaults.memory_bytes),
            output_bytes: self.output_bytes.unwrap_or(defaults.output_bytes),
            ..*defaults
        }
        .capped_by(max)
    }
}

/// Parameters of `run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunParams {
    pub source: String,
    #[serde(default = "default_filename")]
    pub filename: String,
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    #[serde(default)]
    pub args: Vec<String>,
    pub stdin: Option<String>,
    #[serde(default)]
    pub repl: bool,
    #[serde(default)]
    pub limits: LimitParams,
    /// Deterministic mode (docs/transcripts.md).
    pub deterministic: Option<DeterministicParams>,
    /// Record a transcript (implies deterministic mode, seed 0 unless given).
    #[serde(default)]
    pub record: bool,
    /// The runtime to run in, by name or alias (`GET /v1/runtimes`); the server's default
    /// without one.
    pub runtime: Option<String>,
    /// Globs of files in the working directory whose contents come back with the result.
    #[serde(default)]
    pub return_files: Vec<String>,
    /// Functions the program may call, which the client answers (docs/code-mode.md).
    #[serde(default)]
    pub functions: Vec<FunctionParams>,
    /// Where a one-shot run's calls are sent (`POST /v1/runs`; the operator allows it).
    pub callback_url: Option<String>,
    /// The hosts this run may reach (`host[:port]`, `*.domain`): the server's `[network]
    /// allow` narrowed to these, never widened. Absent: whatever the server allows.
    pub network: Option<Vec<String>>,
    /// Secrets of this run's own, `NAME: {value, hosts}`: the program sees `weir-secret:NAME`,
    /// and requests to `hosts` carry the value (docs/code-mode.md).
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, weir_egress::SecretConfig>,
}

/// A function a client declares for its run: the guest calls it as `tools.NAME(**args)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionParams {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// The JSON Schema of its keyword arguments; any object without one.
    #[serde(default)]
    pub parameters: Value,
}

/// The functions a client declares, as the sandbox takes them (`None` for none); the reason
/// when one is refused (a bad name, a schema that cannot be used, too many).
pub fn declared(functions: &[FunctionParams]) -> Result<Option<weir_sandbox::Tools>, String> {
    if functions.is_empty() {
        return Ok(None);
    }
    let mut tools = weir_sandbox::Tools::new();
    for f in functions {
        tools = tools
            .declare(&f.name, &f.description, f.parameters.clone())
            .map_err(|e| e.to_string())?;
    }
    Ok(Some(tools))
}

/// `run`'s `deterministic` parameter.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeterministicParams {
    #[serde(default)]
    pub seed: u64,
}

impl RunParams {
    /// The sandbox request: the client's limits on top of `defaults`, capped at `max`.
    /// Recording implies deterministic mode (seed 0 unless given).
    pub fn into_request(self, defaults: &Limits, max: &Limits) -> RunRequest {
        let mut req = RunRequest::script(Vec::new());
        req.program = Program::Script {
            filename: self.filename,
            source: self.source.into_bytes(),
        };
        req.files = self
            .files
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        req.args = self.args;
        req.stdin = self.stdin.map(String::into_bytes);
        req.repl = self.repl;
        req.limits = self.limits.apply(defaults, max);
        // Deterministic mode's own defaults (fuel, a long wall-time net) stay within them too.
        req.max_limits = Some(*max);
        if self.record || self.deterministic.is_some() {
            req.deterministic = Some(Seed(self.deterministic.map(|d| d.seed).unwrap_or(0)));
        }
        req.record_input = self.record;
        req.runtime = self.runtime;
        req.return_files = self.return_files;
        req
    }
}

fn default_filename() -> String {
    "main.py".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunIdParams {
    run_id: String,
}

/// `return`'s parameters: exactly one of `value` (any JSON, `null` included) and `error`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnParams {
    run_id: String,
    call_id: u64,
    #[serde(default, deserialize_with = "present")]
    value: Option<Value>,
    error: Option<String>,
}

/// A field that is there, `null` included, reads as `Some`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// An answer to a call from its `value` and `error` fields (`return`'s, a callback's): `None`
/// unless exactly one is there.
pub(crate) fn call_answer(
    value: Option<Value>,
    error: Option<String>,
) -> Option<weir_sandbox::ToolResult> {
    match (value, error) {
        (Some(value), None) => Some(Ok(value)),
        (None, Some(error)) => Some(Err(error)),
        _ => None,
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputParams {
    run_id: String,
    data: String,
}

/// A request from the client.
#[derive(Debug, Clone)]
pub enum Request {
    Run(Box<RunParams>),
    Input {
        run_id: String,
        data: String,
    },
    Eof {
        run_id: String,
    },
    Stop {
        run_id: String,
    },
    Pause {
        run_id: String,
    },
    Resume {
        run_id: String,
    },
    Interrupt {
        run_id: String,
    },
    /// The answer to a `call`.
    Return {
        run_id: String,
        call_id: u64,
        result: weir_sandbox::ToolResult,
    },
    Ping,
}

/// A request with the id to answer it under (`None` for a notification).
#[derive(Debug, Clone)]
pub struct Incoming {
    pub id: Option<Value>,
    pub request: Request,
}

/// An error to send back; the session carries on after every one.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub id: Value,
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(id: Option<Value>, code: i64, message: impl Into<String>) -> Self {
        RpcError {
            id: id.unwrap_or(Value::Null),
            code,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        json!({"jsonrpc": "2.0", "id": self.id, "error": {"code": self.code, "message": self.message}})
            .to_string()
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<Incoming, RpcError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| RpcError::new(None, code::PARSE_ERROR, format!("parse error: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(RpcError::new(
            None,
            code::INVALID_REQUEST,
            "invalid request: expected a JSON object",
        ));
    };
    let id = obj.remove("id");
    if !matches!(id, None | Some(Value::String(_)) | Some(Value::Number(_))) {
        return Err(RpcError::new(
            None,
            code::INVALID_REQUEST,
            "invalid request: id must be a string or a number",
        ));
    }
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(RpcError::new(
            id,
            code::INVALID_REQUEST,
            "invalid request: \"jsonrpc\" must be \"2.0\"",
        ));
    }
    let Some(Value::String(method)) = obj.remove("method") else {
        return Err(RpcError::new(
            id,
            code::INVALID_REQUEST,
            "invalid request: \"method\" must be a string",
        ));
    };
    let params = obj.remove("params").unwrap_or(Value::Null);
    match request(&method, params) {
        Ok(request) => Ok(Incoming { id, request }),
        Err((code, message)) => Err(RpcError::new(id, code, message)),
    }
}

fn params<T: serde::de::DeserializeOwned>(method: &str, params: Value) -> Result<T, (i64, String)> {
    serde_json::from_value(params).map_err(|e| {
        (
            code::INVALID_PARAMS,
            format!("invalid params for {method}: {e}"),
        )
    })
}

fn request(method: &str, p: Value) -> Result<Request, (i64, String)> {
    let with_id = |p| params::<RunIdParams>(method, p).map(|r| r.run_id);
    Ok(match method {
        "run" => Request::Run(Box::new(params(method, p)?)),
        "input" => {
            let InputParams { run_id, data } = params(method, p)?;
            Request::Input { run_id, data }
        }
        "eof" => Request::Eof { run_id: with_id(p)? },
        "stop" => Request::Stop { run_id: with_id(p)? },
        "pause" => Request::Pause { run_id: with_id(p)? },
        "resume" => Request::Resume { run_id: with_id(p)? },
        "interrupt" => Request::Interrupt { run_id: with_id(p)? },
        "return" => {
            let r: ReturnParams = params(method, p)?;
            let Some(result) = call_answer(r.value, r.error) else {
                return Err((
                    code::INVALID_PARAMS,
                    "invalid params for return: give exactly one of value and error".into(),
                ));
            };
            Request::Return {
                run_id: r.run_id,
                call_id: r.call_id,
                result,
            }
        }
        "ping" => Request::Ping,
        other => {
            return Err((
                code::METHOD_NOT_FOUND,
                format!("method not found: {other:?} (expected run, input, eof, stop, pause, resume, interrupt, return or ping)"),
            ))
        }
    })
}

/// A successful response.
pub fn result(id: &Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

fn notification(method: &str, params: Value) -> String {
    json!({"jsonrpc": "2.0", "method": method, "params": params}).to_string()
}

/// `output` notification. Bytes that are not UTF-8 are replaced (U+FFFD).
pub fn output(run_id: &str, stream: StreamKind, data: &[u8], seq: u64) -> String {
    notification(
        "output",
        json!({"run_id": run_id, "stream": stream, "data": String::from_utf8_lossy(data), "seq": seq}),
    )
}

/// A display's JSON form, Jupyter's `display_data`: `data` (MIME type → value; binary formats
/// in base64), `metadata`, and `display_id` and `update` when set.
pub fn display_value(display: &weir_sandbox::Display) -> Value {
    let mut value = bundle_value(&display.bundle);
    if let Some(id) = &display.display_id {
        value["display_id"] = json!(id);
    }
    if display.update {
        value["update"] = json!(true);
    }
    value
}

/// A MIME bundle's JSON form: `{"data": …, "metadata": …}`.
pub fn bundle_value(bundle: &weir_sandbox::Bundle) -> Value {
    json!({"data": bundle.data, "metadata": bundle.metadata})
}

/// `display` notification: something the program displayed, in order with its output.
pub fn display(run_id: &str, display: &weir_sandbox::Display) -> String {
    let mut params = display_value(display);
    params["run_id"] = json!(run_id);
    notification("display", params)
}

/// `clear_output` notification: the program cleared what it showed so far (with `wait`, once
/// its next output arrives).
pub fn clear_output(run_id: &str, wait: bool) -> String {
    notification("clear_output", json!({"run_id": run_id, "wait": wait}))
}

/// `call` notification: the program called a function the client declared; the client answers
/// with `return`.
pub fn call(run_id: &str, call: &weir_sandbox::Call) -> String {
    notification(
        "call",
        json!({"run_id": run_id, "call_id": call.id, "name": call.name, "args": call.args}),
    )
}

pub fn state(run_id: &str, state: RunState) -> String {
    notification("state", json!({"run_id": run_id, "state": state}))
}

/// `exit` notification; `outcome` may differ from the result's (e.g. "shutdown").
pub fn exit(run_id: &str, outcome: &str, result: &RunResult, transcript: Option<&str>) -> String {
    notification("exit", exit_params(run_id, outcome, result, transcript))
}

/// How a run ended, as `exit` and `POST /v1/runs` report it; `transcript` is where a recorded
/// run's transcript can be fetched.
pub fn exit_params(
    run_id: &str,
    outcome: &str,
    result: &RunResult,
    transcript: Option<&str>,
) -> Value {
    let mut params = json!({
        "run_id": run_id,
        "outcome": outcome,
        "code": result.outcome.exit_code(),
        "message": result.message,
        "duration_ms": result.duration.as_millis() as u64,
        "output_truncated": result.output_truncated,
        "runtime": result.runtime,
    });
    if let Some(fuel) = result.fuel_consumed {
        params["fuel_consumed"] = json!(fuel);
    }
    if let Some(url) = transcript {
        params["transcript"] = json!(url);
    }
    if !result.files.files.is_empty() || !result.files.omitted.is_empty() {
        params["files"] = returned_files(&result.files);
    }
    params
}

/// Files a run returned (`return_files`): path → contents (text, or `{"base64": …}` for bytes
/// that are not UTF-8), and the paths that matched but did not fit.
pub fn returned_files(returned: &weir_sandbox::Returned) -> Value {
    let files: serde_json::Map<String, Value> = returned
        .files
        .iter()
        .map(|f| (f.path.clone(), json!(Data::from_bytes(&f.data))))
        .collect();
    json!({"contents": files, "omitted": returned.omitted})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_method() {
        let r = parse(r#"{"jsonrpc":"2.0","id":1,"method":"run","params":{"source":"print(1)"}}"#)
            .unwrap();
        assert_eq!(r.id, Some(json!(1)));
        assert!(matches!(r.request, Request::Run(p) if p.filename == "main.py" && !p.repl));
        let r = parse(
            r#"{"jsonrpc":"2.0","id":"a","method":"input","params":{"run_id":"x","data":"hi\n"}}"#,
        )
        .unwrap();
        assert!(
            matches!(r.request, Request::Input { run_id, data } if run_id == "x" && data == "hi\n")
        );
        for m in ["eof", "stop", "pause", "resume"] {
            let text =
                format!(r#"{{"jsonrpc":"2.0","id":2,"method":"{m}","params":{{"run_id":"x"}}}}"#);
            assert!(parse(&text).is_ok(), "{m}");
        }
        assert!(matches!(
            parse(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#)
                .unwrap()
                .request,
            Request::Ping
        ));
    }

    #[test]
    fn a_return_carries_exactly_one_of_value_and_error() {
        let parsed = |p: &str| {
            parse(&format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"return","params":{p}}}"#
            ))
        };
        let r = parsed(r#"{"run_id":"x","call_id":3,"value":null}"#).unwrap();
        assert!(matches!(
            r.request,
            Request::Return {
                call_id: 3,
                result: Ok(Value::Null),
                ..
            }
        ));
        let r = parsed(r#"{"run_id":"x","call_id":4,"error":"no such city"}"#).unwrap();
        assert!(matches!(r.request, Request::Return { result: Err(e), .. } if e == "no such city"));
        for bad in [
            r#"{"run_id":"x","call_id":5}"#,
            r#"{"run_id":"x","call_id":5,"value":1,"error":"e"}"#,
            r#"{"run_id":"x","call_id":-1,"value":1}"#,
        ] {
            assert_eq!(parsed(bad).unwrap_err().code, code::INVALID_PARAMS, "{bad}");
        }
    }

    #[test]
    fn names_what_is_wrong() {
        assert_eq!(parse("{not json").unwrap_err().code, code::PARSE_ERROR);
        assert_eq!(parse("[1]").unwrap_err().code, code::INVALID_REQUEST);
        assert_eq!(
            parse(r#"{"id":1,"method":"ping"}"#).unwrap_err().code,
            code::INVALID_REQUEST
        );
        let e = parse(r#"{"jsonrpc":"2.0","id":7,"method":"fly"}"#).unwrap_err();
        assert_eq!((e.code, e.id), (code::METHOD_NOT_FOUND, json!(7)));
        let e =
            parse(r#"{"jsonrpc":"2.0","id":8,"method":"run","params":{"source":5}}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert!(
            e.message.contains("invalid params for run"),
            "{}",
            e.message
        );
        let e = parse(r#"{"jsonrpc":"2.0","id":9,"method":"stop","params":{}}"#).unwrap_err();
        assert_eq!(e.code, code::INVALID_PARAMS);
    }

    #[test]
    fn client_limits_are_capped_by_the_server() {
        let max = Limits {
            wall_ms: 5000,
            ..Limits::default()
        };
        let asked = LimitParams {
            wall_ms: Some(60_000),
            ..LimitParams::default()
        };
        assert_eq!(asked.apply(&Limits::default(), &max).wall_ms, 5000);
    }
}
