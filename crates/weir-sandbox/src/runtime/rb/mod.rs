//! `ruby`: CRuby 4.0 for wasm32-wasip1 with its standard library (ruby.wasm, npm's
//! `@ruby/4.0-wasm-wasi` 2.10.1, [`artifact`], pinned by sha256), pre-initialized past its boot
//! with weir's runner loaded ([`preinit`]). The host drives it through its embedding exports
//! ([`guest`]): a program is one evaluation of `Weir.run`, a session's cell one of `Weir.cell`,
//! the REPL `Weir.repl` (`guests/ruby/runner.rb`), each its own call into the guest, so between
//! cells the instance's memory and globals are the whole session. Output and input are the
//! guest's own WASI calls (`$stdout.sync`, `gets` waiting on the run's stdin); interrupts are a
//! SIGINT recorded where CRuby's handler records one ([`crate::interrupt::SignalSite`]).

pub mod artifact;
mod guest;
mod host;
pub mod preinit;

use crate::event::{CellEnd, CellException};
use crate::interrupt::SignalSite;
use crate::launch::{Capture, Launch, Uncaught};
use crate::outcome::Outcome;
use crate::runtime::plugin::{CallResult, Footprint, Loaded, Policy, Runtime, RuntimeInfo};
use crate::runtime::state::{exited, SessionGuest};
use crate::snapshot::Snapshot;
use crate::store::GuestState;
use base64::Engine as _;
use guest::Exports;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use wasmtime::{AsContextMut, Engine, Instance, InstancePre, Linker, Store};

/// The runtime's name.
pub const NAME: &str = "ruby";

/// The Ruby version inside the guest.
pub const VERSION: &str = "4.0.0";

/// Largest linear memory a `ruby` run may have.
pub const MAX_MEMORY_BYTES: u64 = 2 << 30;

/// One core instance with one memory and one table.
const FOOTPRINT: Footprint = Footprint {
    core_instances: 1,
    memories: 1,
    tables: 1,
    gc_heaps: 0,
    max_memory_bytes: MAX_MEMORY_BYTES,
};

/// Most bytes of a cell's value or an exception kept from the guest.
const MAX_TEXT_BYTES: usize = crate::runtime::python::host::MAX_VALUE_BYTES + 8;

/// The Ruby runtime. Its artifact is fetched into the engine's cache directory.
#[derive(Debug, Default, Clone, Copy)]
pub struct CRuby;

/// What `ruby` is.
pub fn info() -> &'static RuntimeInfo {
    static INFO: OnceLock<RuntimeInfo> = OnceLock::new();
    INFO.get_or_init(|| RuntimeInfo {
        name: NAME.into(),
        language: "ruby".into(),
        version: VERSION.into(),
        aliases: vec!["rb".into(), "ruby4".into()],
        extensions: vec!["rb".into()],
        build: preinit::build_id(),
        sha256: artifact::MODULE_SHA256.into(),
    })
}

impl Runtime for CRuby {
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
        let original = artifact::ensure(cache_dir)?;
        let (snapshot, site) = preinit::ensure(cache_dir, &original)?;
        let module = crate::runtime::artifact::core_module(
            engine,
            cache_dir,
            NAME,
            &preinit::build_id(),
            "ruby (half a minute)",
            || Ok(snapshot),
        )?;
        let mut linker: Linker<GuestState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, GuestState::wasi_p1)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        crate::runtime::clock::add_to_linker(&mut linker)?;
        host::add_to_linker(&mut linker)?;
        linker
            .define_unknown_imports_as_traps(&module)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow::anyhow!("ruby does not link: {e:#}"))?;
        Ok(Arc::new(Linked { pre, site }))
    }

    /// `NoMemoryError` at the run's memory limit is the limit.
    fn exited(&self, code: i32, uncaught: Option<&Uncaught>, memory_hit: bool) -> Outcome {
        match uncaught {
            Some(u) if code == 1 && memory_hit && u.type_name == "NoMemoryError" => {
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
    site: Option<SignalSite>,
}

impl Loaded for Linked {
    fn call<'a>(
        &'a self,
        store: &'a mut Store<GuestState>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let instance = self.pre.instantiate_async(&mut *store).await?;
            let rb = Rb::new(store, instance)?;
            if let (Some(site), Some(base)) = (
                self.site,
                std::ptr::NonNull::new(rb.ex.memory.data_ptr(&*store)),
            ) {
                let len = rb.ex.memory.data_size(&*store);
                // SAFETY: the instance's memory, in a pooled slot that does not move, detached by
                // `GuestState` before the instance goes; written only on this store's thread
                // while the guest waits (epoch callback, stdin and sleep).
                #[allow(unsafe_code)]
                unsafe {
                    store.data().interrupter().attach_signal(base, len, site)
                };
            }
            let launch = crate::store::launch(&mut store.as_context_mut()).await?;
            let status = rb.program(store, &launch).await?;
            if store.data().host.cells.is_none() {
                let status = match (status, launch.repl) {
                    (0, true) => rb.repl(store).await?,
                    (status, _) => status,
                };
                return exited(status);
            }
            // A session: its program has run (a restored one's is empty); its cells follow.
            // A restored one's source buffer was allocated in the memory just replaced.
            let instance = rb.instance;
            let buffer = &rb.buffer;
            let restored = || *buffer.lock().unwrap_or_else(|p| p.into_inner()) = (0, 0);
            crate::runtime::state::serve_core(store, instance, &rb, restored).await
        })
    }
}

/// A pre-initialized CRuby instance and the buffer its evaluations' source goes through.
struct Rb {
    instance: Instance,
    ex: Exports,
    buffer: Mutex<(i32, usize)>,
}

/// `s` as a Ruby string literal of its base64 (the runner decodes it as UTF-8).
fn literal(s: &str) -> String {
    format!("{:?}", base64::engine::general_purpose::STANDARD.encode(s))
}

impl Rb {
    fn new(store: &mut Store<GuestState>, instance: Instance) -> wasmtime::Result<Self> {
        Ok(Rb {
            ex: Exports::of(store, &instance)?,
            instance,
            buffer: Mutex::new((0, 0)),
        })
    }

    /// Evaluates weir's own `source` for the Integer it returns (`None`: it raised).
    async fn integer(
        &self,
        store: &mut Store<GuestState>,
        source: &str,
    ) -> wasmtime::Result<Option<i64>> {
        let (value, state) = self.ex.eval(store, &self.buffer, source).await?;
        if state != guest::STATE_OK {
            return Ok(None);
        }
        let n = guest::fixnum(value);
        self.ex.release(store, value).await?;
        Ok(n)
    }

    /// Evaluates weir's own `source` for the String it returns (`None`: it raised).
    async fn text(
        &self,
        store: &mut Store<GuestState>,
        source: &str,
    ) -> wasmtime::Result<Option<String>> {
        let (value, state) = self.ex.eval(store, &self.buffer, source).await?;
        if state != guest::STATE_OK {
            return Ok(None);
        }
        let bytes = self.ex.string(store, value, MAX_TEXT_BYTES).await?;
        self.ex.release(store, value).await?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// The exception the last run or cell did not catch, as the runner kept it.
    async fn error(&self, store: &mut Store<GuestState>) -> wasmtime::Result<Option<Uncaught>> {
        let text = self.text(store, "Weir.error").await?.unwrap_or_default();
        Ok((!text.is_empty()).then(|| {
            let (type_name, message) = text.split_once('\n').unwrap_or((&text, ""));
            Uncaught {
                type_name: crate::runtime::python::host::cut(
                    type_name,
                    crate::runtime::python::host::MAX_TYPE_NAME_BYTES,
                ),
                message: crate::runtime::python::host::cut(
                    message,
                    crate::runtime::python::host::MAX_MESSAGE_BYTES,
                ),
            }
        }))
    }

    /// Runs the program: its exit status (1 after an uncaught exception, reported).
    async fn program(
        &self,
        store: &mut Store<GuestState>,
        launch: &Launch,
    ) -> wasmtime::Result<i32> {
        let (source, file) = match (&launch.code, &launch.source) {
            (Some(code), _) => (code.clone(), "-e".to_owned()),
            (None, Some(bytes)) => (
                String::from_utf8_lossy(bytes).into_owned(),
                launch.script.clone(),
            ),
            (None, None) if launch.script.is_empty() => (String::new(), "-".to_owned()),
            (None, None) => (format!("load {:?}", launch.script), launch.script.clone()),
        };
        let args: Vec<String> = launch.args.iter().skip(1).map(|a| literal(a)).collect();
        let env: Vec<String> = (launch.env.iter())
            .flat_map(|(k, v)| [literal(k), literal(v)])
            .collect();
        let start = format!(
            "Weir.start({file:?}, [{}], [{}])",
            args.join(","),
            env.join(",")
        );
        if self.integer(store, &start).await? != Some(0) {
            return Err(wasmtime::format_err!(
                "the Ruby runner could not start the run"
            ));
        }
        if source.is_empty() {
            return Ok(0);
        }
        let run = format!("Weir.run({}, {file:?})", literal(&source));
        let status = self.integer(store, &run).await?.unwrap_or(1) as i32;
        if status != 0 {
            if let Some(uncaught) = self.error(store).await? {
                store.data_mut().report_uncaught(uncaught);
            }
        }
        Ok(status)
    }

    /// The console after the program (`ruby -i`-like, as `irb` shows it).
    async fn repl(&self, store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        store.data_mut().repl_started();
        Ok(self.integer(store, "Weir.repl").await?.unwrap_or(1) as i32)
    }
}

/// A cell is an evaluation of `Weir.cell` in the top-level binding (its local variables stay);
/// its value is shown as `inspect` shows it.
impl SessionGuest for Rb {
    async fn cell(
        &self,
        store: &mut Store<GuestState>,
        code: String,
    ) -> wasmtime::Result<Option<i32>> {
        store.data_mut().cell_code(true);
        let shown = self
            .text(store, &format!("Weir.cell({})", literal(&code)))
            .await?;
        store.data_mut().cell_code(false);
        let exception = self.error(store).await?.map(|u| CellException {
            type_name: u.type_name,
            message: u.message,
        });
        let value = shown
            .as_deref()
            .and_then(|s| s.strip_prefix('='))
            .map(crate::runtime::python::host::cell_value);
        store.data_mut().cell_done(CellEnd {
            value: value.filter(|_| exception.is_none()),
            rich: None,
            exception,
        });
        let exit = self.integer(store, "Weir.exit_status").await?.unwrap_or(-1);
        Ok((exit >= 0).then_some(exit as i32))
    }

    async fn finish(&self, _store: &mut Store<GuestState>) -> wasmtime::Result<i32> {
        Ok(0)
    }

    async fn snapshot(
        &self,
        store: &mut Store<GuestState>,
        capture: Capture,
    ) -> crate::error::Result<Snapshot> {
        crate::runtime::state::take_core(store, self.instance, capture)
    }
}
