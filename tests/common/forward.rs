//! A TCP pipe in front of a real server (a registry, a token server), on 127.0.0.1: it counts the
//! connections it accepts and pipes their bytes both ways, untouched. It is not a registry
//! stand-in: every byte the client sees was written by the server behind it.
//!
//! In [`Mode::HeadThenStall`] it stands in for a server that half-answers: it lets the request
//! through and the response up to the end of its head (the blank line after the headers), then
//! forwards nothing more and holds the connection open. No real registry or token server does
//! that on demand (it is a server stuck mid-body, a proxy whose upstream died after the headers,
//! a body that never drains), and Toxiproxy cuts or stalls by bytes and time, not at the end of an
//! HTTP head; so the cut is made here, on real answers. It is only meaningful for plain HTTP,
//! where the head can be seen.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Every byte both ways.
    Pipe,
    /// The request, and the response's status line and headers; then nothing more, the
    /// connection held open.
    HeadThenStall,
}

#[derive(Default)]
struct State {
    accepted: AtomicUsize,
    /// Responses whose head went through and whose body was held back.
    stalled: AtomicUsize,
    mode: AtomicU8,
    tasks: Mutex<Vec<AbortHandle>>,
}

/// One running pipe; stopped (its connections closed) on drop.
pub struct Forward {
    /// `127.0.0.1:PORT`, where clients connect.
    pub addr: String,
    state: Arc<State>,
}

impl Forward {
    /// A pipe to `upstream` (`127.0.0.1:PORT`), in [`Mode::Pipe`].
    pub async fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State::default());
        let upstream = upstream.to_string();
        let s = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                s.accepted.fetch_add(1, SeqCst);
                let mode = if s.mode.load(SeqCst) == 1 {
                    Mode::HeadThenStall
                } else {
                    Mode::Pipe
                };
                let up = upstream.clone();
                let st = s.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&up).await {
                        pipe(client, server, mode, &st).await;
                    }
                });
                s.tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        state.tasks.lock().unwrap().push(accept.abort_handle());
        Self { addr, state }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(SeqCst)
    }

    /// Responses cut after their head so far.
    pub fn stalled(&self) -> usize {
        self.state.stalled.load(SeqCst)
    }

    /// How connections accepted from now on are handled (those open keep theirs).
    pub fn set_mode(&self, mode: Mode) {
        self.state
            .mode
            .store(u8::from(mode == Mode::HeadThenStall), SeqCst);
    }

    /// Closes every connection it holds (the listener stays).
    pub fn drop_connections(&self) {
        let mut tasks = self.state.tasks.lock().unwrap();
        let accept = tasks.remove(0);
        for t in tasks.drain(..) {
            t.abort();
        }
        tasks.push(accept);
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        for t in self.state.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn pipe(client: TcpStream, server: TcpStream, mode: Mode, state: &State) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async {
        match mode {
            Mode::Pipe => {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
                let _ = cw.shutdown().await;
            }
            Mode::HeadThenStall => {
                let mut seen: Vec<u8> = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let n = match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let from = seen.len();
                    seen.extend_from_slice(&buf[..n]);
                    // Search from a little before the new bytes: the blank line may straddle reads.
                    let start = from.saturating_sub(3);
                    if let Some(i) = seen[start..].windows(4).position(|w| w == b"\r\n\r\n") {
                        let end = start + i + 4;
                        let _ = cw.write_all(&seen[from.min(end)..end]).await;
                        state.stalled.fetch_add(1, SeqCst);
                        // Hold: neither the rest nor a close.
                        std::future::pending::<()>().await;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::join!(up, down);
}
