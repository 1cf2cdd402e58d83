//! A real Toxiproxy (built from its Go module by `scripts/toxiproxy`, cached under `~/.cache/`)
//! between the resolver and real `docker-registry` processes: latency, stalls and resets on
//! 127.0.0.1, driven through its HTTP API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// One running `toxiproxy-server`, stopped on drop.
pub struct Toxiproxy {
    child: Child,
    api: String,
    http: reqwest::Client,
}

/// The toxiproxy-server binary: `TAGPIN_TOXIPROXY`, or built (once per machine) by
/// `scripts/toxiproxy`.
fn binary() -> PathBuf {
    super::go_binary(
        "TAGPIN_TOXIPROXY",
        "scripts/toxiproxy",
        "toxiproxy is built from its Go module (needs Go and the module proxy)",
    )
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Toxiproxy {
    pub async fn start() -> Self {
        let bin = binary();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let port = free_port();
            let child = Command::new(&bin)
                .args(["-host", "127.0.0.1", "-port", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let mut t = Toxiproxy {
                child,
                api: format!("http://127.0.0.1:{port}"),
                http: reqwest::Client::new(),
            };
            let up = Instant::now() + Duration::from_secs(5);
            while Instant::now() < up {
                if let Ok(r) = t.http.get(format!("{}/version", t.api)).send().await {
                    if r.status().is_success() {
                        return t;
                    }
                }
                if matches!(t.child.try_wait(), Ok(Some(_))) {
                    break; // the port was taken in between: try another
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(Instant::now() < deadline, "toxiproxy-server did not start");
            let _ = t.child.kill();
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.api));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.expect("toxiproxy API");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            status.is_success(),
            "toxiproxy {method} {path}: {status} {text}"
        );
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// A proxy named `name` to `upstream` (`127.0.0.1:PORT`); returns the address it listens on.
    pub async fn proxy(&self, name: &str, upstream: &str) -> String {
        let p = self
            .call(
                reqwest::Method::POST,
                "/proxies",
                Some(json!({"name": name, "listen": "127.0.0.1:0", "upstream": upstream})),
            )
            .await;
        p["listen"]
            .as_str()
            .expect("proxy's listen address")
            .to_string()
    }

    /// Adds a toxic (`kind`: latency, timeout, reset_peer, limit_data, bandwidth, ...) on one
    /// direction (`downstream`: registry to client; `upstream`: client to registry).
    pub async fn toxic(&self, proxy: &str, name: &str, kind: &str, stream: &str, attrs: Value) {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}/toxics"),
            Some(json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attrs})),
        )
        .await;
    }

    /// `ms` of latency each way.
    pub async fn latency(&self, proxy: &str, ms: u64) {
        for stream in ["upstream", "downstream"] {
            self.toxic(
                proxy,
                &format!("latency_{stream}"),
                "latency",
                stream,
                json!({ "latency": ms }),
            )
            .await;
        }
    }

    /// Replaces the latency [`Toxiproxy::latency`] added with `ms` each way.
    pub async fn set_latency(&self, proxy: &str, ms: u64) {
        for stream in ["upstream", "downstream"] {
            self.remove_toxic(proxy, &format!("latency_{stream}")).await;
        }
        self.latency(proxy, ms).await;
    }

    pub async fn remove_toxic(&self, proxy: &str, name: &str) {
        self.call(
            reqwest::Method::DELETE,
            &format!("/proxies/{proxy}/toxics/{name}"),
            None,
        )
        .await;
    }

    /// A disabled proxy refuses connections (and drops those it holds): the registry is down.
    pub async fn set_enabled(&self, proxy: &str, enabled: bool) {
        self.call(
            reqwest::Method::POST,
            &format!("/proxies/{proxy}"),
            Some(json!({ "enabled": enabled })),
        )
        .await;
    }
}

impl Drop for Toxiproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
