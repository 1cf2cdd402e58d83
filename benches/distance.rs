//! At real distances (issue 22): tagpin's resolver against real `docker-registry` processes
//! (plain HTTP; HTTPS with htpasswd Basic; plain HTTP with token auth, the token server as far away)
//! and the distribution registry v3 over HTTPS, which speaks HTTP/2, behind a real Toxiproxy
//! adding 25 ms, then 50 ms, each way, all on 127.0.0.1. Every figure is a multiple of the
//! injected round trip (50 ms, then 100 ms), with what a warm miss costs beyond one round trip
//! also in milliseconds (constant across the two distances: time spent on this machine; growing
//! with them: round trips), and the registry requests counted from the registry's access log and the
//! token server's count, in one run.
//!
//! `scripts/distance` (or `cargo bench --bench distance`); prints the tables in BENCHMARKS.md.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::limiter::rate_limiting_registry;
use common::token::TokenServer;
use common::toxiproxy::Toxiproxy;
use common::*;
use tagpin::resolve::credentials::CredentialSet;
use tagpin::resolve::{BatchRequest, Budget, ImageOutcome, Outcome, Resolver, ResolverConfig};

/// Milliseconds each way: the recovery and storm figures are at the first only.
const ONE_WAY_MS: [u64; 2] = [25, 50];
/// Repetitions per figure (medians are reported); 1 when run as a smoke test by `cargo test`.
fn reps() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        5
    } else {
        1
    }
}

struct Setup {
    name: &'static str,
    /// The Toxiproxy proxies in its path (the registry's, and the token server's).
    proxies: &'static [&'static str],
    reg: Registry,
    /// The registry as tagpin sees it: through the proxy.
    addr: String,
    token: Option<TokenServer>,
    pusher: Pusher,
    cfg: ResolverConfig,
    _keep: Option<tempfile::TempDir>,
}

impl Setup {
    fn requests(&self) -> usize {
        let log =
            std::fs::read_to_string(self.reg.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.starts_with("127.0.0.1 - "))
            .count()
            + self.token.as_ref().map_or(0, TokenServer::requests)
    }

    /// Registry (and token server) requests made by `f`, once the registry logged them.
    async fn counted<T>(&self, f: impl std::future::Future<Output = T>) -> (T, usize) {
        let before = self.requests();
        let out = f.await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        (out, self.requests() - before)
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(self.cfg.clone(), Arc::new(tagpin::metrics::Metrics::new())).unwrap()
    }
}

fn docker_config(addr: &str, scheme: &str, user: &str, password: &str) -> CredentialSet {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({"auths": {format!("{scheme}://{addr}"): {"auth": auth}}});
    CredentialSet::from_docker_config(json.to_string().as_bytes(), std::path::Path::new("bench"))
        .unwrap()
}

async fn setups(toxi: &Toxiproxy) -> Vec<Setup> {
    let mut out = Vec::new();

    let reg = Registry::plain();
    let addr = toxi.proxy("plain", &reg.addr).await;
    toxi.latency("plain", ONE_WAY_MS[0]).await;
    let mut cfg = reg.resolver_config();
    cfg.registry.insecure.push(addr.clone());
    out.push(Setup {
        name: "plain HTTP, anonymous",
        proxies: &["plain"],
        pusher: reg.pusher(),
        reg,
        addr,
        token: None,
        cfg,
        _keep: None,
    });

    let reg = Registry::tls_basic("bot", "pw");
    let addr = toxi.proxy("basic", &reg.addr).await;
    toxi.latency("basic", ONE_WAY_MS[0]).await;
    let mut cfg = reg.resolver_config();
    cfg.docker_config = docker_config(&addr, "https", "bot", "pw");
    out.push(Setup {
        name: "HTTPS, Basic",
        proxies: &["basic"],
        pusher: reg.pusher(),
        reg,
        addr,
        token: None,
        cfg,
        _keep: None,
    });

    let mut ts = TokenServer::start(&[("bot", "pw", &["app"])]);
    let upstream = ts
        .realm
        .trim_start_matches("http://")
        .trim_end_matches("/token")
        .to_string();
    let realm = toxi.proxy("token-server", &upstream).await;
    toxi.latency("token-server", ONE_WAY_MS[0]).await;
    ts.realm = format!("http://{realm}/token");
    let dir = tempfile::tempdir().unwrap();
    // The test token server speaks plain HTTP, and tagpin sends credentials to a plain-HTTP realm
    // only for a registry listed as plain HTTP: this registry is plain HTTP too.
    let reg = Registry::start(RegistryOptions {
        tls: false,
        htpasswd: None,
        token: Some(ts.registry_auth_yaml(dir.path())),
    });
    let addr = toxi.proxy("token", &reg.addr).await;
    toxi.latency("token", ONE_WAY_MS[0]).await;
    let mut cfg = reg.resolver_config();
    cfg.registry.insecure.push(addr.clone());
    cfg.docker_config = docker_config(&addr, "http", "bot", "pw");
    out.push(Setup {
        name: "plain HTTP, token (token server as far away)",
        proxies: &["token", "token-server"],
        pusher: reg.pusher_with_token(ts.mint("admin", "app", &["pull", "push"])),
        reg,
        addr,
        token: Some(ts),
        cfg,
        _keep: Some(dir),
    });

    let reg = Registry::v3(
        RegistryOptions {
            tls: true,
            htpasswd: None,
            token: None,
        },
        true,
    );
    let addr = toxi.proxy("h2", &reg.addr).await;
    toxi.latency("h2", ONE_WAY_MS[0]).await;
    let cfg = reg.resolver_config();
    out.push(Setup {
        name: "HTTPS, HTTP/2 (registry v3), anonymous",
        proxies: &["h2"],
        pusher: reg.pusher(),
        reg,
        addr,
        token: None,
        cfg,
        _keep: None,
    });
    out
}

async fn resolve(r: &Resolver, images: &[String]) -> Vec<Outcome> {
    r.resolve_batch(
        &BatchRequest::default(),
        images,
        Budget::from_now(Duration::from_secs(30)),
    )
    .await
    .outcomes
    .into_iter()
    .map(|o| match o {
        ImageOutcome::Resolved(_, o) => o,
        other => panic!("not a tag: {other:?}"),
    })
    .collect()
}

fn all_pinned(out: &[Outcome]) {
    for o in out {
        assert!(matches!(o, Outcome::Pinned(_)), "{o:?}");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rtts(d: Duration, rtt: Duration) -> f64 {
    d.as_secs_f64() / rtt.as_secs_f64()
}

/// `d` as a multiple of `rtt`, and what lies beyond one round trip (a warm miss's minimum), in ms.
fn rtts_and_rest(d: Duration, rtt: Duration) -> String {
    let rest = d.as_secs_f64() - rtt.as_secs_f64();
    format!("{:.2} RTT (1 RTT {:+.1} ms)", rtts(d, rtt), rest * 1e3)
}

/// A client for raw requests to `s`'s registry (its CA trusted), and the URL of its floor tag.
fn raw_client(s: &Setup) -> (reqwest::Client, String) {
    let mut b = reqwest::Client::builder();
    let scheme = match &s.reg.tls {
        Some(ca) => {
            b = b.tls_certs_only([reqwest::Certificate::from_pem(ca.ca_pem.as_bytes()).unwrap()]);
            "https"
        }
        None => "http",
    };
    (
        b.build().unwrap(),
        format!("{scheme}://{}/v2/app/manifests/floor", s.addr),
    )
}

async fn push(s: &Setup, tags: &[String]) {
    for t in tags {
        s.pusher.push("app", t, Kind::Oci).await;
    }
}

async fn floor(s: &Setup) -> Duration {
    // One raw manifest HEAD over a held connection through the proxy: one round trip and the
    // registry's own time.
    let (http, url) = raw_client(s);
    let mut times = Vec::new();
    for _ in 0..=reps() {
        let t = Instant::now();
        let r = http
            .head(&url)
            .header("accept", tagpin::resolve::registry::ACCEPT_MANIFESTS)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        times.push(t.elapsed());
    }
    times.remove(0); // the connection's set-up
    median(times)
}

/// The floor for `n` lookups: `n` raw manifest HEADs at once over `n` held connections (one, to
/// an HTTP/2 registry), with the registry's Basic credentials when it has a user.
async fn floor_n(s: &Setup, n: usize) -> Duration {
    let (http, url) = raw_client(s);
    let heads = || {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let mut req = http
                    .head(&url)
                    .header("accept", tagpin::resolve::registry::ACCEPT_MANIFESTS);
                if let Some((user, password)) = &s.reg.user {
                    req = req.basic_auth(user, Some(password));
                }
                tokio::spawn(async move { req.send().await.unwrap().status() })
            })
            .collect();
        async move {
            for t in tasks {
                assert_eq!(t.await.unwrap(), 200);
            }
        }
    };
    heads().await; // opens the connections
    let mut times = Vec::new();
    for _ in 0..reps() {
        let t = Instant::now();
        heads().await;
        times.push(t.elapsed());
    }
    median(times)
}

/// `n` new tags on a resolver that holds connections (`n` of them, from an earlier lookup of `n`
/// tags at once; one to an HTTP/2 registry) and its token. `round` keeps the tags of each distance
/// apart.
async fn warm_miss(s: &Setup, n: usize, round: u64) -> (Duration, f64) {
    let r = s.resolver();
    let warm: Vec<String> = (0..n).map(|i| format!("warm{round}-{n}-{i}")).collect();
    push(s, &warm).await;
    let images: Vec<String> = warm.iter().map(|t| format!("{}/app:{t}", s.addr)).collect();
    all_pinned(&resolve(&r, &images).await);
    let mut times = Vec::new();
    let mut requests = 0;
    for rep in 0..reps() {
        let tags: Vec<String> = (0..n).map(|i| format!("w{round}-{n}-{rep}-{i}")).collect();
        push(s, &tags).await;
        let images: Vec<String> = tags.iter().map(|t| format!("{}/app:{t}", s.addr)).collect();
        let (took, req) = timed_batch(s, &r, &images).await;
        times.push(took);
        requests += req;
    }
    (median(times), requests as f64 / (reps() * n) as f64)
}

/// One batch of `images` on `r`, all pinned: how long it took, and the registry requests it made.
async fn timed_batch(s: &Setup, r: &Resolver, images: &[String]) -> (Duration, usize) {
    let t = Instant::now();
    let ((out, took), requests) = s
        .counted(async {
            let out = resolve(r, images).await;
            (out, t.elapsed())
        })
        .await;
    all_pinned(&out);
    (took, requests)
}

/// First contact with a pod of `n` images: a new resolver, `n` new tags (`{prefix}-{rep}-{i}`)
/// in one batch; registry requests per image.
async fn first_contact(s: &Setup, n: usize, prefix: &str) -> (Duration, f64) {
    let mut times = Vec::new();
    let mut requests = 0;
    for rep in 0..reps() {
        let tags: Vec<String> = (0..n).map(|i| format!("{prefix}-{rep}-{i}")).collect();
        push(s, &tags).await;
        let r = s.resolver();
        let images: Vec<String> = tags.iter().map(|t| format!("{}/app:{t}", s.addr)).collect();
        let (took, req) = timed_batch(s, &r, &images).await;
        times.push(took);
        requests += req;
    }
    (median(times), requests as f64 / (reps() * n) as f64)
}

/// Target 4: the registry is down long enough to open its breaker, then back; the first
/// admission (16 new tags) after the cool-down.
async fn recovery(toxi: &Toxiproxy, s: &Setup) -> (usize, Duration) {
    let mut cfg = s.cfg.clone();
    cfg.breaker_threshold = 2;
    cfg.breaker_cooldown = Duration::from_secs(1);
    let r = Resolver::new(cfg, Arc::new(tagpin::metrics::Metrics::new())).unwrap();
    let tags: Vec<String> = (0..16).map(|i| format!("rec-{i}")).collect();
    push(s, &tags).await;
    toxi.set_enabled("plain", false).await;
    for i in 0..2 {
        resolve(&r, &[format!("{}/app:down-{i}", s.addr)]).await;
    }
    toxi.set_enabled("plain", true).await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let images: Vec<String> = tags.iter().map(|t| format!("{}/app:{t}", s.addr)).collect();
    let t = Instant::now();
    let out = resolve(&r, &images).await;
    let took = t.elapsed();
    (
        out.iter()
            .filter(|o| matches!(o, Outcome::Pinned(_)))
            .count(),
        took,
    )
}

/// Target 3: 500 pods, 200 tags over 20 registries (stand-ins: docker-registry never answers
/// 429), 25 ms away, 10% of first answers `429 Retry-After: 1`.
async fn storm(toxi: &Toxiproxy) -> (usize, usize, Duration, usize, usize, usize) {
    const REGISTRIES: usize = 20;
    const TAGS: usize = 10;
    const PER_REGISTRY: usize = 16; // --max-lookups-per-registry's default
    let mut regs = Vec::new();
    for i in 0..REGISTRIES {
        let (up, state) =
            rate_limiting_registry([format!("/v2/app/manifests/t{}", i * TAGS)].into());
        let name = format!("storm{i}");
        let addr = toxi.proxy(&name, &up).await;
        toxi.latency(&name, ONE_WAY_MS[0]).await;
        regs.push((addr, state));
    }
    let mut cfg = ResolverConfig::default();
    cfg.registry.insecure = regs.iter().map(|(a, _)| a.clone()).collect();
    cfg.max_lookups_per_registry = PER_REGISTRY;
    let r = Resolver::new(cfg, Arc::new(tagpin::metrics::Metrics::new())).unwrap();
    let tag = |i: usize| format!("{}/app:t{i}", regs[i / TAGS].0);
    let t = Instant::now();
    let pods: Vec<_> = (0..500)
        .map(|p| {
            let images = vec![tag(p % 200), tag((p * 7 + 3) % 200)];
            let r = r.clone();
            tokio::spawn(async move {
                let req = BatchRequest {
                    allow_stale: true,
                    ..BatchRequest::default()
                };
                r.resolve_batch(&req, &images, Budget::from_now(Duration::from_secs(10)))
                    .await
            })
        })
        .collect();
    let (mut pinned, mut images) = (0, 0);
    for p in pods {
        for o in p.await.unwrap().outcomes {
            images += 1;
            pinned += usize::from(matches!(o, ImageOutcome::Resolved(_, Outcome::Pinned(_))));
        }
    }
    let took = t.elapsed();
    let requests: usize = regs
        .iter()
        .map(|(_, s)| s.requests.lock().unwrap().values().sum::<usize>())
        .sum();
    let most = regs
        .iter()
        .map(|(_, s)| s.most.load(std::sync::atomic::Ordering::SeqCst))
        .max()
        .unwrap_or(0);
    (pinned, images, took, requests, 200 + 20, most)
}

fn main() {
    // `cargo bench` passes --bench (full run); `cargo test --all-targets` runs it once, as a smoke
    // test.
    init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let toxi = Toxiproxy::start().await;
        let setups = setups(&toxi).await;
        for s in [&setups[0], &setups[1], &setups[3]] {
            push(s, &["floor".to_string()]).await;
        }
        for one_way in ONE_WAY_MS {
            for s in &setups {
                for proxy in s.proxies {
                    toxi.set_latency(proxy, one_way).await;
                }
            }
            let rtt = Duration::from_millis(2 * one_way);
            println!(
                "\ninjected: {one_way} ms each way, RTT {} ms; medians of {}",
                rtt.as_millis(),
                reps()
            );
            let f = floor(&setups[0]).await;
            println!(
                "floor: one raw manifest HEAD over a held connection: {}",
                rtts_and_rest(f, rtt)
            );
            for (s, how) in [
                (&setups[0], "plain HTTP/1.1, a connection each"),
                (&setups[1], "HTTPS HTTP/1.1 with Basic credentials, a connection each"),
                (&setups[3], "HTTPS HTTP/2, one connection"),
            ] {
                let mut floors = Vec::new();
                for n in [1, 4, 16] {
                    floors.push(format!(
                        "{n} at once {}",
                        rtts_and_rest(floor_n(s, n).await, rtt)
                    ));
                }
                println!("floor: raw manifest HEADs ({how}): {}", floors.join(", "));
            }
            println!(
                "\n| registry ({one_way} ms each way) | warm miss, 1 image | 4 images | 16 images | first contact (1 image) |"
            );
            println!("|---|---|---|---|---|");
            for s in &setups {
                let mut cells = Vec::new();
                for n in [1, 4, 16] {
                    let (t, req) = warm_miss(s, n, one_way).await;
                    cells.push(format!("{}, {req:.1} req/image", rtts_and_rest(t, rtt)));
                }
                let (t, req) = first_contact(s, 1, &format!("first-{one_way}")).await;
                cells.push(format!("{:.2} RTT, {req:.1} requests", rtts(t, rtt)));
                println!("| {} | {} |", s.name, cells.join(" | "));
            }
        }
        // Recovery and the storm at the first distance.
        for s in &setups {
            for proxy in s.proxies {
                toxi.set_latency(proxy, ONE_WAY_MS[0]).await;
            }
        }
        let rtt = Duration::from_millis(2 * ONE_WAY_MS[0]);
        println!("\ninjected: {} ms each way", ONE_WAY_MS[0]);
        let mut cells = Vec::new();
        for s in &setups {
            let (t, req) = first_contact(s, 16, "firstn").await;
            cells.push(format!("{}: {:.2} RTT, {req:.1} req/image", s.name, rtts(t, rtt)));
        }
        println!("first contact, 16 images: {}", cells.join("; "));
        let (pinned, took) = recovery(&toxi, &setups[0]).await;
        println!(
            "recovery: first admission after the breaker's cool-down: {pinned}/16 pinned in {:.2} RTT",
            rtts(took, rtt)
        );
        let (pinned, images, took, requests, allowed, most) = storm(&toxi).await;
        println!(
            "storm: {pinned}/{images} images pinned; last pod answered after {:.1} RTT ({} ms); {requests} registry requests for 200 tags and 20 429s (allowed: {allowed}); most at once on one registry: {most} (limit 16)",
            rtts(took, rtt),
            took.as_millis()
        );
    });
}
