//! Properties of the cached path's shortcuts (issue 25), on generated input: the resolver's kept
//! parses classify every string exactly as a fresh parse does (seen once, seen again, after
//! eviction, past the length kept), the digest and pinned spellings written without the
//! formatter are the ones written with it, and the reference grammar parsed in one pass answers
//! what oci-client's `Reference` (a regex) answers. Pure: no server, no registry.

use std::fmt::Write as _;
use std::sync::Arc;

use proptest::prelude::*;
use tagpin::metrics::Metrics;
use tagpin::reference::{Digest, ImageRef, ReferenceError};
use tagpin::resolve::{classify, Resolver, ResolverConfig};

/// Image strings: valid references of every shape, near misses, hostile text, long strings.
fn image() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}(/[a-z0-9._-]{1,6}){0,3}(:[A-Za-z0-9_.-]{1,10})?",
        "([a-z0-9-]{1,8}\\.)?[a-z0-9-]{1,8}(:[0-9]{1,5})?/[a-z0-9]{1,6}(:[a-z0-9.]{1,6})?",
        "localhost(:[0-9]{1,5})?/[a-z]{1,6}",
        "[A-Za-z0-9:/@._ -]{0,24}",
        "[a-z]{1,6}(:[a-z0-9]{1,6})?@sha256:[0-9a-f]{64}",
        "kind\\.local/[a-z]{1,4}:1",
        "[a-z]{250,300}(:v1)?",
        "[a-z]{1,6}:[a-z]{120,140}",
        any::<String>(),
    ]
}

fn resolver() -> Resolver {
    tagpin::install_crypto_provider();
    Resolver::new(
        ResolverConfig {
            skip_prefixes: vec!["kind.local/".into()],
            ..ResolverConfig::default()
        },
        Arc::new(Metrics::new()),
    )
    .unwrap()
}

/// The formatter's spelling of a digest (the code before issue 25).
fn formatted(d: &Digest) -> String {
    let (alg, bytes): (&str, Vec<u8>) = match d {
        Digest::Sha256(b) => ("sha256", b.to_vec()),
        Digest::Sha512(b) => ("sha512", b.to_vec()),
    };
    let mut s = format!("{alg}:");
    for b in bytes {
        write!(s, "{b:02x}").unwrap();
    }
    s
}

fn digest() -> impl Strategy<Value = Digest> {
    prop_oneof![
        any::<[u8; 32]>().prop_map(Digest::Sha256),
        proptest::collection::vec(any::<u8>(), 64).prop_map(|v| {
            let mut b = Box::new([0u8; 64]);
            b.copy_from_slice(&v);
            Digest::Sha512(b)
        }),
    ]
}

/// Strings near the name grammar: domains with capitals and ports, every separator, empty and
/// doubled components, tags.
fn near_names() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._:/-]{0,40}",
        "([a-zA-Z0-9_-]{1,6}(\\.[a-zA-Z0-9_-]{0,6}){0,2}(:[0-9a]{0,5})?/)?[a-z0-9._-]{1,10}(/[a-zA-Z0-9._-]{0,8}){0,3}(:[A-Za-z0-9_.-]{1,8})?",
        "(docker\\.io|index\\.docker\\.io|localhost|localhost:5000|Localhost)(/[a-z0-9]{1,6}){0,2}(:v1)?",
        "[a-z0-9]{1,3}(([._]|__|___|-{1,3}|\\.-|_\\.)[a-z0-9]{1,3}){1,4}",
        "([a-z]{1,4}\\.)?[a-z]{1,4}/[a-z]{240,260}",
        image(),
    ]
}

/// What oci-client's `Reference` makes of `s`: registry (as the API is reached) and repository,
/// or its error.
fn reference(s: &str) -> Result<(String, String), String> {
    oci_client::Reference::try_from(s)
        .map(|r| (r.resolve_registry().to_string(), r.repository().to_string()))
        .map_err(|e| e.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn the_grammar_answers_what_the_regex_answers(s in near_names()) {
        match ImageRef::parse(&s) {
            Ok(r) => prop_assert_eq!(
                reference(&s),
                Ok((r.registry().to_string(), r.repository().to_string())),
                "{:?}", s
            ),
            // Refused by the grammar: the regex refuses it, for the same reason.
            Err(ReferenceError::Invalid { reason, .. })
                if reason == "invalid reference format" || reason.starts_with("repository name") =>
            {
                prop_assert_eq!(reference(&s), Err(reason), "{:?}", s)
            }
            // Refused before the grammar (a digest, whitespace, a tag out of its rules).
            Err(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn kept_parses_classify_as_a_fresh_parse_does(
        images in proptest::collection::vec(image(), 1..64),
        repeats in proptest::collection::vec(any::<prop::sample::Index>(), 0..64),
    ) {
        let r = resolver();
        let skip = vec!["kind.local/".to_string()];
        // Each string first seen, then again (from the kept parse), in a mixed order.
        let again = repeats.iter().map(|i| i.get(&images));
        for s in images.iter().chain(again) {
            prop_assert_eq!(r.classify(s), classify(s, &skip), "{:?}", s);
        }
    }

    #[test]
    fn digests_and_pins_are_spelled_as_the_formatter_spells_them(
        d in digest(),
        image in "[a-z0-9]{1,8}(:[0-9]{1,5})?(/[a-z0-9]{1,6}){0,2}(:[a-z0-9.]{1,6})?",
    ) {
        prop_assert_eq!(d.to_string(), formatted(&d));
        if let Ok(r) = ImageRef::parse(&image) {
            prop_assert_eq!(r.pinned(&d, false), format!("{}@{}", r.written_repository(), formatted(&d)));
            prop_assert_eq!(
                r.pinned(&d, true),
                format!("{}:{}@{}", r.written_repository(), r.tag(), formatted(&d))
            );
        }
    }
}

/// More distinct strings than the resolver keeps: whatever was evicted is parsed again, and
/// every answer stays the fresh parse's.
#[test]
fn past_the_bound_of_kept_parses_answers_stay_the_same() {
    let r = resolver();
    let skip = vec!["kind.local/".to_string()];
    let names: Vec<String> = (0..10_000)
        .map(|i| match i % 4 {
            0 => format!("reg.example:5000/team/app{i}:v{i}"),
            1 => format!("Bad{i}:X"),
            2 => format!("app{i}"),
            _ => format!("app{i}:-bad"),
        })
        .collect();
    for _ in 0..2 {
        for s in &names {
            assert_eq!(r.classify(s), classify(s, &skip), "{s:?}");
        }
    }
}
