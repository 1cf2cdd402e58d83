//! The non-blocking log writer: a bounded queue of lines (or of events to format) and the
//! thread that writes them to the sink.

use std::io::Write;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
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
/// of its own writes to the sink (within [`IDLE_POLL`] while lines come); a line that finds the
/// queue full is dropped and counted.
#[derive(Clone)]
pub struct NonBlocking {
    queue: SyncSender<Message>,
    pub(super) dropped: Arc<AtomicU64>,
    wake: Arc<Wake>,
}

/// How the writer thread waits for lines: it polls while they come, so that handing it a line
/// never has to wake a thread (a system call per line), and once none came for a while it
/// sleeps until the next one wakes it, so an idle webhook does not wake 100 times a second.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// The sleep between two looks at an empty queue.
    poll: Duration,
    /// Empty looks in a row before the writer sleeps until woken.
    polls_before_sleep: u32,
    /// How long a sleeping writer sleeps at most: a wake-up lost to a race delays a line by no
    /// more than this.
    longest_sleep: Duration,
}

const TIMING: Timing = Timing {
    poll: IDLE_POLL,
    polls_before_sleep: 50,
    longest_sleep: Duration::from_secs(5),
};

/// Shared by the writer thread and whoever queues: whether the writer sleeps until woken.
#[derive(Default)]
struct Wake {
    asleep: AtomicBool,
    writer: OnceLock<Thread>,
    /// Times the writer went to sleep when it found the queue empty (tests).
    sleeps: AtomicU64,
}

impl Wake {
    /// After a message was queued: wakes the writer if it sleeps until woken. While it polls,
    /// this is one load: a busy log path writes nothing to memory it shares with the writer.
    fn queued(&self) {
        // Pairs with the fence in `next_message`: either the writer sees this message when it
        // looks once more, or this sees it asleep.
        fence(Ordering::SeqCst);
        if self.asleep.load(Ordering::Relaxed) && self.asleep.swap(false, Ordering::Relaxed) {
            if let Some(t) = self.writer.get() {
                t.unpark();
            }
        }
    }
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
        Self::start(sink, capacity, Some((format, ansi)), TIMING)
    }

    /// A writer to `sink` holding at most `capacity` lines, and the guard that flushes it.
    pub fn new<S: Write + Send + 'static>(sink: S, capacity: usize) -> (Self, Flush) {
        Self::start(sink, capacity, None, TIMING)
    }

    fn start<S: Write + Send + 'static>(
        sink: S,
        capacity: usize,
        format: Option<(LogFormat, bool)>,
        timing: Timing,
    ) -> (Self, Flush) {
        let (queue, lines) = mpsc::sync_channel(capacity);
        let wake = Arc::new(Wake::default());
        let writer_wake = wake.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || {
                // Before it can sleep: whoever finds it asleep has the handle to wake it.
                let _ = writer_wake.writer.set(std::thread::current());
                let format = format.unwrap_or((LogFormat::Text, false));
                let formatter = Formatter::new(format.0, format.1);
                write_lines(sink, lines, formatter, &writer_wake, timing)
            });
        let dropped = Arc::new(AtomicU64::new(0));
        if let Err(e) = thread {
            // No thread to write them: every line is dropped (and counted), none waits.
            eprintln!("tagpin: cannot start the log writer thread ({e}); log lines are dropped");
        }
        let flush = Flush {
            queue: queue.clone(),
            wake: wake.clone(),
        };
        (
            Self {
                queue,
                dropped,
                wake,
            },
            flush,
        )
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
            Ok(()) => self.wake.queued(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// How long the writer thread sleeps when it finds the queue empty while lines come ([`Timing`]).
const IDLE_POLL: Duration = Duration::from_millis(10);

/// The writer thread: lines in order, flushed whenever the queue runs empty; ends when every
/// sender is gone.
fn write_lines<S: Write>(
    sink: S,
    lines: Receiver<Message>,
    mut formatter: Formatter,
    wake: &Wake,
    timing: Timing,
) {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, sink);
    while let Some(message) = next_message(&lines, &mut out, wake, timing) {
        match message {
            // A sink that fails loses the line; there is nowhere else to say so.
            Message::Line(l) => {
                let _ = out.write_all(&l);
            }
            Message::Event(e) => {
                let _ = out.write_all(&formatter.format(&e));
            }
            Message::Deferred(line, at) => {
                let _ = out.write_all(formatter.format_line(&*line, at));
            }
            Message::Flush(done) => {
                let _ = out.flush();
                let _ = done.send(());
            }
        }
    }
    let _ = out.flush();
}

/// The next message, waiting as [`Timing`] says; `None` once every sender is gone. `out` is
/// flushed whenever the queue is found empty.
fn next_message(
    lines: &Receiver<Message>,
    out: &mut impl Write,
    wake: &Wake,
    timing: Timing,
) -> Option<Message> {
    let mut empty_looks = 0;
    loop {
        match lines.try_recv() {
            Ok(m) => return Some(m),
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        let _ = out.flush();
        if empty_looks < timing.polls_before_sleep {
            empty_looks += 1;
            std::thread::sleep(timing.poll);
            continue;
        }
        wake.asleep.store(true, Ordering::Relaxed);
        // Pairs with the fence in `Wake::queued`: a message queued before it is seen below; one
        // queued after it finds `asleep` set and wakes this thread.
        fence(Ordering::SeqCst);
        match lines.try_recv() {
            Ok(m) => {
                wake.asleep.store(false, Ordering::Relaxed);
                return Some(m);
            }
            Err(mpsc::TryRecvError::Disconnected) => return None,
            Err(mpsc::TryRecvError::Empty) => {
                wake.sleeps.fetch_add(1, Ordering::Relaxed);
                // An unpark that came first returns at once (its token is kept). Woken by a
                // line or by the time, it looks once more; if the queue is still empty, it
                // sleeps again at once (the polls are for a busy writer).
                std::thread::park_timeout(timing.longest_sleep);
                wake.asleep.store(false, Ordering::Relaxed);
            }
        }
    }
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
    wake: Arc<Wake>,
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
                Ok(()) => {
                    self.wake.queued();
                    break;
                }
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

    /// Polls every 1 ms, sleeps after 3 empty looks, and would sleep a minute unless woken.
    const QUICK: Timing = Timing {
        poll: Duration::from_millis(1),
        polls_before_sleep: 3,
        longest_sleep: Duration::from_secs(60),
    };

    /// Waits up to 10 s for `done`.
    fn eventually(done: impl Fn() -> bool) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < until {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn an_idle_writer_sleeps_until_a_line_wakes_it() {
        let written = super::super::TestSink::default();
        let (w, _flush) = NonBlocking::start(written.clone(), 16, None, QUICK);
        log(&w, "first\n");
        assert!(eventually(|| written.text() == "first\n"));
        // No line comes: after 3 empty looks it sleeps, and stays asleep (polling, it would
        // look 100 more times in these 100 ms).
        assert!(eventually(|| w.wake.asleep.load(Ordering::SeqCst)));
        let sleeps = w.wake.sleeps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(w.wake.sleeps.load(Ordering::SeqCst), sleeps);
        // A line wakes it: written long before the minute it would otherwise sleep.
        for i in 0..3 {
            log(&w, &format!("again {i}\n"));
            let want = format!("again {i}\n");
            assert!(
                eventually(|| written.text().ends_with(&want)),
                "{:?}",
                written.text()
            );
            assert!(eventually(|| w.wake.asleep.load(Ordering::SeqCst)));
        }
        assert_eq!(w.dropped(), 0);
    }

    #[test]
    fn a_writer_woken_by_the_time_alone_sleeps_again_without_polling() {
        // Sleeps 20 ms at most; 100 polls of at least 1 ms each before the first sleep.
        let timing = Timing {
            poll: Duration::from_millis(1),
            polls_before_sleep: 100,
            longest_sleep: Duration::from_millis(20),
        };
        let (w, _flush) = NonBlocking::start(std::io::sink(), 16, None, timing);
        assert!(eventually(|| w.wake.asleep.load(Ordering::SeqCst)));
        let before = w.wake.sleeps.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        // Back to sleep after each 20 ms: about 15 sleeps. Polling 100 times after each
        // (at least 120 ms a round) would make 3 at most.
        let slept = w.wake.sleeps.load(Ordering::SeqCst) - before;
        assert!(slept >= 6, "{slept} sleeps in 300 ms");
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
