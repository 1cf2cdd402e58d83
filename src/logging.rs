//! Log setup, and escaping of request-derived text in log fields.

use std::fmt;

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
        for c in self.0.chars() {
            if c == '\\' || c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_fmt(format_args!("{c}"))?;
            }
        }
        Ok(())
    }
}

/// Installs the process-wide subscriber: `RUST_LOG` or `info`, text or JSON lines on stderr.
/// In text logs every request-derived field goes through [`Escaped`] (or is a quoted string).
pub fn init(format: LogFormat) {
    use tracing_subscriber::{fmt, prelude::*, EnvFilter};
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,hyper=warn,h2=warn,rustls=warn,reqwest=warn"));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
        LogFormat::Text => {
            use std::io::IsTerminal as _;
            registry
                .with(
                    fmt::layer()
                        .with_ansi(std::io::stderr().is_terminal())
                        .with_writer(std::io::stderr),
                )
                .init()
        }
    }
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
