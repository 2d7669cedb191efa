//! Translation between Piston's API and weir's, both ways: a Piston job body (an `/execute` body
//! or a `/connect` `init` message) into a [`RunRequest`] (with Piston's own validation
//! messages), and a weir outcome into Piston's `code`/`signal`/`status`.

use crate::config::ServerConfig;
use base64::Engine as _;
use serde_json::{json, Value};
use weir_sandbox::Limits;
use weir_sandbox::Outcome;
use weir_sandbox::RuntimeInfo;
use weir_sandbox::FUEL_PER_NS;
use weir_sandbox::{Collected, RunResult};
use weir_sandbox::{Program, RunRequest};

/// Piston's `run_cpu_time` is in milliseconds; weir meters CPU in fuel.
pub const FUEL_PER_MS: u64 = FUEL_PER_NS * 1_000_000;

/// The response header that names the weir run behind a Piston execution.
pub const RUN_ID_HEADER: &str = "x-weir-run-id";

/// Validates a Piston job (an `/execute` body or a `/connect` `init` message) and builds the
/// run it asks for. Errors carry Piston's messages where Piston has one.
/// `memory_default` is the memory limit a run of a runtime gets when the job names none
/// (`AppState::memory_default`).
pub fn job<'a>(
    body: &Value,
    config: &ServerConfig,
    runtimes: impl IntoIterator<Item = &'a RuntimeInfo>,
    memory_default: impl Fn(&RuntimeInfo) -> u64,
) -> Result<(RunRequest, RuntimeInfo), String> {
    if !body.is_object() {
        return Err("the request body must be a JSON object".into());
    }
    let text = |name: &str| {
        body.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let language = text("language").ok_or("language is required as a string")?;
    let version = text("version").ok_or("version is required as a string")?;
    let files = body
        .get("files")
        .and_then(Value::as_array)
        .ok_or("files is required as an array")?;
    for (i, file) in files.iter().enumerate() {
        if !file.get("content").is_some_and(Value::is_string) {
            return Err(format!("files[{i}].content is required as a string"));
        }
    }
    let Some(runtime) = runtime_for(runtimes, language, version) else {
        return Err(format!("{language}-{version} runtime is unknown"));
    };
    let mut files = decode_files(files)?;
    let main = files
        .iter()
        .position(|f| f.utf8)
        .ok_or("files must include at least one utf8 encoded file")?;
    let main = files.remove(main);
    let mut req = RunRequest::script(Vec::new());
    req.program = Program::Script {
        filename: main.name,
        source: main.content,
    };
    req.files = files.into_iter().map(|f| (f.name, f.content)).collect();
    req.args = strings(body.get("args"), "args")?;
    req.stdin = match body.get("stdin") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone().into_bytes()),
        Some(_) => return Err("stdin must be a string".into()),
    };
    let mut defaults = config.limits;
    // The runtime's own default, as for every entry point.
    defaults.memory_bytes = memory_default(runtime);
    req.limits = limits(body, &defaults, &config.max_limits)?;
    req.runtime = Some(runtime.name.clone());
    Ok((req, runtime.clone()))
}

struct File {
    name: String,
    content: Vec<u8>,
    utf8: bool,
}

/// Piston's files: `name` defaults to `file{i}.code`; `encoding` is utf8 (default), base64 or hex.
fn decode_files(files: &[Value]) -> Result<Vec<File>, String> {
    let mut out = Vec::with_capacity(files.len());
    for (i, file) in files.iter().enumerate() {
        let content = file.get("content").and_then(Value::as_str).unwrap_or("");
        let name = match file.get("name") {
            None | Some(Value::Null) => format!("file{i}.code"),
            Some(Value::String(s)) if s.is_empty() => format!("file{i}.code"),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(format!("files[{i}].name must be a string")),
        };
        let encoding = file
            .get("encoding")
            .and_then(Value::as_str)
            .unwrap_or("utf8");
        let (content, utf8) = match encoding {
            "base64" => (
                base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| format!("files[{i}].content is not valid base64: {e}"))?,
                false,
            ),
            "hex" => (
                hex::decode(content)
                    .map_err(|e| format!("files[{i}].content is not valid hex: {e}"))?,
                false,
            ),
            _ => (content.as_bytes().to_vec(), true),
        };
        out.push(File {
            name,
            content,
            utf8,
        });
    }
    Ok(out)
}

fn strings(value: Option<&Value>, name: &str) -> Result<Vec<String>, String> {
    let bad = || format!("{name} must be an array of strings");
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

/// `run_timeout` (ms), `run_memory_limit` (bytes) and `run_cpu_time` (ms, metered as fuel) on
/// top of the server's defaults; the `compile_*` ones are checked and ignored (Python has no
/// compile stage).
fn limits(body: &Value, defaults: &Limits, max: &Limits) -> Result<Limits, String> {
    let mut limits = *defaults;
    if let Some(ms) = constraint(body, "run_timeout", Some(max.wall_ms))? {
        limits.wall_ms = ms;
    }
    if let Some(bytes) = constraint(body, "run_memory_limit", Some(max.memory_bytes))? {
        limits.memory_bytes = bytes;
    }
    let max_cpu_ms = max.cpu_fuel.map(|fuel| fuel / FUEL_PER_MS);
    if let Some(ms) = constraint(body, "run_cpu_time", max_cpu_ms)? {
        limits.cpu_fuel = Some(ms.saturating_mul(FUEL_PER_MS));
    }
    // Piston's run_timeout bounds the whole run, waits for input included.
    limits.idle_ms = limits.idle_ms.min(limits.wall_ms);
    for name in [
        "compile_timeout",
        "compile_memory_limit",
        "compile_cpu_time",
    ] {
        constraint(body, name, None)?;
    }
    Ok(limits)
}

/// One numeric constraint, the way Piston reads it: absent, null, false, 0 (and -1, Piston's
/// "unlimited", which here means the server's default) leave the default.
fn constraint(body: &Value, name: &str, configured: Option<u64>) -> Result<Option<u64>, String> {
    let value = match body.get(name) {
        None | Some(Value::Null) | Some(Value::Bool(false)) => return Ok(None),
        Some(Value::String(s)) if s.is_empty() => return Ok(None),
        Some(v) => v,
    };
    let n = value
        .as_f64()
        .ok_or_else(|| format!("If specified, {name} must be a number"))?;
    if n == 0.0 || n == -1.0 {
        return Ok(None);
    }
    if let Some(limit) = configured {
        if n > limit as f64 {
            return Err(format!(
                "{name} cannot exceed the configured limit of {limit}"
            ));
        }
    }
    if n < 0.0 {
        return Err(format!("{name} must be non-negative"));
    }
    Ok(Some(n as u64))
}

/// The first of `runtimes` (the default first) that `language` names (its language, its name
/// or an alias) at a version in `range`.
pub fn runtime_for<'a>(
    runtimes: impl IntoIterator<Item = &'a RuntimeInfo>,
    language: &str,
    range: &str,
) -> Option<&'a RuntimeInfo> {
    runtimes.into_iter().find(|r| {
        (r.language == language || r.answers_to(language)) && version_matches(range, &r.version)
    })
}

/// A runtime as Piston's `GET /api/v2/runtimes` lists it: its name, when that differs from the
/// language, is one more alias.
pub fn listing(runtime: &RuntimeInfo) -> Value {
    let mut aliases = runtime.aliases.clone();
    if runtime.name != runtime.language {
        aliases.insert(0, runtime.name.clone());
    }
    json!({ "language": runtime.language, "version": runtime.version, "aliases": aliases })
}

/// Piston matches versions with node-semver ranges. Supported here: `*`, x-ranges (`3`, `3.x`,
/// `3.14.*`), exact versions (`3.14.0`), comparators (`>=3.10`, `<4`, `^3`, `~3.14`), several
/// comparators separated by spaces (all must hold), hyphen ranges (`3.10 - 3.14`) and `||`.
pub fn version_matches(range: &str, version: &str) -> bool {
    let Ok(version) = semver::Version::parse(version) else {
        return false;
    };
    range
        .split("||")
        .any(|alternative| alternative_matches(alternative.trim(), &version))
}

fn alternative_matches(alternative: &str, version: &semver::Version) -> bool {
    let parts: Vec<&str> = alternative.split_whitespace().collect();
    let comparators: Vec<String> = match parts.as_slice() {
        [] => return true,
        [low, "-", high] => vec![
            format!(">={}", partial(low)),
            format!("<={}", partial(high)),
        ],
        parts => parts.iter().map(|p| comparator(p)).collect(),
    };
    comparators.iter().all(|c| {
        c.is_empty()
            || semver::Comparator::parse(c)
                .map(|c| c.matches(version))
                .unwrap_or(false)
    })
}

/// A node-semver comparator in the `semver` crate's syntax (a bare version means "exactly",
/// or, when partial, "within": both are `=` there).
fn comparator(part: &str) -> String {
    let op_len = part
        .find(|c: char| c.is_ascii_alphanumeric() || c == '*')
        .unwrap_or(part.len());
    let (op, version) = part.split_at(op_len);
    let version = partial(version);
    if version.is_empty() {
        return String::new(); // `*`, `x`: anything
    }
    let op = if op.is_empty() { "=" } else { op };
    format!("{op}{version}")
}

/// Drops a leading `v` and trailing wildcard components: `v3.x` → `3`, `*` → ``.
fn partial(version: &str) -> String {
    let version = version.trim_start_matches(['v', '=']);
    version
        .split('.')
        .take_while(|c| !matches!(*c, "x" | "X" | "*" | ""))
        .collect::<Vec<_>>()
        .join(".")
}

/// Piston's report of how a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The exit code, when the process exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it, when it was killed.
    pub signal: Option<&'static str>,
    /// Piston's status: "RE" runtime error, "SG" signal, "TO" timeout, "OL" output limit,
    /// "XX" internal error; `None` for a clean exit.
    pub status: Option<&'static str>,
}

/// What a native `python3` under Piston would have reported for a weir outcome: limits kill
/// with SIGKILL (as Piston's timeout and memory limits do), a full disk with SIGXFSZ, a C
/// stack overflow with SIGSEGV; `signal_sent` is the signal a client's stop carried.
pub fn verdict(outcome: &Outcome, signal_sent: Option<&'static str>) -> Verdict {
    let killed = |signal, status| Verdict {
        code: None,
        signal: Some(signal),
        status: Some(status),
    };
    match outcome {
        Outcome::Exited { code: 0 } => Verdict {
            code: Some(0),
            signal: None,
            status: None,
        },
        Outcome::Exited { code } => Verdict {
            code: Some(*code),
            signal: None,
            status: Some("RE"),
        },
        Outcome::Error { .. } => Verdict {
            code: Some(1),
            signal: None,
            status: Some("RE"),
        },
        Outcome::Timeout | Outcome::CpuLimit | Outcome::Idle => killed("SIGKILL", "TO"),
        Outcome::MemoryLimit | Outcome::Shutdown => killed("SIGKILL", "SG"),
        Outcome::OutputLimit => killed("SIGKILL", "OL"),
        Outcome::DiskLimit => killed("SIGXFSZ", "SG"),
        Outcome::StackOverflow => killed("SIGSEGV", "SG"),
        Outcome::Stopped => killed(signal_sent.unwrap_or("SIGKILL"), "SG"),
        Outcome::Crashed { .. } => killed("SIGABRT", "XX"),
    }
}

/// Piston's stage result (`run`): output, how the process ended, and weir's message.
pub fn stage(
    collected: &Collected,
    result: &RunResult,
    signal_sent: Option<&'static str>,
) -> Value {
    let mut value = exit_fields(result, signal_sent);
    value["stdout"] = json!(piston_text(&collected.stdout));
    value["stderr"] = json!(piston_text(&collected.stderr));
    value["output"] = json!(piston_text(&collected.output));
    value
}

/// What ends a Piston text field cut by [`piston_text`].
const CUT_MARKER: &str = "\n[weir: cut here: control characters would have made this field more than twice its size in JSON]\n";

/// Output as Piston's string fields carry it (Piston has no binary form): the bytes as text
/// (invalid UTF-8 replaced), cut with a marker where control characters, six bytes each as
/// JSON escapes, would take the field past twice its size. A response stays within about twice
/// the output it carries.
pub fn piston_text(bytes: &[u8]) -> String {
    use weir_sandbox::json_escaped_len;
    let text = String::from_utf8_lossy(bytes);
    let budget = 2 * text.len();
    if json_escaped_len(text.as_bytes()) <= budget {
        return text.into_owned();
    }
    let mut used = json_escaped_len(CUT_MARKER.as_bytes());
    for (at, c) in text.char_indices() {
        used += json_escaped_len(c.encode_utf8(&mut [0; 4]).as_bytes());
        if used > budget {
            return format!("{}{CUT_MARKER}", &text[..at]);
        }
    }
    text.into_owned()
}

/// `code`, `signal`, `status`, `message` (for anything but a clean exit), `wall_time` (ms) and
/// `memory` (the guest's peak linear memory, bytes).
pub fn exit_fields(result: &RunResult, signal_sent: Option<&'static str>) -> Value {
    let v = verdict(&result.outcome, signal_sent);
    json!({
        "code": v.code,
        "signal": v.signal,
        "status": v.status,
        "message": v.status.map(|_| result.message.clone()),
        "wall_time": result.duration.as_millis() as u64,
        "memory": result.peak_memory,
    })
}

/// What a signal sent over `/connect` does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// Signals whose default action ends a process: the run is stopped.
    Stop(&'static str),
    /// SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: the run is paused.
    Pause,
    /// SIGCONT: a paused run continues.
    Resume,
    /// Signals a process ignores by default (SIGCHLD, SIGURG, SIGWINCH).
    Ignore,
}

/// The signal names Piston accepts (its `globals.SIGNALS`); anything else is refused.
const SIGNALS: [&str; 38] = [
    "SIGABRT",
    "SIGALRM",
    "SIGBUS",
    "SIGCHLD",
    "SIGCLD",
    "SIGCONT",
    "SIGEMT",
    "SIGFPE",
    "SIGHUP",
    "SIGILL",
    "SIGINFO",
    "SIGINT",
    "SIGIO",
    "SIGIOT",
    "SIGKILL",
    "SIGLOST",
    "SIGPIPE",
    "SIGPOLL",
    "SIGPROF",
    "SIGPWR",
    "SIGQUIT",
    "SIGSEGV",
    "SIGSTKFLT",
    "SIGSTOP",
    "SIGTSTP",
    "SIGSYS",
    "SIGTERM",
    "SIGTRAP",
    "SIGTTIN",
    "SIGTTOU",
    "SIGUNUSED",
    "SIGURG",
    "SIGUSR1",
    "SIGUSR2",
    "SIGVTALRM",
    "SIGXCPU",
    "SIGXFSZ",
    "SIGWINCH",
];

/// `None` for a name Piston would refuse ("Invalid signal").
pub fn signal(name: &str) -> Option<SignalAction> {
    let name = *SIGNALS.iter().find(|s| **s == name)?;
    Some(match name {
        "SIGSTOP" | "SIGTSTP" | "SIGTTIN" | "SIGTTOU" => SignalAction::Pause,
        "SIGCONT" => SignalAction::Resume,
        "SIGCHLD" | "SIGCLD" | "SIGURG" | "SIGWINCH" | "SIGINFO" => SignalAction::Ignore,
        other => SignalAction::Stop(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piston_text_stays_within_twice_its_size_in_json() {
        assert_eq!(piston_text(b"hi\n\tthere"), "hi\n\tthere");
        let controls = vec![1u8; 100_000];
        let text = piston_text(&controls);
        assert!(text.ends_with(CUT_MARKER), "{}", &text[text.len() - 40..]);
        let json = serde_json::to_string(&text).unwrap();
        assert!(json.len() <= 2 * controls.len() + 2, "{} bytes", json.len());
    }

    #[test]
    fn versions_match_like_node_semver() {
        for range in [
            "*",
            "x",
            "3",
            "3.x",
            "3.14",
            "3.14.x",
            "3.14.*",
            "3.14.0",
            "v3.14.0",
            "=3.14.0",
            ">=3.10",
            ">3.13",
            "<4",
            "^3",
            "^3.10",
            "~3.14",
            ">=3.10 <4",
            "3.10 - 3.14",
            "2.7 || 3.x",
            "  3.14  ",
        ] {
            assert!(version_matches(range, "3.14.0"), "{range:?} should match");
        }
        for range in [
            "2",
            "3.13",
            "3.14.1",
            "<3.14",
            ">=3.15",
            "~3.13",
            "2.7 || 3.13",
            "3.10 - 3.13",
            "^2",
            ">3",
            "python",
            "3.14.0 <3",
        ] {
            assert!(
                !version_matches(range, "3.14.0"),
                "{range:?} should not match"
            );
        }
    }

    /// The runtimes of a sandbox with only the lean CPython.
    fn lean() -> Vec<RuntimeInfo> {
        vec![weir_sandbox::runtime::python::info().clone()]
    }

    #[test]
    fn language_version_and_aliases_pick_the_runtime() {
        let mut sci = lean()[0].clone();
        sci.name = "python-sci".into();
        sci.version = "3.15.0".into();
        sci.aliases = vec!["sci".into()];
        let runtimes = vec![lean()[0].clone(), sci];
        let pick = |language: &str, range: &str| {
            runtime_for(&runtimes, language, range).map(|r| r.name.as_str())
        };
        assert_eq!(pick("python", "*"), Some("python"));
        assert_eq!(pick("python", "3.15"), Some("python-sci"));
        assert_eq!(pick("python", ">=3.15"), Some("python-sci"));
        assert_eq!(pick("python-sci", "*"), Some("python-sci"));
        assert_eq!(pick("sci", "*"), Some("python-sci"));
        assert_eq!(pick("py", "*"), Some("python"));
        assert_eq!(pick("python", "3.16"), None);
        assert_eq!(pick("ruby", "*"), None);
        let listed = listing(&runtimes[1]);
        assert_eq!(listed["language"], "python");
        assert_eq!(listed["version"], "3.15.0");
        assert_eq!(listed["aliases"], json!(["python-sci", "sci"]));
        assert_eq!(listing(&runtimes[0])["aliases"], json!(["py", "python3"]));
    }

    #[test]
    fn a_job_becomes_a_run_request() {
        let config = ServerConfig::default();
        let body = json!({
            "language": "py", "version": "3.x",
            "files": [
                {"name": "data.bin", "content": "AAE=", "encoding": "base64"},
                {"content": "print(1)"},
                {"name": "helper.py", "content": "X = 1"}
            ],
            "args": ["a", "b"], "stdin": "in", "run_timeout": 2500,
            "run_memory_limit": -1, "compile_timeout": 10000, "run_cpu_time": 100
        });
        let (req, runtime) = job(&body, &config, &lean(), |_| config.limits.memory_bytes).unwrap();
        assert_eq!(runtime.name, "python");
        assert_eq!(req.runtime.as_deref(), Some("python"));
        assert!(matches!(&req.program, Program::Script { filename, source }
            if filename == "file1.code" && source == b"print(1)"));
        assert_eq!(
            req.files,
            vec![
                ("data.bin".to_string(), vec![0, 1]),
                ("helper.py".to_string(), b"X = 1".to_vec())
            ]
        );
        assert_eq!(req.args, ["a", "b"]);
        assert_eq!(req.stdin.as_deref(), Some(&b"in"[..]));
        assert_eq!(req.limits.wall_ms, 2500);
        assert_eq!(req.limits.memory_bytes, config.limits.memory_bytes);
        assert_eq!(req.limits.cpu_fuel, Some(100 * FUEL_PER_MS));
    }

    #[test]
    fn bad_jobs_get_pistons_messages() {
        let config = ServerConfig::default();
        let err =
            |body: Value| job(&body, &config, &lean(), |_| config.limits.memory_bytes).unwrap_err();
        let files = json!([{"content": "print(1)"}]);
        assert_eq!(err(json!([])), "the request body must be a JSON object");
        assert_eq!(
            err(json!({"version": "*"})),
            "language is required as a string"
        );
        assert_eq!(
            err(json!({"language": "python"})),
            "version is required as a string"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*"})),
            "files is required as an array"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*", "files": [{"name": "a"}]})),
            "files[0].content is required as a string"
        );
        assert_eq!(
            err(json!({"language": "cobol", "version": "*", "files": files})),
            "cobol-* runtime is unknown"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "2.7", "files": files})),
            "python-2.7 runtime is unknown"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*",
                       "files": [{"content": "AA==", "encoding": "base64"}]})),
            "files must include at least one utf8 encoded file"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*", "files": files,
                       "run_timeout": "3s"})),
            "If specified, run_timeout must be a number"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*", "files": files,
                       "run_timeout": 10_000_000})),
            format!(
                "run_timeout cannot exceed the configured limit of {}",
                config.max_limits.wall_ms
            )
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*", "files": files,
                       "run_memory_limit": -5})),
            "run_memory_limit must be non-negative"
        );
        assert_eq!(
            err(json!({"language": "python", "version": "*", "files": files, "args": [1]})),
            "args must be an array of strings"
        );
    }

    #[test]
    fn outcomes_read_as_a_native_process_under_piston_would() {
        let v = |o: Outcome| verdict(&o, None);
        assert_eq!(v(Outcome::Exited { code: 0 }).code, Some(0));
        assert_eq!(v(Outcome::Exited { code: 0 }).status, None);
        assert_eq!(v(Outcome::Exited { code: 3 }).status, Some("RE"));
        assert_eq!(v(Outcome::Timeout).signal, Some("SIGKILL"));
        assert_eq!(v(Outcome::Timeout).code, None);
        assert_eq!(v(Outcome::Timeout).status, Some("TO"));
        assert_eq!(v(Outcome::MemoryLimit).signal, Some("SIGKILL"));
        assert_eq!(v(Outcome::OutputLimit).status, Some("OL"));
        assert_eq!(v(Outcome::StackOverflow).signal, Some("SIGSEGV"));
        assert_eq!(
            verdict(&Outcome::Stopped, Some("SIGTERM")).signal,
            Some("SIGTERM")
        );
    }

    #[test]
    fn signals_map_to_stop_pause_resume() {
        assert_eq!(signal("SIGKILL"), Some(SignalAction::Stop("SIGKILL")));
        assert_eq!(signal("SIGINT"), Some(SignalAction::Stop("SIGINT")));
        assert_eq!(signal("SIGSTOP"), Some(SignalAction::Pause));
        assert_eq!(signal("SIGCONT"), Some(SignalAction::Resume));
        assert_eq!(signal("SIGWINCH"), Some(SignalAction::Ignore));
        assert_eq!(signal("SIGNOPE"), None);
        assert_eq!(signal("kill"), None);
    }
}
