//! The digest cache: one entry per (image tag, credential) holding the digest and when it was
//! fetched. The same entry answers "fresh" (fetched within `--cache-ttl`: no registry request) and
//! "last known" (within `--stale-ttl`: served when the registry is out), so a tag costs one entry,
//! not two. Keys are one string (`registry/repository:tag`) and the credential's shared identity;
//! the digest is 33 bytes ([`Digest`]).
//!
//! The entries live in `quick_cache` (S3-FIFO eviction, bounded by `--cache-capacity`), not moka,
//! the crate of every other cache in tagpin: this is the one cache that grows with the cluster,
//! and moka's bookkeeping per entry (its hash-table bucket, a second copy of the key for its
//! queues, entry info with timestamps, access-order nodes) cost about 450 bytes for an entry of
//! about 100 (BENCHMARKS.md, "Memory per cached tag"). Expiry needs no timer: an entry carries its
//! fetch time, is answered only within the TTLs, and is dropped when read past both. Keys are
//! hashed with the standard library's keyed SipHash: image names come from whoever creates pods.
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
        Self {
            name: image.cache_name().into(),
            credential: cred.shared_id(),
        }
    }
}

/// A [`Key`] borrowed from an image and a credential: a lookup builds no string. It hashes as the
/// `Key` it equals (both hash the two strings in the same order, as `derive(Hash)` does).
#[derive(Hash)]
struct KeyRef<'a> {
    name: &'a str,
    credential: &'a str,
}

impl<'a> KeyRef<'a> {
    fn new(image: &'a ImageRef, cred: &'a Credential) -> Self {
        Self {
            name: image.cache_name(),
            credential: cred.id(),
        }
    }
}

impl quick_cache::Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.name == *key.name && *self.credential == *key.credential
    }
}

#[derive(Clone, Debug)]
struct Known {
    digest: Digest,
    fetched: Instant,
}

type Entries = quick_cache::sync::Cache<
    Key,
    Known,
    quick_cache::UnitWeighter,
    std::collections::hash_map::RandomState,
>;

pub struct DigestCache {
    known: Entries,
    /// How long an entry answers at all (the longer of the two TTLs).
    keep: Duration,
    /// Loads under way; an entry lives only while its load runs.
    inflight: Cache<Key, Digest>,
    fresh_for: Duration,
    stale_for: Option<Duration>,
}

impl DigestCache {
    /// `fresh_for`: `--cache-ttl`; `stale_for`: `--stale-ttl` (`None`: never serve a stale digest).
    pub fn new(capacity: u64, fresh_for: Duration, stale_for: Option<Duration>) -> Self {
        let keep = stale_for.map_or(fresh_for, |s| s.max(fresh_for));
        let capacity = capacity.max(1);
        // Grown as entries come, not allocated up front for the whole capacity.
        let options = quick_cache::OptionsBuilder::new()
            .estimated_items_capacity(capacity.min(4_096) as usize)
            .weight_capacity(capacity)
            .build();
        let known = match options {
            Ok(o) => Entries::with_options(
                o,
                quick_cache::UnitWeighter,
                Default::default(),
                Default::default(),
            ),
            // Only a zero or overflowing capacity is refused, and `capacity` is at least 1.
            Err(_) => Entries::with(
                1,
                1,
                quick_cache::UnitWeighter,
                Default::default(),
                Default::default(),
            ),
        };
        Self {
            known,
            keep,
            inflight: Cache::builder()
                .name("digest-loads")
                .max_capacity(capacity.clamp(1, 65_536))
                .time_to_live(Duration::from_secs(1))
                .build(),
            fresh_for,
            stale_for,
        }
    }

    /// The entry for `key` and its age if it may still answer; one past both TTLs is dropped.
    /// The clock is read once for both.
    fn entry<Q>(&self, key: &Q) -> Option<(Known, Duration)>
    where
        Q: std::hash::Hash + quick_cache::Equivalent<Key>,
    {
        let k = self.known.get(key)?;
        let age = k.fetched.elapsed();
        if age < self.keep {
            return Some((k, age));
        }
        // Only if it is still that old entry (a load may just have replaced it).
        self.known
            .remove_if(key, |v| v.fetched.elapsed() >= self.keep);
        None
    }

    /// The digest fetched for `key` within the fresh TTL.
    pub async fn fresh(&self, key: &Key) -> Option<Digest> {
        let (k, age) = self.entry(key)?;
        (age < self.fresh_for).then_some(k.digest)
    }

    /// [`Self::fresh`] for `image` with `cred`, answered on the spot (the cached path of an
    /// admission: no task, no key built).
    pub fn fresh_now(&self, image: &ImageRef, cred: &Credential) -> Option<Digest> {
        let (k, age) = self.entry(&KeyRef::new(image, cred))?;
        (age < self.fresh_for).then_some(k.digest)
    }

    /// The last digest fetched for `key`, within the stale TTL.
    pub async fn last_known(&self, key: &Key) -> Option<Digest> {
        let stale_for = self.stale_for?;
        let (k, age) = self.entry(key)?;
        (age < stale_for).then_some(k.digest)
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
                known.insert(k, entry);
                Ok(digest)
            })
            .await;
        self.inflight.invalidate(&key).await;
        result
    }

    /// Forgets every digest (tests and benchmarks measure cold paths with it).
    pub fn clear(&self) {
        self.known.clear();
        self.inflight.invalidate_all();
    }

    /// Entries held.
    pub fn len(&self) -> u64 {
        self.known.len() as u64
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
    async fn capacity_bounds_the_entries_and_recent_ones_stay() {
        let c = DigestCache::new(100, Duration::from_secs(60), None);
        for i in 0..1_000u32 {
            c.load(key(&i.to_string()), async { Ok::<_, ()>(d(1)) })
                .await
                .unwrap();
            // One tag asked again and again stays (S3-FIFO keeps what is used).
            assert_eq!(c.fresh(&key("0")).await, Some(d(1)), "after {i} others");
        }
        assert!(c.len() <= 100, "{} entries for a capacity of 100", c.len());
    }

    #[tokio::test]
    async fn a_lookup_on_the_spot_finds_what_a_load_stored_for_that_tag_and_credential_only() {
        use super::super::credentials::Secret;
        let c = DigestCache::new(10, Duration::from_secs(60), None);
        let anon = Credential::anonymous();
        let basic = Credential::new(
            "test",
            Secret::Basic {
                username: "u".into(),
                password: "p".into(),
            },
        );
        let image = ImageRef::parse("reg.example/app:1").unwrap();
        // `app` and `app:latest` are one tag: the same cache name.
        let implicit = ImageRef::parse("reg.example/app").unwrap();
        let latest = ImageRef::parse("reg.example/app:latest").unwrap();
        c.load(Key::new(&image, &anon), async { Ok::<_, ()>(d(1)) })
            .await
            .unwrap();
        c.load(Key::new(&implicit, &basic), async { Ok::<_, ()>(d(2)) })
            .await
            .unwrap();
        assert_eq!(c.fresh_now(&image, &anon), Some(d(1)));
        assert_eq!(
            c.fresh_now(&image, &basic),
            None,
            "another credential's answer"
        );
        assert_eq!(c.fresh_now(&latest, &basic), Some(d(2)));
        assert_eq!(c.fresh_now(&latest, &anon), None);
        let other = ImageRef::parse("reg.example/app:2").unwrap();
        assert_eq!(c.fresh_now(&other, &anon), None);
    }

    #[tokio::test]
    async fn an_entry_past_both_ttls_is_dropped_when_read() {
        let c = DigestCache::new(
            10,
            Duration::from_millis(20),
            Some(Duration::from_millis(40)),
        );
        c.load(key("1"), async { Ok::<_, ()>(d(1)) }).await.unwrap();
        assert_eq!(c.len(), 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(c.last_known(&key("1")).await, None);
        assert_eq!(c.len(), 0, "dropped, not kept until evicted");
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
