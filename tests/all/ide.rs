//! The browser IDE served at `GET /`: its assets, and an end-to-end run in headless Chromium
//! (Debian's `chromium`, driven by Playwright from `tests/js/ide_e2e.mjs`). The screenshot of
//! the page after a run is kept at `target/e2e/ide-after-run.png`.

use crate::node;
use crate::ws;

use std::path::PathBuf;
use std::sync::Arc;
use weir_sandbox::runtime::sci::SciPython;
use ws::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_its_assets_are_served_from_the_binary() {
    let server = server(|_| {}).await;
    let page = http(&server, "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = page.header("content-security-policy").unwrap_or("");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("connect-src 'self'"),
        "{csp}"
    );
    assert!(
        page.body.contains("<script src=\"/ide.js\""),
        "{}",
        page.body
    );
    for (path, kind) in [("/ide.js", "text/javascript"), ("/ide.css", "text/css")] {
        let asset = http(&server, "GET", path, &[], b"").await;
        assert_eq!(asset.status, 200, "{path}");
        assert!(
            asset.header("content-type").unwrap_or("").starts_with(kind),
            "{path}"
        );
        assert!(asset.body.len() > 1000, "{path} is the real asset");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ide_works_end_to_end_in_chromium() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "the browser test needs Debian's chromium at {chromium} (apt-get install chromium; \
         .ci/run installs it), or CHROMIUM=/path/to/chromium"
    );
    // A flood must still be running when the test presses Stop: a large output limit.
    // Two runtimes, so the picker has a choice to make.
    let lazy: Vec<Arc<dyn weir_sandbox::runtime::Runtime>> = vec![
        Arc::new(SciPython),
        Arc::new(weir_sandbox::runtime::js::QuickJs),
    ];
    let server = server_with_lazy_runtimes(two_runtimes(), lazy, |c| {
        c.limits.output_bytes = 256 << 20;
        c.max_limits.output_bytes = 256 << 20;
        c.limits.wall_ms = 60_000;
    })
    .await;
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("e2e");
    std::fs::create_dir_all(&target).unwrap();
    let screenshot = target.join("ide-after-run.png");
    let _ = std::fs::remove_file(&screenshot);
    let url = format!("http://{}/", server.addr);
    let shot = screenshot.to_string_lossy().into_owned();
    let out = tokio::task::spawn_blocking(move || node::node("ide_e2e.mjs", &[&url, &shot]))
        .await
        .unwrap();
    println!("{out}");
    for step in [
        "the page loads and connects",
        "the runtime picker lists the server's runtimes",
        "a matplotlib figure is shown inline",
        "rich displays: a DataFrame's table, an SVG and Markdown; a displayed script does not run",
        "two input() prompts",
        "while True: pass is stopped",
        "Interrupt raises KeyboardInterrupt where the loop runs",
        "a flood stays responsive",
        "switching file and pressing Run stops the old run",
        "a .js tab runs in javascript",
        "a REPL after the script",
        "a dropped connection is reported",
    ] {
        assert!(
            out.contains(&format!("ok - {step}")),
            "step {step:?} did not pass:\n{out}"
        );
    }
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    // Every run the browser started has ended and been freed.
    assert_eq!(server.state.sandbox.live_instances(), 0);
    server.shutdown().await;
}
