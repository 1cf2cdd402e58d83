//! Lines a caller hands over as values, formatted by the log writer's thread without `tracing`'s
//! formatter: for the one line written per admission, where even capturing an event's fields
//! one by one costs more than the line is worth on the request path. The line comes out as the
//! `--log-format` formatter writes an event with the same fields (a test holds them equal).

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::SystemTime;

use super::{Escaped, LogFormat};

/// A line written later: its level and target as the event's would be, its message, its fields.
pub trait DeferredLine: Send + 'static {
    /// The line's target (the module that logs it, as `tracing` would name it).
    fn target(&self) -> &'static str;
    /// The message.
    fn message(&self) -> &'static str;
    /// Writes the fields, in order.
    fn fields(&self, f: &mut Fields<'_>);
}

/// Writes the fields of a [`DeferredLine`] as `--log-format` says: `name=value` in text (strings
/// quoted and escaped, shown values as displayed), `"name":value` in JSON.
pub struct Fields<'a> {
    out: &'a mut Vec<u8>,
    format: LogFormat,
}

impl Fields<'_> {
    /// A string, as `name = "..."` in `tracing::info!`.
    pub fn str(&mut self, name: &str, value: &str) {
        match self.format {
            LogFormat::Text => {
                let _ = write!(self.out, " {name}={value:?}");
            }
            LogFormat::Json => self.json_str(name, value),
        }
    }

    /// Text that request data may have written, as `name = %Escaped(...)` in `tracing::info!`:
    /// unquoted with control characters escaped in text, a string in JSON.
    pub fn escaped(&mut self, name: &str, value: &str) {
        match self.format {
            LogFormat::Text => {
                let _ = write!(self.out, " {name}={}", Escaped(value));
            }
            LogFormat::Json => {
                let mut shown = String::with_capacity(value.len());
                let _ = write!(shown, "{}", Escaped(value));
                self.json_str(name, &shown);
            }
        }
    }

    pub fn u64(&mut self, name: &str, value: u64) {
        self.plain(name, value);
    }

    pub fn bool(&mut self, name: &str, value: bool) {
        self.plain(name, value);
    }

    pub fn f64(&mut self, name: &str, value: f64) {
        match self.format {
            LogFormat::Text => {
                let _ = write!(self.out, " {name}={value:?}");
            }
            LogFormat::Json => {
                let _ = write!(self.out, ",\"{name}\":");
                let _ = serde_json::to_writer(&mut *self.out, &value);
            }
        }
    }

    fn plain(&mut self, name: &str, value: impl fmt::Display) {
        let _ = match self.format {
            LogFormat::Text => write!(self.out, " {name}={value}"),
            LogFormat::Json => write!(self.out, ",\"{name}\":{value}"),
        };
    }

    fn json_str(&mut self, name: &str, value: &str) {
        let _ = write!(self.out, ",\"{name}\":");
        let _ = serde_json::to_writer(&mut *self.out, value);
    }
}

/// Writes `line`, logged `at` at INFO, as one line in `format` (text without colours).
pub fn write(out: &mut Vec<u8>, format: LogFormat, at: SystemTime, line: &dyn DeferredLine) {
    let mut stamp = String::with_capacity(32);
    let _ = super::deferred::write_rfc3339(&mut stamp, at);
    match format {
        LogFormat::Text => {
            let _ = write!(out, "{stamp}  INFO {}: {}", line.target(), line.message());
            line.fields(&mut Fields { out, format });
            out.push(b'\n');
        }
        LogFormat::Json => {
            let _ = write!(
                out,
                "{{\"timestamp\":\"{stamp}\",\"level\":\"INFO\",\"message\":"
            );
            let _ = serde_json::to_writer(&mut *out, line.message());
            line.fields(&mut Fields { out, format });
            let _ = write!(out, ",\"target\":");
            let _ = serde_json::to_writer(&mut *out, line.target());
            out.extend_from_slice(b"}\n");
        }
    }
}
