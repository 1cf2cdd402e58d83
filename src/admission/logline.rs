//! The line logged for every admission. In `serve` it is handed to the log writer as values and
//! formatted on the writer's thread ([`crate::logging::defer`]); elsewhere (tests, a terminal)
//! it is a `tracing` event with the same fields, written the same way.

use std::time::Duration;

use crate::logging::{DeferredLine, Escaped, Fields};

/// The line's target: the module that logged it before it became a value, kept so that
/// `RUST_LOG` directives and log queries written for it still apply.
pub const TARGET: &str = "tagpin::admission::admitter";

/// One admission, as logged.
pub struct AdmissionLine {
    /// uid, namespace, name, kind and operation, one after the other (one allocation).
    texts: String,
    /// Where each of the five texts ends in `texts`.
    ends: [usize; 5],
    pub path: &'static str,
    pub dry_run: bool,
    pub pinned: usize,
    pub left: usize,
    pub warnings: usize,
    pub outcome: &'static str,
    pub ignored: &'static str,
    pub duration: Duration,
}

impl AdmissionLine {
    /// The texts of the line, from the request. The others are set as fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        uid: &str,
        namespace: &str,
        name: &str,
        kind: &str,
        operation: &str,
        path: &'static str,
        outcome: &'static str,
        ignored: &'static str,
    ) -> Self {
        let parts = [uid, namespace, name, kind, operation];
        let mut texts = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0; 5];
        for (end, part) in ends.iter_mut().zip(parts) {
            texts.push_str(part);
            *end = texts.len();
        }
        Self {
            texts,
            ends,
            path,
            dry_run: false,
            pinned: 0,
            left: 0,
            warnings: 0,
            outcome,
            ignored,
            duration: Duration::ZERO,
        }
    }

    fn text(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.texts.get(start..self.ends[i]).unwrap_or("")
    }

    /// Logs the line now through `tracing` (when no writer takes it as values).
    pub fn log(&self) {
        tracing::info!(
            target: TARGET,
            uid = %Escaped(self.text(0)),
            namespace = self.text(1),
            name = self.text(2),
            kind = %Escaped(self.text(3)),
            operation = %Escaped(self.text(4)),
            path = self.path,
            dry_run = self.dry_run,
            pinned = self.pinned,
            left = self.left,
            warnings = self.warnings,
            outcome = self.outcome,
            ignored = self.ignored,
            duration_ms = self.duration.as_secs_f64() * 1000.0,
            "admission"
        );
    }
}

impl DeferredLine for AdmissionLine {
    fn target(&self) -> &'static str {
        TARGET
    }

    fn message(&self) -> &'static str {
        "admission"
    }

    fn fields(&self, f: &mut Fields<'_>) {
        // In the order, and with the kinds, of `log`'s fields.
        f.escaped("uid", self.text(0));
        f.str("namespace", self.text(1));
        f.str("name", self.text(2));
        f.escaped("kind", self.text(3));
        f.escaped("operation", self.text(4));
        f.str("path", self.path);
        f.bool("dry_run", self.dry_run);
        f.u64("pinned", self.pinned as u64);
        f.u64("left", self.left as u64);
        f.u64("warnings", self.warnings as u64);
        f.str("outcome", self.outcome);
        f.str("ignored", self.ignored);
        f.f64("duration_ms", self.duration.as_secs_f64() * 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logging::{self, LogFormat};
    use std::time::SystemTime;

    fn line(uid: &str, duration: Duration) -> AdmissionLine {
        let mut l = AdmissionLine::new(
            uid,
            "team-a",
            "web-\"7\"",
            "Pod\u{1b}[2J",
            "CREATE",
            "mutate",
            "partial",
            "",
        );
        l.dry_run = true;
        l.pinned = 3;
        l.left = 1;
        l.warnings = 2;
        l.duration = duration;
        l
    }

    /// The line as `tracing`'s formatter writes its event, at `at`.
    fn through_tracing(l: &AdmissionLine, format: LogFormat, at: SystemTime) -> String {
        let out = logging::TestSink::default();
        let w = out.clone();
        let subscriber = logging::formatter_at(format, move || w.clone(), at);
        tracing::subscriber::with_default(subscriber, || l.log());
        out.text()
    }

    #[test]
    fn the_line_handed_over_as_values_is_the_line_tracing_writes() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_040_000_123_456);
        for (uid, ms) in [
            ("705ab4f5-6393-11e8-b7cc-42010a800002", 0.1234),
            ("forged\nINFO uid=x\\", 12.5),
            ("ünï \"q\"", 1.0),
            ("", 3_000.0),
        ] {
            let l = line(uid, Duration::from_secs_f64(ms / 1000.0));
            for format in [LogFormat::Text, LogFormat::Json] {
                let mut ours = Vec::new();
                logging::write_deferred(&mut ours, format, at, &l);
                let ours = String::from_utf8(ours).unwrap();
                assert_eq!(ours, through_tracing(&l, format, at), "{format:?} {uid:?}");
                assert_eq!(ours.matches('\n').count(), 1, "one line: {ours}");
            }
        }
    }
}
