//! Node.js clients for integration tests: installs `tests/js`'s npm packages on first use
//! (`npm ci`, as `.ci/run` does) and runs scripts from that directory.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

static INSTALL: Mutex<()> = Mutex::new(());

/// `tests/js`, with its `node_modules` installed.
pub fn js_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !dir.join("node_modules/.package-lock.json").exists() {
        eprintln!("installing tests/js npm packages (npm ci)…");
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .expect("npm is installed (Node.js 18 or later)");
        assert!(status.success(), "npm ci in tests/js failed");
    }
    dir
}

/// Runs `node SCRIPT ARGS…` in `tests/js`; returns stdout, panicking with stderr on failure.
pub fn node(script: &str, args: &[&str]) -> String {
    let dir = js_dir();
    let out = Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(&dir)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node {script} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout
}
