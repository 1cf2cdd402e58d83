//! Review parsing (the fast reader and the pruning deserializer) and planning, deciding and
//! answering, for any body. Invariants: nothing panics; both readers read the same request or
//! give the same error; the answer is bounded; a patch applies to the pruned object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagpin::admission::{self, Endpoint, Reader};
use tagpin::reference::{Digest, ImageRef, ReferenceError};
use tagpin::resolve::{ImageOutcome, Outcome};

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fuzz_target!(|body: &[u8]| {
    let _ = admission::parse_review_header(body);
    let fast = admission::parse_review_with(body, Reader::Fast);
    let serde = admission::parse_review_with(body, Reader::Serde);
    assert_eq!(
        fast.as_ref().map_err(ToString::to_string),
        serde.as_ref().map_err(ToString::to_string),
        "the fast reader reads as serde_json does"
    );
    let Ok((api_version, req)) = fast else {
        return;
    };
    let keep_tag = body.len() % 2 == 0;
    let plan = admission::plan(&req);
    let digest = Digest::parse(D).expect("a valid digest");
    // Every site answered as the resolver would with every registry up: tags pinned, digests
    // left alone, invalid references reported.
    let outcomes: Vec<ImageOutcome> = plan
        .sites
        .iter()
        .map(|site| match ImageRef::parse(&site.image) {
            Ok(r) => ImageOutcome::Resolved(r, Outcome::Pinned(digest.clone())),
            Err(ReferenceError::HasDigest { .. }) => ImageOutcome::HasDigest,
            Err(e) => ImageOutcome::Invalid(e),
        })
        .collect();
    for mode in [Endpoint::Mutate, Endpoint::Enforce] {
        let d = admission::decide(&plan, &outcomes, mode, keep_tag);
        let out = admission::response(api_version.clone(), req.uid.clone(), &d);
        assert!(out.response.warnings.len() <= admission::MAX_WARNINGS);
        assert!(out
            .response
            .warnings
            .iter()
            .all(|w| w.len() <= admission::MAX_WARNING_BYTES));
        if let Some(s) = &out.response.status {
            assert!(s.message.len() <= admission::MAX_DENIAL_BYTES);
        }
        let _ = serde_json::to_vec(&out).expect("an answer serializes");
        if let (Some(obj), true) = (&req.object, mode == Endpoint::Mutate) {
            let mut patched = obj.to_value();
            let ops = d.patch.parsed().expect("the patch is a JSON Patch");
            json_patch::patch(&mut patched, &ops).expect("the patch applies to the object");
        }
    }
});
