//! An open-loop client at a fixed rate, for `scripts/load floor` (issue 25's p99 at 1,000
//! reviews/s): one keep-alive TLS connection; request k is due at start + k / rate and its
//! latency runs from then (not from when it could be sent) to the last byte of its answer, so a
//! stall of the server counts against every request it delays.
//!
//! usage: fixed_rate CA_PEM PORT BODY_FILE [RATE] [SECONDS]
//! prints one line: `requests N p50 MS p90 MS p99 MS p99.9 MS max MS`
//!
//! In Rust rather than in the script's Python so that the client's own pauses (an interpreter,
//! its garbage collector) are not in the figures: it sleeps until 200 µs before each request is
//! due and spins the rest.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

type Fallible<T> = Result<T, Box<dyn std::error::Error>>;

/// How long before a request is due the client stops sleeping and spins: more than the
/// kernel's timer slack (50 µs) and a wake-up's latency on a busy machine.
const SPIN: Duration = Duration::from_micros(200);

fn main() {
    if let Err(e) = run() {
        eprintln!("fixed_rate: {e}");
        std::process::exit(1);
    }
}

fn run() -> Fallible<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [ca, port, body, rest @ ..] = args.as_slice() else {
        return Err("usage: fixed_rate CA_PEM PORT BODY_FILE [RATE] [SECONDS]".into());
    };
    let rate: u32 = rest.first().map_or(Ok(1000), |r| r.parse())?;
    let seconds: u32 = rest.get(1).map_or(Ok(10), |s| s.parse())?;
    if rate == 0 || seconds == 0 {
        return Err("RATE and SECONDS must be at least 1".into());
    }
    let port: u16 = port.parse()?;
    let body = std::fs::read(body).map_err(|e| format!("reading the body {body}: {e}"))?;
    let mut request = format!(
        "POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("reading {ca}: {e}"))? {
        roots.add(cert.map_err(|e| format!("reading {ca}: {e}"))?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server = ServerName::try_from("127.0.0.1")?;
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_nodelay(true)?;
    let mut tls = rustls::StreamOwned::new(
        rustls::ClientConnection::new(Arc::new(config), server)?,
        tcp,
    );

    let mut answer = Vec::new();
    // The handshake and the first answer, not counted.
    exchange(&mut tls, &request, &mut answer)?;

    let total = rate as usize * seconds as usize;
    let period = Duration::from_secs(1) / rate;
    let mut latencies = Vec::with_capacity(total);
    let start = Instant::now() + Duration::from_millis(100);
    for k in 0..total {
        let due = start + period * k as u32;
        loop {
            let now = Instant::now();
            if now >= due {
                break;
            }
            let left = due - now;
            if left > SPIN {
                std::thread::sleep(left - SPIN);
            } else {
                std::hint::spin_loop();
            }
        }
        exchange(&mut tls, &request, &mut answer)?;
        latencies.push(due.elapsed());
    }
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((q * total as f64) as usize).min(total - 1);
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "requests {total} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    );
    Ok(())
}

/// Writes one request and reads its answer to the last byte; fails on anything but a 200.
fn exchange(tls: &mut (impl Read + Write), request: &[u8], buf: &mut Vec<u8>) -> Fallible<()> {
    tls.write_all(request)?;
    tls.flush()?;
    buf.clear();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answer not 200: {}", head.lines().next().unwrap_or("")).into());
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .ok_or("an answer without Content-Length")?;
    while buf.len() < head_end + length {
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Err("the server closed the connection mid-answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    if buf.len() > head_end + length {
        return Err("bytes past the answer: one request at a time gets one answer".into());
    }
    Ok(())
}
