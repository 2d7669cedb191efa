//! Host functions ("code mode"): functions an embedder gives a run, which its program calls as
//! ordinary Python functions — `from weir import tools; tools.get_weather(city="Oslo")` — with
//! JSON values in and out, blocking in the guest and async on the host. A host error is raised
//! in the guest as `weir.ToolError` with the host's message. docs/code-mode.md.
//!
//! Bounded per run by [`ToolLimits`]: calls, bytes each way, time per call. A call counts in
//! the run's wall time; an interrupt ends the wait (the guest raises `KeyboardInterrupt`), and
//! stopping the run drops the call's future.

use serde_json::Value;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a host function returns: its value, or an error message the guest raises.
pub type ToolResult = std::result::Result<Value, String>;
/// A host function's pending answer.
pub type ToolFuture = Pin<Box<dyn Future<Output = ToolResult> + Send>>;
type Handler = Arc<dyn Fn(Value) -> ToolFuture + Send + Sync>;

/// The most functions one run may be given.
pub const MAX_TOOLS: usize = 256;
/// The longest function name, bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// One host function: its name (a Python identifier), what it does, the JSON Schema of its
/// keyword arguments, and the closure that answers it.
#[derive(Clone)]
pub struct Tool {
    /// The name the guest calls it by: `tools.NAME(...)`.
    pub name: String,
    /// What it does, for whoever writes the code that calls it.
    pub description: String,
    /// The JSON Schema of its arguments (an object's), as given.
    pub parameters: Value,
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

/// The host functions a run may call, and their limits. Build with [`Tools::new`] and
/// [`Tools::add`]; give it to a run as `RunRequest::tools`.
#[derive(Clone, Default)]
pub struct Tools {
    by_name: BTreeMap<String, Tool>,
    /// The run's bounds on calling them.
    pub limits: ToolLimits,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("names", &self.by_name.keys().collect::<Vec<_>>())
            .field("limits", &self.limits)
            .finish()
    }
}

impl Tools {
    /// No functions, default limits.
    pub fn new() -> Self {
        Tools::default()
    }

    /// Adds a function. Refused: a name that is not a Python identifier (or starts with `_`),
    /// longer than [`MAX_NAME_BYTES`], given twice, or past [`MAX_TOOLS`].
    pub fn add<F, Fut>(
        mut self,
        name: &str,
        description: &str,
        parameters: Value,
        handler: F,
    ) -> crate::Result<Self>
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ToolResult> + Send + 'static,
    {
        check_name(name)?;
        if self.by_name.contains_key(name) {
            return Err(invalid(format!("{name:?} is given twice")));
        }
        if self.by_name.len() == MAX_TOOLS {
            return Err(invalid(format!("more than {MAX_TOOLS}")));
        }
        let handler: Handler = Arc::new(move |args| Box::pin(handler(args)));
        let tool = Tool {
            name: name.to_owned(),
            description: description.to_owned(),
            parameters,
            handler,
        };
        self.by_name.insert(name.to_owned(), tool);
        Ok(self)
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
        self.by_name.is_empty()
    }

    /// These functions restricted to `names` (a run narrowing what its embedder offers).
    pub fn only(&self, names: &[String]) -> Tools {
        Tools {
            by_name: (self.by_name.iter())
                .filter(|(name, _)| names.contains(name))
                .map(|(name, tool)| (name.clone(), tool.clone()))
                .collect(),
            limits: self.limits,
        }
    }
}

fn invalid(why: String) -> crate::Error {
    crate::Error::Tools(why)
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

/// A run's side of its host functions: the functions and the calls made so far.
#[derive(Debug)]
pub(crate) struct ToolBox {
    tools: Tools,
    calls: AtomicU32,
}

impl ToolBox {
    pub(crate) fn new(tools: Tools) -> Self {
        ToolBox {
            tools,
            calls: AtomicU32::new(0),
        }
    }

    /// Calls `name` with `args` (JSON text from the guest): the result as JSON text, or why
    /// not. Ends early when `interrupted` completes.
    pub(crate) async fn call(
        &self,
        name: &str,
        args: &str,
        interrupted: impl Future<Output = ()>,
    ) -> std::result::Result<String, Failure> {
        tokio::select! {
            answer = self.answer(name, args) => answer.map_err(Failure::Error),
            () = interrupted => Err(Failure::Interrupted),
        }
    }

    async fn answer(&self, name: &str, args: &str) -> std::result::Result<String, String> {
        let limits = self.tools.limits;
        let Some(tool) = self.tools.by_name.get(name) else {
            return Err(format!("no host function named {name:?}"));
        };
        if self.calls.fetch_add(1, Ordering::Relaxed) >= limits.max_calls {
            return Err(format!(
                "the run's {} host-function calls are used up",
                limits.max_calls
            ));
        }
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
        let limit = Duration::from_millis(limits.call_ms);
        let value = match tokio::time::timeout(limit, (tool.handler)(args)).await {
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
}
