//! A **fake** Kubernetes API server, standing in for the real one because no API server can be
//! installed or run on these machines. It serves the real REST paths tagpin reads,
//! `GET /api/v1/namespaces/{ns}/secrets/{name}` and
//! `GET /api/v1/namespaces/{ns}/serviceaccounts/{name}`, with the JSON the API server sends
//! (objects with base64 `data`; `Status` bodies for 404 and 403), counts requests per path, and
//! is reached through a kubeconfig file, exactly as tagpin reaches a real cluster.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use serde_json::{json, Value};

/// Serves `app` on 127.0.0.1 from a thread with its own runtime (independent of the test's,
/// which may block); returns `127.0.0.1:PORT`.
pub fn serve_in_thread(app: axum::Router) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr.to_string()
}

#[derive(Default)]
struct Objects {
    by_path: HashMap<String, Value>,
    forbidden: HashSet<String>,
    /// Paths that are never answered (a hung API server).
    hung: HashSet<String>,
    reads: HashMap<String, usize>,
}

pub struct FakeKube {
    objects: Arc<Mutex<Objects>>,
    pub addr: String,
    dir: tempfile::TempDir,
}

pub fn secret_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/secrets/{name}")
}

pub fn service_account_path(ns: &str, name: &str) -> String {
    format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}")
}

impl FakeKube {
    pub fn start() -> Self {
        let objects = Arc::new(Mutex::new(Objects::default()));
        let app = axum::Router::new()
            .fallback(axum::routing::get(get))
            .with_state(objects.clone());
        let addr = serve_in_thread(app);
        Self {
            objects,
            addr,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A kubeconfig pointing at this server (plain HTTP on loopback, a dummy bearer token).
    pub fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig.yaml");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tagpin\n    namespace: default\ncurrent-context: fake\nusers:\n- name: tagpin\n  user:\n    token: fake-token\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// A `kubernetes.io/dockerconfigjson` secret, as `kubectl create secret docker-registry`
    /// writes it: `auths` keyed by `registry_key` with username, password and `auth`.
    pub fn put_pull_secret(
        &self,
        ns: &str,
        name: &str,
        registry_key: &str,
        user: &str,
        password: &str,
    ) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let cfg = json!({"auths": {registry_key: {
            "username": user, "password": password, "auth": b64(&format!("{user}:{password}"))
        }}});
        self.put_secret(
            ns,
            name,
            "kubernetes.io/dockerconfigjson",
            ".dockerconfigjson",
            &cfg,
        );
    }

    /// A legacy `kubernetes.io/dockercfg` secret: the registry map without `auths`, `auth` only.
    pub fn put_dockercfg_secret(
        &self,
        ns: &str,
        name: &str,
        registry_key: &str,
        user: &str,
        password: &str,
    ) {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let cfg = json!({registry_key: {"auth": auth, "email": "ci@example.com"}});
        self.put_secret(ns, name, "kubernetes.io/dockercfg", ".dockercfg", &cfg);
    }

    pub fn put_secret(&self, ns: &str, name: &str, type_: &str, key: &str, content: &Value) {
        let data = base64::engine::general_purpose::STANDARD.encode(content.to_string());
        let obj = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                         "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "type": type_,
            "data": {key: data},
        });
        self.objects
            .lock()
            .unwrap()
            .by_path
            .insert(secret_path(ns, name), obj);
    }

    pub fn put_service_account(&self, ns: &str, name: &str, pull_secrets: &[&str]) {
        let refs: Vec<Value> = pull_secrets.iter().map(|n| json!({"name": n})).collect();
        let obj = json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-sa-{ns}-{name}"),
                         "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "imagePullSecrets": refs,
        });
        self.objects
            .lock()
            .unwrap()
            .by_path
            .insert(service_account_path(ns, name), obj);
    }

    /// Answers 403 for this path, as the API server does when RBAC denies `get`.
    pub fn forbid(&self, path: &str) {
        self.objects
            .lock()
            .unwrap()
            .forbidden
            .insert(path.to_string());
    }

    /// Never answers this path (the connection stays open).
    pub fn hang(&self, path: &str) {
        self.objects.lock().unwrap().hung.insert(path.to_string());
    }

    /// Requests served for `path`.
    pub fn reads(&self, path: &str) -> usize {
        self.objects
            .lock()
            .unwrap()
            .reads
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Requests served in all.
    pub fn total_reads(&self) -> usize {
        self.objects.lock().unwrap().reads.values().sum()
    }
}

fn status(code: u16, reason: &str, message: String, name: &str, kind: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {"name": name, "kind": kind}, "code": code,
    });
    (StatusCode::from_u16(code).unwrap(), Json(body)).into_response()
}

async fn get(State(objects): State<Arc<Mutex<Objects>>>, uri: Uri) -> Response {
    let path = uri.path().to_string();
    let hung = {
        let mut o = objects.lock().unwrap();
        *o.reads.entry(path.clone()).or_default() += 1;
        o.hung.contains(&path)
    };
    if hung {
        std::future::pending::<()>().await;
    }
    let o = objects.lock().unwrap();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (ns, kind, name) = match parts.as_slice() {
        ["api", "v1", "namespaces", ns, kind @ ("secrets" | "serviceaccounts"), name] => {
            (ns.to_string(), kind.to_string(), name.to_string())
        }
        _ => {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                "",
                "",
            )
        }
    };
    if o.forbidden.contains(&path) {
        return status(
            403,
            "Forbidden",
            format!("{kind} \"{name}\" is forbidden: User \"system:serviceaccount:tagpin:tagpin\" cannot get resource \"{kind}\" in API group \"\" in the namespace \"{ns}\""),
            &name,
            &kind,
        );
    }
    match o.by_path.get(&path) {
        Some(obj) => Json(obj.clone()).into_response(),
        None => status(
            404,
            "NotFound",
            format!("{kind} \"{name}\" not found"),
            &name,
            &kind,
        ),
    }
}
