//! Host functions ("code mode"): functions an embedder gives a run, which its program calls as
//! ordinary Python functions — `from weir import tools; tools.get_weather(city="Oslo")` — with
//! JSON values in and out, blocking in the guest and async on the host. A host error is raised
//! in the guest as `weir.ToolError` with the host's message. docs/code-mode.md.
//!
//! A function is answered either by a closure ([`Tools::add`]) or by the run's caller
//! ([`Tools::declare`]): a call to a declared function is an [`Event::Call`] in the run's events,
//! behind the output printed before it, and the caller answers with [`RunControl::answer_call`]
//! (how `/ws` clients and HTTP callbacks serve the functions they declare).
//!
//! Arguments are checked against the function's JSON Schema before it is called. Bounded per run
//! by [`ToolLimits`]: calls, bytes each way, time per call. A call counts in the run's wall time;
//! an interrupt ends the wait (the guest raises `KeyboardInterrupt`), and stopping the run drops
//! the call's future.
//!
//! A run's network access is a function too, reserved and never listed: [`Tools::with_network`]
//! gives the handler that answers the guest's HTTP requests (`urllib.request` and `http.client`
//! in the guest send them as calls to [`NETWORK_FUNCTION`]); the `weir-egress` crate is the
//! handler that checks and makes them. Its calls are bounded by the handler, not by
//! [`ToolLimits`], and are recorded and replayed as any call is.
//!
//! [`Event::Call`]: crate::Event::Call
//! [`RunControl::answer_call`]: crate::RunControl::answer_call

use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// What a host function returns: its value, or an error message the guest raises.
pub type ToolResult = std::result::Result<Value, String>;
/// A host function's pending answer.
pub type ToolFuture = Pin<Box<dyn Future<Output = ToolResult> + Send>>;
type Closure = Arc<dyn Fn(Value) -> ToolFuture + Send + Sync>;

/// Who answers a function's calls.
#[derive(Clone)]
enum Handler {
    /// The embedder's closure.
    Closure(Closure),
    /// The run's caller, through [`crate::Event::Call`] and [`crate::RunControl::answer_call`].
    Caller,
}

/// The most functions one run may be given.
pub const MAX_TOOLS: usize = 256;
/// The longest function name, bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// One host function: its name (a Python identifier), what it does, the JSON Schema of its
/// keyword arguments, and who answers it.
#[derive(Clone)]
pub struct Tool {
    /// The name the guest calls it by: `tools.NAME(...)`.
    pub name: String,
    /// What it does, for whoever writes the code that calls it.
    pub description: String,
    /// The JSON Schema of its arguments (an object's), as given.
    pub parameters: Value,
    schema: Arc<jsonschema::Validator>,
    handler: Handler,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Bounds on a run's host-function calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolLimits {
    /// Calls per run (for a session, over all its cells).
    pub max_calls: u32,
    /// Bytes of a call's arguments, and of its result, as JSON.
    pub max_bytes: usize,
    /// How long one call may take before the guest gets a `ToolError`.
    pub call_ms: u64,
}

impl Default for ToolLimits {
    fn default() -> Self {
        ToolLimits {
            max_calls: 1_000,
            max_bytes: 1 << 20,
            call_ms: 30_000,
        }
    }
}

/// The reserved function the guest's HTTP requests are calls to ([`Tools::with_network`]).
pub const NETWORK_FUNCTION: &str = "_http";

/// What the sandbox bounds of a run's HTTP requests before its network handler sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkBounds {
    /// Requests per run, refused ones included.
    pub max_requests: u32,
    /// Bytes of one request as JSON (its body in base64, its URL and headers).
    pub max_request_bytes: usize,
}

/// The host functions a run may call, and their limits. Build with [`Tools::new`] and
/// [`Tools::add`]; give it to a run as `RunRequest::tools`.
#[derive(Clone, Default)]
pub struct Tools {
    by_name: BTreeMap<String, Tool>,
    /// What answers the guest's HTTP requests, and their bounds ([`Tools::with_network`]).
    network: Option<(Closure, NetworkBounds)>,
    /// The run's bounds on calling them.
    pub limits: ToolLimits,
    /// A transcript's calls, answered in order instead of any function ([`Tools::replaying`]).
    replay: Option<Arc<Mutex<std::collections::VecDeque<CallRecord>>>>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .field("network", &self.network.is_some())
            .finish()
    }
}

impl Tools {
    /// No functions, default limits.
    pub fn new() -> Self {
        Tools::default()
    }

    /// Adds a function answered by `handler`. Refused: a name that is not a Python identifier
    /// (or starts with `_`), longer than [`MAX_NAME_BYTES`], given twice, or past [`MAX_TOOLS`];
    /// `parameters` that are not a JSON Schema this crate can use without fetching anything.
    pub fn add<F, Fut>(
        self,
        name: &str,
        description: &str,
        parameters: Value,
        handler: F,
    ) -> crate::Result<Self>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ToolResult> + Send + 'static,
    {
        let closure: Closure = Arc::new(move |args| Box::pin(handler(args)));
        self.insert(name, description, parameters, Handler::Closure(closure))
    }

    /// Declares a function the run's caller answers: each call is an [`crate::Event::Call`],
    /// answered with [`crate::RunControl::answer_call`] within the call time limit. Refused as
    /// [`Tools::add`] refuses.
    pub fn declare(self, name: &str, description: &str, parameters: Value) -> crate::Result<Self> {
        self.insert(name, description, parameters, Handler::Caller)
    }

    fn insert(
        mut self,
        name: &str,
        description: &str,
        parameters: Value,
        handler: Handler,
    ) -> crate::Result<Self> {
        check_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(invalid(format!("{name:?} is given twice")));
        }
        if self.by_name.len() == MAX_TOOLS {
            return Err(invalid(format!("more than {MAX_TOOLS}")));
        }
        let schema = schema(name, &parameters)?;
        let tool = Tool {
            name: name.to_owned(),
            description: description.to_owned(),
            parameters,
            schema: Arc::new(schema),
            handler,
        };
        self.by_name.insert(name.to_owned(), tool);
        Ok(self)
    }

    /// With network access: the guest's HTTP requests (calls to [`NETWORK_FUNCTION`], made by
    /// `urllib.request` and `http.client` in the guest) are answered by `handler`, which
    /// checks, makes and bounds them further: they count in `bounds` (each one, refused ones
    /// too; one over its size is refused before it is read) and the run's wall time, not in
    /// [`ToolLimits`], and an interrupt or the run's end drops the request.
    pub fn with_network<F, Fut>(mut self, bounds: NetworkBounds, handler: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ToolResult> + Send + 'static,
    {
        let closure: Closure = Arc::new(move |args| Box::pin(handler(args)));
        self.network = Some((closure, bounds));
        self
    }

    /// With these limits.
    pub fn with_limits(mut self, limits: ToolLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The functions, by name.
    pub fn list(&self) -> impl Iterator<Item = &Tool> {
        self.by_name.values()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.replay.is_none() && self.network.is_none()
    }

    /// The calls a recorded run made, answered again in order with their recorded results (a
    /// replay needs no functions), `max_calls` as recorded. A call that is not the next recorded
    /// one (another name or arguments) gets a `ToolError` saying so, and the replay differs.
    pub fn replaying(max_calls: u32, made: Vec<CallRecord>) -> Self {
        Tools {
            by_name: BTreeMap::new(),
            network: None,
            limits: ToolLimits {
                max_calls,
                ..ToolLimits::default()
            },
            replay: Some(Arc::new(Mutex::new(made.into()))),
        }
    }

    /// These functions restricted to `names` (a run narrowing what its embedder offers).
    pub fn only(&self, names: &[String]) -> Tools {
        Tools {
            by_name: (self.by_name.iter())
                .filter(|(name, _)| names.contains(name))
                .map(|(name, tool)| (name.clone(), tool.clone()))
                .collect(),
            network: self.network.clone(),
            limits: self.limits,
            replay: self.replay.clone(),
        }
    }
}

fn invalid(why: String) -> crate::Error {
    crate::Error::Tools(why)
}

/// The most bytes of a function's JSON Schema.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

/// `parameters` compiled as a JSON Schema (no schema at all, `{}` or `null`, takes any keyword
/// arguments). A schema that refers to another document is refused: nothing is fetched.
fn schema(name: &str, parameters: &Value) -> crate::Result<jsonschema::Validator> {
    let parameters = match parameters {
        Value::Null => &Value::Object(Default::default()),
        p => p,
    };
    if parameters.to_string().len() > MAX_SCHEMA_BYTES {
        return Err(invalid(format!(
            "{name}: parameters: a schema over {MAX_SCHEMA_BYTES} bytes"
        )));
    }
    jsonschema::validator_for(parameters)
        .map_err(|e| invalid(format!("{name}: parameters: not a usable JSON Schema: {e}")))
}

fn check_name(name: &str) -> crate::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(invalid(format!(
            "host function name {name:?}: letters, digits and _, starting with a letter"
        )));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "host function name {name:?}: longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// Why a call has no result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The function failed, or a limit refused the call: the guest raises `weir.ToolError`.
    Error(String),
    /// The run was interrupted while it waited: the guest raises `KeyboardInterrupt`.
    Interrupted,
}

/// A run's side of its host functions: the functions, the calls made so far, and the call
/// waiting for its caller's answer.
pub(crate) struct ToolBox {
    tools: Tools,
    calls: AtomicU32,
    /// The last call's number (calls are numbered from 1 in a run).
    numbered: AtomicU64,
    /// The call to a declared function waiting for [`ToolBox::answer_call`]: at most one, as
    /// the guest waits for each call.
    waiting: Mutex<Option<(u64, oneshot::Sender<ToolResult>)>>,
    /// The calls answered so far, when the run is recorded (at most `max_calls`, and
    /// [`MAX_LOGGED_BYTES`]).
    log: Option<Mutex<Vec<CallRecord>>>,
    /// Bytes of the calls' arguments and answers logged so far.
    logged: std::sync::atomic::AtomicUsize,
    /// Network requests so far.
    requests: AtomicU32,
}

/// The most bytes of calls' arguments and answers a recorded run keeps for its transcript; a
/// call past it gets an error (kept instead).
pub const MAX_LOGGED_BYTES: usize = 64 << 20;

/// The calls a recorded run made, and the calls it was allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallsMade {
    /// `ToolLimits::max_calls` of the run.
    pub max_calls: u32,
    /// Each answered call, in order.
    pub made: Vec<CallRecord>,
}

/// One call as a transcript keeps it: what the guest asked and what it got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The function's name.
    pub name: String,
    /// The arguments as the guest sent them (a JSON string when they were not JSON).
    pub args: Value,
    /// The value the call returned, or the message of the `ToolError` it raised.
    pub result: ToolResult,
}

impl std::fmt::Debug for ToolBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolBox")
            .field("tools", &self.tools)
            .field("calls", &self.calls)
            .finish_non_exhaustive()
    }
}

/// A call to a function the run's caller answers: what [`crate::Event::Call`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The call's number in its run (from 1); the answer names it.
    pub id: u64,
    /// The function's name.
    pub name: String,
    /// Its keyword arguments, checked against its schema.
    pub args: Value,
}

/// Where a declared function's call goes: queued behind the run's output as an event.
pub(crate) trait CallSink: Send + Sync {
    /// Queues the call; `Err` with the reason when the run's output cap refuses it.
    fn push_call(&self, call: Call) -> std::result::Result<(), String>;
}

impl ToolBox {
    /// A run's functions; with `record`, every call that is answered is kept for its
    /// transcript ([`ToolBox::take_log`]).
    pub(crate) fn new(tools: Tools, record: bool) -> Self {
        ToolBox {
            tools,
            calls: AtomicU32::new(0),
            numbered: AtomicU64::new(0),
            waiting: Mutex::new(None),
            log: record.then(|| Mutex::new(Vec::new())),
            logged: Default::default(),
            requests: AtomicU32::new(0),
        }
    }

    /// The calls answered so far (none unless the run is recorded), and the calls allowed.
    pub(crate) fn take_log(&self) -> CallsMade {
        let made = match &self.log {
            Some(log) => std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner())),
            None => Vec::new(),
        };
        CallsMade {
            max_calls: self.tools.limits.max_calls,
            made,
        }
    }

    /// Calls `name` with `args` (JSON text from the guest): the result as JSON text, or why
    /// not. Ends early when `interrupted` completes. A declared function's call goes to `sink`.
    pub(crate) async fn call(
        &self,
        name: &str,
        args: &str,
        sink: &dyn CallSink,
        interrupted: impl Future<Output = ()>,
    ) -> std::result::Result<String, Failure> {
        tokio::select! {
            answer = self.answer(name, args, sink) => answer.map_err(Failure::Error),
            () = interrupted => Err(Failure::Interrupted),
        }
    }

    /// Answers the waiting call `id` (from the run's caller). `Err` when no call `id` waits: it
    /// was answered, timed out, was interrupted, or never was.
    pub(crate) fn answer_call(&self, id: u64, result: ToolResult) -> crate::Result<()> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        match waiting.take() {
            Some((waiting_id, tx)) if waiting_id == id => {
                // The call may have ended since (a timeout racing the answer): nothing waits.
                let _ = tx.send(result);
                Ok(())
            }
            other => {
                *waiting = other;
                Err(invalid(format!("no call {id} is waiting for an answer")))
            }
        }
    }

    /// Puts a call to a declared function to the run's caller and waits for the answer.
    async fn ask_caller(&self, call: Call, sink: &dyn CallSink) -> ToolResult {
        let id = call.id;
        let (tx, rx) = oneshot::channel();
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = Some((id, tx));
        // However the wait ends (answered, timed out, interrupted, the run stopped), the call
        // no longer waits.
        let _forget = Forget { toolbox: self, id };
        sink.push_call(call)?;
        rx.await
            .unwrap_or_else(|_| Err("the run's caller is gone".into()))
    }

    async fn answer(
        &self,
        name: &str,
        args: &str,
        sink: &dyn CallSink,
    ) -> std::result::Result<String, String> {
        let max_calls = self.tools.limits.max_calls;
        // Every call counts, one to a function that does not exist too. Network requests count
        // apart, and a refused one is kept in the transcript like any answer (a replay answers
        // them all from it).
        let mut refused = None;
        if name != NETWORK_FUNCTION {
            if !take_one(&self.calls, max_calls) {
                return Err(format!(
                    "the run's {max_calls} host-function calls are used up"
                ));
            }
        } else if let Some((_, bounds)) = &self.tools.network {
            if !take_one(&self.requests, bounds.max_requests) {
                let max = bounds.max_requests;
                refused = Some(format!("the run's {max} network requests are used up"));
            }
        }
        let mut answer = match (&self.tools.replay, refused) {
            (Some(replay), _) => replayed(replay, name, args),
            (None, Some(why)) => Err(why),
            (None, None) => self.checked(name, args, sink).await,
        };
        if let Some(log) = &self.log {
            let size = args.len() + answer.as_ref().map_or(0, String::len);
            let over = self.logged.fetch_add(size, Ordering::Relaxed) + size > MAX_LOGGED_BYTES;
            if over {
                answer = Err(format!(
                    "{name}: a recorded run keeps at most {MAX_LOGGED_BYTES} bytes of calls and \
                     answers for its transcript"
                ));
            }
            let args = match over {
                // Its arguments are not kept: the replay takes any.
                true => Value::String(UNKEPT.into()),
                false => args_value(args),
            };
            let result = match &answer {
                Ok(text) => Ok(serde_json::from_str(text).unwrap_or(Value::Null)),
                Err(why) => Err(why.clone()),
            };
            let record = CallRecord {
                name: name.to_owned(),
                args,
                result,
            };
            log.lock().unwrap_or_else(|p| p.into_inner()).push(record);
        }
        answer
    }

    /// A call past the count: checked against the limits and the function's schema, then
    /// answered by its closure or its caller.
    async fn checked(
        &self,
        name: &str,
        args: &str,
        sink: &dyn CallSink,
    ) -> std::result::Result<String, String> {
        let limits = self.tools.limits;
        if name == NETWORK_FUNCTION {
            return self.request(args).await;
        }
        let Some(tool) = self.tools.by_name.get(name) else {
            return Err(format!("no host function named {name:?}"));
        };
        if args.len() > limits.max_bytes {
            return Err(format!(
                "{name}: arguments of {} bytes, over the {}-byte limit",
                args.len(),
                limits.max_bytes
            ));
        }
        let args: Value =
            serde_json::from_str(args).map_err(|e| format!("{name}: arguments: {e}"))?;
        if !args.is_object() {
            return Err(format!("{name}: arguments must be keyword arguments"));
        }
        if let Err(e) = tool.schema.validate(&args) {
            let at = e.instance_path().to_string();
            return Err(match at.as_str() {
                "" => format!("{name}: arguments: {e}"),
                at => format!("{name}: argument {}: {e}", at.trim_start_matches('/')),
            });
        }
        let limit = Duration::from_millis(limits.call_ms);
        let answer: Pin<Box<dyn Future<Output = ToolResult> + Send + '_>> = match &tool.handler {
            Handler::Closure(closure) => closure(args),
            Handler::Caller => {
                let call = Call {
                    id: self.numbered.fetch_add(1, Ordering::Relaxed) + 1,
                    name: name.to_owned(),
                    args,
                };
                Box::pin(self.ask_caller(call, sink))
            }
        };
        let value = match tokio::time::timeout(limit, answer).await {
            Ok(answer) => answer?,
            Err(_) => return Err(format!("{name}: no answer within {} ms", limits.call_ms)),
        };
        let text = value.to_string();
        if text.len() > limits.max_bytes {
            return Err(format!(
                "{name}: a result of {} bytes, over the {}-byte limit",
                text.len(),
                limits.max_bytes
            ));
        }
        Ok(text)
    }

    /// An HTTP request from the guest, answered by the run's network handler.
    async fn request(&self, args: &str) -> std::result::Result<String, String> {
        let Some((network, bounds)) = &self.tools.network else {
            return Err("this run has no network access".into());
        };
        let max = bounds.max_request_bytes;
        if args.len() > max {
            return Err(format!(
                "a network request of {} bytes, over the run's {max}-byte limit",
                args.len()
            ));
        }
        let args: Value =
            serde_json::from_str(args).map_err(|e| format!("a network request: {e}"))?;
        Ok(network(args).await?.to_string())
    }
}

/// Clears a declared function's call from [`ToolBox::waiting`] when its wait ends.
struct Forget<'a> {
    toolbox: &'a ToolBox,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut waiting = (self.toolbox.waiting.lock()).unwrap_or_else(|p| p.into_inner());
        if waiting.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *waiting = None;
        }
    }
}

/// The next recorded call's answer, if `name` and `args` are what it was called with.
fn replayed(
    made: &Mutex<std::collections::VecDeque<CallRecord>>,
    name: &str,
    args: &str,
) -> std::result::Result<String, String> {
    let args = args_value(args);
    let mut made = made.lock().unwrap_or_else(|p| p.into_inner());
    match made.pop_front() {
        Some(next) if next.name == name && (next.args == args || next.args == UNKEPT) => {
            next.result.map(|v| v.to_string())
        }
        Some(next) => {
            let why = format!(
                "replay: the program called {name}({args}) where the transcript has {}({})",
                next.name, next.args
            );
            made.push_front(next);
            Err(why)
        }
        None => Err(format!(
            "replay: the program called {name}({args}) after the transcript's last call"
        )),
    }
}

/// What a transcript keeps for the arguments of a call past [`MAX_LOGGED_BYTES`].
const UNKEPT: &str = "<not kept: past the transcript's bound>";

/// Counts one more in `count` unless it reached `max` (never wrapping).
fn take_one(count: &AtomicU32, max: u32) -> bool {
    (count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        (n < max).then_some(n + 1)
    }))
    .is_ok()
}

/// A call's arguments as a transcript keeps them: their JSON, or the text as a JSON string when
/// it is not JSON.
fn args_value(args: &str) -> Value {
    serde_json::from_str(args).unwrap_or_else(|_| Value::String(args.into()))
}
