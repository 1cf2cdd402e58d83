//! Log lines formatted off the thread that logs them. `Capture` (`writer.rs`), the last layer of `serve`'s
//! subscriber, copies an event that passed the filter into a [`Recorded`] (its callsite, its
//! time, its fields as owned values) and queues it; the log writer's thread rebuilds the event
//! from it and hands it to the `--log-format` formatter ([`Formatter`]), so the line is the one
//! the formatter would have written on the spot, timestamp included.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata, Subscriber};

use super::line::{write_rfc3339, DeferredLine};
use super::LogFormat;

/// A field's value, owned. Values shown through `Debug` or `Display` (`?x`, `%x`, the message)
/// are formatted when captured: what they borrow does not outlive the event.
#[derive(Debug, Clone, PartialEq)]
enum Owned {
    Str(String),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Shown(String),
}

/// An event as captured: enough to log it later, in any format.
pub(super) struct Recorded {
    meta: &'static Metadata<'static>,
    at: SystemTime,
    fields: Vec<(Field, Owned)>,
}

impl Recorded {
    /// `event`, which happened `at`.
    pub(super) fn of(event: &Event<'_>, at: SystemTime) -> Self {
        let mut recorded = Recorded {
            meta: event.metadata(),
            at,
            fields: Vec::with_capacity(event.metadata().fields().len()),
        };
        event.record(&mut recorded);
        recorded
    }
}

impl Visit for Recorded {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.fields
            .push((field.clone(), Owned::Str(value.to_owned())));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.push((field.clone(), Owned::U64(value)));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.push((field.clone(), Owned::I64(value)));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.push((field.clone(), Owned::F64(value)));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.push((field.clone(), Owned::Bool(value)));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        // The error and its sources in one text: the chain cannot be kept as error values.
        let text = super::error_chain(value);
        self.fields.push((field.clone(), Owned::Shown(text)));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.fields
            .push((field.clone(), Owned::Shown(format!("{value:?}"))));
    }
}

thread_local! {
    /// The time of the event being formatted on this thread ([`EventTime`]).
    static EVENT_TIME: Cell<Option<SystemTime>> = const { Cell::new(None) };
    /// What the formatter wrote for the event being formatted on this thread.
    static FORMATTED: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Formats [`Recorded`] events as `--log-format` says, on the thread that calls it.
pub(super) struct Formatter {
    subscriber: Box<dyn Subscriber + Send + Sync>,
    format: LogFormat,
    /// Reused for [`Self::format_line`].
    line: Vec<u8>,
}

impl Formatter {
    pub(super) fn new(format: LogFormat, ansi: bool) -> Self {
        use tracing_subscriber::prelude::*;
        let subscriber = tracing_subscriber::registry().with(super::layer(
            format,
            ansi,
            || ToFormatted,
            EventTime,
        ));
        Self {
            subscriber: Box::new(subscriber),
            format,
            line: Vec::new(),
        }
    }

    /// The line for a [`DeferredLine`] logged `at`.
    pub(super) fn format_line(&mut self, line: &dyn DeferredLine, at: SystemTime) -> &[u8] {
        self.line.clear();
        super::line::write(&mut self.line, self.format, at, line);
        &self.line
    }

    /// The line (or lines) the formatter writes for `e`.
    pub(super) fn format(&self, e: &Recorded) -> Vec<u8> {
        EVENT_TIME.with(|t| t.set(Some(e.at)));
        replay(e, |event| self.subscriber.event(event));
        EVENT_TIME.with(|t| t.set(None));
        FORMATTED.with(|f| std::mem::take(&mut *f.borrow_mut()))
    }
}

/// Rebuilds the event `e` was captured from and hands it to `to`.
fn replay(e: &Recorded, to: impl FnOnce(&Event<'_>)) {
    use tracing::field::Value;
    let views: Vec<View<'_>> = e.fields.iter().map(|(_, v)| View::of(v)).collect();
    let fields = e.meta.fields();
    // A value set is built from an array of at most 32 entries (tracing's limit on the fields
    // of an event): unused entries carry no value and are not visited.
    let Some(first) = fields.iter().next() else {
        let none: [(&Field, Option<&dyn Value>); 0] = [];
        to(&Event::new(e.meta, &fields.value_set(&none)));
        return;
    };
    let mut entries: [(&Field, Option<&dyn Value>); 32] = [(&first, None); 32];
    for (slot, ((field, _), view)) in entries.iter_mut().zip(e.fields.iter().zip(&views)) {
        *slot = (field, Some(view.value()));
    }
    to(&Event::new(e.meta, &fields.value_set(&entries)));
}

/// A captured value as the formatter reads it: strings, numbers and booleans as such, shown
/// values as text that displays as it was shown.
enum View<'a> {
    Str(&'a str),
    Shown(tracing::field::DisplayValue<&'a str>),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
}

impl<'a> View<'a> {
    fn of(v: &'a Owned) -> Self {
        match v {
            Owned::Str(s) => View::Str(s),
            Owned::Shown(s) => View::Shown(tracing::field::display(s.as_str())),
            Owned::U64(n) => View::U64(*n),
            Owned::I64(n) => View::I64(*n),
            Owned::F64(n) => View::F64(*n),
            Owned::Bool(b) => View::Bool(*b),
        }
    }

    fn value(&self) -> &dyn tracing::field::Value {
        match self {
            View::Str(s) => s,
            View::Shown(s) => s,
            View::U64(n) => n,
            View::I64(n) => n,
            View::F64(n) => n,
            View::Bool(b) => b,
        }
    }
}

/// The formatter's writer: the thread's [`FORMATTED`] buffer.
struct ToFormatted;

impl std::io::Write for ToFormatted {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        FORMATTED.with(|f| f.borrow_mut().extend_from_slice(b));
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The formatter's clock: the time of the event being formatted (now, when there is none), as
/// RFC 3339 in UTC with microseconds, the form of `tracing_subscriber`'s default timer.
struct EventTime;

impl tracing_subscriber::fmt::time::FormatTime for EventTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> fmt::Result {
        let at = EVENT_TIME.with(Cell::get).unwrap_or_else(SystemTime::now);
        write_rfc3339(w, at)
    }
}

#[cfg(test)]
mod tests {
    use super::super::writer::{Capture, NonBlocking};
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    use tracing_subscriber::layer::Context;
    use tracing_subscriber::prelude::*;

    fn rfc3339(at: SystemTime) -> String {
        let mut s = String::new();
        write_rfc3339(&mut s, at).unwrap();
        s
    }

    #[test]
    fn timestamps_are_written_as_the_default_timer_writes_them() {
        let at = |secs: u64, micros: u64| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros)
        };
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000000Z");
        assert_eq!(
            rfc3339(at(1_700_000_000, 123_456)),
            "2023-11-14T22:13:20.123456Z"
        );
        // A leap day, the last second of a year, a century that is not a leap year.
        assert_eq!(rfc3339(at(951_782_400, 1)), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(at(1_798_761_599, 999_999)),
            "2026-12-31T23:59:59.999999Z"
        );
        assert_eq!(rfc3339(at(4_107_542_400, 0)), "2100-03-01T00:00:00.000000Z");
        // Against tracing_subscriber's own timer, now.
        let mut ours = String::new();
        let mut theirs = String::new();
        use tracing_subscriber::fmt::time::FormatTime as _;
        let now = SystemTime::now();
        EVENT_TIME.with(|t| t.set(Some(now)));
        EventTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut ours))
            .unwrap();
        EVENT_TIME.with(|t| t.set(None));
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(
                &mut theirs,
            ))
            .unwrap();
        assert_eq!(ours.len(), theirs.len(), "{ours} vs {theirs}");
        assert_eq!(ours[..16], theirs[..16], "{ours} vs {theirs}");
    }

    use super::super::TestSink as Shared;

    #[derive(Debug)]
    struct Inner;
    impl fmt::Display for Inner {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("inner")
        }
    }
    impl std::error::Error for Inner {}

    /// The events of the comparison: every kind of value a field can hold.
    fn events() {
        let uid = "u-1\nforged";
        tracing::info!(
            uid = %super::super::Escaped(uid),
            namespace = "team-a",
            pinned = 3u64,
            delta = -2i64,
            duration_ms = 0.25f64,
            dry_run = false,
            shown = ?Some("x"),
            "admission"
        );
        tracing::warn!(image = "a\"b", "a warning with {} args", 2);
        tracing::error!("no fields but the message");
    }

    fn lines(out: &[u8]) -> Vec<String> {
        String::from_utf8(out.to_vec())
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The lines written directly and through capture and replay, in `format`.
    fn both(format: LogFormat) -> (Vec<String>, Vec<String>) {
        let direct = Shared::default();
        let d = direct.clone();
        let subscriber = tracing_subscriber::registry().with(super::super::layer(
            format,
            false,
            move || d.clone(),
            EventTime,
        ));
        let fixed = SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_654_321);
        EVENT_TIME.with(|t| t.set(Some(fixed)));
        tracing::subscriber::with_default(subscriber, events);
        EVENT_TIME.with(|t| t.set(None));

        let deferred = Shared::default();
        let (writer, flush) = NonBlocking::formatting(deferred.clone(), 16, format, false);
        let subscriber = tracing_subscriber::registry().with(Capture::new(writer));
        tracing::subscriber::with_default(subscriber, events);
        assert!(flush.flush(Duration::from_secs(30)));
        let mut replayed = lines(deferred.text().as_bytes());
        // The captured events carry their own time: put the fixed one in its place to compare.
        let stamp = rfc3339(fixed);
        for l in &mut replayed {
            let at = l.find("Z").map(|z| z + 1);
            if let (Some(end), true) = (at, format == LogFormat::Text) {
                *l = format!("{stamp}{}", &l[end..]);
            } else if let Some(start) = l.find("\"timestamp\":\"") {
                let start = start + 13;
                let end = start + stamp.len();
                l.replace_range(start..end, &stamp);
            }
        }
        let direct = lines(direct.text().as_bytes());
        (direct, replayed)
    }

    #[test]
    fn replayed_events_are_written_as_the_formatter_writes_them_on_the_spot() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let (direct, replayed) = both(format);
            assert_eq!(direct.len(), 3, "{direct:?}");
            assert_eq!(replayed, direct, "{format:?}");
        }
        // The escaping survives: one line per event, the forged line break shown as \n.
        let (text, _) = both(LogFormat::Text);
        assert!(text[0].contains(r"uid=u-1\nforged"), "{}", text[0]);
    }

    #[test]
    fn an_error_value_keeps_its_sources_in_the_line() {
        #[derive(Debug)]
        struct Outer(Inner);
        impl fmt::Display for Outer {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("outer")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let out = Shared::default();
        let (writer, flush) = NonBlocking::formatting(out.clone(), 16, LogFormat::Text, false);
        let subscriber = tracing_subscriber::registry().with(Capture::new(writer));
        tracing::subscriber::with_default(subscriber, || {
            let e = Outer(Inner);
            tracing::warn!(error = &e as &(dyn std::error::Error + 'static), "failed");
        });
        assert!(flush.flush(Duration::from_secs(30)));
        let text = out.text();
        assert!(text.contains("error=outer: inner"), "{text}");
    }

    #[test]
    fn the_line_carries_the_time_of_the_event_not_of_its_writing() {
        /// Keeps the events it sees, as captured a day after 1970 began.
        struct Keep(Arc<Mutex<Vec<Recorded>>>);
        impl<S: Subscriber> tracing_subscriber::Layer<S> for Keep {
            fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(86_400);
                self.0.lock().unwrap().push(Recorded::of(event, at));
            }
        }
        let kept = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Keep(kept.clone()));
        tracing::subscriber::with_default(subscriber, || tracing::info!(n = 1u64, "probe"));
        let kept = kept.lock().unwrap();
        for format in [LogFormat::Text, LogFormat::Json] {
            let line = String::from_utf8(Formatter::new(format, false).format(&kept[0])).unwrap();
            assert!(line.contains("1970-01-02T00:00:00.000000Z"), "{line}");
            assert!(line.contains("probe") && line.contains('1'), "{line}");
        }
    }
}
