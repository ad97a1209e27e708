//! `RUST_LOG` logging of `sd-launch`, and its one-line messages: both go to stderr and never
//! take the process down when stderr is gone (a closed pipe, a full disk): a supervisor that
//! cannot log keeps supervising.

use std::io::Write;

use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// What sd-launch says while it supervises (restarts, escalations) goes to stderr as
/// `sd-launch: [warning: ]message`, filtered by RUST_LOG (default `info`; `debug` shows
/// spawns, forwarded signals and notifications).
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        // Its report of a failed write is an `eprintln!`, which panics when stderr is gone.
        .log_internal_errors(false)
        .event_format(Prefixed)
        .init();
}

/// `sd-launch: message` on stderr; a failed write is dropped, never a panic.
pub(crate) fn say(message: impl std::fmt::Display) {
    let _ = writeln!(Stderr, "sd-launch: {message}");
}

/// Our stderr, unbuffered, with write errors reported to the caller (never a panic).
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stderr().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `sd-launch: [warning: |error: |debug: ]message`, like the tool's other messages.
struct Prefixed;

impl<S, N> FormatEvent<S, N> for Prefixed
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let level = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(writer, "sd-launch: {level}")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
