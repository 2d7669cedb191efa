//! Builds weir's CPython guest component from `guests/python/` when it is missing or its sources
//! changed; `weir-sandbox`'s build script calls [`python_guest`] and embeds the result.
//!
//! The build is made deterministic: `guests/build/deterministic_preinit.c` is preloaded into
//! componentize-py so the interpreter snapshot gets a fixed hash secret and random state (and a
//! fixed wall clock) whatever machine builds it, and componentize-py's temporary files live on a
//! tmpfs (`/dev/shm`) when there is one, whose directory order is creation order: on a disk
//! filesystem it is a hash order that differs between machines and changes the snapshot's heap
//! layout. The component's bytes still differ between builds in places the guest never reads back
//! (file timestamps left in freed memory).
//!
//! After componentize-py, two passes patch the snapshot in place ([`immortalize`], [`seal_heap`]).
//!
//! The component is built by componentize-py (PyPI, pinned below), installed on first use into a
//! private venv under the target directory (or taken from `$WEIR_COMPONENTIZE_PY`). Built
//! components are kept in `target/guest/`, named by the hash of their sources, so debug, release
//! and test builds share one.
//!
//! Build-time code: a failure panics with a message (the build script's way of failing).

#![forbid(unsafe_code)]

pub mod image;
pub mod immortalize;
pub mod interrupt;
pub mod seal_heap;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// A built guest component.
#[derive(Debug, Clone)]
pub struct Built {
    /// Where the component is.
    pub wasm: PathBuf,
    /// sha256 of its bytes, hex.
    pub sha256: String,
    /// Where a host writes to raise `KeyboardInterrupt` in it ([`interrupt`]).
    pub interrupt: interrupt::InterruptSite,
    /// What it was built from: a hash of the guest's sources, the build recipe (this crate's
    /// sources) and the componentize-py version, 32 hex digits. Transcripts name it.
    pub build_id: String,
}

/// The workspace root (this crate lives in `guests/build`).
fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

/// The files the guest is built from: a build script reruns when one of them changes.
pub fn inputs() -> Vec<PathBuf> {
    let root = workspace_root();
    vec![
        root.join("guests/python/runner.py"),
        root.join("guests/python/wit"),
        root.join("guests/shared"),
        root.join("guests/build/src"),
        root.join("guests/build/deterministic_preinit.c"),
    ]
}

/// Builds the CPython guest unless a component built from the same sources is already in
/// `target/guest/` (`$CARGO_TARGET_DIR`, else the workspace's `target`). Panics on failure.
pub fn python_guest() -> Built {
    let root = workspace_root();
    let guest_dir = root.join("guests/python");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out_dir = target.join("guest");
    let recipe = root.join("guests/build");
    let shared = root.join("guests/shared");
    let source_hash = hash_sources(&[&guest_dir, &shared, &recipe.join("src")], &recipe);
    let wasm = out_dir.join(format!("python-{}.wasm", &source_hash[..16]));
    let site_file = wasm.with_extension("interrupt");
    if !wasm.exists() || !site_file.exists() {
        let tool = componentize_py(&target);
        let preload = build_preload(&recipe, &out_dir);
        build_guest(&tool, &guest_dir, &wasm, &preload);
    }
    let bytes = std::fs::read(&wasm)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", wasm.display())));
    let site = std::fs::read_to_string(&site_file)
        .ok()
        .and_then(|text| interrupt::InterruptSite::parse(&text))
        .unwrap_or_else(|| fail(&format!("cannot read {}", site_file.display())));
    Built {
        sha256: hex::encode(Sha256::digest(&bytes)),
        wasm,
        interrupt: site,
        build_id: source_hash[..32].to_string(),
    }
}

/// Compiles the preload library that makes the snapshot deterministic.
fn build_preload(recipe: &Path, out_dir: &Path) -> PathBuf {
    let source = recipe.join("deterministic_preinit.c");
    let lib = out_dir.join("deterministic_preinit.so");
    std::fs::create_dir_all(out_dir)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", out_dir.display())));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    run(
        Command::new(cc)
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&lib)
            .arg(&source)
            .arg("-ldl"),
        "cc (deterministic_preinit.so)",
    );
    lib
}

fn fail(msg: &str) -> ! {
    panic!("weir guest build: {msg}");
}

fn say(msg: &str) {
    println!("cargo:warning=weir guest build: {msg}");
    eprintln!("weir guest build: {msg}");
}

/// sha256 over the guest's source files (path and content), the build recipe (this crate's
/// sources and the preload library's) and the tool version.
fn hash_sources(dirs: &[&Path], recipe: &Path) -> String {
    let mut h = Sha256::new();
    h.update(COMPONENTIZE_PY.as_bytes());
    h.update(std::fs::read(recipe.join("deterministic_preinit.c")).unwrap_or_default());
    for dir in dirs {
        let mut files = Vec::new();
        collect(dir, &mut files);
        files.sort();
        for f in files {
            let rel = f.strip_prefix(dir).unwrap_or(&f);
            h.update(rel.to_string_lossy().as_bytes());
            h.update(std::fs::read(&f).unwrap_or_default());
        }
    }
    hex::encode(h.finalize())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') || name == "__pycache__" {
            continue;
        }
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// The componentize-py executable, installing it into a private venv if needed.
fn componentize_py(target: &Path) -> PathBuf {
    if let Some(tool) = std::env::var_os("WEIR_COMPONENTIZE_PY") {
        return PathBuf::from(tool);
    }
    let venv = target.join("guest-venv");
    let tool = venv.join("bin/componentize-py");
    if tool.exists() {
        return tool;
    }
    say(&format!(
        "installing {COMPONENTIZE_PY} into {}",
        venv.display()
    ));
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(venv.join("bin/pip")).args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            COMPONENTIZE_PY,
        ]),
        "pip install componentize-py",
    );
    tool
}

fn build_guest(tool: &Path, guest_dir: &Path, wasm: &Path, preload: &Path) {
    say("building the CPython guest with componentize-py (10-30 s)");
    let dir = wasm.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", dir.display())));
    let tmp = wasm.with_extension("wasm.tmp");
    // A bytecode cache left by an earlier build would be loaded instead of the source and give
    // the snapshot another heap layout than a fresh checkout's build: always build from source.
    let _ = std::fs::remove_dir_all(guest_dir.join("__pycache__"));
    let _ = std::fs::remove_dir_all(guest_dir.join("../shared/__pycache__"));
    let scratch = tmpfs_dir();
    let mut cmd = Command::new(tool);
    if let Some(dir) = &scratch {
        cmd.env("TMPDIR", dir);
    }
    run(
        cmd.current_dir(guest_dir)
            .env("LD_PRELOAD", preload)
            .args([
                "-d",
                "wit",
                "-w",
                "runner",
                "componentize",
                "runner",
                "-p",
                ".",
                "-p",
                "../shared",
                "-o",
            ])
            .arg(&tmp),
        "componentize-py",
    );
    if let Some(dir) = scratch {
        let _ = std::fs::remove_dir_all(dir);
    }
    let site = patch_snapshot(&tmp);
    std::fs::write(wasm.with_extension("interrupt"), site.to_string())
        .unwrap_or_else(|e| fail(&format!("cannot write the interrupt site: {e}")));
    std::fs::rename(&tmp, wasm)
        .unwrap_or_else(|e| fail(&format!("cannot move guest into place: {e}")));
    say(&format!("built {}", wasm.display()));
}

/// Makes the snapshot's objects immortal ([`immortalize`]), seals its heap's free chunks
/// ([`seal_heap`]) and finds where an interrupt is written ([`interrupt`]).
fn patch_snapshot(wasm: &Path) -> interrupt::InterruptSite {
    let mut bytes = std::fs::read(wasm)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", wasm.display())));
    let done = immortalize::immortalize(&mut bytes).unwrap_or_else(|e| fail(&e));
    say(&format!(
        "made {} of the snapshot's {} objects immortal ({} left as they were)",
        done.patched, done.listed, done.skipped
    ));
    let sealed = seal_heap::seal_heap(&mut bytes).unwrap_or_else(|e| fail(&e));
    say(&format!(
        "sealed the heap's {} free chunks ({} bytes, of {} chunks; allocator state at {:#x}): runs allocate from its top",
        sealed.chunks, sealed.bytes, sealed.walked, sealed.state
    ));
    let site = interrupt::find(&mut bytes).unwrap_or_else(|e| fail(&e));
    say(&format!("interrupts write {site:?}"));
    std::fs::write(wasm, &bytes)
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", wasm.display())));
    site
}

/// A private directory on /dev/shm (tmpfs), if this machine has one.
fn tmpfs_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(format!("/dev/shm/weir-guest-build-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok().map(|()| dir)
}

fn run(cmd: &mut Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| fail(&format!("cannot start {what}: {e}")));
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim_start().starts_with("at "))
            .take(60)
            .collect();
        fail(&format!(
            "{what} failed ({}):\n{}",
            output.status,
            tail.join("\n")
        ));
    }
}
