//! Test harness. The registry is real: Debian's `docker-registry` (CNCF distribution 2.8), one
//! process per test on a loopback port of its own choosing, with its own config and storage.
//! Images are pushed by this code over the registry API, so the expected digest of every tag is
//! the sha256 of bytes we wrote. All traffic stays on 127.0.0.1.
#![allow(dead_code)]

pub mod fake_kube;
pub mod forward;
pub mod half_body;
pub mod limiter;
pub mod plugin;
pub mod token;
pub mod toxiproxy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine as _;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tagpin::admission::{AdmissionConfig, Admitter};
use tagpin::metrics::Metrics;
use tagpin::resolve::{Resolver, ResolverConfig};
use tower::ServiceExt as _;

pub const REGISTRY_BIN: &str = "docker-registry";

pub fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tagpin::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A test CA and a serving certificate for 127.0.0.1/localhost signed by it.
pub struct TestCa {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> Self {
        Self::build(None)
    }

    /// A CA and a serving certificate whose `notAfter` is midnight UTC of that day.
    pub fn valid_until(year: i32, month: u8, day: u8) -> Self {
        Self::build(Some((year, month, day)))
    }

    fn build(not_after: Option<(i32, u8, u8)>) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tagpin test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        if let Some((y, m, d)) = not_after {
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// One running `docker-registry`.
pub struct Registry {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    log: PathBuf,
    pub tls: Option<TestCa>,
    pub user: Option<(String, String)>,
    /// Directories that must live as long as the registry.
    keep: Vec<tempfile::TempDir>,
}

pub struct RegistryOptions {
    pub tls: bool,
    pub htpasswd: Option<(String, String)>,
    /// Token auth (`auth: token`) against this token server.
    pub token: Option<String>,
}

impl Registry {
    /// Plain HTTP, anonymous.
    pub fn plain() -> Self {
        Self::start(RegistryOptions {
            tls: false,
            htpasswd: None,
            token: None,
        })
    }

    /// HTTPS with its own CA, htpasswd Basic auth.
    pub fn tls_basic(user: &str, password: &str) -> Self {
        Self::start(RegistryOptions {
            tls: true,
            htpasswd: Some((user.into(), password.into())),
            token: None,
        })
    }

    /// Plain HTTP with token auth: 401 + Bearer challenge naming `server`, which issues the JWTs.
    pub fn token_auth(server: &token::TokenServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let yaml = server.registry_auth_yaml(dir.path());
        let mut r = Self::start(RegistryOptions {
            tls: false,
            htpasswd: None,
            token: Some(yaml),
        });
        r.keep.push(dir);
        r
    }

    pub fn start(opts: RegistryOptions) -> Self {
        init();
        assert!(
            Command::new(REGISTRY_BIN).arg("--version").output().is_ok(),
            "{REGISTRY_BIN} is not installed: run the README's test command (it installs it)"
        );
        Self::start_bin(Path::new(REGISTRY_BIN), opts, "")
    }

    /// The distribution registry v3 (built from its Go module by `scripts/registry3`, cached
    /// under `~/.cache/`), which negotiates HTTP/2 over TLS unless `http2` is false
    /// (`http.http2.disabled`). Its access log is in the same format as 2.8's.
    pub fn v3(opts: RegistryOptions, http2: bool) -> Self {
        init();
        let http = if http2 {
            ""
        } else {
            "  http2:\n    disabled: true\n"
        };
        Self::start_bin(&registry3_binary(), opts, http)
    }

    /// `bin serve` with a config of `opts`; `http_extra` is added to its `http:` section.
    fn start_bin(bin: &Path, opts: RegistryOptions, http_extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n  secret: tagpin-test\n",
            storage.display()
        );
        let tls = opts.tls.then(TestCa::new);
        if let Some(ca) = &tls {
            std::fs::write(dir.path().join("cert.pem"), &ca.cert_pem).unwrap();
            std::fs::write(dir.path().join("key.pem"), &ca.key_pem).unwrap();
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            ));
        }
        cfg.push_str(http_extra);
        if let Some((u, p)) = &opts.htpasswd {
            let hash = bcrypt::hash_with_result(p, 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            std::fs::write(dir.path().join("htpasswd"), format!("{u}:{hash}\n")).unwrap();
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: tagpin-test\n    path: {}\n",
                dir.path().join("htpasswd").display()
            ));
        }
        if let Some(yaml) = &opts.token {
            cfg.push_str(yaml);
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).unwrap();
        let log = dir.path().join("registry.log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg_path)
            // distribution writes its access log to stdout and everything else to stderr.
            .stdout(std::fs::File::create(dir.path().join("access.log")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(i) = text.find("listening on 127.0.0.1:") {
                let rest = &text[i + "listening on ".len()..];
                let end = rest
                    .find(|c: char| c != '.' && c != ':' && !c.is_ascii_digit())
                    .unwrap_or(rest.len());
                break rest[..end].to_string();
            }
            assert!(Instant::now() < deadline, "registry did not start:\n{text}");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            dir,
            child: Some(child),
            addr,
            log,
            tls,
            user: opts.htpasswd,
            keep: Vec::new(),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn base(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Access-log lines for requests whose line contains `needle` (e.g. `"HEAD /v2/a/manifests/1`).
    /// Waits until the count has been stable for 300 ms, since the registry logs after replying.
    pub fn count(&self, needle: &str) -> usize {
        let access = self.dir.path().join("access.log");
        let read = || {
            std::fs::read_to_string(&access)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("127.0.0.1 - ") && l.contains(needle))
                .count()
        };
        let mut last = read();
        let mut stable_since = Instant::now();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && stable_since.elapsed() < Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(50));
            let now = read();
            if now != last {
                last = now;
                stable_since = Instant::now();
            }
        }
        last
    }

    /// Manifest HEADs and GETs for `repo:tag` that reached the registry.
    pub fn manifest_requests(&self, repo: &str, tag: &str) -> usize {
        self.count(&format!("\"HEAD /v2/{repo}/manifests/{tag} "))
            + self.count(&format!("\"GET /v2/{repo}/manifests/{tag} "))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
            + &std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    pub fn pusher(&self) -> Pusher {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = &self.tls {
            b = b.tls_certs_only([reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap()]);
        }
        Pusher {
            http: b.build().unwrap(),
            base: self.base(),
            auth: self.user.clone(),
            bearer: None,
        }
    }

    /// A pusher that sends this registry token (for token-auth registries).
    pub fn pusher_with_token(&self, token: String) -> Pusher {
        Pusher {
            bearer: Some(token),
            ..self.pusher()
        }
    }

    /// Resolver settings that reach this registry (plain HTTP, or its CA trusted).
    pub fn resolver_config(&self) -> ResolverConfig {
        let mut cfg = ResolverConfig::default();
        if self.tls.is_none() {
            cfg.registry.insecure.push(self.addr.clone());
        } else if let Some(ca) = &self.tls {
            cfg.registry.extra_ca_pem = Some(ca.ca_pem.clone().into_bytes());
        }
        cfg
    }

    /// A docker config.json holding this registry's user, written into its directory.
    pub fn docker_config(&self, password: &str) -> PathBuf {
        let (u, _) = self.user.clone().expect("registry has a user");
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{password}"));
        let path = self.dir.path().join(format!(
            "docker-config-{}.json",
            sha256(password.as_bytes())
        ));
        std::fs::write(
            &path,
            json!({"auths": {format!("https://{}", self.addr): {"auth": auth}}}).to_string(),
        )
        .unwrap();
        path
    }
}

/// The distribution registry v3 binary: `TAGPIN_REGISTRY3`, or built (once per machine) by
/// `scripts/registry3`.
pub fn registry3_binary() -> PathBuf {
    go_binary(
        "TAGPIN_REGISTRY3",
        "scripts/registry3",
        "the registry v3 is built from its Go module (needs Go 1.26 and the module proxy)",
    )
}

/// A Go binary a script builds and caches: the path in `env` when set, else what `script --path`
/// prints (building it the first time on a machine). `what` says what the build needs.
pub fn go_binary(env: &str, script: &str, what: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return p.into();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&script)
        .arg("--path")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} --path failed: {what}",
        script.display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A "registry" that accepts connections and never answers. Returns its address and the
/// connections it holds (kept open for the life of the process).
pub fn hung_registry() -> (String, Arc<Mutex<Vec<std::net::TcpStream>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    (addr, held)
}

pub enum Kind {
    Oci,
    Docker,
    /// A two-platform OCI index (amd64 + arm64).
    Index,
}

pub struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
    bearer: Option<String>,
}

static NONCE: AtomicU64 = AtomicU64::new(0);

impl Pusher {
    fn req(&self, m: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(m, url);
        match (&self.bearer, &self.auth) {
            (Some(t), _) => r.bearer_auth(t),
            (None, Some((u, p))) => r.basic_auth(u, Some(p)),
            (None, None) => r,
        }
    }

    pub async fn blob(&self, repo: &str, bytes: &[u8]) -> (String, usize) {
        let digest = sha256(bytes);
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "start upload: {:?}", resp.text().await);
        let loc = resp.headers()["location"].to_str().unwrap().to_string();
        let mut url = if loc.starts_with("http") {
            reqwest::Url::parse(&loc).unwrap()
        } else {
            reqwest::Url::parse(&format!("{}{loc}", self.base)).unwrap()
        };
        url.query_pairs_mut().append_pair("digest", &digest);
        let resp = self
            .req(reqwest::Method::PUT, url.as_str())
            .header("content-type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "finish upload: {:?}", resp.text().await);
        (digest, bytes.len())
    }

    /// PUTs exact manifest bytes under `reference` (a tag or a digest); returns their digest.
    pub async fn manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let digest = sha256(&bytes);
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("content-type", media_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "push manifest: {:?}", resp.text().await);
        assert_eq!(
            resp.headers()["docker-content-digest"].to_str().unwrap(),
            digest
        );
        digest
    }

    async fn single(
        &self,
        repo: &str,
        reference: &str,
        docker: bool,
        arch: &str,
    ) -> (String, usize) {
        let n = NONCE.fetch_add(1, Ordering::Relaxed);
        let config = json!({
            "architecture": arch, "os": "linux",
            "config": {"Labels": {"tagpin.test/nonce": format!("{n}-{}", std::process::id())}},
            "rootfs": {"type": "layers", "diff_ids": []}
        })
        .to_string();
        let (cd, cs) = self.blob(repo, config.as_bytes()).await;
        let layer = format!("layer {n} {arch}").into_bytes();
        let (ld, ls) = self.blob(repo, &layer).await;
        let (mt, ct, lt) = if docker {
            (
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            )
        } else {
            (
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        };
        let m = serde_json::to_vec_pretty(&json!({
            "schemaVersion": 2, "mediaType": mt,
            "config": {"mediaType": ct, "digest": cd, "size": cs},
            "layers": [{"mediaType": lt, "digest": ld, "size": ls}]
        }))
        .unwrap();
        let len = m.len();
        (self.manifest(repo, reference, mt, m).await, len)
    }

    /// Pushes a fresh image (new content every call) to `repo:tag`; returns the tag's digest.
    pub async fn push(&self, repo: &str, tag: &str, kind: Kind) -> String {
        match kind {
            Kind::Oci => self.single(repo, tag, false, "amd64").await.0,
            Kind::Docker => self.single(repo, tag, true, "amd64").await.0,
            Kind::Index => {
                let mut manifests = Vec::new();
                for arch in ["amd64", "arm64"] {
                    // Push the platform manifest by its digest: first compute it with a throwaway tag.
                    let (d, size) = self
                        .single(repo, &format!("{tag}-{arch}"), false, arch)
                        .await;
                    manifests.push(json!({
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": d, "size": size,
                        "platform": {"architecture": arch, "os": "linux"}
                    }));
                }
                let idx = serde_json::to_vec(&json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": manifests
                }))
                .unwrap();
                self.manifest(repo, tag, "application/vnd.oci.image.index.v1+json", idx)
                    .await
            }
        }
    }
}

thread_local! {
    static METRICS: Arc<Metrics> = Arc::new(Metrics::new());
}

/// The metrics of this test (one set per test thread): what a test builds with them (a cluster,
/// plugins, an admitter) records into one registry, as in `tagpin serve`.
pub fn metrics() -> Arc<Metrics> {
    METRICS.with(Arc::clone)
}

pub fn admitter(cfg: ResolverConfig, adm: AdmissionConfig) -> Admitter {
    init();
    let metrics = metrics();
    Admitter {
        resolver: Resolver::new(cfg, metrics.clone()).unwrap(),
        config: Arc::new(adm),
        metrics,
    }
}

pub fn admission_config() -> AdmissionConfig {
    AdmissionConfig {
        keep_tag: false,
        resolve_timeout: Duration::from_secs(5),
        stale_on_error: true,
    }
}

pub fn router(a: Admitter) -> axum::Router {
    tagpin::server::router(a, Arc::new(std::sync::atomic::AtomicBool::new(true)))
}

/// The fixture `tests/data/<name>` with every `"IMAGE"` placeholder replaced, in document order,
/// by the next entry of `images`.
pub fn fixture(name: &str, images: &[&str]) -> Value {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap();
    let mut out = String::new();
    let mut rest = text.as_str();
    let mut i = 0;
    while let Some(pos) = rest.find("\"IMAGE\"") {
        out.push_str(&rest[..pos]);
        out.push_str(&serde_json::to_string(images[i % images.len()]).unwrap());
        rest = &rest[pos + 7..];
        i += 1;
    }
    out.push_str(rest);
    serde_json::from_str(&out).unwrap()
}

/// A minimal but complete Pod CREATE review with these container images.
pub fn pod_review(uid: &str, images: &[&str]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "team-a", "operation": "CREATE",
            "userInfo": {"username": "tester"},
            "object": {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
                       "spec": {"containers": containers}},
            "oldObject": null, "dryRun": false
        }
    })
}

/// Pushes `web:1.0` (OCI manifest), `sidecar:1.0` (Docker manifest) and `multi:1.0` (an index)
/// to `reg`: the three images of the benches' 4-image Pod review (`tests/data/pod-create.json`).
pub async fn push_bench_images(reg: &Registry) -> Vec<String> {
    let p = reg.pusher();
    let mut v = Vec::new();
    for (repo, kind) in [
        ("web", Kind::Oci),
        ("sidecar", Kind::Docker),
        ("multi", Kind::Index),
    ] {
        p.push(repo, "1.0", kind).await;
        v.push(format!("{}/{repo}:1.0", reg.addr));
    }
    v
}

/// POSTs a body to the router; returns the status and parsed JSON.
pub async fn post(router: &axum::Router, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, v)
}

pub async fn review(router: &axum::Router, path: &str, review: &Value) -> Value {
    let (status, v) = post(router, path, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["response"]["uid"], review["request"]["uid"], "uid echoed");
    v["response"].clone()
}

/// Decodes the base64 JSON Patch of a response (None when there is none).
pub fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    let b64 = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    Some(serde_json::from_slice(&raw).unwrap())
}

/// Applies the response's patch to the review's object and returns the result.
pub fn apply(review: &Value, response: &Value) -> Value {
    let mut obj = review["request"]["object"].clone();
    if let Some(p) = patch_of(response) {
        json_patch::patch(&mut obj, &p).unwrap();
    }
    obj
}

pub fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|a| a.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// `tagpin serve` on loopback, on ports of its choosing (the log says which).
pub const SERVE_ON_ANY_PORT: [&str; 5] = [
    "serve",
    "--listen",
    "127.0.0.1:0",
    "--metrics-listen",
    "127.0.0.1:0",
];

/// The spawned `tagpin` binary, with its log captured.
pub struct Tagpin {
    pub child: Child,
    pub https: String,
    pub metrics: String,
    pub log: Arc<Mutex<String>>,
}

impl Tagpin {
    /// `tagpin serve` with `args`, allowed to reach the test registries on loopback.
    pub fn spawn(args: &[&str]) -> Self {
        // The test registries listen on loopback, which `serve` refuses unless allowed.
        let mut all = vec!["--allow-registry-cidr", "127.0.0.0/8"];
        all.extend_from_slice(args);
        Self::spawn_without_allowances(&all)
    }

    /// `tagpin serve` with `args` only (its address rules as shipped).
    pub fn spawn_without_allowances(args: &[&str]) -> Self {
        init();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tagpin"));
        cmd.args(SERVE_ON_ANY_PORT).args(args);
        Self::start(cmd)
    }

    /// Starts `cmd` (a `tagpin serve` on ports of its choosing, [`SERVE_ON_ANY_PORT`]) with its
    /// log captured; returns once it says where it listens.
    pub fn start(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("admission reviews on https://") {
                        let rest = &line[i + "admission reviews on https://".len()..];
                        let https = rest.split_whitespace().next().unwrap_or("").to_string();
                        let m = rest.split("metrics on http://").nth(1).unwrap_or("");
                        let metrics = m.split('/').next().unwrap_or("").to_string();
                        let _ = tx.send((https, metrics));
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let (https, metrics) = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("tagpin did not start: {}", log.lock().unwrap()));
        Self {
            child,
            https,
            metrics,
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// POSTs a review (its self-signed certificate accepted); the status and the response part.
    pub async fn review(&self, path: &str, review: &Value) -> (u16, Value) {
        let c = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .build()
            .unwrap();
        let r = c
            .post(format!("https://{}{path}", self.https))
            .json(review)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, body["response"].clone())
    }

    /// The log once it contains `needle` (the reader thread may lag the HTTP answer).
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "{needle:?} never logged:\n{log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
}

impl Drop for Tagpin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POSTs `body` as JSON to `url`: the status, and the body as JSON (as a string when it is not).
pub async fn post_over_http(c: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let resp = c
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// `tagpin pin` (the built binary) with `args`, speaking plain HTTP to `reg`.
pub fn tagpin(reg: &Registry, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tagpin"))
        .arg("pin")
        .args(["--insecure-registry", &reg.addr])
        .args(args)
        .output()
        .unwrap()
}

/// A finished command's stderr, as text.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The `tagpin.io/pinned` record tagpin writes: compact JSON, keys sorted.
pub fn record(entries: &[(&str, &str)]) -> String {
    serde_json::to_string(
        &entries
            .iter()
            .copied()
            .collect::<std::collections::BTreeMap<_, _>>(),
    )
    .unwrap()
}

/// The digests of the three images the `pin` suites push.
pub struct Pushed {
    pub app: String,
    pub web: String,
    pub redis: String,
}

/// Pushes `app:v3` (OCI manifest), `web:1.27` (OCI index) and `redis:7` (Docker manifest).
pub async fn push_all(reg: &Registry) -> Pushed {
    let p = reg.pusher();
    Pushed {
        app: p.push("app", "v3", Kind::Oci).await,
        web: p.push("web", "1.27", Kind::Index).await,
        redis: p.push("redis", "7", Kind::Docker).await,
    }
}
