//! Log setup and the escaping of request-derived text in log fields.
//!
//! `serve` keeps its request path free of log formatting and writing: a layer ([`deferred`])
//! copies each event's fields and queues them, and a thread of its own ([`writer`]) formats and
//! writes the lines; when the queue is full (the sink, stderr, is slower than the lines come)
//! the event is dropped and counted (`tagpin_log_lines_dropped_total`), so a slow log sink never
//! slows admissions. The commands write their few lines directly: their output order with the
//! progress line matters more.

mod deferred;
mod line;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

pub use line::{write as write_deferred, DeferredLine, Fields};
pub use writer::{Flush, Line, NonBlocking};

/// How log lines are written on stderr (`--log-format`).
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Displays text with control characters (line breaks, escape sequences) and backslashes
/// escaped, so a field taken from a request (a uid, a kind, an image) cannot start a new line
/// or forge one in text logs.
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Runs of characters that need no escape are written at once (the admission line
        // escapes several fields, on every admission).
        let mut rest = self.0;
        while let Some(at) = rest.find(|c: char| c == '\\' || c.is_control()) {
            f.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            write!(f, "{}", c.escape_default())?;
            rest = &rest[at + c.len_utf8()..];
        }
        f.write_str(rest)
    }
}

/// An error and each of its causes on one line, `: ` between them (the message a person sees,
/// and a logged error's field).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Installs the process-wide subscriber: `RUST_LOG` or `info`, text or JSON lines on stderr,
/// written by the calling thread. In text logs every request-derived field goes through
/// [`Escaped`] (or is a quoted string).
pub fn init(format: LogFormat) {
    install(format, std::io::stderr);
}

/// Lines waiting for the log writer at most (about 2 MiB of 250-byte lines); a line past them is
/// dropped and counted.
pub const LOG_QUEUE_LINES: usize = 8_192;

/// The count of lines [`init_non_blocking`]'s writer dropped.
static DROPPED: OnceLock<Arc<AtomicU64>> = OnceLock::new();

/// Log lines dropped so far because the queue to the sink was full (0 when lines are written
/// directly).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |d| d.load(Ordering::Relaxed))
}

/// [`init`] for `tagpin serve`: events are formatted and written by a [`NonBlocking`] writer's
/// thread, not by the thread that logs them. Keep the guard until the end: dropping it waits (a
/// little) for the queued lines to be written.
pub fn init_non_blocking(format: LogFormat) -> Flush {
    use std::io::IsTerminal as _;
    use tracing_subscriber::prelude::*;
    let ansi = std::io::stderr().is_terminal();
    let (writer, flush) = NonBlocking::formatting(std::io::stderr(), LOG_QUEUE_LINES, format, ansi);
    let _ = DROPPED.set(writer.dropped.clone());
    if !ansi {
        // Colours are the formatter's alone: on a terminal every line goes through it.
        let _ = DEFERRED.set(writer.clone());
    }
    tracing_subscriber::registry()
        .with(filter())
        .with(writer::Capture::new(writer))
        .init();
    flush
}

/// The writer that takes [`DeferredLine`]s, when `serve` installed one.
static DEFERRED: OnceLock<NonBlocking> = OnceLock::new();

/// Hands `line` to the log writer, logged now at INFO, to be formatted and written on its thread;
/// gives it back when there is no such writer (the caller logs it through `tracing`). The caller
/// checks first that its target logs at INFO (`tracing::enabled!`). A full queue drops the line
/// and counts it, as it does any other.
pub fn defer<L: DeferredLine>(line: L) -> Result<(), L> {
    match DEFERRED.get() {
        Some(w) => {
            w.queue_message(writer::Message::Deferred(
                Box::new(line),
                std::time::SystemTime::now(),
            ));
            Ok(())
        }
        None => Err(line),
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,hyper=warn,h2=warn,rustls=warn,reqwest=warn")
    })
}

fn install<W>(format: LogFormat, writer: W)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use std::io::IsTerminal as _;
    use tracing_subscriber::prelude::*;
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::registry()
        .with(filter())
        .with(layer(
            format,
            ansi,
            writer,
            tracing_subscriber::fmt::time::SystemTime,
        ))
        .init();
}

/// The formatting layer of `--log-format`, writing to `writer`, with timestamps from `timer`.
fn layer<S, W, T>(
    format: LogFormat,
    ansi: bool,
    writer: W,
    timer: T,
) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    T: tracing_subscriber::fmt::time::FormatTime + Send + Sync + 'static,
{
    use tracing_subscriber::fmt;
    match format {
        LogFormat::Json => Box::new(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_timer(timer)
                .with_writer(writer),
        ),
        LogFormat::Text => Box::new(
            fmt::layer()
                .with_ansi(ansi)
                .with_timer(timer)
                .with_writer(writer),
        ),
    }
}

/// A log sink for tests: what is written to any of its clones, kept in one buffer.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct TestSink(pub(crate) Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl TestSink {
    /// Everything written so far, as text.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

#[cfg(test)]
impl std::io::Write for TestSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The `--log-format` formatter (no colours) writing to `writer`, every line stamped `at`: tests
/// compare lines written other ways with it.
#[cfg(test)]
pub(crate) fn formatter_at<W>(
    format: LogFormat,
    writer: W,
    at: std::time::SystemTime,
) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    use tracing_subscriber::prelude::*;
    struct At(std::time::SystemTime);
    impl tracing_subscriber::fmt::time::FormatTime for At {
        fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> fmt::Result {
            line::write_rfc3339(w, self.0)
        }
    }
    tracing_subscriber::registry().with(layer(format, false, writer, At(at)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_break_a_line() {
        let forged = "u1\n2026-01-01T00:00:00Z  INFO admission uid=forged\r\u{1b}[2J\\n";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n') && !shown.contains('\r') && !shown.contains('\u{1b}'));
        assert_eq!(
            shown,
            "u1\\n2026-01-01T00:00:00Z  INFO admission uid=forged\\r\\u{1b}[2J\\\\n"
        );
        assert_eq!(Escaped("bin-1 ünïcode").to_string(), "bin-1 ünïcode");
    }
}
