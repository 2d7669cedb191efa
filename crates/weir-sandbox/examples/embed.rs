//! Embedding weir-sandbox: run an untrusted script in-process with limits, feed it input, stream
//! its output as it is written, and report how it ended.
//!
//! `cargo run -p weir-sandbox --example embed -- 'print(input("name? ").upper())' ada`

use std::time::Duration;
use weir_sandbox::{EngineSettings, Event, Limits, RunRequest, Sandbox, StreamKind};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let script = args
        .next()
        .unwrap_or_else(|| "import sys\nprint('hello from', sys.platform)".into());
    let input = args.next();

    // One sandbox per process: it owns the engines, the compiled guest and the instance slots.
    let sandbox = Sandbox::load_async(EngineSettings::default()).await?;
    let runtime = sandbox.runtime(None)?;
    eprintln!(
        "runtime: {} {} ({})",
        runtime.name, runtime.version, runtime.build
    );

    let mut request = RunRequest::script(script);
    request.limits = Limits {
        wall_ms: 5_000,
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    request.stdin = input.map(|line| format!("{line}\n").into_bytes());
    request.close_stdin = true;

    let mut run = sandbox.start(request).await?;
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        let event = tokio::select! {
            event = run.next_event() => event,
            () = &mut deadline => {
                run.control().stop();
                continue;
            }
        };
        match event {
            Some(Event::Output { stream, data }) => match stream {
                StreamKind::Stdout => print!("{}", String::from_utf8_lossy(&data)),
                StreamKind::Stderr => eprint!("{}", String::from_utf8_lossy(&data)),
            },
            Some(Event::State(state)) => eprintln!("[state: {state:?}]"),
            // Only sessions (`RunRequest::cells`) run cells.
            Some(Event::Cell(_)) => {}
            // What it displayed: a Jupyter MIME bundle (`text/plain` always among its formats).
            Some(Event::Display(shown)) => {
                let formats: Vec<_> = shown.bundle.data.keys().collect();
                eprintln!("[display {formats:?}: {}]", shown.bundle.plain())
            }
            Some(Event::ClearOutput { .. }) => eprintln!("[clear output]"),
            // Only functions declared with `Tools::declare` are answered through events.
            Some(Event::Call(call)) => eprintln!("[call {} {}]", call.name, call.args),
            Some(Event::Exit(result)) => {
                eprintln!(
                    "[{}: {} in {:.1} ms, peak memory {} bytes]",
                    result.outcome.kind(),
                    result.message,
                    result.duration.as_secs_f64() * 1e3,
                    result.peak_memory
                );
                break;
            }
            None => break,
        }
    }
    Ok(())
}
