//! A stand-in registry for what a real `docker-registry` will not do: answer a manifest HEAD
//! without `Docker-Content-Digest` (so tagpin GETs the manifest and hashes it), and, on demand,
//! send that GET's headers and half its body, then nothing more, holding the connection open.
//! Minimal HTTP/1.1 over TCP, written out here so that where the answer stops is exact.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// The manifest every tag points to.
pub const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

#[derive(Default)]
pub struct HalfBody {
    /// From now on, GETs are answered with their headers and half their body, then nothing.
    pub stall: AtomicBool,
    pub heads: AtomicUsize,
    pub gets: AtomicUsize,
    /// GETs whose body was cut.
    pub stalled: AtomicUsize,
}

/// Serves the stand-in on 127.0.0.1 (on the caller's runtime); returns its address.
pub async fn half_body_registry() -> (String, Arc<HalfBody>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let state = Arc::new(HalfBody::default());
    let s = state.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, s.clone()));
        }
    });
    (addr, state)
}

async fn serve(mut conn: TcpStream, s: Arc<HalfBody>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head (tagpin's manifest requests carry no body).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let get = head.starts_with("GET ");
        let headers = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: {}\r\n\r\n",
            MANIFEST.len()
        );
        if !get {
            s.heads.fetch_add(1, SeqCst);
            if conn.write_all(headers.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        s.gets.fetch_add(1, SeqCst);
        let mut answer = headers.into_bytes();
        if s.stall.load(SeqCst) {
            answer.extend_from_slice(&MANIFEST[..MANIFEST.len() / 2]);
            let _ = conn.write_all(&answer).await;
            s.stalled.fetch_add(1, SeqCst);
            std::future::pending::<()>().await;
        }
        answer.extend_from_slice(MANIFEST);
        if conn.write_all(&answer).await.is_err() {
            return;
        }
    }
}
