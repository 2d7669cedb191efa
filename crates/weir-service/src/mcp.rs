//! The MCP server (Model Context Protocol, with the official Rust SDK `rmcp`): AI agents run
//! Python in the sandbox through the `run_python` tool, over stdio (`weir mcp`) or streamable
//! HTTP at `/mcp` on `weir serve`. A tool call is a one-shot run ([`oneshot`]): the same
//! limits, metrics and run history as `POST /v1/runs`; over HTTP also the same admission (Host,
//! Origin, token, capacity), checked for every request.

use crate::lifecycle::admission::{self, Admitted, ANONYMOUS};
use crate::lifecycle::body::Raw;
use crate::lifecycle::error::Text;
use crate::lifecycle::oneshot::{self, Finished};
use crate::lifecycle::session;
use crate::lifecycle::{EndedBy, Reach};
use crate::protocol::{self, FunctionParams, LimitParams, RunParams};
use crate::sessions::{CellReport, Session};
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use rmcp::handler::server::{router::tool::ToolRouter, wrapper::Parameters};
use rmcp::model::{ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::{
    session::never::NeverSessionManager, StreamableHttpServerConfig, StreamableHttpService,
};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use weir_sandbox::Data;

/// Longest stdout or stderr text a tool result carries, bytes; the rest is cut with a note (the
/// run's own output limit applies first).
const MAX_TEXT_BYTES: usize = 64 << 10;

/// `run_python`'s arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct RunPython {
    /// The Python source to run as `__main__` (a script file `main.py`).
    pub code: String,
    /// Extra files placed beside the script in its working directory: relative path → text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Text on the script's stdin (closed after it: `input()` past it raises `EOFError`).
    pub stdin: Option<String>,
    /// Wall-time limit in milliseconds (the server's default and maximum apply).
    pub timeout_ms: Option<u64>,
    /// The runtime to run in, by name or alias; the server's default without one.
    pub runtime: Option<String>,
    /// Functions the program may call as `from weir import tools; tools.NAME(**kwargs)`,
    /// answered by `callback_url` (which the server's operator must allow).
    #[serde(default)]
    pub functions: Vec<Function>,
    /// Where the program's calls to `functions` are sent, signed (docs/code-mode.md).
    pub callback_url: Option<String>,
    /// The hosts the program may reach with `urllib.request`/`http.client` (`host[:port]`):
    /// the server's allowlist narrowed to these. Absent: whatever the server allows.
    pub network: Option<Vec<String>>,
}

/// `run_code`'s arguments: a program in any hosted language.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct RunCode {
    /// The language: a runtime's name or alias (`python`, `javascript`/`js`/`node`,
    /// `ruby`/`rb`, `python-sci`; the server's instructions list them).
    pub language: String,
    /// The program's source, run as the runtime's script file (`main.py`, `main.js`, `main.rb`).
    pub code: String,
    /// Extra files placed beside the program in its working directory: relative path → text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Text on the program's stdin (closed after it).
    pub stdin: Option<String>,
    /// Wall-time limit in milliseconds (the server's default and maximum apply).
    pub timeout_ms: Option<u64>,
}

/// A function `run_python`'s program may call.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct Function {
    /// Its name: a Python identifier starting with a letter.
    pub name: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// The JSON Schema of its keyword arguments; any object without one.
    #[serde(default)]
    pub parameters: serde_json::Value,
}

/// `session_create`'s arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SessionCreate {
    /// Files placed in the session's working directory first: relative path → text.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The runtime, by name or alias; the server's default without one.
    pub runtime: Option<String>,
    /// Save the session after every cell so it outlives the server process running it.
    #[serde(default)]
    pub durable: bool,
}

/// `session_exec`'s arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SessionExec {
    /// The session, as `session_create` named it.
    pub session_id: String,
    /// The cell's Python source; its last expression's value is returned.
    pub code: String,
    /// Text on the cell's stdin (end of file after it).
    pub stdin: Option<String>,
    /// The cell's time limit in milliseconds (the server's default and maximum apply).
    pub timeout_ms: Option<u64>,
}

/// Arguments naming a session.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SessionRef {
    /// The session, as `session_create` named it.
    pub session_id: String,
}

/// `session_restore`'s arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SnapshotRef {
    /// The snapshot, as `session_snapshot` named it.
    pub snapshot_id: String,
}

/// `session_read_file`'s arguments.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
pub struct SessionFile {
    /// The session, as `session_create` named it.
    pub session_id: String,
    /// The file's path relative to the session's working directory.
    pub path: String,
}

/// Who called, as the HTTP admission found it (absent over stdio), the slot the call holds
/// until its tool is done (even past a client that hung up), and the signal that the client hung
/// up.
#[derive(Clone)]
struct Caller {
    user: Option<String>,
    _slot: Arc<crate::registry::Slot>,
    hangup: CancellationToken,
}

/// The MCP server: one per stdio connection or HTTP session, all sharing the app state.
#[derive(Clone)]
pub struct WeirMcp {
    state: Arc<AppState>,
    tool_router: ToolRouter<Self>,
}

impl WeirMcp {
    /// A server running tool calls on `state`'s sandbox.
    pub fn new(state: Arc<AppState>) -> Self {
        WeirMcp {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// Serves one client over this process's stdin and stdout until it disconnects.
    async fn serve_stdio(self) -> anyhow::Result<()> {
        use rmcp::ServiceExt;
        let running = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| anyhow::anyhow!("MCP over stdio: {e}"))?;
        running
            .waiting()
            .await
            .map_err(|e| anyhow::anyhow!("MCP over stdio: {e}"))?;
        Ok(())
    }

    /// The operator's packages for the default runtime (`weir packages`), for the instructions.
    fn packages(&self) -> String {
        let site = self.state.config.packages_dir.as_ref().and_then(|root| {
            let runtime = self.state.sandbox.runtime(None).ok()?;
            Some(root.join(&runtime.name))
        });
        let installed = site
            .map(|s| crate::packages::installed(&s))
            .unwrap_or_default();
        match installed.is_empty() {
            true => "none".into(),
            false => installed
                .iter()
                .map(|p| format!("{} {}", p.name, p.version))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// What agents are told up front: the runtime, the limits, and what is not there.
    fn instructions(&self) -> String {
        let config = &self.state.config;
        let runtimes: Vec<String> = self
            .state
            .sandbox
            .runtimes()
            .map(|r| format!("{} ({} {})", r.name, r.language, r.version))
            .collect();
        format!(
            "weir runs Python, JavaScript and Ruby in a WebAssembly sandbox. Runtimes: {}; the first is \
             the default (run_code takes any of them by name). \
             The standard library is available, and these packages: {}; nothing else can be \
             installed, and there is no network. Each run_python call starts fresh in an empty \
             working directory holding its files; for state that persists across calls (variables, imports, files), use a \
             session: session_create, then session_exec per cell (an idle session ends after {} \
             s). Limits per run or cell: wall time {} ms by default (at most {} ms), memory {} \
             MiB, output {} KiB.",
            runtimes.join(", "),
            self.packages(),
            config.session_idle().as_secs(),
            config.limits.wall_ms,
            config.max_limits.wall_ms,
            config.limits.memory_bytes >> 20,
            config.limits.output_bytes >> 10,
        )
    }
}

/// A tool's text answer: an error result or a successful one.
fn answer(ok: bool, text: String) -> rmcp::model::CallToolResult {
    let content = vec![ContentBlock::text(text)];
    match ok {
        true => rmcp::model::CallToolResult::success(content),
        false => rmcp::model::CallToolResult::error(content),
    }
}

/// The HTTP admission's record of the call (none over stdio).
fn http_caller(ctx: &RequestContext<RoleServer>) -> Option<&Caller> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
}

/// The caller's user, as the HTTP admission passed it on (none over stdio).
fn caller(ctx: &RequestContext<RoleServer>) -> Option<String> {
    http_caller(ctx).and_then(|caller| caller.user.clone())
}

/// Completes when the call is abandoned: its HTTP client hung up, or the client cancelled it
/// (`notifications/cancelled`, or the stdio connection closed).
async fn abandoned(ctx: &RequestContext<RoleServer>) {
    let hangup = http_caller(ctx).map(|c| c.hangup.clone());
    match hangup {
        Some(hangup) => tokio::select! {
            () = hangup.cancelled() => {}
            () = ctx.ct.cancelled() => {}
        },
        None => ctx.ct.cancelled().await,
    }
}

/// Runs `work` unless the call is abandoned first ([`abandoned`]): then `work` is dropped (a
/// run stops and frees its instance; a cell is interrupted) and the call answers an error no
/// client reads.
async fn unless_abandoned(
    ctx: &RequestContext<RoleServer>,
    work: impl std::future::Future<Output = rmcp::model::CallToolResult>,
) -> rmcp::model::CallToolResult {
    tokio::select! {
        result = work => result,
        () = abandoned(ctx) => answer(false, "the call was abandoned: its client hung up or cancelled it".into()),
    }
}

impl WeirMcp {
    /// The caller's session `id` (a durable one taken over from a node that died,
    /// `session::find`), or a tool error naming it.
    async fn session(
        &self,
        id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<Session>, rmcp::model::CallToolResult> {
        let user = caller(ctx).unwrap_or_else(|| ANONYMOUS.into());
        session::find(&self.state, id, &user)
            .await
            .map_err(|e| match e {
                crate::error::Error::NotFound(_) => answer(
                    false,
                    format!("no session {id:?} (it ended, expired or was never created)"),
                ),
                e => answer(false, e.to_string()),
            })
    }

    /// The caller's session `id` ([`Self::session`]), woken first if it hibernates.
    async fn awake(
        &self,
        id: &str,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<Arc<Session>, rmcp::model::CallToolResult> {
        let k = self.session(id, ctx).await?;
        match session::wake(&self.state, &k).await {
            Ok(()) => Ok(k),
            Err(e) => Err(answer(false, e.to_string())),
        }
    }

    /// A slot for a new session of the caller's, or the refusal as a tool error.
    async fn slot(
        &self,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<crate::registry::Slot, rmcp::model::CallToolResult> {
        admission::slot(&self.state, caller(ctx).as_deref())
            .await
            .map_err(|refusal| {
                admission::count_refusal(&self.state, &refusal);
                answer(false, refusal.to_string())
            })
    }

    /// Starts a session for the caller (`session_create`, `session_restore`).
    async fn start_session(
        &self,
        params: session::CreateParams,
        ctx: &RequestContext<RoleServer>,
    ) -> rmcp::model::CallToolResult {
        let slot = match self.slot(ctx).await {
            Ok(slot) => slot,
            Err(refused) => return refused,
        };
        let user = caller(ctx).unwrap_or_else(|| ANONYMOUS.into());
        match session::start(&self.state, &user, params, slot).await {
            Ok(k) => self.started(&k),
            Err(e) => answer(false, format!("the session could not start: {e}")),
        }
    }

    /// A started session as a tool result.
    fn started(&self, k: &Session) -> rmcp::model::CallToolResult {
        answer(
            true,
            format!(
                "session_id: {}\nruntime: {}\nidle timeout: {} s",
                k.id,
                k.runtime,
                self.state.config.session_idle().as_secs()
            ),
        )
    }
}

#[tool_router]
impl WeirMcp {
    /// Runs a Python program once and reports its output and how it ended.
    #[tool(
        description = "Run a Python program in an isolated sandbox and return its stdout, stderr \
                       and outcome. The standard library and the operator's packages (listed in \
                       the server's instructions), no network, a fresh empty working \
                       directory per run (pass extra files in `files`); nothing persists between \
                       calls. Print what you want to see. Limits: wall time (`timeout_ms`, capped \
                       by the server), memory and output; a run that hits one says which. \
                       With `functions` and a `callback_url` the operator allows, the program \
                       calls them as `from weir import tools; tools.NAME(**kwargs)`, each call \
                       answered by the callback."
    )]
    async fn run_python(
        &self,
        Parameters(args): Parameters<RunPython>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        self.run_once(args, "main.py".into(), ctx).await
    }

    /// Runs a program in any hosted language once.
    #[tool(
        description = "Run a program in an isolated sandbox, in the language named (a runtime's \
                       name or alias: python, javascript/js/node, ruby/rb, python-sci, as the server's \
                       instructions list), and return its stdout, stderr and outcome. No \
                       network, a fresh empty working directory per run; nothing persists \
                       between calls. JavaScript runs on QuickJS with node's console, process, \
                       timers, readline and fs; Ruby is CRuby 4.0 with its standard library. Limits as for \
                       run_python."
    )]
    async fn run_code(
        &self,
        Parameters(args): Parameters<RunCode>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let runtime = match self.state.sandbox.runtime(Some(&args.language)) {
            Ok(runtime) => runtime,
            Err(e) => return Ok(answer(false, e.to_string())),
        };
        let extension = runtime.extensions.first().map_or("txt", String::as_str);
        let filename = format!("main.{extension}");
        let args = RunPython {
            code: args.code,
            files: args.files,
            stdin: args.stdin,
            timeout_ms: args.timeout_ms,
            runtime: Some(runtime.name.clone()),
            functions: Vec::new(),
            callback_url: None,
            network: Some(Vec::new()),
        };
        self.run_once(args, filename, ctx).await
    }

    /// One run to its end, as `run_python` and `run_code` make it.
    async fn run_once(
        &self,
        args: RunPython,
        filename: String,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let user = caller(&ctx);
        let params = RunParams {
            source: args.code,
            filename,
            files: args.files,
            args: Vec::new(),
            stdin: Some(args.stdin.unwrap_or_default()),
            repl: false,
            limits: LimitParams {
                wall_ms: args.timeout_ms,
                ..LimitParams::default()
            },
            deterministic: None,
            record: false,
            runtime: args.runtime,
            return_files: Vec::new(),
            functions: (args.functions.into_iter())
                .map(|f| FunctionParams {
                    name: f.name,
                    description: f.description,
                    parameters: f.parameters,
                })
                .collect(),
            callback_url: args.callback_url,
            network: args.network,
            secrets: Default::default(),
        };
        let callbacks = &self.state.callbacks;
        let callback =
            match callbacks.for_run(params.callback_url.as_deref(), !params.functions.is_empty()) {
                Ok(callback) => callback,
                Err(why) => return Ok(answer(false, why)),
            };
        let tools = match protocol::declared(&params.functions) {
            Ok(tools) => tools,
            Err(why) => return Ok(answer(false, why)),
        };
        let reach = match Reach::from_params(params.network.as_deref(), &params.secrets) {
            Ok(reach) => reach,
            Err(why) => return Ok(answer(false, why.to_string())),
        };
        let config = &self.state.config;
        let memory_given = params.limits.memory_bytes.is_some();
        let mut req = params.into_request(&config.limits, &config.max_limits);
        req.tools = tools;
        self.state.runtime_defaults(&mut req, memory_given);
        req.compile_scope = weir_sandbox::CompileScope::of(user.as_deref(), None);
        let owner = user.as_deref().unwrap_or(ANONYMOUS);
        let run = async {
            match oneshot::execute_with(&self.state, owner, req, false, callback, reach).await {
                Ok(finished) => tool_result(&finished),
                Err(e) => answer(false, format!("the run could not start: {e}")),
            }
        };
        Ok(unless_abandoned(&ctx, run).await)
    }

    /// Starts a stateful session.
    #[tool(
        description = "Start a stateful Python session (like a notebook kernel): variables, \
                       imports and files persist across `session_exec` calls until \
                       `session_close` or the idle timeout. Returns the session_id. Same sandbox \
                       as run_python: standard library, no network."
    )]
    async fn session_create(
        &self,
        Parameters(args): Parameters<SessionCreate>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let params = session::CreateParams {
            runtime: args.runtime,
            files: args.files,
            durable: args.durable,
            ..Default::default()
        };
        Ok(self.start_session(params, &ctx).await)
    }

    /// Runs a cell in a session.
    #[tool(
        description = "Run Python code in a session's namespace (state from earlier cells is \
                       there). Returns the value of the last expression (as in a REPL), stdout, \
                       stderr and the outcome. An exception keeps the session. A cell past its \
                       time limit (`timeout_ms`) gets KeyboardInterrupt; one cell at a time."
    )]
    async fn session_exec(
        &self,
        Parameters(args): Parameters<SessionExec>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let k = match self.session(&args.session_id, &ctx).await {
            Ok(k) => k,
            Err(e) => return Ok(e),
        };
        let params = session::ExecParams {
            code: args.code,
            stdin: args.stdin,
            interactive: false,
            timeout_ms: args.timeout_ms,
        };
        let cell = async {
            match session::run_cell(&self.state, &k, params).await {
                Ok(report) => cell_result(&report),
                Err(e) => answer(false, e.to_string()),
            }
        };
        Ok(unless_abandoned(&ctx, cell).await)
    }

    /// Interrupts a session's running cell.
    #[tool(
        description = "Interrupt the cell running in a session (raises KeyboardInterrupt in it, \
                       as Ctrl-C would); the session and its variables stay."
    )]
    async fn session_interrupt(
        &self,
        Parameters(args): Parameters<SessionRef>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        Ok(match self.session(&args.session_id, &ctx).await {
            Ok(k) if k.interrupt() => answer(true, "interrupted".into()),
            Ok(_) => answer(false, "no cell is running in this session".into()),
            Err(e) => e,
        })
    }

    /// Lists a session's files.
    #[tool(description = "List the files in a session's working directory (path and size).")]
    async fn session_files(
        &self,
        Parameters(args): Parameters<SessionRef>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let k = match self.awake(&args.session_id, &ctx).await {
            Ok(k) => k,
            Err(e) => return Ok(e),
        };
        Ok(match k.files().await {
            Ok(files) => {
                let lines: Vec<String> = files
                    .iter()
                    .map(|f| format!("{}\t{} bytes", f.path, f.size))
                    .collect();
                answer(true, lines.join("\n"))
            }
            Err(e) => answer(false, e.to_string()),
        })
    }

    /// Reads a file of a session.
    #[tool(
        description = "Read a file from a session's working directory (text; bytes that are not \
                       UTF-8 come back base64-encoded)."
    )]
    async fn session_read_file(
        &self,
        Parameters(args): Parameters<SessionFile>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let k = match self.awake(&args.session_id, &ctx).await {
            Ok(k) => k,
            Err(e) => return Ok(e),
        };
        Ok(match k.read_file(args.path, MAX_TEXT_BYTES as u64).await {
            Ok(data) => match Data::from_bytes(&data) {
                Data::Text(t) => answer(true, t),
                binary => answer(true, serde_json::to_string(&binary).unwrap_or_default()),
            },
            Err(e) => answer(false, e.to_string()),
        })
    }

    /// Saves a session.
    #[tool(
        description = "Save a session's state (variables, functions, imports, files) as a \
                       snapshot, after its running cell ends. Returns the snapshot_id; \
                       session_restore starts a new session from it, any time later, even \
                       after a server restart. A session holding a file open cannot be saved."
    )]
    async fn session_snapshot(
        &self,
        Parameters(args): Parameters<SessionRef>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let k = match self.session(&args.session_id, &ctx).await {
            Ok(k) => k,
            Err(e) => return Ok(e),
        };
        Ok(match session::snapshot(&self.state, &k).await {
            Ok(meta) => answer(
                true,
                format!(
                    "snapshot_id: {}
bytes: {}
runtime: {}",
                    meta.snapshot_id, meta.bytes, meta.runtime
                ),
            ),
            Err(e) => answer(false, format!("the session could not be saved: {e}")),
        })
    }

    /// Starts a session from a snapshot.
    #[tool(
        description = "Start a new session from a snapshot (session_snapshot): its variables, \
                       functions, imports and files are there, as they were when it was saved. \
                       Returns the new session_id."
    )]
    async fn session_restore(
        &self,
        Parameters(args): Parameters<SnapshotRef>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let params = session::CreateParams {
            snapshot: Some(args.snapshot_id),
            ..Default::default()
        };
        Ok(self.start_session(params, &ctx).await)
    }

    /// Forks a session.
    #[tool(
        description = "Fork a session: a new session (its own session_id) starting from this \
                       one's current state; the two go their own ways (changes in one are not \
                       seen by the other). Use it to try alternatives from the same point."
    )]
    async fn session_fork(
        &self,
        Parameters(args): Parameters<SessionRef>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        let k = match self.session(&args.session_id, &ctx).await {
            Ok(k) => k,
            Err(e) => return Ok(e),
        };
        let slot = match self.slot(&ctx).await {
            Ok(slot) => slot,
            Err(refused) => return Ok(refused),
        };
        Ok(match session::fork(&self.state, &k, slot).await {
            Ok(forked) => self.started(&forked),
            Err(e) => answer(false, format!("the session could not be forked: {e}")),
        })
    }

    /// Ends a session.
    #[tool(description = "Close a session: its instance, variables and files are freed at once.")]
    async fn session_close(
        &self,
        Parameters(args): Parameters<SessionRef>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::CallToolResult, ErrorData> {
        Ok(match self.session(&args.session_id, &ctx).await {
            Ok(k) => {
                session::end(&self.state, &k.id, EndedBy::Closed).await;
                answer(true, format!("session {} closed", k.id))
            }
            Err(e) => e,
        })
    }
}

/// A cell's report as a tool result: the outcome line, the last expression's value, stdout and
/// stderr; an error result unless the cell ended without an exception.
fn cell_result(report: &CellReport) -> rmcp::model::CallToolResult {
    let outcome = session::cell_outcome(report);
    let mut text = format!("outcome: {outcome} · {} ms", report.duration.as_millis());
    if report.exit.is_some() {
        text.push_str(" · the session has ended");
    }
    if let Some(Err(why)) = &report.saved {
        text.push_str(&format!(" · not saved: {why}"));
    }
    text.push('\n');
    if let Some(value) = report.end.as_ref().and_then(|e| e.value.as_deref()) {
        text.push_str(&format!("--- result ---\n{value}\n"));
    }
    append_stream(&mut text, "stdout", &report.output.stdout);
    append_stream(&mut text, "stderr", &report.output.stderr);
    let mut content = vec![ContentBlock::text(text)];
    if let Some(rich) = report.end.as_ref().and_then(|e| e.rich.as_ref()) {
        content.push(bundle_content(rich, "weir://result"));
    }
    content.extend(images(&report.output.displays));
    match outcome == "ok" {
        true => rmcp::model::CallToolResult::success(content),
        false => rmcp::model::CallToolResult::error(content),
    }
}

/// What a run or cell displayed, as MCP content ([`bundle_content`]).
fn images(displays: &[weir_sandbox::Display]) -> impl Iterator<Item = ContentBlock> + '_ {
    displays
        .iter()
        .enumerate()
        .map(|(n, d)| bundle_content(&d.bundle, &format!("weir://display/{}", n + 1)))
}

/// Formats shown as MCP image content, in the order one is chosen.
const IMAGE_FORMATS: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];
/// Formats shown as an embedded text resource, in the order one is chosen.
const TEXT_FORMATS: &[&str] = &["text/html", "image/svg+xml", "text/markdown", "text/latex"];

/// One MIME bundle as MCP content: an image (base64) when it has one; else its HTML, SVG,
/// Markdown or LaTeX as a text resource of that type under `uri`; else its text.
fn bundle_content(bundle: &weir_sandbox::Bundle, uri: &str) -> ContentBlock {
    let format = |mimes: &'static [&'static str]| {
        mimes.iter().find_map(|m| {
            let text = bundle.data.get(*m)?.as_str()?;
            Some((*m, text))
        })
    };
    if let Some((mime, data)) = format(IMAGE_FORMATS) {
        return ContentBlock::image(data, mime);
    }
    if let Some((mime, text)) = format(TEXT_FORMATS) {
        return ContentBlock::resource(rmcp::model::ResourceContents::TextResourceContents {
            uri: uri.to_owned(),
            mime_type: Some(mime.to_owned()),
            text: text.to_owned(),
            meta: None,
        });
    }
    ContentBlock::text(bundle.plain())
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for WeirMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("weir", env!("CARGO_PKG_VERSION")))
            .with_instructions(self.instructions())
    }
}

/// A finished run as a tool result: one text block with the outcome line, stdout and stderr; an
/// error result unless the program exited with status 0.
fn tool_result(finished: &Finished) -> rmcp::model::CallToolResult {
    let result = &finished.result;
    let mut text = format!(
        "outcome: {} (exit code {}) · {} · {} ms · runtime {} · run {}\n",
        finished.outcome,
        result.outcome.exit_code(),
        result.message,
        result.duration.as_millis(),
        result.runtime,
        finished.id,
    );
    append_stream(&mut text, "stdout", &finished.collected.stdout);
    append_stream(&mut text, "stderr", &finished.collected.stderr);
    let mut content = vec![ContentBlock::text(text)];
    content.extend(images(&finished.collected.displays));
    if finished.outcome == "exited" && result.outcome.exit_code() == 0 {
        rmcp::model::CallToolResult::success(content)
    } else {
        rmcp::model::CallToolResult::error(content)
    }
}

/// Adds a stream's text under its name (nothing for an empty stream), cut at
/// [`MAX_TEXT_BYTES`].
fn append_stream(text: &mut String, name: &str, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let shown = &bytes[..bytes.len().min(MAX_TEXT_BYTES)];
    let body = match Data::from_bytes(shown) {
        Data::Text(t) => t,
        Data::Binary { .. } => String::from_utf8_lossy(shown).into_owned(),
    };
    text.push_str(&format!("--- {name} ---\n{body}"));
    if !body.ends_with('\n') {
        text.push('\n');
    }
    if bytes.len() > MAX_TEXT_BYTES {
        text.push_str(&format!(
            "[{name} cut: {} of {} bytes shown]\n",
            MAX_TEXT_BYTES,
            bytes.len()
        ));
    }
}

/// `weir mcp`: loads the sandbox and the run history for `config` and serves one MCP client
/// over stdin and stdout until it disconnects.
pub async fn serve_stdio(config: crate::config::ServerConfig) -> anyhow::Result<()> {
    config
        .network()
        .map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    let sandbox = weir_sandbox::Sandbox::load_async(config.engine_settings()).await?;
    let history = crate::history::History::open(&config.history)?;
    let state = Arc::new(AppState::new(config, sandbox, history).with_local_durable());
    let reaper = tokio::spawn(session::reap(state.clone()));
    let _reaper = weir_sandbox::AbortOnDrop(reaper);
    let served = WeirMcp::new(state.clone()).serve_stdio().await;
    session::end_all(&state).await;
    state.tracker.close();
    state.tracker.wait().await;
    state.history.flush().await;
    served
}

/// `/mcp`: the streamable HTTP transport behind the admission every entry point passes.
pub fn routes(state: &Arc<AppState>) -> axum::Router<Arc<AppState>> {
    let app = state.clone();
    let config = StreamableHttpServerConfig::default()
        // weir's own admission checks Host (and Origin) before rmcp sees the request.
        .disable_allowed_hosts()
        // Stateless: `run_python` keeps nothing between calls, so the server keeps no MCP
        // session per client either (a session map would grow with every `initialize`).
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        .with_cancellation_token(state.mcp_shutdown.child_token());
    let service: StreamableHttpService<WeirMcp, NeverSessionManager> = StreamableHttpService::new(
        move || Ok(WeirMcp::new(app.clone())),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit))
}

/// Admits an MCP request like any other entry point ([`Admitted`]: `Host`, `Origin` and token,
/// then its body, then a slot, which the call holds until its tool is done). Tells the tool who
/// called and, by a token cancelled when this request is dropped, when the client hangs up.
async fn admit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let admitted = match Admitted::<Raw, Text>::admit(&state, &parts, body).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let hangup = CancellationToken::new();
    // Dropped with this future: when the client hangs up, or once the answer is out.
    let _hung_up = hangup.clone().drop_guard();
    let Raw(body) = admitted.body;
    let mut request = Request::from_parts(parts, axum::body::Body::from(body));
    request.extensions_mut().insert(Caller {
        user: admitted.user,
        _slot: Arc::new(admitted.slot),
        hangup,
    });
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_streams_are_cut_with_a_note_and_empty_ones_left_out() {
        let mut text = String::new();
        append_stream(&mut text, "stdout", b"");
        assert_eq!(text, "");
        append_stream(&mut text, "stdout", b"hi");
        assert_eq!(text, "--- stdout ---\nhi\n");
        let mut long = String::new();
        append_stream(&mut long, "stderr", &vec![b'x'; MAX_TEXT_BYTES + 10]);
        assert!(long.ends_with(&format!(
            "[stderr cut: {MAX_TEXT_BYTES} of {} bytes shown]\n",
            MAX_TEXT_BYTES + 10
        )));
    }
}
