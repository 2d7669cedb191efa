//! Where the command's logs go: stderr, as log lines, and for every command but `serve` the
//! sandbox's progress in preparing a runtime as plain `weir: …` lines
//! ([`weir_sandbox::runtime::PROGRESS_TARGET`]: fetching, pre-initializing, compiling).

use std::fmt;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{filter_fn, EnvFilter, LevelFilter};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use weir_sandbox::runtime::PROGRESS_TARGET;

/// The filter `WEIR_LOG` sets, else `default`.
fn env_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| EnvFilter::new(default))
}

/// A server's logging: log lines (JSON lines with `json`) at `WEIR_LOG`'s level, info by
/// default; a runtime's progress is logged among them.
pub fn server(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter("info"))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// A command's logging: log lines at `WEIR_LOG`'s level, warnings by default, and a runtime's
/// progress as `weir: …` lines whatever that level.
pub fn command() {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(without_progress(env_filter("warn")));
    // Progress events are info or warn: the hint keeps finer events (and `log` records) off.
    let progress = ProgressLines.with_filter(
        filter_fn(|m| m.target() == PROGRESS_TARGET).with_max_level_hint(LevelFilter::INFO),
    );
    tracing_subscriber::registry()
        .with(logs)
        .with(progress)
        .init();
}

/// `filter` with the progress events left out: they are printed as lines of their own.
fn without_progress(filter: EnvFilter) -> EnvFilter {
    match format!("{PROGRESS_TARGET}=off").parse() {
        Ok(off) => filter.add_directive(off),
        Err(_) => filter,
    }
}

/// Prints each event it sees as `weir: MESSAGE` on stderr.
struct ProgressLines;

impl<S: Subscriber> Layer<S> for ProgressLines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        eprintln!("weir: {}", message(event));
    }
}

/// An event's message, without its other fields.
fn message(event: &Event<'_>) -> String {
    let mut message = Message(String::new());
    event.record(&mut message);
    message.0
}

/// Keeps the `message` field of an event.
struct Message(String);

impl Visit for Message {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0 = value.to_string();
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}
