//! The threads that serve the review listener's connections: each runs a single-threaded
//! runtime of its own, and a connection stays on the thread it was handed to, so its reads,
//! its answer and its wake-ups never cross to another core (BENCHMARKS.md, "Tenth pass": less
//! CPU per review than one work-stealing runtime, and more cached reviews a second on 2 cores).
//!
//! A new connection goes to the thread with the fewest open connections. HTTP/2 streams are
//! spread over every thread ([`Exec`]): an API server may send all its reviews over one
//! connection, and they must not all wait for one core.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::runtime::Handle;
use tokio::sync::watch;

/// One serving thread: its runtime and how many connections it holds.
struct Worker {
    handle: Handle,
    open: Arc<AtomicUsize>,
}

/// The serving threads, until [`Workers::stop`].
pub(super) struct Workers {
    workers: Vec<Worker>,
    /// Round robin for HTTP/2 streams.
    next: AtomicUsize,
    stop: watch::Sender<bool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start review thread {index} of {count}: {source} (lower --review-threads)")]
pub struct WorkersError {
    index: usize,
    count: usize,
    source: std::io::Error,
}

impl Workers {
    /// Starts `count` threads (at least one), named `review-0`, `review-1`, …
    pub(super) fn start(count: usize) -> Result<Arc<Self>, WorkersError> {
        let count = count.max(1);
        let (stop, stopped) = watch::channel(false);
        let mut workers = Vec::with_capacity(count);
        let mut threads = Vec::with_capacity(count);
        let failed = |index, source| WorkersError {
            index,
            count,
            source,
        };
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| failed(index, e))?;
            let handle = runtime.handle().clone();
            let mut stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("review-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                    // Dropping the runtime here cancels what is left on it.
                })
                .map_err(|e| failed(index, e));
            let thread = match thread {
                Ok(t) => t,
                Err(e) => {
                    // The threads already started end with the error.
                    let _ = stop.send(true);
                    return Err(e);
                }
            };
            workers.push(Worker {
                handle,
                open: Arc::new(AtomicUsize::new(0)),
            });
            threads.push(thread);
        }
        Ok(Arc::new(Self {
            workers,
            next: AtomicUsize::new(0),
            stop,
            threads: Mutex::new(threads),
        }))
    }

    /// Runs `serve` on the thread with the fewest open connections, counting it there until
    /// it ends. `serve` is called on that thread: what it registers (the socket) is that
    /// thread's.
    pub(super) fn spawn_connection<F, Fut>(&self, serve: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.open.fetch_add(1, Ordering::Relaxed);
        let open = Open(worker.open.clone());
        // Detached: the connection ends on its own (or with the thread).
        drop(worker.handle.spawn(async move {
            let _open = open;
            serve().await;
        }));
    }

    /// The next thread in turn, for a task of no connection of its own (an HTTP/2 stream).
    fn next(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        &self.workers[i].handle
    }

    /// Open connections per thread, in thread order.
    #[cfg(test)]
    fn open(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }

    /// Ends every thread (what still runs on them is dropped) and waits for them.
    pub(super) async fn stop(&self) {
        let _ = self.stop.send(true);
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
    }
}

/// Ends the threads when dropped, without waiting for them: a listener whose run is dropped
/// before its drain ends (its task cancelled) does not leave them running.
pub(super) struct StopOnDrop(pub(super) Arc<Workers>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.stop.send(true);
    }
}

/// Decrements its thread's open count when the connection ends (or is dropped).
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where hyper runs an HTTP/2 connection's streams: on the caller's runtime, or in turn on
/// every serving thread.
#[derive(Clone)]
pub(super) enum Exec {
    Here,
    Spread(Arc<Workers>),
}

impl<F> hyper::rt::Executor<F> for Exec
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        match self {
            Exec::Here => drop(tokio::spawn(fut)),
            Exec::Spread(workers) => drop(workers.next().spawn(fut)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use std::collections::BTreeSet;
    use tokio::sync::mpsc;

    fn thread_name() -> String {
        std::thread::current().name().unwrap_or("").to_string()
    }

    /// Waits (a bounded while) until the open counts read `want`.
    async fn open_becomes(workers: &Workers, want: &[usize]) {
        for _ in 0..500 {
            if workers.open() == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(workers.open(), want);
    }

    #[tokio::test]
    async fn connections_go_to_the_thread_with_the_fewest_and_run_there() {
        let workers = Workers::start(2).expect("threads start");
        let (release, released) = watch::channel(false);
        let (ran_tx, mut ran) = mpsc::unbounded_channel();
        for _ in 0..4 {
            let (mut released, ran_tx) = (released.clone(), ran_tx.clone());
            workers.spawn_connection(move || {
                // Called on the serving thread, as the socket must be registered there.
                let called_on = thread_name();
                async move {
                    let _ = ran_tx.send((called_on, thread_name()));
                    let _ = released.wait_for(|r| *r).await;
                }
            });
        }
        assert_eq!(workers.open(), vec![2, 2]);
        let mut threads = BTreeSet::new();
        for _ in 0..4 {
            let (called_on, ran_on) = ran.recv().await.expect("each connection runs");
            assert_eq!(called_on, ran_on);
            threads.insert(ran_on);
        }
        let want: BTreeSet<String> = ["review-0", "review-1"].map(String::from).into();
        assert_eq!(threads, want);
        let _ = release.send(true);
        open_becomes(&workers, &[0, 0]).await;
        // A connection that ends frees its place: the next goes where there is room.
        workers.spawn_connection(|| async { std::future::pending::<()>().await });
        workers.spawn_connection(|| async { std::future::pending::<()>().await });
        workers.spawn_connection(|| async {});
        open_becomes(&workers, &[1, 1]).await;
        workers.stop().await;
        // What still ran on the threads is dropped with them.
        assert_eq!(workers.open(), vec![0, 0]);
    }

    #[tokio::test]
    async fn http2_streams_are_spread_over_every_thread() {
        let workers = Workers::start(3).expect("threads start");
        let exec = Exec::Spread(workers.clone());
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..6 {
            let tx = tx.clone();
            exec.execute(async move {
                let _ = tx.send(thread_name());
            });
        }
        let mut per = std::collections::BTreeMap::new();
        for _ in 0..6 {
            *per.entry(rx.recv().await.expect("each stream runs"))
                .or_insert(0) += 1;
        }
        let want: std::collections::BTreeMap<String, i32> =
            [("review-0", 2), ("review-1", 2), ("review-2", 2)]
                .map(|(k, v)| (k.to_string(), v))
                .into();
        assert_eq!(per, want);
        workers.stop().await;
    }

    #[tokio::test]
    async fn dropping_the_guard_ends_the_threads_and_what_runs_on_them() {
        let workers = Workers::start(2).expect("threads start");
        let guard = StopOnDrop(workers.clone());
        workers.spawn_connection(|| async { std::future::pending::<()>().await });
        workers.spawn_connection(|| async { std::future::pending::<()>().await });
        open_becomes(&workers, &[1, 1]).await;
        drop(guard);
        open_becomes(&workers, &[0, 0]).await;
    }

    #[tokio::test]
    async fn at_least_one_thread() {
        let workers = Workers::start(0).expect("threads start");
        assert_eq!(workers.open(), vec![0]);
        workers.stop().await;
    }
}
