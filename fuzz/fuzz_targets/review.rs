//! Review parsing (the pruning deserializer) and planning, deciding and answering, for any body.
//! Invariants: nothing panics; the answer is bounded; a patch applies to the pruned object.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tagpin::admission::{self, AdmissionConfig, Endpoint};
use tagpin::reference::Digest;
use tagpin::resolve::Outcome;

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fuzz_target!(|body: &[u8]| {
    let _ = admission::parse_review_header(body);
    let Ok((api_version, req)) = admission::parse_review(body) else {
        return;
    };
    let cfg = AdmissionConfig {
        keep_tag: body.len() % 2 == 0,
        skip_prefixes: vec!["kind.local/".into()],
        resolve_timeout: Duration::from_secs(5),
        stale_on_error: true,
    };
    let plan = admission::plan(&req, &cfg);
    let digest = Digest::parse(D).expect("a valid digest");
    let outcomes: Vec<Outcome> = plan
        .targets
        .iter()
        .map(|_| Outcome::Pinned(digest.clone()))
        .collect();
    for mode in [Endpoint::Mutate, Endpoint::Enforce] {
        let d = admission::decide(&plan, &outcomes, mode, cfg.keep_tag);
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
            let mut patched = obj.clone();
            json_patch::patch(&mut patched, &d.patch).expect("the patch applies to the object");
        }
    }
});
