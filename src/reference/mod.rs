//! Image references: what a user wrote, what a registry is asked, and the pinned spelling.
//!
//! Pure: no network. The normalized view (registry host, repository path, tag) follows the
//! distribution project's grammar and normalization rules (`grammar`); the pinned value keeps the
//! user's spelling of the repository, so `nginx:1.27` becomes `nginx@sha256:…`, never a surprise
//! `docker.io/library/nginx@sha256:…`.

use std::fmt;
use std::sync::Arc;

mod grammar;

/// An image as found in an object, split into the parts tagpin needs. Cheap to clone (the parts
/// are shared): an admission hands one per image to its answer, and the resolver keeps parsed
/// references to answer the next admission without parsing again.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageRef(Arc<Parts>);

/// One parsed reference in two strings (three allocations with the `Arc`, where one string per
/// part took seven): the parse cache keeps thousands of these (`resolve::Parsed`).
#[derive(PartialEq, Eq)]
struct Parts {
    /// The string exactly as written: the repository as written is its first `repo_end` bytes,
    /// the written tag (if any) follows them after a `:`.
    original: Box<str>,
    repo_end: usize,
    /// `registry/repository:tag` (`latest` when no tag was written), the digest cache's name for
    /// this tag (built once here, so a cache lookup builds no string): the registry host as the
    /// HTTP API is reached (`index.docker.io` for Docker Hub) is its first `registry_end` bytes,
    /// the repository path inside the registry (`library/nginx`) runs to `repository_end`.
    cache_name: Box<str>,
    registry_end: usize,
    repository_end: usize,
}

impl fmt::Debug for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageRef")
            .field("original", &self.original())
            .field("registry", &self.registry())
            .field("repository", &self.repository())
            .field("tag", &self.tag())
            .finish()
    }
}

/// Why an image string cannot be pinned. Carries the image so every message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("{image:?} already carries a digest")]
    HasDigest { image: String },
    #[error("{image:?} is not a valid image reference ({reason}); fix the image field")]
    Invalid { image: String, reason: String },
}

impl ImageRef {
    /// Parses an image string that carries no digest. An image with `@` is reported as
    /// [`ReferenceError::HasDigest`]: callers leave such images alone.
    pub fn parse(image: &str) -> Result<Self, ReferenceError> {
        if image.contains('@') {
            return Err(ReferenceError::HasDigest {
                image: image.to_string(),
            });
        }
        let invalid = |reason: &str| ReferenceError::Invalid {
            image: image.to_string(),
            reason: reason.to_string(),
        };
        if image.is_empty() {
            return Err(invalid("empty"));
        }
        if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("contains whitespace"));
        }
        // The tag is after the last ':' that follows the last '/', so `host:5000/app` has none.
        let last_slash = image.rfind('/').map_or(0, |i| i + 1);
        let (written_repo, tag) = match image[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&image[..at], Some(&image[at + 1..]))
            }
            None => (image, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(invalid(
                    "tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let name = grammar::split(written_repo).map_err(|e| invalid(&e.to_string()))?;
        let (registry, repository) = (name.registry, &*name.repository);
        let tag_or_latest = tag.unwrap_or("latest");
        let mut cache_name =
            String::with_capacity(registry.len() + repository.len() + tag_or_latest.len() + 2);
        cache_name.push_str(registry);
        cache_name.push('/');
        cache_name.push_str(repository);
        cache_name.push(':');
        cache_name.push_str(tag_or_latest);
        Ok(Self(Arc::new(Parts {
            original: image.into(),
            repo_end: written_repo.len(),
            registry_end: registry.len(),
            repository_end: registry.len() + 1 + repository.len(),
            cache_name: cache_name.into_boxed_str(),
        })))
    }

    /// The image exactly as written.
    pub fn original(&self) -> &str {
        &self.0.original
    }
    /// Registry host (and port) the HTTP API is reached at.
    pub fn registry(&self) -> &str {
        &self.0.cache_name[..self.0.registry_end]
    }
    /// Repository path inside the registry.
    pub fn repository(&self) -> &str {
        &self.0.cache_name[self.0.registry_end + 1..self.0.repository_end]
    }
    /// The tag to resolve (`latest` when none was written).
    pub fn tag(&self) -> &str {
        &self.0.cache_name[self.0.repository_end + 1..]
    }
    /// The repository exactly as written (no tag).
    pub fn written_repository(&self) -> &str {
        &self.0.original[..self.0.repo_end]
    }

    /// `registry/repository:tag` (the tag `latest` when none was written): what the digest
    /// cache calls this tag.
    pub fn cache_name(&self) -> &str {
        &self.0.cache_name
    }

    /// The pinned spelling: `<repo as written>@<digest>`, or with `keep_tag`
    /// `<repo as written>:<tag>@<digest>` (an implicit tag is written out as `:latest`, so the
    /// record of which tag was resolved is never lost).
    pub fn pinned(&self, digest: &Digest, keep_tag: bool) -> String {
        let repo = self.written_repository();
        let tag = if keep_tag { self.tag() } else { "" };
        let mut out = String::with_capacity(repo.len() + tag.len() + 2 + digest.text_len());
        out.push_str(repo);
        if keep_tag {
            out.push(':');
            out.push_str(tag);
        }
        out.push('@');
        digest.push_to(&mut out);
        out
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.original())
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The two lowercase hex digits of every byte.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    t
};

/// A content digest in its canonical form (`sha256:<64 lowercase hex>` or `sha512:<128>`),
/// held as bytes: 33 bytes for sha256 instead of a 71-character string (the digest cache holds
/// one per tag, issue "a cache that costs ≤ 400 bytes per tag").
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Digest {
    Sha256([u8; 32]),
    /// Rare; boxed so the common case stays small.
    Sha512(Box<[u8; 64]>),
}

impl Digest {
    /// Validates a digest string as a registry returns it. Anything else is refused: a digest
    /// written into a pod spec must be exactly what the kubelet will ask for.
    pub fn parse(s: &str) -> Option<Self> {
        let (alg, hex) = s.split_once(':')?;
        if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return None;
        }
        match alg {
            "sha256" => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(hex, &mut out).ok()?;
                Some(Self::Sha256(out))
            }
            "sha512" => {
                let mut out = Box::new([0u8; 64]);
                hex::decode_to_slice(hex, &mut out[..]).ok()?;
                Some(Self::Sha512(out))
            }
            _ => None,
        }
    }

    /// Length of the canonical text (`sha256:` and 64 hex digits, or `sha512:` and 128).
    pub fn text_len(&self) -> usize {
        7 + 2 * self.bytes().len()
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Self::Sha256(b) => b,
            Self::Sha512(b) => &b[..],
        }
    }

    /// The canonical text written into `buf`, two hex digits per byte from a table (no
    /// formatter per byte).
    fn encode<'b>(&self, buf: &'b mut [u8; 135]) -> &'b str {
        let alg: &[u8; 7] = match self {
            Self::Sha256(_) => b"sha256:",
            Self::Sha512(_) => b"sha512:",
        };
        buf[..7].copy_from_slice(alg);
        for (pair, b) in buf[7..].chunks_exact_mut(2).zip(self.bytes()) {
            pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
        }
        // Only ASCII was written.
        std::str::from_utf8(&buf[..self.text_len()]).unwrap_or_default()
    }

    /// Appends the canonical text to `out`.
    pub fn push_to(&self, out: &mut String) {
        out.push_str(self.encode(&mut [0; 135]));
    }

    /// The sha256 digest of exact bytes.
    pub fn sha256_of(bytes: &[u8]) -> Self {
        use sha2::{Digest as _, Sha256};
        Self::Sha256(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode(&mut [0; 135]))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

/// Docker Hub answers under several host names; tagpin treats them as one, everywhere (credential
/// keys, plugin requests). Returns `docker.io` for any of them, else the host lower-cased.
pub fn canonical_host(host: &str) -> String {
    let h = host.to_ascii_lowercase();
    match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn d() -> Digest {
        Digest::parse(D).expect("valid digest")
    }

    #[test]
    fn docker_hub_short_name_keeps_spelling() {
        let r = ImageRef::parse("nginx:1.27").unwrap();
        assert_eq!(r.registry(), "index.docker.io");
        assert_eq!(r.repository(), "library/nginx");
        assert_eq!(r.tag(), "1.27");
        assert_eq!(r.pinned(&d(), false), format!("nginx@{D}"));
        assert_eq!(r.pinned(&d(), true), format!("nginx:1.27@{D}"));
    }

    #[test]
    fn untagged_means_latest() {
        let r = ImageRef::parse("team/app").unwrap();
        assert_eq!(r.tag(), "latest");
        assert_eq!(r.repository(), "team/app");
        assert_eq!(r.pinned(&d(), false), format!("team/app@{D}"));
        assert_eq!(r.pinned(&d(), true), format!("team/app:latest@{D}"));
    }

    #[test]
    fn registry_with_port_and_nested_path() {
        let r = ImageRef::parse("127.0.0.1:5000/team/app/web:v1.2.3-rc_1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "team/app/web");
        assert_eq!(r.tag(), "v1.2.3-rc_1");
        assert_eq!(r.written_repository(), "127.0.0.1:5000/team/app/web");
        assert_eq!(r.cache_name(), "127.0.0.1:5000/team/app/web:v1.2.3-rc_1");
        assert_eq!(
            format!("{r:?}"),
            r#"ImageRef { original: "127.0.0.1:5000/team/app/web:v1.2.3-rc_1", registry: "127.0.0.1:5000", repository: "team/app/web", tag: "v1.2.3-rc_1" }"#
        );
        // A port is not a tag.
        let r = ImageRef::parse("localhost:5000/app").unwrap();
        assert_eq!(r.registry(), "localhost:5000");
        assert_eq!(r.tag(), "latest");
        assert_eq!(r.cache_name(), "localhost:5000/app:latest");
        assert_eq!(r.pinned(&d(), false), format!("localhost:5000/app@{D}"));
    }

    #[test]
    fn digests_are_left_alone() {
        assert!(matches!(
            ImageRef::parse(&format!("nginx@{D}")),
            Err(ReferenceError::HasDigest { .. })
        ));
        assert!(matches!(
            ImageRef::parse(&format!("nginx:1.27@{D}")),
            Err(ReferenceError::HasDigest { .. })
        ));
    }

    #[test]
    fn invalid_references_name_the_image() {
        for bad in [
            "",
            "Nginx:1",
            "nginx:",
            "nginx:-x",
            "ngi nx",
            "nginx:a/b:c:d",
            "a//b",
        ] {
            match ImageRef::parse(bad) {
                Err(ReferenceError::Invalid { image, .. }) => assert_eq!(image, bad),
                other => panic!("{bad:?} parsed as {other:?}"),
            }
        }
    }

    #[test]
    fn digest_validation() {
        assert!(Digest::parse(D).is_some());
        assert!(Digest::parse(&D.to_uppercase()).is_none());
        assert!(Digest::parse("sha256:abc").is_none());
        assert!(Digest::parse("md5:0123456789abcdef0123456789abcdef").is_none());
        assert!(Digest::parse(&format!("{D}\n")).is_none());
        assert!(Digest::parse("").is_none());
        assert_eq!(d().to_string(), D);
        let long = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(Digest::parse(&long).unwrap().to_string(), long);
        assert!(Digest::parse(&format!("sha256:{}", "0".repeat(63))).is_none());
        assert!(std::mem::size_of::<Digest>() <= 40);
        assert_eq!(
            Digest::sha256_of(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
