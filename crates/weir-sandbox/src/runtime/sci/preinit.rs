//! Pre-initialization: the module with numpy, pandas, scipy, scikit-learn and matplotlib already
//! imported, and weir's runner loaded, snapshotted into a new module with `wasmtime-wizer`'s
//! rewriting half. The module is instrumented (its globals exported), instantiated on an engine
//! of its own, made to import everything in one `turn`, and its memory and globals are written
//! back as the new module's data and initial values. A run then starts from that state: its
//! imports cost nothing.

use super::artifact::{self, Files};
use crate::interrupt::{InterruptAddrs, ASYNC_EXCEPTION_BIT};
use crate::runtime::artifact::PROGRESS_TARGET;
use crate::scratch::{GUEST_DIR, SITE_DIR};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx};
use wasmtime_wizer::Wizer;

/// The runner, loaded into the guest when it is pre-initialized.
pub const RUNNER_SOURCE: &str = include_str!("../../../../../guests/python-sci/runner.py");
/// Jupyter's display model, shared with the `python` runtime: loaded as `weir_display` before
/// the runner.
pub const DISPLAY_SOURCE: &str = include_str!("../../../../../guests/shared/weir_display.py");

/// Home, temporary files and matplotlib's configuration: in the run's working directory. The
/// same while pre-initializing and in every run.
pub const ENV: [(&str, &str); 4] = [
    ("HOME", GUEST_DIR),
    ("TMPDIR", GUEST_DIR),
    ("MPLCONFIGDIR", "/sandbox/.matplotlib"),
    ("MPLBACKEND", "Agg"),
];

/// Modules imported before the snapshot, so a run's `import` finds them loaded.
pub const PREIMPORT: &[&str] = &[
    "numpy",
    "pandas",
    "scipy",
    "scipy.optimize",
    "scipy.stats",
    "scipy.linalg",
    "scipy.integrate",
    "scipy.interpolate",
    "scipy.signal",
    "scipy.sparse",
    "sklearn",
    "sklearn.linear_model",
    "sklearn.model_selection",
    "sklearn.preprocessing",
    "sklearn.metrics",
    "sklearn.cluster",
    "sklearn.tree",
    "sklearn.ensemble",
    "matplotlib",
    "matplotlib.pyplot",
    "csv",
    "json",
    "statistics",
];

/// How the pre-initialization is kept the same on every machine (part of the build id): its
/// randomness seeded, its directory listings in name order (`super::readdir`), so two machines
/// make the same snapshot from the same files and a transcript replays on both.
const HERMETIC: &str = "seeded random, sorted readdir, interrupt site";

/// Bytes of captured output kept from the pre-initialization, for its error message.
const OUTPUT_KEPT: usize = 64 << 10;

/// What identifies a pre-initialized module: the artifact, the runner, the imports and weir's
/// wasmtime (the snapshot's format).
pub fn build_id() -> String {
    let mut key = Sha256::new();
    key.update(artifact::MODULE_SHA256.as_bytes());
    key.update(RUNNER_SOURCE.as_bytes());
    key.update(DISPLAY_SOURCE.as_bytes());
    for name in PREIMPORT {
        key.update(name.as_bytes());
        key.update([0]);
    }
    key.update(format!("{ENV:?} {GUEST_DIR} {SITE_DIR} {HERMETIC}").as_bytes());
    key.update(crate::runtime::artifact::WASMTIME_VERSION.as_bytes());
    hex::encode(&key.finalize()[..16])
}

/// The pre-initialized module's file under `cache_dir`, made first if missing (once per
/// machine, under a lock). Blocking: minutes the first time (one compile of the original module
/// and the imports), a stat after.
pub fn ensure(cache_dir: &Path, files: &Files) -> anyhow::Result<PathBuf> {
    let path = snapshot_path(cache_dir);
    if path.is_file() {
        return Ok(path);
    }
    let _lock = crate::runtime::artifact::FileLock::acquire(&path.with_extension("lock"))?;
    if path.is_file() {
        return Ok(path);
    }
    tracing::info!(
        target: PROGRESS_TARGET,
        "pre-initializing python-sci (numpy, pandas, scipy, scikit-learn, matplotlib); once, a few minutes"
    );
    let started = std::time::Instant::now();
    let (wasm, addrs) = snapshot(files)?;
    // The addresses first: a snapshot on disk has its addresses beside it, or has none.
    if let Some(addrs) = &addrs {
        crate::runtime::artifact::write_atomically(
            &site_path(&path),
            format!("{addrs}\n").as_bytes(),
        )?;
    }
    crate::runtime::artifact::write_atomically(&path, &wasm)?;
    let (seconds, megabytes) = (started.elapsed().as_secs_f64(), wasm.len() >> 20);
    tracing::info!(
        target: PROGRESS_TARGET,
        seconds,
        megabytes,
        "pre-initialized python-sci in {seconds:.1} s ({megabytes} MB)"
    );
    Ok(path)
}

/// The pre-initialized module's file under `cache_dir`.
pub fn snapshot_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("python-sci-{}.wasm", build_id()))
}

/// Where the interrupt addresses of the snapshot at `wasm` is kept.
fn site_path(wasm: &Path) -> PathBuf {
    wasm.with_extension("site")
}

/// The interrupt addresses found when the snapshot at `wasm` was made (`None`: none was found, or it
/// did not raise `KeyboardInterrupt` when tried; runs then cannot be interrupted).
pub fn interrupt_addrs(wasm: &Path) -> Option<InterruptAddrs> {
    InterruptAddrs::parse(&std::fs::read_to_string(site_path(wasm)).ok()?)
}

/// Runs the imports in an instrumented instance and returns the snapshot module, and the
/// interrupt addresses found (and tried) in that instance.
fn snapshot(files: &Files) -> anyhow::Result<(Vec<u8>, Option<InterruptAddrs>)> {
    let wasm = std::fs::read(&files.module)?;
    let got = hex::encode(Sha256::digest(&wasm));
    if got != artifact::MODULE_SHA256 {
        anyhow::bail!("{} changed after it was verified", files.module.display());
    }
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer
        .instrument(&wasm)
        .map_err(|e| anyhow::anyhow!("cannot instrument python-sci: {e:#}"))?;
    let mut config = Config::new();
    config
        .wasm_exceptions(true)
        .max_wasm_stack(8 << 20)
        .async_stack_size(10 << 20);
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let module = Module::new(&engine, &instrumented)
        .map_err(|e| anyhow::anyhow!("cannot compile python-sci: {e:#}"))?;
    let tmp = tempfile::tempdir()?;
    let output = MemoryOutputPipe::new(OUTPUT_KEPT);
    let mut store = Store::new(&engine, preinit_wasi(files, tmp.path(), &output)?);
    let linker = preinit_linker(&engine)?;
    let instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| anyhow::anyhow!("cannot instantiate python-sci: {e:#}"))?;
    let status = turn(&mut store, &instance, &init_source()).map_err(|e| {
        anyhow::anyhow!(
            "pre-initializing python-sci failed: {e:#}\n{}",
            String::from_utf8_lossy(&output.contents())
        )
    })?;
    if status != 0 {
        anyhow::bail!(
            "pre-initializing python-sci failed (status {status}):\n{}",
            String::from_utf8_lossy(&output.contents())
        );
    }
    let mut state = crate::runtime::artifact::Snapshotting {
        store: &mut store,
        instance,
    };
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let wasm = rt
        .block_on(wizer.snapshot(&cx, &mut state))
        .map_err(|e| anyhow::anyhow!("cannot snapshot python-sci: {e:#}"))?;
    let printed = String::from_utf8_lossy(&output.contents()).into_owned();
    let addrs = find_interrupt_addrs(&mut store, &instance, &printed)
        .map_err(|why| {
            tracing::warn!(
                target: PROGRESS_TARGET,
                reason = %why,
                "python-sci runs cannot be interrupted: {why}"
            )
        })
        .ok();
    Ok((wasm, addrs))
}

/// The WASI context the pre-initialization runs in: the same environment, randomness seed and
/// directories, in the same order, as every run of the snapshot; its output goes to `output`.
fn preinit_wasi(files: &Files, dir: &Path, output: &MemoryOutputPipe) -> anyhow::Result<WasiP1Ctx> {
    let mut b = WasiCtx::builder();
    b.args(&["python"])
        .stdout(output.clone())
        .stderr(output.clone());
    for (name, value) in ENV {
        b.env(name, value);
    }
    crate::determinism::Seed(0).seed_random(&mut b);
    b.preopened_dir(&files.stdlib_dir, artifact::STDLIB_GUEST, FsPerms::ReadOnly)?;
    b.preopened_dir(&files.mpl_data, artifact::MPL_DATA_GUEST, FsPerms::ReadOnly)?;
    // The C library keeps the directories it found here for every run of the snapshot: a run
    // must mount the same ones in the same order (`super::setup`): its working directory third,
    // its package site fourth.
    b.preopened_dir(dir, GUEST_DIR, FsPerms::ReadWrite)?;
    b.preopened_dir(&files.empty, SITE_DIR, FsPerms::ReadOnly)?;
    Ok(b.build_p1())
}

/// The pre-initialization's imports: WASI preview 1, sorted directory listings, and a door
/// that no host answers.
fn preinit_linker(engine: &Engine) -> anyhow::Result<Linker<WasiP1Ctx>> {
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    super::readdir::add_to_preinit_linker(&mut linker)?;
    // No host is bound to the door while pre-initializing.
    linker
        .func_wrap("host", "call", |_: i32, _: i32, _: i32, _: i32| -> i32 {
            -1
        })
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok(linker)
}

/// A loop of Python bytecode: the interpreter checks its eval breaker at every iteration.
const LOOP: &str = "for _weir_i in range(1000):\n    pass\n";

/// Finds the interrupt addresses in the instance just snapshotted and tries it there: a loop ends
/// cleanly, then with the addresses written it ends in `KeyboardInterrupt` (and `async_exc` is
/// consumed), then a loop ends cleanly again. `Err` says why there is none.
fn find_interrupt_addrs(
    store: &mut Store<WasiP1Ctx>,
    instance: &Instance,
    printed: &str,
) -> Result<InterruptAddrs, String> {
    let mut words = printed
        .lines()
        .find_map(|l| l.strip_prefix(SITE_MARKER))
        .ok_or("the pre-initializing turn did not print the addresses' inputs")?
        .split_whitespace()
        .map(|w| w.parse::<u32>().ok());
    let (Some(Some(exception)), Some(Some(ident))) = (words.next(), words.next()) else {
        return Err("the addresses' inputs are not two numbers".into());
    };
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or("no memory export")?;
    let addrs = super::addrs::find(memory.data(&*store), exception, ident)
        .ok_or("no thread state found through the debug offsets")?;
    let word =
        |store: &Store<WasiP1Ctx>, at: u32| super::addrs::u32_at(memory.data(store), at as usize);
    let status =
        |store: &mut Store<WasiP1Ctx>| turn(store, instance, LOOP).map_err(|e| e.to_string());
    if status(store)? != 0 {
        return Err("a loop failed before the addresses were tried".into());
    }
    let breaker = word(store, addrs.eval_breaker).ok_or("eval_breaker out of bounds")?;
    let write = |store: &mut Store<WasiP1Ctx>, at: u32, value: u32| {
        memory
            .write(&mut *store, at as usize, &value.to_le_bytes())
            .map_err(|e| e.to_string())
    };
    write(store, addrs.async_exc, exception)?;
    write(store, addrs.eval_breaker, breaker | ASYNC_EXCEPTION_BIT)?;
    if status(store)? == 0 {
        return Err(format!("{addrs:?} did not interrupt a loop"));
    }
    if word(store, addrs.async_exc) != Some(0) {
        return Err(format!("{addrs:?}: async_exc was not consumed"));
    }
    if status(store)? != 0 {
        return Err(format!("{addrs:?}: a loop failed after the interrupt"));
    }
    Ok(addrs)
}

/// The one turn that loads `weir_display` and the runner as `_weir`, imports everything, and prints (flushed, so
/// nothing stays buffered in the snapshot) what the interrupt addresses is found by.
fn init_source() -> String {
    format!(
        "import sys as _s, types as _t, _thread as _th\n\
         _d = _t.ModuleType('weir_display')\n\
         _d.__file__ = '<weir_display>'\n\
         _s.modules['weir_display'] = _d\n\
         exec(compile({display:?}, '<weir_display>', 'exec', dont_inherit=True), _d.__dict__)\n\
         _m = _t.ModuleType('_weir')\n\
         _m.__file__ = '<weir>'\n\
         exec(compile({runner:?}, '<weir>', 'exec', dont_inherit=True), _m.__dict__)\n\
         _s.modules['_weir'] = _m\n\
         _m._preimport({names:?})\n\
         _s.stdout.write('{marker}%d %d\\n' % (id(KeyboardInterrupt), _th.get_ident()))\n\
         _s.stdout.flush()\n\
         del _s, _t, _m, _d, _th\n\
         import gc as _gc\n\
         _gc.collect()\n\
         _gc.freeze()\n\
         del _gc\n",
        runner = RUNNER_SOURCE,
        display = DISPLAY_SOURCE,
        names = PREIMPORT,
        marker = SITE_MARKER,
    )
}

/// The line the pre-initializing turn prints: `KeyboardInterrupt`'s address and the thread's
/// ident follow it.
const SITE_MARKER: &str = "WEIR-INTERRUPT-SITE ";

/// Runs `source` as one turn of the guest's session interface; its status (0: no exception).
fn turn(store: &mut Store<WasiP1Ctx>, instance: &Instance, source: &str) -> anyhow::Result<i32> {
    let alloc = instance.get_typed_func::<i32, i32>(&mut *store, "host_alloc")?;
    let turn = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "turn")?;
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| anyhow::anyhow!("python-sci exports no memory"))?;
    let len = i32::try_from(source.len())?;
    let ptr = alloc.call(&mut *store, len)?;
    memory.write(&mut *store, ptr as u32 as usize, source.as_bytes())?;
    Ok(turn.call(&mut *store, (ptr, len))?)
}
