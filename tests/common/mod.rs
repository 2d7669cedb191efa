//! Helpers shared by the integration tests: one sandbox per test binary, and run shortcuts.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Duration;
use weir_sandbox::{Collected, EngineSettings, Event, Limits, RunHandle, RunRequest, Sandbox};

/// The sandbox every test in this binary shares (the compiled guest comes from the disk cache).
pub fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX
        .get_or_init(|| Sandbox::load(EngineSettings::default()).expect("sandbox loads"))
        .clone()
}

/// A sandbox of its own, for tests that count instances.
pub fn private_sandbox(max_instances: u32) -> Sandbox {
    sandbox_with(max_instances, |_| {})
}

/// A sandbox of its own with `max_instances` slots and other settings changed by `f`.
pub fn sandbox_with(max_instances: u32, f: impl FnOnce(&mut EngineSettings)) -> Sandbox {
    let mut settings = EngineSettings {
        max_instances,
        ..EngineSettings::default()
    };
    f(&mut settings);
    Sandbox::load(settings).expect("sandbox loads")
}

pub fn limits(f: impl FnOnce(&mut Limits)) -> Limits {
    let mut l = Limits::default();
    f(&mut l);
    l
}

pub async fn start(req: RunRequest) -> RunHandle {
    sandbox().start(req).await.expect("run starts")
}

/// Runs `req` in `sandbox` to the end.
pub async fn collect_in(sandbox: &Sandbox, req: RunRequest) -> Collected {
    sandbox
        .start(req)
        .await
        .expect("run starts")
        .collect()
        .await
}

/// Runs a script to the end with closed stdin.
pub async fn run(source: &str) -> Collected {
    let mut req = RunRequest::script(source);
    req.close_stdin = true;
    start(req).await.collect().await
}

pub async fn run_with(source: &str, f: impl FnOnce(&mut RunRequest)) -> Collected {
    let mut req = RunRequest::script(source);
    req.close_stdin = true;
    f(&mut req);
    start(req).await.collect().await
}

/// Waits for the next event, failing the test if none comes within `secs`.
pub async fn next(handle: &mut RunHandle, secs: u64) -> Event {
    tokio::time::timeout(Duration::from_secs(secs), handle.next_event())
        .await
        .expect("an event arrives in time")
        .expect("the run has not ended")
}

/// Reads events until stdout has produced `text` (accumulated), returning everything read.
pub async fn read_until_stdout(handle: &mut RunHandle, text: &str) -> String {
    let mut out = String::new();
    while !out.contains(text) {
        if let Event::Output { data, .. } = next(handle, 20).await {
            out.push_str(&String::from_utf8_lossy(&data));
        }
    }
    out
}

/// Reads events until the run reports `state`; returns the stdout seen on the way.
pub async fn wait_state(handle: &mut RunHandle, state: weir_sandbox::RunState) -> String {
    let mut out = String::new();
    loop {
        match next(handle, 20).await {
            Event::State(s) if s == state => return out,
            Event::Output {
                stream: weir_sandbox::StreamKind::Stdout,
                data,
            } => out.push_str(&String::from_utf8_lossy(&data)),
            Event::Exit(r) => panic!("run ended ({:?}) before reaching {state:?}", r.outcome),
            _ => {}
        }
    }
}

/// Waits (up to 1 s) for every instance of `sandbox` to be freed.
pub async fn until_no_instances(sandbox: &Sandbox) {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while sandbox.live_instances() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        sandbox.live_instances(),
        0,
        "instances still alive after 1 s"
    );
}

static VENV_INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The python of a private venv `target/<name>` holding `requirements` (a file of the
/// repository's), made on first use (and again when the file changes) as `.ci/test` makes it.
pub fn venv(name: &str, requirements: &str) -> std::path::PathBuf {
    use std::process::Command;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let venv = root.join("target").join(name);
    let python = venv.join("bin/python");
    let _guard = VENV_INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let marker = venv.join("weir-requirements.txt");
    let wanted = std::fs::read_to_string(root.join(requirements)).expect(requirements);
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(&wanted) {
        eprintln!("installing {requirements} into {}…", venv.display());
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs");
        assert!(made.success(), "python3 -m venv {} failed", venv.display());
        let pip = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(root.join(requirements))
            .status()
            .expect("pip runs");
        assert!(pip.success(), "pip install -r {requirements} failed");
        std::fs::write(&marker, wanted).expect("write the venv's marker");
    }
    python
}
