//! The digest cache: one entry per (image tag, credential) holding the digest and when it was
//! fetched. The same entry answers "fresh" (fetched within `--cache-ttl`: no registry request) and
//! "last known" (within `--stale-ttl`: served when the registry is out), so a tag costs one entry,
//! not two. Keys are one string (`registry/repository:tag`) and the credential's shared identity;
//! the digest is 33 bytes ([`Digest`]).
//!
//! Loads are coalesced: concurrent misses for one key share one registry request (and its error),
//! through a small in-flight map that moka's `try_get_with` keeps per key; different keys never
//! wait for each other.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::credentials::Credential;
use crate::reference::{Digest, ImageRef};

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    /// `registry/repository:tag`.
    name: Box<str>,
    /// The credential's identity (shared with the credential, never the secret).
    credential: Arc<str>,
}

impl Key {
    pub fn new(image: &ImageRef, cred: &Credential) -> Self {
        let mut name = String::with_capacity(
            image.registry().len() + image.repository().len() + image.tag().len() + 2,
        );
        name.push_str(image.registry());
        name.push('/');
        name.push_str(image.repository());
        name.push(':');
        name.push_str(image.tag());
        Self {
            name: name.into_boxed_str(),
            credential: cred.shared_id(),
        }
    }
}

#[derive(Clone, Debug)]
struct Known {
    digest: Digest,
    fetched: Instant,
}

pub struct DigestCache {
    known: Cache<Key, Known>,
    /// Loads under way; an entry lives only while its load runs.
    inflight: Cache<Key, Digest>,
    fresh_for: Duration,
    stale_for: Option<Duration>,
}

impl DigestCache {
    /// `fresh_for`: `--cache-ttl`; `stale_for`: `--stale-ttl` (`None`: never serve a stale digest).
    pub fn new(capacity: u64, fresh_for: Duration, stale_for: Option<Duration>) -> Self {
        let keep = stale_for.map_or(fresh_for, |s| s.max(fresh_for));
        Self {
            known: Cache::builder()
                .name("digests")
                .max_capacity(capacity)
                .time_to_live(keep.max(Duration::from_millis(1)))
                .build(),
            inflight: Cache::builder()
                .name("digest-loads")
                .max_capacity(capacity.clamp(1, 65_536))
                .time_to_live(Duration::from_secs(1))
                .build(),
            fresh_for,
            stale_for,
        }
    }

    /// The digest fetched for `key` within the fresh TTL.
    pub async fn fresh(&self, key: &Key) -> Option<Digest> {
        let k = self.known.get(key).await?;
        (k.fetched.elapsed() < self.fresh_for).then_some(k.digest)
    }

    /// The last digest fetched for `key`, within the stale TTL.
    pub async fn last_known(&self, key: &Key) -> Option<Digest> {
        let stale_for = self.stale_for?;
        let k = self.known.get(key).await?;
        (k.fetched.elapsed() < stale_for).then_some(k.digest)
    }

    /// Runs `load` for `key` unless a load for it is already under way, in which case its result
    /// (digest or error) is shared. A digest is remembered; an error is not.
    pub async fn load<E, F>(&self, key: Key, load: F) -> Result<Digest, Arc<E>>
    where
        E: Send + Sync + 'static,
        F: Future<Output = Result<Digest, E>>,
    {
        let known = &self.known;
        let k = key.clone();
        let result = self
            .inflight
            .try_get_with(key.clone(), async move {
                // A load for this key may have finished between the caller's look at the cache
                // and now (its in-flight entry already gone): then that answer stands.
                if let Some(d) = self.fresh(&k).await {
                    return Ok(d);
                }
                let digest = load.await?;
                let entry = Known {
                    digest: digest.clone(),
                    fetched: Instant::now(),
                };
                known.insert(k, entry).await;
                Ok(digest)
            })
            .await;
        self.inflight.invalidate(&key).await;
        result
    }

    /// Forgets every digest (tests and benchmarks measure cold paths with it).
    pub fn clear(&self) {
        self.known.invalidate_all();
        self.inflight.invalidate_all();
    }

    /// Entries held (approximate until moka's housekeeping runs).
    pub fn len(&self) -> u64 {
        self.known.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn key(tag: &str) -> Key {
        Key::new(
            &ImageRef::parse(&format!("reg.example/app:{tag}")).unwrap(),
            &Credential::anonymous(),
        )
    }

    fn d(n: u8) -> Digest {
        Digest::Sha256([n; 32])
    }

    #[tokio::test]
    async fn one_entry_answers_fresh_then_last_known() {
        let c = DigestCache::new(10, Duration::from_millis(50), Some(Duration::from_secs(60)));
        let got = c.load(key("1"), async { Ok::<_, ()>(d(1)) }).await.unwrap();
        assert_eq!(got, d(1));
        assert_eq!(c.fresh(&key("1")).await, Some(d(1)));
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(c.fresh(&key("1")).await, None, "no longer fresh");
        assert_eq!(c.last_known(&key("1")).await, Some(d(1)), "still known");
        let off = DigestCache::new(10, Duration::from_secs(60), None);
        off.load(key("1"), async { Ok::<_, ()>(d(1)) })
            .await
            .unwrap();
        assert_eq!(off.last_known(&key("1")).await, None, "stale turned off");
    }

    #[tokio::test]
    async fn concurrent_loads_of_one_key_share_one_run_and_its_error() {
        let c = Arc::new(DigestCache::new(10, Duration::from_secs(60), None));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (c, runs) = (c.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.load(key("x"), async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Digest, _>("down")
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap_err(), "down");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(c.fresh(&key("x")).await, None, "errors are not remembered");
        // The next load runs again.
        c.load(key("x"), async { Ok::<_, &str>(d(2)) })
            .await
            .unwrap();
        assert_eq!(c.fresh(&key("x")).await, Some(d(2)));
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other() {
        let c = Arc::new(DigestCache::new(10, Duration::from_secs(60), None));
        let slow = {
            let c = c.clone();
            tokio::spawn(async move {
                c.load(key("slow"), async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<_, ()>(d(1))
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        let fast = tokio::time::timeout(
            Duration::from_secs(5),
            c.load(key("fast"), async { Ok::<_, ()>(d(2)) }),
        )
        .await;
        assert_eq!(fast.expect("not blocked by the slow key").unwrap(), d(2));
        slow.abort();
    }
}
