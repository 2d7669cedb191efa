//! `weir kernel` driven by the Jupyter project's own clients (`tests/jupyter/test_kernel.py`):
//! the `jupyter_kernel_test` conformance suite against both kernelspecs, `nbclient` executing a
//! notebook, and `jupyter_client` for input, interrupts, restart and forged messages. The
//! clients live in a private venv (`target/jupyter-venv`, made on first use as `.ci/test`
//! does); the kernelspecs are installed by `weir kernelspec install --prefix` into a temporary
//! directory on `JUPYTER_PATH`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The venv's python, with the clients installed.
fn python() -> PathBuf {
    crate::common::venv("jupyter-venv", "tests/jupyter/requirements.txt")
}

/// Runs the test classes `names` of `test_kernel.py` with both kernelspecs installed; panics
/// with the clients' report unless all pass with no skip but those `allowed_skips` name.
fn clients(names: &[&str], allowed_skips: &[&str]) {
    let jupyter = tempfile::tempdir().expect("tempdir");
    let listed = install(jupyter.path(), &[]);
    assert!(listed.contains("weir-python:"), "{listed}");
    assert!(
        listed.contains("Python 3.15 + scientific stack (weir sandbox)"),
        "{listed}"
    );
    run_clients(jupyter.path(), names, allowed_skips);
}

/// `weir kernelspec install --prefix PREFIX ARGS…`: what it printed.
fn install(prefix: &Path, args: &[&str]) -> String {
    let install = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["kernelspec", "install", "--prefix"])
        .arg(prefix)
        .args(args)
        .output()
        .expect("weir kernelspec install runs");
    assert!(install.status.success(), "{install:?}");
    String::from_utf8_lossy(&install.stdout).into_owned()
}

/// Runs the test classes `names` of `test_kernel.py` against the kernelspecs under `jupyter`.
fn run_clients(jupyter: &Path, names: &[&str], allowed_skips: &[&str]) {
    let python = python();
    let tests: Vec<String> = names.iter().map(|n| format!("test_kernel.{n}")).collect();
    let out = Command::new(python)
        .args(["-m", "unittest", "-v"])
        .args(&tests)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/jupyter"))
        .env("JUPYTER_PATH", jupyter.join("share/jupyter"))
        .env("JUPYTER_RUNTIME_DIR", jupyter.join("runtime"))
        .env("JUPYTER_PLATFORM_DIRS", "1")
        .env("PYTHONUNBUFFERED", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the test clients run");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{names:?} failed:\n{report}");
    for line in report.lines().filter(|l| l.contains("skipped '")) {
        assert!(
            allowed_skips.iter().any(|allowed| line.contains(allowed)),
            "an unexpected skip: {line}\n{report}"
        );
    }
}

/// `jupyter_kernel_test` has a pager test for `code_page_something` (IPython's `?` help as a
/// payload); weir's kernel answers help through `inspect` instead.
const NO_PAGER: &str = "No code page something";

#[test]
fn the_python_kernelspec_passes_jupyter_kernel_test() {
    clients(&["PythonKernel", "PythonIopubWelcome"], &[NO_PAGER]);
}

#[test]
fn the_python_sci_kernelspec_passes_jupyter_kernel_test() {
    clients(&["SciKernel"], &[NO_PAGER]);
}

#[test]
fn nbclient_runs_a_notebook_with_rich_outputs_input_errors_and_an_interrupt() {
    clients(&["Notebook"], &[]);
}

#[test]
fn a_kernel_takes_input_interrupts_restarts_ends_floods_and_drops_forged_messages() {
    clients(&["KernelSession", "Endings"], &[]);
}

#[test]
fn a_kernelspec_for_one_runtime_runs_its_kernel_with_the_configured_limits() {
    let jupyter = tempfile::tempdir().expect("tempdir");
    let config = jupyter.path().join("weir.toml");
    std::fs::write(&config, "[limits]\nwall_ms = 1500\n").expect("config written");
    let config = config.to_str().expect("a UTF-8 path");
    let listed = install(jupyter.path(), &["--runtime", "python", "--config", config]);
    assert!(listed.contains("Python 3.14 (weir sandbox)"), "{listed}");
    let kernels = jupyter.path().join("share/jupyter/kernels");
    assert!(!kernels.join("weir-python-sci").exists(), "{listed}");
    let spec: serde_json::Value = serde_json::from_slice(
        &std::fs::read(kernels.join("weir-python/kernel.json")).expect("kernel.json"),
    )
    .expect("kernel.json is JSON");
    let argv: Vec<&str> = spec["argv"]
        .as_array()
        .expect("argv")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    assert!(
        argv.windows(2).any(|w| w == ["--runtime", "python"]),
        "{argv:?}"
    );
    assert!(
        argv.windows(2).any(|w| w == ["--config", config]),
        "{argv:?}"
    );
    assert_eq!(spec["interrupt_mode"], "message");
    assert_eq!(spec["display_name"], "Python 3.14 (weir sandbox)");
    run_clients(jupyter.path(), &["Configured"], &[]);
}
