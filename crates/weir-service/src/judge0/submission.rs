//! A Judge0 submission: its request read and checked (Judge0's fields, defaults and bounds), the
//! run it asks for, and its verdict as Judge0 reports one.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::SystemTime;
use weir_sandbox::{Collected, Outcome, Program, RunRequest, RunResult, FUEL_PER_NS};

/// A language as Judge0 lists it, and the runtime that runs it.
#[derive(Debug, Clone, Copy)]
pub struct Language {
    pub id: u32,
    pub name: &'static str,
    pub runtime: &'static str,
    pub source_file: &'static str,
    pub run_cmd: &'static str,
}

/// Judge0's ids for weir's runtimes: `python` as Judge0 CE's Python (71, what its clients call
/// `PYTHON`), `python-sci` as Judge0's "Python for ML" (10), `javascript` as Judge0 CE's two
/// JavaScript ids (63, Node.js 12, what its clients call `JAVASCRIPT`; 93, Node.js 18), `ruby`
/// as Judge0 CE's Ruby (72, what its clients call `RUBY`).
pub const LANGUAGES: [Language; 5] = [
    Language {
        id: 71,
        name: "Python (3.14, weir sandbox)",
        runtime: "python",
        source_file: "script.py",
        run_cmd: "python script.py",
    },
    Language {
        id: 10,
        name:
            "Python for ML (3.15 with numpy, pandas, scipy, scikit-learn, matplotlib; weir sandbox)",
        runtime: "python-sci",
        source_file: "script.py",
        run_cmd: "python script.py",
    },
    Language {
        id: 63,
        name: "JavaScript (QuickJS-NG 0.15, node-compatible console, process and readline; weir sandbox)",
        runtime: "javascript",
        source_file: "script.js",
        run_cmd: "node script.js",
    },
    Language {
        id: 93,
        name: "JavaScript (QuickJS-NG 0.15 for Node.js 18 programs; weir sandbox)",
        runtime: "javascript",
        source_file: "script.js",
        run_cmd: "node script.js",
    },
    Language {
        id: 72,
        name: "Ruby (4.0, weir sandbox)",
        runtime: "ruby",
        source_file: "script.rb",
        run_cmd: "ruby script.rb",
    },
];

/// Judge0's statuses: id and description.
pub const STATUSES: [(u8, &str); 14] = [
    (1, "In Queue"),
    (2, "Processing"),
    (3, "Accepted"),
    (4, "Wrong Answer"),
    (5, "Time Limit Exceeded"),
    (6, "Compilation Error"),
    (7, "Runtime Error (SIGSEGV)"),
    (8, "Runtime Error (SIGXFSZ)"),
    (9, "Runtime Error (SIGFPE)"),
    (10, "Runtime Error (SIGABRT)"),
    (11, "Runtime Error (NZEC)"),
    (12, "Runtime Error (Other)"),
    (13, "Internal Error"),
    (14, "Exec Format Error"),
];

/// `{id, description}` of status `id`.
pub fn status(id: u8) -> Value {
    let description = STATUSES
        .iter()
        .find(|(i, _)| *i == id)
        .map_or("Internal Error", |(_, d)| d);
    json!({"id": id, "description": description})
}

/// Judge0's defaults and bounds: seconds, and KB for sizes.
pub mod bounds {
    pub const CPU_TIME: (f64, f64) = (5.0, 15.0);
    pub const CPU_EXTRA: (f64, f64) = (1.0, 5.0);
    pub const WALL_TIME: (f64, f64) = (10.0, 20.0);
    pub const MEMORY_MIN: f64 = 2048.0;
    pub const MEMORY_DEFAULT: f64 = 128_000.0;
    pub const STACK: (f64, f64) = (64_000.0, 128_000.0);
    pub const PROCESSES: (f64, f64) = (60.0, 120.0);
    pub const FILE_SIZE: (f64, f64) = (1024.0, 4096.0);
    pub const RUNS: (f64, f64) = (1.0, 20.0);
    pub const ARGUMENTS: usize = 512;
}

/// A submission's body, as Judge0 takes it (unknown fields are ignored, as Judge0 does).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Params {
    pub source_code: Option<String>,
    pub language_id: Option<Value>,
    pub stdin: Option<String>,
    pub expected_output: Option<String>,
    pub cpu_time_limit: Option<f64>,
    pub cpu_extra_time: Option<f64>,
    pub wall_time_limit: Option<f64>,
    pub memory_limit: Option<f64>,
    pub stack_limit: Option<f64>,
    pub max_processes_and_or_threads: Option<f64>,
    pub enable_per_process_and_thread_time_limit: Option<bool>,
    pub enable_per_process_and_thread_memory_limit: Option<bool>,
    pub max_file_size: Option<f64>,
    pub number_of_runs: Option<f64>,
    pub redirect_stderr_to_stdout: Option<bool>,
    pub callback_url: Option<String>,
    pub command_line_arguments: Option<String>,
    pub compiler_options: Option<String>,
    pub additional_files: Option<String>,
    pub enable_network: Option<bool>,
}

/// What Judge0 answers a submission it refuses with: 422 and `{field: [messages]}`.
pub type Invalid = BTreeMap<&'static str, Vec<String>>;

/// A checked submission: what to run, its limits, and what it was asked with.
#[derive(Debug, Clone)]
pub struct Spec {
    pub language: Language,
    pub source: Vec<u8>,
    pub stdin: Option<Vec<u8>>,
    pub expected: Option<Vec<u8>>,
    pub cpu_time: f64,
    pub cpu_extra: f64,
    pub wall_time: f64,
    /// KB; `None`: the runtime's default.
    pub memory: Option<f64>,
    pub stack: f64,
    pub processes: f64,
    pub file_size: f64,
    pub runs: u32,
    pub redirect: bool,
    pub callback: Option<String>,
    pub arguments: Option<String>,
    /// `arguments` split as a shell splits them.
    pub args: Vec<String>,
    pub network: bool,
}

impl Spec {
    /// Reads `params` (text fields in base64 when `base64`) as Judge0 does, within the server's
    /// `max` limits, for the runtimes `hosted` names: the spec, or every field at fault with
    /// Judge0's kind of message.
    pub fn read(
        params: Params,
        base64: bool,
        max: &weir_sandbox::Limits,
        hosted: impl Fn(&str) -> bool,
    ) -> Result<Spec, Invalid> {
        let mut invalid = Invalid::new();
        let mut text = |name: &'static str, value: Option<String>| -> Option<Vec<u8>> {
            let value = value?;
            if !base64 {
                return Some(value.into_bytes());
            }
            let cleaned: String = value.chars().filter(|c| !c.is_whitespace()).collect();
            match base64::engine::general_purpose::STANDARD.decode(cleaned) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    invalid
                        .entry(name)
                        .or_default()
                        .push("is not valid base64".into());
                    None
                }
            }
        };
        let source = text("source_code", params.source_code);
        let stdin = text("stdin", params.stdin);
        let expected = text("expected_output", params.expected_output);
        let language = language_of(params.language_id.as_ref()).filter(|l| hosted(l.runtime));
        if source.is_none() && !invalid.contains_key("source_code") {
            invalid.insert("source_code", vec!["can't be blank".into()]);
        }
        match (&params.language_id, language) {
            (None, _) => drop(invalid.insert("language_id", vec!["can't be blank".into()])),
            (Some(id), None) => drop(invalid.insert(
                "language_id",
                vec![format!("language with id {id} doesn't exist")],
            )),
            _ => {}
        }
        let mut range = |name: &'static str, value: Option<f64>, (default, max): (f64, f64)| {
            let value = value.unwrap_or(default);
            if !(0.0..=max).contains(&value) {
                invalid
                    .entry(name)
                    .or_default()
                    .push(format!("must be between 0 and {max}"));
            }
            value
        };
        let cpu_time = range("cpu_time_limit", params.cpu_time_limit, bounds::CPU_TIME);
        let cpu_extra = range("cpu_extra_time", params.cpu_extra_time, bounds::CPU_EXTRA);
        let wall_max = (max.wall_ms as f64 / 1000.0).min(bounds::WALL_TIME.1);
        let wall_time = range(
            "wall_time_limit",
            params.wall_time_limit,
            (bounds::WALL_TIME.0.min(wall_max), wall_max),
        );
        let stack = range("stack_limit", params.stack_limit, bounds::STACK);
        let processes = range(
            "max_processes_and_or_threads",
            params.max_processes_and_or_threads,
            bounds::PROCESSES,
        );
        let file_size = range("max_file_size", params.max_file_size, bounds::FILE_SIZE);
        let runs = range("number_of_runs", params.number_of_runs, bounds::RUNS);
        let memory_max = (max.memory_bytes / 1024) as f64;
        let memory = params.memory_limit;
        if memory.is_some_and(|m| !(bounds::MEMORY_MIN..=memory_max).contains(&m)) {
            invalid.insert(
                "memory_limit",
                vec![format!(
                    "must be between {} and {memory_max}",
                    bounds::MEMORY_MIN
                )],
            );
        }
        if runs < 1.0 {
            invalid.insert("number_of_runs", vec!["must be at least 1".into()]);
        }
        if file_size < 1.0 {
            invalid.insert("max_file_size", vec!["must be at least 1".into()]);
        }
        for (name, value) in [
            ("command_line_arguments", &params.command_line_arguments),
            ("compiler_options", &params.compiler_options),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > bounds::ARGUMENTS) {
                invalid.insert(
                    name,
                    vec![format!(
                        "is too long (maximum is {} characters)",
                        bounds::ARGUMENTS
                    )],
                );
            }
        }
        if params
            .compiler_options
            .as_ref()
            .is_some_and(|o| !o.is_empty())
        {
            invalid.insert(
                "compiler_options",
                vec!["setting compiler options is only allowed for compiled languages".into()],
            );
        }
        let arguments = params.command_line_arguments.as_deref().unwrap_or("");
        let args = match split_arguments(arguments) {
            Ok(args) => args,
            Err(why) => {
                invalid.insert("command_line_arguments", vec![why.into()]);
                Vec::new()
            }
        };
        if params.additional_files.is_some() {
            invalid.insert(
                "additional_files",
                vec!["are not supported by this server (send the program as source_code)".into()],
            );
        }
        if !invalid.is_empty() {
            return Err(invalid);
        }
        let (Some(language), Some(source)) = (language, source) else {
            return Err(invalid);
        };
        Ok(Spec {
            language,
            source,
            stdin,
            expected,
            cpu_time,
            cpu_extra,
            wall_time,
            memory,
            stack,
            processes,
            file_size,
            runs: runs as u32,
            redirect: params.redirect_stderr_to_stdout.unwrap_or(false),
            callback: params.callback_url,
            arguments: params.command_line_arguments,
            args,
            network: params.enable_network.unwrap_or(false),
        })
    }

    /// Bytes of what it was asked with.
    pub fn input_bytes(&self) -> usize {
        self.source.len()
            + self.stdin.as_ref().map_or(0, Vec::len)
            + self.expected.as_ref().map_or(0, Vec::len)
            + self.callback.as_ref().map_or(0, String::len)
            + self.arguments.as_ref().map_or(0, String::len)
    }

    /// The most bytes it can take once judged: what it was asked with and its output limit.
    pub fn most_bytes(&self) -> usize {
        self.input_bytes() + self.file_size as usize * 1024
    }

    /// The run it asks for, on the server's `base` limits and within its `max` ones (before the
    /// runtime's memory default, when it names none).
    pub fn request(&self, base: &weir_sandbox::Limits, max: &weir_sandbox::Limits) -> RunRequest {
        let mut req = RunRequest::script(Vec::new());
        req.limits = *base;
        req.max_limits = Some(*max);
        req.program = Program::Script {
            filename: self.language.source_file.into(),
            source: self.source.clone(),
        };
        req.runtime = Some(self.language.runtime.into());
        req.stdin = Some(self.stdin.clone().unwrap_or_default());
        req.close_stdin = true;
        req.args = self.args.clone();
        let seconds_to_fuel = |s: f64| (s * 1e9) as u64 * FUEL_PER_NS;
        req.limits.cpu_fuel = Some(seconds_to_fuel(self.cpu_time + self.cpu_extra));
        req.limits.wall_ms = (self.wall_time * 1000.0).max(1.0) as u64;
        req.limits.idle_ms = req.limits.wall_ms;
        if let Some(kb) = self.memory {
            req.limits.memory_bytes = kb as u64 * 1024;
        }
        req.limits.output_bytes = self.file_size as u64 * 1024;
        req
    }
}

/// The language a `language_id` names (a number, or a number in a string).
fn language_of(id: Option<&Value>) -> Option<Language> {
    let id = match id? {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f.fract() == 0.0 && f >= 0.0).then_some(f as u64)
        })?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    LANGUAGES.iter().find(|l| u64::from(l.id) == id).copied()
}

/// `command_line_arguments` as a shell splits them: on spaces, tabs and newlines; `'…'` taken
/// as it is, `"…"` with `\` escaping only `$`, `` ` ``, `"`, `\` and a newline; `\` outside
/// quotes escaping the next character. An unclosed quote is refused.
pub fn split_arguments(line: &str) -> Result<Vec<String>, &'static str> {
    let mut args = Vec::new();
    let mut current: Option<String> = None;
    let mut chars = line.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => match chars.peek() {
                Some('$' | '`' | '"' | '\\' | '\n') => {
                    let next = chars.next().unwrap_or('\\');
                    current.get_or_insert_default().push(next);
                }
                _ => current.get_or_insert_default().push('\\'),
            },
            (Some(_), c) => current.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.get_or_insert_default();
            }
            (None, '\\') => {
                if let Some(next) = chars.next() {
                    current.get_or_insert_default().push(next);
                }
            }
            (None, ' ' | '\t' | '\n') => args.extend(current.take()),
            (None, c) => current.get_or_insert_default().push(c),
        }
    }
    if quote.is_some() {
        return Err("has an unclosed quote");
    }
    args.extend(current);
    Ok(args)
}

/// One run's result as Judge0 reports it.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub status: u8,
    pub stdout: Vec<u8>,
    pub stderr: Option<Vec<u8>>,
    pub message: Option<String>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    /// CPU seconds.
    pub time: f64,
    pub wall_time: f64,
    /// KB.
    pub memory: u64,
    pub run_id: String,
}

impl Verdict {
    /// The verdict of a run of `spec` that ended with `result` having printed `collected`.
    pub fn of(spec: &Spec, run_id: &str, collected: &Collected, result: &RunResult) -> Verdict {
        let (stdout, stderr) = match spec.redirect {
            true => (collected.output.clone(), None),
            false => (collected.stdout.clone(), Some(collected.stderr.clone())),
        };
        let (status, exit_code, exit_signal) = match &result.outcome {
            Outcome::Exited { code: 0 } => {
                let accepted = spec
                    .expected
                    .as_ref()
                    .is_none_or(|e| judged(e) == judged(&stdout));
                (if accepted { 3 } else { 4 }, Some(0), None)
            }
            Outcome::Exited { code } => (11, Some(*code), None),
            Outcome::Error { .. } => (11, Some(1), None),
            Outcome::Timeout | Outcome::CpuLimit => (5, None, None),
            Outcome::StackOverflow => (7, None, Some(11)),
            Outcome::OutputLimit | Outcome::DiskLimit => (8, None, Some(25)),
            Outcome::MemoryLimit => (12, None, Some(9)),
            _ => (13, None, None),
        };
        let message = match status {
            3 | 4 => None,
            11 => Some(format!(
                "Exited with error status {}",
                exit_code.unwrap_or(1)
            )),
            _ => Some(result.message.clone()),
        };
        let time = match result.fuel_consumed {
            Some(fuel) => fuel as f64 / FUEL_PER_NS as f64 / 1e9,
            None => result.duration.as_secs_f64(),
        };
        Verdict {
            status,
            stdout,
            stderr,
            message,
            exit_code,
            exit_signal,
            time,
            wall_time: result.duration.as_secs_f64(),
            memory: result.peak_memory as u64 / 1024,
            run_id: run_id.into(),
        }
    }

    /// The verdict of `number_of_runs` runs: the first that was not accepted, or the last,
    /// with time and memory averaged over the runs made.
    pub fn averaged(mut runs: Vec<Verdict>) -> Option<Verdict> {
        let n = runs.len() as f64;
        let (time, wall, memory) = runs.iter().fold((0.0, 0.0, 0u64), |(t, w, m), v| {
            (t + v.time, w + v.wall_time, m + v.memory)
        });
        let mut last = runs.pop()?;
        last.time = time / n;
        last.wall_time = wall / n;
        last.memory = (memory as f64 / n) as u64;
        Some(last)
    }
}

/// Output as Judge0 compares it: each line without trailing blanks, the whole without
/// trailing blanks (blanks as Ruby's `rstrip` has them: whitespace and NUL).
fn judged(text: &[u8]) -> Vec<u8> {
    let blank = |b: &u8| b.is_ascii_whitespace() || *b == 0x0b || *b == 0;
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        let end = line.iter().rposition(|b| !blank(b)).map_or(0, |p| p + 1);
        out.extend_from_slice(&line[..end]);
    }
    let end = out.iter().rposition(|b| !blank(b)).map_or(0, |p| p + 1);
    out.truncate(end);
    out
}

/// Every field `GET /submissions/{token}?fields=*` returns.
pub const ALL_FIELDS: [&str; 35] = [
    "source_code",
    "language_id",
    "stdin",
    "expected_output",
    "stdout",
    "status_id",
    "created_at",
    "finished_at",
    "time",
    "memory",
    "stderr",
    "token",
    "number_of_runs",
    "cpu_time_limit",
    "cpu_extra_time",
    "wall_time_limit",
    "memory_limit",
    "stack_limit",
    "max_processes_and_or_threads",
    "enable_per_process_and_thread_time_limit",
    "enable_per_process_and_thread_memory_limit",
    "max_file_size",
    "compile_output",
    "exit_code",
    "exit_signal",
    "message",
    "wall_time",
    "compiler_options",
    "command_line_arguments",
    "redirect_stderr_to_stdout",
    "callback_url",
    "additional_files",
    "enable_network",
    "status",
    "language",
];

/// Fields of weir's own, shown only when named: `weir_run_id`, the run in the history
/// (`GET /v1/runs/{id}`) behind the submission's verdict.
pub const WEIR_FIELDS: [&str; 1] = ["weir_run_id"];

/// The fields a submission is shown with when none are named.
pub const DEFAULT_FIELDS: [&str; 8] = [
    "token",
    "time",
    "memory",
    "stdout",
    "stderr",
    "compile_output",
    "message",
    "status",
];

/// The fields `fields` names (`*`: all; absent: the default ones), or the unknown ones.
pub fn fields(asked: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(asked) = asked.filter(|a| !a.trim().is_empty()) else {
        return Ok(DEFAULT_FIELDS.to_vec());
    };
    if asked.trim() == "*" {
        return Ok(ALL_FIELDS.to_vec());
    }
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for name in asked.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match ALL_FIELDS.iter().chain(&WEIR_FIELDS).find(|f| **f == name) {
            Some(field) => known.push(*field),
            None => unknown.push(name.to_string()),
        }
    }
    match unknown.is_empty() {
        true => Ok(known),
        false => Err(format!("invalid fields: [{}]", unknown.join(", "))),
    }
}

/// A submission's state.
#[derive(Debug, Clone)]
pub enum State {
    Queued,
    Processing,
    Done(Box<Verdict>),
}

/// A text field as the response carries it: base64 when asked, else the text, or `None` with a
/// note in `utf8_failed` when it is not UTF-8.
fn text_field(bytes: Option<&[u8]>, base64: bool, utf8_failed: &mut bool) -> Value {
    let Some(bytes) = bytes else {
        return Value::Null;
    };
    if base64 {
        return base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text.into(),
        Err(_) => {
            *utf8_failed = true;
            Value::Null
        }
    }
}

/// Judge0's time format: seconds, as a string with three decimals.
fn seconds(s: f64) -> Value {
    format!("{s:.3}").into()
}

/// `2024-05-01T10:00:00.123Z`.
fn timestamp(at: SystemTime) -> Value {
    humantime::format_rfc3339_millis(at).to_string().into()
}

/// What `fields` of a submission show.
pub struct View<'a> {
    pub token: &'a str,
    pub spec: &'a Spec,
    pub state: &'a State,
    pub created: SystemTime,
    pub finished: Option<SystemTime>,
}

impl View<'_> {
    /// The submission as Judge0 shows `fields` of it.
    pub fn render(&self, fields: &[&str], base64: bool) -> Value {
        let spec = self.spec;
        let done = match self.state {
            State::Done(v) => Some(v.as_ref()),
            _ => None,
        };
        let status_id = match self.state {
            State::Queued => 1,
            State::Processing => 2,
            State::Done(v) => v.status,
        };
        let mut utf8_failed = false;
        let mut out = Map::new();
        for field in fields {
            let mut text = |b: Option<&[u8]>| text_field(b, base64, &mut utf8_failed);
            let value = match *field {
                "token" => self.token.into(),
                "source_code" => text(Some(&spec.source)),
                "language_id" => spec.language.id.into(),
                "stdin" => text(spec.stdin.as_deref()),
                "expected_output" => text(spec.expected.as_deref()),
                "stdout" => text(done.map(|v| v.stdout.as_slice()).filter(|s| !s.is_empty())),
                "stderr" => text(
                    done.and_then(|v| v.stderr.as_deref())
                        .filter(|s| !s.is_empty()),
                ),
                "compile_output" => Value::Null,
                "message" => text(done.and_then(|v| v.message.as_deref()).map(str::as_bytes)),
                "status_id" => status_id.into(),
                "status" => status(status_id),
                "created_at" => timestamp(self.created),
                "finished_at" => self.finished.map_or(Value::Null, timestamp),
                "time" => done.map_or(Value::Null, |v| seconds(v.time)),
                "wall_time" => done.map_or(Value::Null, |v| seconds(v.wall_time)),
                "memory" => done.map_or(Value::Null, |v| v.memory.into()),
                "exit_code" => done.and_then(|v| v.exit_code).into(),
                "exit_signal" => done.and_then(|v| v.exit_signal).into(),
                "number_of_runs" => spec.runs.into(),
                "cpu_time_limit" => spec.cpu_time.into(),
                "cpu_extra_time" => spec.cpu_extra.into(),
                "wall_time_limit" => spec.wall_time.into(),
                "memory_limit" => spec.memory.into(),
                "stack_limit" => spec.stack.into(),
                "max_processes_and_or_threads" => spec.processes.into(),
                "enable_per_process_and_thread_time_limit"
                | "enable_per_process_and_thread_memory_limit" => false.into(),
                "max_file_size" => spec.file_size.into(),
                "compiler_options" | "additional_files" => Value::Null,
                "command_line_arguments" => spec.arguments.clone().into(),
                "redirect_stderr_to_stdout" => spec.redirect.into(),
                "callback_url" => spec.callback.clone().into(),
                "enable_network" => spec.network.into(),
                "language" => json!({"id": spec.language.id, "name": spec.language.name}),
                "weir_run_id" => done.map(|v| v.run_id.clone()).into(),
                _ => Value::Null,
            };
            out.insert((*field).to_string(), value);
        }
        if utf8_failed {
            out.insert(
                "message".into(),
                "some attributes for this submission cannot be converted to UTF-8, use \
                 base64_encoded=true"
                    .into(),
            );
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_compared_as_judge0_compares_it() {
        assert_eq!(judged(b"1 2 \n3\t\n\n\n"), b"1 2\n3");
        assert_eq!(judged(b"a\r\nb\r\n"), b"a\nb");
        assert_eq!(judged(b"1\x0b\n\0"), b"1");
        assert_ne!(judged(b" a"), judged(b"a"));
    }

    #[test]
    fn arguments_split_as_a_shell_splits_them() {
        assert_eq!(
            split_arguments(r#"a "b c" 'd e' f\ g "h\"i" "j\nk""#).unwrap(),
            ["a", "b c", "d e", "f g", "h\"i", "j\\nk"]
        );
        assert!(split_arguments("  ").unwrap().is_empty());
        assert_eq!(split_arguments(r#""""#).unwrap(), [""]);
        assert!(split_arguments("'open").is_err());
    }

    #[test]
    fn unknown_fields_are_named() {
        assert_eq!(fields(None).unwrap(), DEFAULT_FIELDS);
        assert_eq!(fields(Some("*")).unwrap().len(), ALL_FIELDS.len());
        assert_eq!(fields(Some("stdout, token")).unwrap(), ["stdout", "token"]);
        assert_eq!(
            fields(Some("stdout,nope,x")).unwrap_err(),
            "invalid fields: [nope, x]"
        );
    }
}
