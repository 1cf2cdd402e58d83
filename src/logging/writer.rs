//! The non-blocking log writer: a bounded queue of lines (or of events to format) and the
//! thread that writes them to the sink.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;

use super::deferred::{Formatter, Recorded};
use super::line::DeferredLine;
use super::LogFormat;

pub(super) enum Message {
    Line(Vec<u8>),
    /// An event to format ([`super::deferred`]), then write.
    Event(Box<Recorded>),
    /// A line handed over as values ([`super::line`]), logged at that time.
    Deferred(Box<dyn DeferredLine>, SystemTime),
    /// Write out what came before, then answer.
    Flush(mpsc::Sender<()>),
}

/// A log writer that never waits for its sink: each line goes into a bounded queue that a thread
/// of its own writes to the sink (within [`IDLE_POLL`]); a line that finds the queue full is
/// dropped and counted.
#[derive(Clone)]
pub struct NonBlocking {
    queue: SyncSender<Message>,
    pub(super) dropped: Arc<AtomicU64>,
}

impl NonBlocking {
    /// [`Self::new`] that also takes events ([`super::deferred::Capture`]) and formats them on
    /// its thread as `--log-format` says.
    pub fn formatting<S: Write + Send + 'static>(
        sink: S,
        capacity: usize,
        format: LogFormat,
        ansi: bool,
    ) -> (Self, Flush) {
        Self::start(sink, capacity, Some((format, ansi)))
    }

    /// A writer to `sink` holding at most `capacity` lines, and the guard that flushes it.
    pub fn new<S: Write + Send + 'static>(sink: S, capacity: usize) -> (Self, Flush) {
        Self::start(sink, capacity, None)
    }

    fn start<S: Write + Send + 'static>(
        sink: S,
        capacity: usize,
        format: Option<(LogFormat, bool)>,
    ) -> (Self, Flush) {
        let (queue, lines) = mpsc::sync_channel(capacity);
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                let format = format.unwrap_or((LogFormat::Text, false));
                write_lines(sink, lines, Formatter::new(format.0, format.1))
            });
        let dropped = Arc::new(AtomicU64::new(0));
        if let Err(e) = thread {
            // No thread to write them: every line is dropped (and counted), none waits.
            eprintln!("tagpin: cannot start the log writer thread ({e}); log lines are dropped");
        }
        let flush = Flush {
            queue: queue.clone(),
        };
        (Self { queue, dropped }, flush)
    }

    /// Lines dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn send(&self, line: Vec<u8>) {
        self.queue_message(Message::Line(line));
    }

    /// Queues `message`, or drops and counts it when the queue is full.
    pub(super) fn queue_message(&self, message: Message) {
        match self.queue.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How long the writer thread sleeps when it finds the queue empty. It polls rather than waits on
/// the queue, so that handing it a line never has to wake a thread (a system call per line).
const IDLE_POLL: Duration = Duration::from_millis(10);

/// The writer thread: lines in order, flushed whenever the queue runs empty; ends when every
/// sender is gone.
fn write_lines<S: Write>(sink: S, lines: Receiver<Message>, mut formatter: Formatter) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, sink);
    loop {
        match lines.try_recv() {
            // A sink that fails loses the line; there is nowhere else to say so.
            Ok(Message::Line(l)) => {
                let _ = out.write_all(&l);
            }
            Ok(Message::Event(e)) => {
                let _ = out.write_all(&formatter.format(&e));
            }
            Ok(Message::Deferred(line, at)) => {
                let _ = out.write_all(formatter.format_line(&*line, at));
            }
            Ok(Message::Flush(done)) => {
                let _ = out.flush();
                let _ = done.send(());
            }
            Err(mpsc::TryRecvError::Empty) => {
                let _ = out.flush();
                std::thread::sleep(IDLE_POLL);
            }
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
    }
    let _ = out.flush();
}

/// One log line on its way: the formatter writes it here, and it is queued when dropped.
pub struct Line<'a> {
    buf: Vec<u8>,
    to: &'a NonBlocking,
}

impl Write for Line<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.to.send(std::mem::take(&mut self.buf));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for NonBlocking {
    type Writer = Line<'a>;
    fn make_writer(&'a self) -> Line<'a> {
        Line {
            buf: Vec::new(),
            to: self,
        }
    }
}

/// The layer that queues events instead of formatting them; a full queue drops the event and
/// counts it ([`NonBlocking`]).
pub(super) struct Capture {
    to: NonBlocking,
}

impl Capture {
    pub(super) fn new(to: NonBlocking) -> Self {
        Self { to }
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let recorded = Recorded::of(event, SystemTime::now());
        self.to.queue_message(Message::Event(Box::new(recorded)));
    }
}

/// Held until the process ends: dropping it waits up to 2 s for the queued lines to be written
/// (a sink that blocks for longer loses them rather than holding up the exit).
pub struct Flush {
    queue: SyncSender<Message>,
}

impl Flush {
    /// Waits up to `within` for every line queued so far to be written; whether they were.
    pub fn flush(&self, within: Duration) -> bool {
        let (done, written) = mpsc::channel();
        let deadline = std::time::Instant::now() + within;
        let mut message = Message::Flush(done);
        // The queue may be full: wait for room, but not past the deadline.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return false,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    message = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        written.recv_timeout(left).is_ok()
    }
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.flush(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing_subscriber::fmt::MakeWriter as _;

    /// A sink that tells when a write starts and then blocks until released.
    struct Blocked {
        entered: mpsc::Sender<()>,
        release: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
        written: Written,
    }

    impl Write for Blocked {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(release) = self.release.lock().unwrap().take() {
                let _ = self.entered.send(());
                let _ = release.recv();
            }
            self.written.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a test sink received.
    type Written = Arc<Mutex<Vec<u8>>>;

    fn blocked_sink() -> (Blocked, mpsc::Receiver<()>, mpsc::Sender<()>, Written) {
        let (entered, entered_rx) = mpsc::channel();
        let (release_tx, release) = mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Blocked {
            entered,
            release: Arc::new(Mutex::new(Some(release))),
            written: written.clone(),
        };
        (sink, entered_rx, release_tx, written)
    }

    fn log(w: &NonBlocking, line: &str) {
        let mut l = w.make_writer();
        l.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn a_blocked_sink_never_blocks_the_logger_and_every_dropped_line_is_counted() {
        let (sink, entered, release, written) = blocked_sink();
        let (w, flush) = NonBlocking::new(sink, 4);
        log(&w, "first\n");
        // The writer thread holds "first" and is stuck in the sink.
        entered.recv().unwrap();
        for i in 0..100 {
            log(&w, &format!("line {i}\n"));
        }
        // 4 queued behind the stuck write; the other 96 dropped, none waited for.
        assert_eq!(w.dropped(), 96);
        release.send(()).unwrap();
        assert!(
            flush.flush(Duration::from_secs(60)),
            "written once released"
        );
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        assert_eq!(text, "first\nline 0\nline 1\nline 2\nline 3\n");
        // Room again: nothing more is dropped.
        log(&w, "after\n");
        assert!(flush.flush(Duration::from_secs(60)));
        assert_eq!(w.dropped(), 96);
        assert!(String::from_utf8(written.lock().unwrap().clone())
            .unwrap()
            .ends_with("line 3\nafter\n"));
    }

    #[test]
    fn a_line_is_one_write_in_order_and_the_guard_flushes_it() {
        let written = super::super::TestSink::default();
        let (w, flush) = NonBlocking::new(written.clone(), 16);
        for i in 0..10 {
            let mut l = w.make_writer();
            write!(l, "a{i} ").unwrap();
            writeln!(l, "b{i}").unwrap();
        }
        drop(flush);
        let want: String = (0..10).map(|i| format!("a{i} b{i}\n")).collect();
        assert_eq!(written.text(), want);
        assert_eq!(w.dropped(), 0);
    }
}
