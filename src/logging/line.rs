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
    let _ = write_rfc3339(&mut stamp, at);
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

/// `at` as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC; times before 1970 as 1970-01-01T00:00:00Z).
pub(super) fn write_rfc3339(w: &mut impl fmt::Write, at: SystemTime) -> fmt::Result {
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (days, day_secs) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), in 400-year eras.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    if year > 9999 {
        write!(w, "+{year}")?;
    } else {
        write!(w, "{year:04}")?;
    }
    write!(
        w,
        "-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        day_secs / 3_600,
        day_secs / 60 % 60,
        day_secs % 60,
        since.subsec_micros()
    )
}
