//! Pre-initialization: CRuby booted (`_initialize`, `ruby-init` with `-EUTF-8`), weir's runner
//! loaded (`guests/ruby/runner.rb`), the working directory entered, then snapshotted into a new
//! module with `wasmtime-wizer`'s rewriter (as `python-sci` is): a run starts where the boot
//! ended, instead of paying its ~200 ms. The boot's memory is capped so the snapshot's is small:
//! under a limit CRuby starts with a 64 MiB heap instead of growing to 320 MiB.
//!
//! The interrupt site (`interrupt::SignalSite`: where CRuby's SIGINT handler records a signal)
//! is tried in the pre-initialized instance before it is kept: a busy loop must end in
//! `Interrupt` and the next one run to its end.

use crate::interrupt::SignalSite;
use crate::runtime::artifact::PROGRESS_TARGET;
use crate::scratch::GUEST_DIR;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use wasmtime::{Config, Engine, Instance, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx};
use wasmtime_wizer::Wizer;

/// The runner, loaded when the guest is pre-initialized.
pub const RUNNER_SOURCE: &str = include_str!("../../../../../guests/ruby/runner.rb");

/// CRuby's command line at boot: UTF-8 strings (stdin's too), and an empty program (without
/// `-e` it would read one from stdin).
const ARGV: [&str; 3] = ["ruby", "-EUTF-8", "-e_=0"];

/// The most memory the boot may take: CRuby sizes its first heap to fit.
const BOOT_MEMORY_BYTES: usize = 96 << 20;

/// The interrupt site of this build (`@ruby/4.0-wasm-wasi` 2.10.1's `ruby+stdlib.wasm`): the
/// addresses of `signal_buff` and `ruby_current_ec`, from its debug build's DWARF (whose code
/// and data sections are the same bytes). Tried before it is used.
const SITE: SignalSite = SignalSite {
    signal_buff: 0x0142_4878,
    current_ec: 0x0142_4c70,
};

/// Bytes of captured output kept from the pre-initialization, for its error message.
const OUTPUT_KEPT: usize = 64 << 10;

/// What identifies a pre-initialized module: the artifact, the runner, the boot and weir's
/// wasmtime.
pub fn build_id() -> String {
    let mut key = Sha256::new();
    key.update(super::artifact::MODULE_SHA256.as_bytes());
    key.update(RUNNER_SOURCE.as_bytes());
    key.update(format!("{ARGV:?} {GUEST_DIR} {BOOT_MEMORY_BYTES} {SITE:?} seeded").as_bytes());
    key.update(crate::runtime::artifact::WASMTIME_VERSION.as_bytes());
    hex::encode(&key.finalize()[..16])
}

/// The pre-initialized module's file under `cache_dir`, made first if missing (once per
/// machine, under a lock); and the interrupt site, when it worked there.
pub fn ensure(cache_dir: &Path, module: &Path) -> anyhow::Result<(PathBuf, Option<SignalSite>)> {
    let path = cache_dir.join(format!("ruby-{}.wasm", build_id()));
    let site_file = path.with_extension("site");
    let site = || {
        std::fs::read_to_string(&site_file)
            .ok()
            .filter(|s| s.trim() == "ok")
            .map(|_| SITE)
    };
    if path.is_file() {
        return Ok((path, site()));
    }
    let _lock = crate::runtime::artifact::FileLock::acquire(&path.with_extension("lock"))?;
    if path.is_file() {
        return Ok((path, site()));
    }
    tracing::info!(target: PROGRESS_TARGET, "pre-initializing ruby (its boot and weir's runner); once, under a minute");
    let started = std::time::Instant::now();
    let wasm_bytes = std::fs::read(module)?;
    // CRuby recurses deeply while booting: a thread with room for the wasm stack.
    let (wasm, works) = std::thread::Builder::new()
        .name("ruby-preinit".into())
        .stack_size(64 << 20)
        .spawn(move || snapshot(&wasm_bytes))?
        .join()
        .map_err(|_| anyhow::anyhow!("pre-initializing ruby panicked"))??;
    let verdict = match &works {
        Ok(()) => "ok".to_owned(),
        Err(why) => {
            tracing::warn!(target: PROGRESS_TARGET, reason = %why, "ruby runs cannot be interrupted: {why}");
            format!("no: {why}")
        }
    };
    crate::runtime::artifact::write_atomically(&site_file, format!("{verdict}\n").as_bytes())?;
    crate::runtime::artifact::write_atomically(&path, &wasm)?;
    let (seconds, megabytes) = (started.elapsed().as_secs_f64(), wasm.len() >> 20);
    tracing::info!(target: PROGRESS_TARGET, seconds, megabytes, "pre-initialized ruby in {seconds:.1} s ({megabytes} MB)");
    Ok((path, works.is_ok().then_some(SITE)))
}

/// The store's data while pre-initializing.
struct Boot {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
}

/// Boots CRuby in an instrumented instance, loads the runner, tries the interrupt site and
/// returns the snapshot module (and whether the site worked).
fn snapshot(wasm: &[u8]) -> anyhow::Result<(Vec<u8>, Result<(), String>)> {
    if hex::encode(Sha256::digest(wasm)) != super::artifact::MODULE_SHA256 {
        anyhow::bail!("ruby+stdlib.wasm changed after it was verified");
    }
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer
        .instrument(wasm)
        .map_err(|e| anyhow::anyhow!("cannot instrument ruby: {e:#}"))?;
    let mut config = Config::new();
    config.max_wasm_stack(8 << 20).async_stack_size(10 << 20);
    let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let module = Module::new(&engine, &instrumented)
        .map_err(|e| anyhow::anyhow!("cannot compile ruby: {e:#}"))?;
    let dir = tempfile::tempdir()?;
    let output = MemoryOutputPipe::new(OUTPUT_KEPT);
    let mut b = WasiCtx::builder();
    b.stdout(output.clone()).stderr(output.clone());
    crate::determinism::Seed(0).seed_random(&mut b);
    // Every run mounts its working directory here first, as this one is: CRuby's C library
    // keeps the directories it found at boot.
    b.preopened_dir(dir.path(), GUEST_DIR, FsPerms::ReadWrite)?;
    let boot = Boot {
        wasi: b.build_p1(),
        limits: StoreLimitsBuilder::new()
            .memory_size(BOOT_MEMORY_BYTES)
            .build(),
    };
    let mut store = Store::new(&engine, boot);
    store.limiter(|b| &mut b.limits);
    let mut linker: Linker<Boot> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |b: &mut Boot| &mut b.wasi)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    super::host::add_to_linker(&mut linker)?;
    linker
        .define_unknown_imports_as_traps(&module)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let instance = linker
        .instantiate(&mut store, &module)
        .map_err(|e| anyhow::anyhow!("cannot instantiate ruby: {e:#}"))?;
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "pre-initializing ruby failed ({what}): {e}\n{}",
            String::from_utf8_lossy(&output.contents())
        )
    };
    call::<(), ()>(&mut store, &instance, "_initialize", ())
        .map_err(|e| failed("_initialize", &e))?;
    let argv = lower_args(&mut store, &instance)?;
    call::<(i32, i32), ()>(
        &mut store,
        &instance,
        "ruby-init",
        (argv, ARGV.len() as i32),
    )
    .map_err(|e| failed("ruby-init", &e))?;
    let setup = format!("{RUNNER_SOURCE}\nDir.chdir({GUEST_DIR:?})\n0\n");
    let (_, state) = eval(&mut store, &instance, &setup).map_err(|e| failed("the runner", &e))?;
    if state != super::guest::STATE_OK {
        return Err(failed("the runner", &format!("rb_protect state {state}")));
    }
    let works = try_site(&mut store, &instance);
    let mut state = crate::runtime::artifact::Snapshotting {
        store: &mut store,
        instance,
    };
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let wasm = rt
        .block_on(wizer.snapshot(&cx, &mut state))
        .map_err(|e| anyhow::anyhow!("cannot snapshot ruby: {e:#}"))?;
    Ok((wasm, works))
}

fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
    store: &mut Store<Boot>,
    instance: &Instance,
    prefix: &str,
    args: P,
) -> anyhow::Result<R> {
    let func = super::guest::export(store, instance, prefix)
        .ok_or_else(|| anyhow::anyhow!("no export {prefix}"))?;
    func.typed::<P, R>(&*store)
        .and_then(|f| f.call(&mut *store, args))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
}

fn realloc(
    store: &mut Store<Boot>,
    instance: &Instance,
    align: i32,
    len: usize,
) -> anyhow::Result<i32> {
    let at: i32 = call(store, instance, "cabi_realloc", (0, 0, align, len as i32))?;
    anyhow::ensure!(at != 0, "the guest could not allocate {len} bytes");
    Ok(at)
}

fn memory(store: &mut Store<Boot>, instance: &Instance) -> anyhow::Result<wasmtime::Memory> {
    instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| anyhow::anyhow!("ruby exports no memory"))
}

/// `ARGV` as the guest's `list<string>`: `{ptr, len}` pairs of NUL-terminated strings (they
/// become C's `argv`).
fn lower_args(store: &mut Store<Boot>, instance: &Instance) -> anyhow::Result<i32> {
    let mem = memory(store, instance)?;
    let list = realloc(store, instance, 4, 8 * ARGV.len())?;
    for (i, arg) in ARGV.iter().enumerate() {
        let bytes = format!("{arg}\0");
        let at = realloc(store, instance, 1, bytes.len())?;
        mem.write(&mut *store, at as usize, bytes.as_bytes())?;
        let mut pair = [0u8; 8];
        pair[..4].copy_from_slice(&at.to_le_bytes());
        pair[4..].copy_from_slice(&(bytes.len() as i32).to_le_bytes());
        mem.write(&mut *store, list as usize + 8 * i, &pair)?;
    }
    Ok(list)
}

/// `rb-eval-string-protect`: the value and `rb_protect`'s state.
fn eval(store: &mut Store<Boot>, instance: &Instance, source: &str) -> anyhow::Result<(i32, i32)> {
    let mem = memory(store, instance)?;
    let at = realloc(store, instance, 1, source.len().max(1))?;
    mem.write(&mut *store, at as usize, source.as_bytes())?;
    let ret: i32 = call(
        store,
        instance,
        "rb-eval-string-protect",
        (at, source.len() as i32),
    )?;
    let mut pair = [0u8; 8];
    mem.read(&*store, ret as usize, &mut pair)?;
    Ok((
        i32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
        i32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
    ))
}

/// A loop that reports how it ended: 0 done, 1 interrupted.
const PROBE: &str = "begin; 200_000.times { }; 0; rescue Interrupt; 1; end";

/// Tries [`SITE`]: a loop ends; with the signal recorded there it ends in `Interrupt`, the
/// record consumed; a loop ends again.
fn try_site(store: &mut Store<Boot>, instance: &Instance) -> Result<(), String> {
    let probe = |store: &mut Store<Boot>| -> Result<Option<i64>, String> {
        let (value, state) = eval(store, instance, PROBE).map_err(|e| e.to_string())?;
        Ok((state == 0).then(|| super::guest::fixnum(value)).flatten())
    };
    if probe(store)? != Some(0) {
        return Err("a loop failed before the site was tried".into());
    }
    let mem = memory(store, instance).map_err(|e| e.to_string())?;
    let len = mem.data_size(&*store);
    let base = std::ptr::NonNull::new(mem.data_ptr(&*store)).ok_or("no memory")?;
    let interrupter = crate::interrupt::Interrupter::armed();
    // SAFETY: the instance's memory, alive and not moving until `detach` below; written on this
    // thread while the guest does not run.
    #[allow(unsafe_code)]
    unsafe {
        interrupter.attach_signal(base, len, SITE)
    };
    let delivered = interrupter.request() && interrupter.deliver();
    let ended = probe(store);
    let pending = interrupter.in_flight();
    interrupter.detach();
    if !delivered {
        return Err("the site is outside the guest's memory".into());
    }
    if ended? != Some(1) {
        return Err(format!("{SITE:?} did not interrupt a loop"));
    }
    if pending {
        return Err(format!("{SITE:?}: the signal was not consumed"));
    }
    if probe(store)? != Some(0) {
        return Err(format!("{SITE:?}: a loop failed after the interrupt"));
    }
    Ok(())
}
