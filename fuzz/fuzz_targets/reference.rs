//! Image references: parsing never panics, and a pinned reference parses as one with a digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tagpin::reference::{Digest, ImageRef, ReferenceError};

const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Digest::parse(s);
    let Ok(r) = ImageRef::parse(s) else {
        return;
    };
    let d = Digest::parse(D).expect("a valid digest");
    for keep in [false, true] {
        let pinned = r.pinned(&d, keep);
        match ImageRef::parse(&pinned) {
            Err(ReferenceError::HasDigest { .. }) => {}
            other => panic!("{s:?} pinned as {pinned:?} parses as {other:?}"),
        }
    }
});
