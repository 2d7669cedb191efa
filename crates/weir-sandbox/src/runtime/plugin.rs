//! The plug-in point's types: [`Runtime`], [`Loaded`], [`RuntimeInfo`], [`Footprint`].

use crate::launch::Uncaught;
use crate::outcome::Outcome;
use crate::store::GuestState;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use wasmtime::{Engine, Store};

/// What a runtime is: shown to users (`weir runtimes`, Piston's runtime list) and recorded in
/// transcripts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Unique name requests select it by, e.g. `python`.
    pub name: String,
    /// The language it runs, as Piston names it, e.g. `python`.
    pub language: String,
    /// The language version inside the guest, e.g. `3.14.0`.
    pub version: String,
    /// Other names that select it.
    pub aliases: Vec<String>,
    /// File extensions of its programs, without the dot (`weir run hello.js` runs in the runtime
    /// that lists `js`; the IDE names tabs by them).
    pub extensions: Vec<String>,
    /// What the guest was built from: two builds with the same id run every program the same way.
    pub build: String,
    /// sha256 of the guest's bytes, hex.
    pub sha256: String,
}

impl RuntimeInfo {
    /// Whether `name` selects this runtime (its name or an alias).
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }

    /// Whether a program in a file named `filename` is written for this runtime's language.
    pub fn runs_file(&self, filename: &str) -> bool {
        std::path::Path::new(filename)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| self.extensions.iter().any(|x| x.eq_ignore_ascii_case(e)))
    }
}

/// Pooling-allocator resources one instance of a runtime's guest needs at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Core wasm instances.
    pub core_instances: u32,
    /// Linear memories.
    pub memories: u32,
    /// Tables.
    pub tables: u32,
    /// GC heaps (a module using exception handling keeps its thrown exceptions in one); each is
    /// backed by one of the pool's memories, counted in `memories` too.
    pub gc_heaps: u32,
    /// Largest linear memory, bytes: the pool reserves this much address space per memory.
    pub max_memory_bytes: u64,
}

/// What a guest's entry point returned: `Err` for a trap or a host error, `Ok(Err(()))` when the
/// guest reported failure.
pub type CallResult = wasmtime::Result<Result<(), ()>>;

/// A guest's call that owns its store and gives it back when the guest returns.
pub type GuestCall = Pin<Box<dyn Future<Output = (CallResult, Store<GuestState>)> + Send>>;

/// What a runtime asks for the runs it hosts, beyond what the sandbox gives every run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// The memory limit of a run that asks for none, bytes, when the runtime needs more than
    /// an embedder's default (data work does); `None`: the embedder's default. The runtime's
    /// [`Footprint::max_memory_bytes`] is the most any run of it may ask for.
    pub memory_bytes: Option<u64>,
    /// Whether its programs show figures (`Event::Display`).
    pub display: bool,
}

/// A guest kind the sandbox can host.
pub trait Runtime: Send + Sync + 'static {
    /// Its name, language, version and build.
    fn info(&self) -> &RuntimeInfo;

    /// What it asks for the runs it hosts. By default: nothing beyond the sandbox's defaults.
    fn policy(&self) -> Policy {
        Policy::default()
    }

    /// Whether a program that names no runtime belongs in this one rather than the default
    /// (the first runtime that claims it wins). By default: none.
    fn claims(&self, source: &str) -> bool {
        let _ = source;
        false
    }

    /// What one instance needs of the pooling allocator.
    fn footprint(&self) -> Footprint;

    /// Obtains the guest (embedded, or fetched and verified), compiles it for `engine` or loads
    /// the compiled form from `cache_dir`, and links it. Blocking: milliseconds from the cache,
    /// seconds the first time.
    fn load(&self, engine: &Engine, cache_dir: &Path) -> anyhow::Result<Arc<dyn Loaded>>;

    /// The outcome of a guest that trapped with `error`, when the runtime knows what its trap
    /// means (a fault of a stack the guest keeps in its own memory); `None`: the sandbox's
    /// reading (fuel, wasm stack, memory limit, else a crash).
    fn trapped(&self, error: &wasmtime::Error) -> Option<Outcome> {
        let _ = error;
        None
    }

    /// The outcome of a guest that exited with `code`, given the exception it reported (if
    /// any) and whether it hit its memory limit. By default: an uncaught exception with code 1
    /// is an error, anything else an exit.
    fn exited(&self, code: i32, uncaught: Option<&Uncaught>, memory_hit: bool) -> Outcome {
        let _ = memory_hit;
        match uncaught {
            Some(u) if code == 1 => Outcome::Error {
                exception: u.type_name.clone(),
                message: u.message.clone(),
            },
            _ => Outcome::Exited { code },
        }
    }
}

/// What a runtime's guest needs in every run's WASI context beyond the run's own.
#[derive(Debug, Clone, Default)]
pub struct GuestSetup {
    /// Environment variables added to the run's (the run's own win).
    pub env: Vec<(String, String)>,
    /// Read-only directories, `(host, guest path)`, mounted before the run's own.
    pub mounts: Vec<(PathBuf, String)>,
    /// Set for a guest that sees only these, the working directory and the package site
    /// (`SITE_DIR`), always in that order: an empty directory mounted there when a run has no
    /// site. A run asking for any other mount is refused.
    pub site_placeholder: Option<PathBuf>,
}

/// A runtime compiled and linked for one engine.
pub trait Loaded: Send + Sync + 'static {
    /// What every run's WASI context needs for this guest; nothing by default.
    fn setup(&self) -> &GuestSetup {
        static NONE: GuestSetup = GuestSetup {
            env: Vec::new(),
            mounts: Vec::new(),
            site_placeholder: None,
        };
        &NONE
    }

    /// Instantiates the guest in `store` and calls its entry point until the program ends. The
    /// guest asks for its launch first ([`store::launch`](crate::store::launch)).
    fn call<'a>(
        &'a self,
        store: &'a mut Store<GuestState>,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>>;
}
