//! The server side of issue 14, as a hostile client would try it against the spawned binary:
//! huge reviews (row 1), connection floods under an open-file limit of 1024 (row 2), thousands of
//! failing images (row 10), a uid that forges a log line (row 11), the enforce webhook's skip
//! label (row 12), SIGTERM under keep-alive load over HTTP/1.1 and HTTP/2 (row 13), plus the
//! review-slot cap and client certificates. Everything stays on 127.0.0.1; no registry is
//! needed (images are digests or invalid, so nothing is looked up).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{init, pod_review, post_over_http as post, Tagpin, TestCa, SERVE_ON_ANY_PORT};
use serde_json::{json, Value};

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// The binary, started through `sh` so its open-file soft limit can be set first, serving the
/// certificate of its own test CA.
struct Server {
    tagpin: Tagpin,
    _dir: tempfile::TempDir,
    ca: TestCa,
}

impl std::ops::Deref for Server {
    type Target = Tagpin;
    fn deref(&self) -> &Tagpin {
        &self.tagpin
    }
}

impl Server {
    fn start(nofile: Option<u32>, args: &[&str]) -> Self {
        init();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new();
        let cert = dir.path().join("tls.crt");
        let key = dir.path().join("tls.key");
        std::fs::write(&cert, &ca.cert_pem).unwrap();
        std::fs::write(&key, &ca.key_pem).unwrap();
        let limit = nofile.map_or(String::new(), |n| format!("ulimit -Sn {n}; "));
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            // TAGPIN_TEST_BIN runs these against another build (main's, to see them fail).
            .arg(std::env::var("TAGPIN_TEST_BIN").unwrap_or(env!("CARGO_BIN_EXE_tagpin").into()))
            .args(SERVE_ON_ANY_PORT)
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--no-kube")
            .args(args);
        Self {
            tagpin: Tagpin::start(cmd),
            _dir: dir,
            ca,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = s.lines().find(|l| l.starts_with(key)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Peak resident set so far, bytes.
    fn hwm(&self) -> u64 {
        self.status("VmHWM:") * 1024
    }

    fn rss(&self) -> u64 {
        self.status("VmRSS:") * 1024
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.ca_pem.as_bytes()).unwrap()])
            .build()
            .unwrap()
    }

    fn terminate(&self) {
        self.signal("TERM");
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.tagpin.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "did not exit:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A Pod review of about `size` bytes whose bulk is what real objects carry (environment
/// variables, a last-applied annotation, managed fields); its image is a digest.
fn big_review(uid: &str, size: usize) -> Vec<u8> {
    let mut review = pod_review(uid, &[&format!("nginx@{D}")]);
    let obj = &mut review["request"]["object"];
    let chunk = size / 3;
    let env: Vec<Value> = (0..chunk / 120)
        .map(|i| json!({"name": format!("VAR_{i}"), "value": "v".repeat(90)}))
        .collect();
    obj["spec"]["containers"][0]["env"] = json!(env);
    obj["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(chunk)
    });
    let fields: Vec<Value> = (0..chunk / 60)
        .map(|i| json!({"manager": "kubectl", "operation": "Update", "n": i}))
        .collect();
    obj["metadata"]["managedFields"] = json!(fields);
    serde_json::to_vec(&review).unwrap()
}

#[tokio::test]
async fn row1_a_3_mib_review_costs_at_most_3x_its_size_and_larger_ones_get_413() {
    let tp = Server::start(None, &[]);
    let c = tp.client();
    let url = format!("https://{}/mutate", tp.https);
    // Warm up: the first review pays for one-time set-up.
    let (s, _) = post(
        &c,
        &url,
        serde_json::to_vec(&pod_review("w", &["a:1"])).unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    let body = big_review("big-1", (3 << 20) - 4096);
    assert!(body.len() <= 3 << 20 && body.len() > 3_000_000);
    let before = tp.hwm();
    let (s, out) = post(&c, &url, body.clone()).await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["response"]["allowed"], true);
    let grew = tp.hwm().saturating_sub(before);
    assert!(
        grew <= 3 * body.len() as u64,
        "peak RSS grew {grew} bytes for a {} byte review",
        body.len()
    );

    // 16 at once stay far below the manifests' 256 MiB limit.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (c, url) = (c.clone(), url.clone());
        let body = big_review(&format!("big-many-{i}"), (3 << 20) - 4096);
        tasks.push(tokio::spawn(async move { post(&c, &url, body).await.0 }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let hwm = tp.hwm();
    assert!(
        hwm < 200 << 20,
        "peak RSS {hwm} bytes with 16 reviews of 3 MiB"
    );

    // One byte over: 413, before the body is read.
    let (s, out) = post(&c, &url, vec![b' '; (3 << 20) + 1]).await;
    assert_eq!(s, 413, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("--max-body"),
        "{out}"
    );
    eprintln!(
        "row 1: body {} bytes, peak RSS +{} bytes; 16 at once: peak {} bytes, now {}",
        body.len(),
        grew,
        hwm,
        tp.rss()
    );
}

/// A TLS client config trusting the test CA.
fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(
    addr: &str,
    cfg: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect_timeout(&addr.parse().map_err(std::io::Error::other)?, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    // Drive the handshake.
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// True once the peer has closed the connection (EOF or reset), false if it is still open after
/// `within`.
fn closed_within<R: Read>(r: &mut R, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    while Instant::now() < deadline {
        match r.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return true,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row2_a_connection_flood_under_1024_open_files_starves_nothing_and_is_closed() {
    // This test process holds 1,300 sockets itself.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let tp = Server::start(Some(1024), &[]);
    let base_fds = tp.fds();

    // 1,000 TCP connections that never say anything.
    let addr: std::net::SocketAddr = tp.https.parse().unwrap();
    let idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    assert_eq!(idle.len(), 1000, "connections refused or left hanging");
    // 300 TLS connections that trickle a request head, a byte a second.
    let cfg = tls_client(&tp.ca.ca_pem, &[b"http/1.1"]);
    let addr = tp.https.clone();
    let tricklers = tokio::task::spawn_blocking(move || {
        // Bounded: a server out of descriptors never finishes these handshakes.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut v = Vec::new();
        while v.len() < 300 && Instant::now() < deadline {
            let Ok(mut s) = tls_connect(&addr, &cfg, Duration::from_secs(3)) else {
                continue;
            };
            s.write_all(b"POST /mutate HTTP/1.1\r\n").unwrap();
            v.push(s);
        }
        v
    })
    .await
    .unwrap();
    assert_eq!(
        tricklers.len(),
        300,
        "new TLS handshakes failed during the flood"
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut v = tricklers;
            while !stop.load(Ordering::Relaxed) {
                for s in &mut v {
                    let _ = s.write_all(b"X");
                    let _ = s.flush();
                }
                std::thread::sleep(Duration::from_millis(1000));
            }
            v
        })
    };

    // A new review is answered and the probe port answers (bounded waits: on a server that
    // ran out of descriptors they would hang).
    let c = tp.client();
    let review = serde_json::to_vec(&pod_review("after-flood", &[&format!("a@{D}")])).unwrap();
    let answered = tokio::time::timeout(
        Duration::from_secs(30),
        post(&c, &format!("https://{}/mutate", tp.https), review),
    )
    .await;
    let (s, out) = answered.expect("a new review was not answered during the flood");
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["response"]["uid"], "after-flood");
    let ready = tokio::time::timeout(
        Duration::from_secs(10),
        reqwest::get(format!("http://{}/readyz", tp.metrics)),
    )
    .await
    .expect("/readyz did not answer during the flood")
    .unwrap()
    .status();
    assert_eq!(ready, 200);

    // The silent ones are closed by the handshake timeout, the tricklers by the head timeout.
    let mut idle = idle;
    let silent_closed = tokio::task::spawn_blocking(move || {
        idle.iter_mut()
            .filter_map(|s| {
                s.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                closed_within(s, Duration::from_secs(20)).then_some(())
            })
            .count()
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut tricklers = trickle.join().unwrap();
    let trickle_closed = tokio::task::spawn_blocking(move || {
        tricklers
            .iter_mut()
            .filter_map(|s| {
                s.sock
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                closed_within(s, Duration::from_secs(20)).then_some(())
            })
            .count()
    })
    .await
    .unwrap();
    assert_eq!(silent_closed, 1000);
    assert_eq!(trickle_closed, 300);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tp.fds() > base_fds + 10 {
        assert!(Instant::now() < deadline, "{} fds still open", tp.fds());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!tp.log().contains("Too many open files"), "{}", tp.log());
    // The soft limit was raised to the hard one.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", tp.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[3], f[4], "soft limit raised to the hard limit: {line}");
}

#[tokio::test]
async fn reviews_beyond_the_cap_get_a_proper_answer_within_their_deadline() {
    // One slot, held by a review whose body never finishes arriving.
    let tp = Server::start(
        None,
        &["--max-concurrent-reviews", "1", "--resolve-timeout", "4s"],
    );
    let c = tp.client();
    let cfg = tls_client(&tp.ca.ca_pem, &[b"http/1.1"]);
    let mut holder = tls_connect(&tp.https, &cfg, Duration::from_secs(30)).unwrap();
    holder
        .write_all(b"POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-length: 1000\r\n\r\n{\"apiVersion\"")
        .unwrap();
    holder.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Digests: if these got a slot, they would be answered without a warning.
    let body = |uid: &str| serde_json::to_vec(&pod_review(uid, &[&format!("a@{D}")])).unwrap();
    let (mu, en) = (
        format!("https://{}/mutate", tp.https),
        format!("https://{}/enforce", tp.https),
    );
    let (m, e) = tokio::join!(
        post(&c, &mu, body("waits-m")),
        post(&c, &en, body("waits-e")),
    );
    assert_eq!(m.0, 200);
    assert_eq!(m.1["response"]["uid"], "waits-m");
    assert_eq!(m.1["response"]["allowed"], true);
    assert!(m.1["response"].get("patch").is_none());
    let w = m.1["response"]["warnings"][0].as_str().unwrap();
    assert!(w.contains("more than 1 reviews in flight"), "{w}");
    assert_eq!(e.0, 200);
    assert_eq!(e.1["response"]["uid"], "waits-e");
    assert_eq!(e.1["response"]["allowed"], false);
    // The holder got its own answer when its deadline passed: 408.
    let mut head = String::new();
    BufReader::new(holder).read_line(&mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
}

#[tokio::test]
async fn row10_thousands_of_failing_images_give_bounded_answers() {
    let tp = Server::start(None, &[]);
    let c = tp.client();
    let images: Vec<String> = (0..2000).map(|i| format!("Bad:Image{i}")).collect();
    let refs: Vec<&str> = images.iter().map(String::as_str).collect();
    let body = serde_json::to_vec(&pod_review("many", &refs)).unwrap();
    let (s, m) = post(&c, &format!("https://{}/mutate", tp.https), body.clone()).await;
    assert_eq!(s, 200);
    let w = m["response"]["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 20);
    assert!(w.iter().all(|w| w.as_str().unwrap().len() <= 256));
    assert_eq!(w[19], "tagpin: 1981 more warnings not shown");
    let (s, e) = post(&c, &format!("https://{}/enforce", tp.https), body).await;
    assert_eq!(s, 200);
    let msg = e["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.len() <= 2048, "{}", msg.len());
    assert!(msg.starts_with("tagpin: denied, 2000 image(s)"), "{msg}");
    assert!(msg.contains(" more not shown"), "{msg}");
}

#[tokio::test]
async fn row11_a_uid_cannot_forge_a_text_log_line() {
    let tp = Server::start(None, &["--log-format", "text"]);
    let c = tp.client();
    let forged = "u1\nFORGED  INFO admission: uid=evil outcome=\"pinned\"";
    let review = pod_review(forged, &[&format!("a@{D}")]);
    let (s, out) = post(
        &c,
        &format!("https://{}/mutate", tp.https),
        serde_json::to_vec(&review).unwrap(),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(out["response"]["uid"], forged);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tp.log().contains("uid=u1\\nFORGED") {
        assert!(Instant::now() < deadline, "{}", tp.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !tp.log().lines().any(|l| l.starts_with("FORGED")),
        "{}",
        tp.log()
    );
}

#[test]
fn row12_enforce_does_not_honour_the_pod_skip_label() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/manifests/base/webhook.yaml"
    ))
    .unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let hooks: Vec<&Value> = docs
        .iter()
        .filter_map(|d| d["webhooks"].as_array())
        .flatten()
        .collect();
    let path = |h: &Value| {
        h["clientConfig"]["service"]["path"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let enforce: Vec<&&Value> = hooks.iter().filter(|h| path(h) == "/enforce").collect();
    let mutate: Vec<&&Value> = hooks.iter().filter(|h| path(h) == "/mutate").collect();
    assert!(!enforce.is_empty() && !mutate.is_empty(), "{hooks:?}");
    for h in enforce {
        assert!(
            !h.to_string().contains("tagpin.io/skip"),
            "the enforce webhook must not let a pod opt out: {h}"
        );
    }
    assert!(mutate
        .iter()
        .all(|h| h.to_string().contains("tagpin.io/skip")));
}

#[tokio::test]
async fn client_ca_refuses_clients_without_a_certificate_it_signed() {
    let clients = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("clients.pem");
    std::fs::write(&ca, &clients.ca_pem).unwrap();
    let tp = Server::start(None, &["--client-ca", ca.to_str().unwrap()]);
    let url = format!("https://{}/mutate", tp.https);
    let body = serde_json::to_vec(&pod_review("mtls", &[&format!("a@{D}")])).unwrap();
    // No client certificate: the handshake fails, nothing is answered.
    let anonymous = tp.client().post(&url).body(body.clone()).send().await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    // Signed by another CA: refused as well.
    let other = TestCa::new();
    let with = |id: &TestCa| {
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(tp.ca.ca_pem.as_bytes()).unwrap()])
            .identity(
                reqwest::Identity::from_pem(format!("{}{}", id.cert_pem, id.key_pem).as_bytes())
                    .unwrap(),
            )
            .build()
            .unwrap()
    };
    assert!(with(&other)
        .post(&url)
        .body(body.clone())
        .send()
        .await
        .is_err());
    // Signed by the CA: answered.
    let (s, out) = post(&with(&clients), &url, body).await;
    assert_eq!(s, 200, "{out}");
    assert_eq!(out["response"]["uid"], "mtls");
    // The probe port needs no certificate.
    let ready = reqwest::get(format!("http://{}/readyz", tp.metrics))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

/// Reads one HTTP/1.1 response; returns whether the server said `Connection: close`.
fn read_response(s: &mut impl BufRead) -> std::io::Result<bool> {
    let mut line = String::new();
    if s.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let mut len = 0usize;
    let mut close = false;
    loop {
        line.clear();
        if s.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end().to_ascii_lowercase();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
        if l == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    Ok(close)
}

#[derive(Default, Debug)]
struct LoadResult {
    answered: usize,
    /// Requests whose bytes were written and that got no answer.
    lost: usize,
}

/// 8 threads on keep-alive HTTP/1.1 connections, reconnecting whenever the server closes one,
/// until a connection is refused.
fn h1_load(addr: String, ca_pem: String, sigterm: impl FnOnce()) -> LoadResult {
    let cfg = tls_client(&ca_pem, &[b"http/1.1"]);
    let body = serde_json::to_vec(&pod_review("load", &[&format!("a@{D}")])).unwrap();
    let request = [
        format!(
            "POST /mutate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body,
    ]
    .concat();
    let answered = Arc::new(AtomicUsize::new(0));
    let lost = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (cfg, request, answered, lost, addr) = (
                cfg.clone(),
                request.clone(),
                answered.clone(),
                lost.clone(),
                addr.clone(),
            );
            std::thread::spawn(move || 'conn: loop {
                let Ok(s) = tls_connect(&addr, &cfg, Duration::from_secs(30)) else {
                    return;
                };
                let mut s = BufReader::new(s);
                loop {
                    if s.get_mut()
                        .write_all(&request)
                        .and_then(|()| s.get_mut().flush())
                        .is_err()
                    {
                        // Not all written: the server had already closed; nothing was lost.
                        continue 'conn;
                    }
                    match read_response(&mut s) {
                        Ok(close) => {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if close {
                                continue 'conn;
                            }
                        }
                        Err(_) => {
                            lost.fetch_add(1, Ordering::Relaxed);
                            continue 'conn;
                        }
                    }
                }
            })
        })
        .collect();
    // Let the load run, then stop the server in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::Relaxed) < 200 {
        assert!(Instant::now() < deadline, "load never got going");
        std::thread::sleep(Duration::from_millis(5));
    }
    sigterm();
    for t in threads {
        t.join().unwrap();
    }
    LoadResult {
        answered: answered.load(Ordering::Relaxed),
        lost: lost.load(Ordering::Relaxed),
    }
}

#[test]
fn row13_sigterm_under_http1_keep_alive_load_loses_no_request() {
    for run in 0..3 {
        let mut tp = Server::start(None, &["--shutdown-grace", "10s"]);
        let pid = tp.pid();
        let r = h1_load(tp.https.clone(), tp.ca.ca_pem.clone(), || {
            assert!(Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .unwrap()
                .success());
        });
        let status = tp.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "{status:?}\n{}", tp.log());
        eprintln!("row 13 HTTP/1.1 run {run}: {r:?}");
        assert!(r.answered >= 200);
        assert_eq!(r.lost, 0, "run {run}: requests written and never answered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row13_sigterm_under_http2_load_loses_no_request() {
    for run in 0..3 {
        let mut tp = Server::start(None, &["--shutdown-grace", "10s"]);
        let url = format!("https://{}/mutate", tp.https);
        let body = serde_json::to_vec(&pod_review("load2", &[&format!("a@{D}")])).unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let lost = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let c = reqwest::Client::builder()
                .tls_certs_only([reqwest::Certificate::from_pem(tp.ca.ca_pem.as_bytes()).unwrap()])
                .http2_prior_knowledge()
                .build()
                .unwrap();
            let (url, body, answered, lost) =
                (url.clone(), body.clone(), answered.clone(), lost.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    match c.post(&url).body(body.clone()).send().await {
                        Ok(r) if r.status() == 200 => {
                            if r.bytes().await.is_ok() {
                                answered.fetch_add(1, Ordering::Relaxed);
                            } else {
                                lost.lock().unwrap().push("body cut".into());
                            }
                        }
                        Ok(r) => lost.lock().unwrap().push(format!("status {}", r.status())),
                        // Refused: the listener is closed, the run is over for this client.
                        Err(e) if e.is_connect() => return,
                        Err(e) => lost.lock().unwrap().push(format!("{e:?}")),
                    }
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered.load(Ordering::Relaxed) < 200 {
            assert!(Instant::now() < deadline, "load never got going");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tp.terminate();
        for t in tasks {
            t.await.unwrap();
        }
        let status = tp.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "{status:?}\n{}", tp.log());
        let lost = lost.lock().unwrap().clone();
        eprintln!(
            "row 13 HTTP/2 run {run}: answered {}, lost {}",
            answered.load(Ordering::Relaxed),
            lost.len()
        );
        assert!(lost.is_empty(), "run {run}: {lost:?}");
    }
}
