//! The wire format: the AdmissionReview tagpin reads (the envelope checked once, for a whole
//! review or for its uid alone) and the one it answers. The answer is written through our own
//! struct so the patch is base64 with `patchType: JSONPatch`, the documented form (kube's
//! `AdmissionResponse` writes the patch as a JSON array of numbers); `decide.rs` fills it.

use serde::{Deserialize, Serialize};

use crate::json_scan::Scanner;
use crate::prune::Pruned;
use crate::tree::Kept;

/// The envelope of an AdmissionReview, around the request as far as it is read (`R`).
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<R> {
    pub api_version: String,
    pub kind: String,
    pub request: Option<R>,
}

/// An AdmissionReview with its request read as tagpin needs it.
pub type AdmissionReview<'a> = Envelope<AdmissionRequest<'a>>;

#[derive(Deserialize, Debug, Clone, Default, PartialEq)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    pub kind: String,
}

/// The parts of an AdmissionReview request tagpin reads. `object` and `oldObject` are pruned
/// while they are read ([`crate::prune`]): only image sites, the metadata the patch touches and
/// the pod spec's credential fields are kept, never a whole `Value` of the object, and their
/// strings are borrowed from the body.
#[derive(Debug, PartialEq)]
pub struct AdmissionRequest<'a> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub sub_resource: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub operation: String,
    pub object: Option<Kept<'a>>,
    pub old_object: Option<Kept<'a>>,
    pub dry_run: Option<bool>,
    /// `object` or `oldObject` held more than [`crate::prune::MAX_KEPT_NODES`] values worth
    /// keeping: it was not read whole and nothing in it is pinned.
    pub too_large: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    operation: String,
    #[serde(default, borrow)]
    object: Option<Pruned<'a>>,
    #[serde(default, borrow)]
    old_object: Option<Pruned<'a>>,
    #[serde(default)]
    dry_run: Option<bool>,
}

impl<'a> From<RequestIn<'a>> for AdmissionRequest<'a> {
    fn from(r: RequestIn<'a>) -> Self {
        let too_large = [&r.object, &r.old_object]
            .iter()
            .any(|o| o.as_ref().is_some_and(|p| p.over_budget));
        AdmissionRequest {
            uid: r.uid,
            kind: r.kind,
            sub_resource: r.sub_resource,
            name: r.name,
            namespace: r.namespace,
            operation: r.operation,
            object: r.object.map(|p| p.value),
            old_object: r.old_object.map(|p| p.value),
            dry_run: r.dry_run,
            too_large,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for AdmissionRequest<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RequestIn::deserialize(d).map(Self::from)
    }
}

/// A body that is not an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("body is not an AdmissionReview: {0}")]
    Json(String),
    #[error(
        "unsupported AdmissionReview apiVersion {0:?}: configure admissionReviewVersions: [v1]"
    )]
    Version(String),
    #[error("kind is {0:?}, expected AdmissionReview")]
    Kind(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has an empty uid")]
    NoUid,
}

/// How a review body is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// The fast reader ([`crate::json_scan`]), and serde_json where it gives up.
    Fast,
    /// serde_json alone: what the fast reader is held to.
    Serde,
}

/// Parses a review body and checks its envelope: apiVersion, kind, a request with a uid.
fn checked<'a, R: Deserialize<'a>>(
    body: &'a [u8],
    uid: impl Fn(&R) -> &str,
    scan: impl FnOnce(&'a str) -> Option<Envelope<R>>,
) -> Result<(String, R), ReviewError> {
    // Checked as UTF-8 once, as a whole: read from bytes, serde_json checks every string on
    // its own.
    let text = std::str::from_utf8(body).map_err(|e| ReviewError::Json(e.to_string()))?;
    let review: Envelope<R> = match scan(text) {
        Some(review) => review,
        None => serde_json::from_str(text).map_err(|e| ReviewError::Json(e.to_string()))?,
    };
    if !matches!(
        review.api_version.as_str(),
        "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
    ) {
        return Err(ReviewError::Version(review.api_version));
    }
    if review.kind != "AdmissionReview" {
        return Err(ReviewError::Kind(review.kind));
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if uid(&request).is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok((review.api_version, request))
}

/// Parses and checks a review body.
pub fn parse_review(body: &[u8]) -> Result<(String, AdmissionRequest<'_>), ReviewError> {
    parse_review_with(body, Reader::Fast)
}

/// Parses and checks a review body with the reader given.
pub fn parse_review_with(
    body: &[u8],
    reader: Reader,
) -> Result<(String, AdmissionRequest<'_>), ReviewError> {
    checked(
        body,
        |r: &AdmissionRequest| &r.uid,
        |text| match reader {
            Reader::Fast => scan_review(text),
            Reader::Serde => None,
        },
    )
}

/// The review as the derived `Deserialize` of [`Envelope`] and [`RequestIn`] read it, read with
/// the fast reader; `None` where it gives up, and on what serde_json would refuse: a field
/// given twice, a missing one, one of another type, a `null` request.
fn scan_review(text: &str) -> Option<AdmissionReview<'_>> {
    let mut s = Scanner::new(text);
    let (mut api_version, mut kind, mut request) = (None, None, None);
    s.map(|s, key| match key.as_ref() {
        "apiVersion" => once(&mut api_version, s.string()?.into_owned()),
        "kind" => once(&mut kind, s.string()?.into_owned()),
        "request" => once(&mut request, scan_request(s)?),
        _ => s.skip(),
    })?;
    s.at_end().then_some(())?;
    Some(Envelope {
        api_version: api_version?,
        kind: kind?,
        request: Some(request?),
    })
}

fn scan_request<'a>(s: &mut Scanner<'a>) -> Option<AdmissionRequest<'a>> {
    let (mut uid, mut kind, mut operation) = (None, None, None);
    let (mut sub_resource, mut name, mut namespace) = (None, None, None);
    let (mut object, mut old_object, mut dry_run) = (None, None, None);
    let optional_string = |s: &mut Scanner<'_>| match s.null()? {
        true => Some(None),
        false => Some(Some(s.string()?.into_owned())),
    };
    let optional_object = |s: &mut Scanner<'a>| match s.null()? {
        true => Some(None),
        false => Pruned::scan(s).map(Some),
    };
    s.map(|s, key| match key.as_ref() {
        "uid" => once(&mut uid, s.string()?.into_owned()),
        "kind" => once(&mut kind, scan_kind(s)?),
        "subResource" => once(&mut sub_resource, optional_string(s)?),
        "name" => once(&mut name, optional_string(s)?),
        "namespace" => once(&mut namespace, optional_string(s)?),
        "operation" => once(&mut operation, s.string()?.into_owned()),
        "object" => once(&mut object, optional_object(s)?),
        "oldObject" => once(&mut old_object, optional_object(s)?),
        "dryRun" => {
            let value = match s.null()? {
                true => None,
                false => Some(s.bool()?),
            };
            once(&mut dry_run, value)
        }
        _ => s.skip(),
    })?;
    let request = RequestIn {
        uid: uid?,
        kind: kind?,
        sub_resource: sub_resource.flatten(),
        name: name.flatten(),
        namespace: namespace.flatten(),
        operation: operation?,
        object: object.flatten(),
        old_object: old_object.flatten(),
        dry_run: dry_run.flatten(),
    };
    Some(request.into())
}

fn scan_kind(s: &mut Scanner<'_>) -> Option<GroupVersionKind> {
    let (mut group, mut version, mut kind) = (None, None, None);
    s.map(|s, key| match key.as_ref() {
        "group" => once(&mut group, s.string()?.into_owned()),
        "version" => once(&mut version, s.string()?.into_owned()),
        "kind" => once(&mut kind, s.string()?.into_owned()),
        _ => s.skip(),
    })?;
    Some(GroupVersionKind {
        group: group.unwrap_or_default(),
        version: version.unwrap_or_default(),
        kind: kind?,
    })
}

/// Sets a field read once; `None` (give up: serde_json refuses it) when it was set before.
fn once<T>(field: &mut Option<T>, value: T) -> Option<()> {
    field.is_none().then(|| *field = Some(value))
}

/// The apiVersion and uid of a review, reading nothing else.
pub fn parse_review_header(body: &[u8]) -> Result<(String, String), ReviewError> {
    #[derive(Deserialize)]
    struct RequestHeader {
        uid: String,
    }
    let (api_version, h) = checked(body, |h: &RequestHeader| &h.uid, |_| None)?;
    Ok((api_version, h.uid))
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: String,
    pub kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<Base64Patch>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
}

/// base64 of a JSON Patch. Made only by encoding bytes, so its text never needs a JSON escape
/// and [`ReviewOut::to_json`] copies it whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base64Patch(String);

impl Base64Patch {
    /// `patch` in standard base64 (with padding), encoded with SIMD where the CPU has it.
    pub fn encode(patch: &[u8]) -> Self {
        Self(base64_simd::STANDARD.encode_to_string(patch))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Base64Patch {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

#[derive(Serialize, Debug)]
pub struct StatusOut {
    pub status: &'static str,
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ReviewOut {
    /// The answer as JSON: the bytes `serde_json::to_vec` writes for it (a test holds them
    /// equal), written into one buffer of about the right size; strings that need no escape
    /// are copied whole ([`crate::json_str`]), the base64 patch without looking.
    pub fn to_json(&self) -> Vec<u8> {
        let r = &self.response;
        let texts = r.uid.len()
            + r.patch.as_ref().map_or(0, |p| p.as_str().len())
            + r.warnings.iter().map(|w| w.len() + 3).sum::<usize>()
            + r.status.as_ref().map_or(0, |s| s.message.len() + 64);
        let mut out = Vec::with_capacity(texts + 160);
        out.extend_from_slice(b"{\"apiVersion\":");
        json_str(&mut out, &self.api_version);
        out.extend_from_slice(b",\"kind\":");
        json_str(&mut out, self.kind);
        out.extend_from_slice(b",\"response\":{\"uid\":");
        json_str(&mut out, &r.uid);
        out.extend_from_slice(if r.allowed {
            b",\"allowed\":true"
        } else {
            b",\"allowed\":false"
        });
        if let Some(t) = r.patch_type {
            out.extend_from_slice(b",\"patchType\":");
            json_str(&mut out, t);
        }
        if let Some(p) = &r.patch {
            // Base64: its alphabet needs no escape.
            out.extend_from_slice(b",\"patch\":\"");
            out.extend_from_slice(p.as_str().as_bytes());
            out.push(b'"');
        }
        if !r.warnings.is_empty() {
            out.extend_from_slice(b",\"warnings\":[");
            for (i, w) in r.warnings.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(&mut out, w);
            }
            out.push(b']');
        }
        if let Some(s) = &r.status {
            out.extend_from_slice(b",\"status\":{\"status\":");
            json_str(&mut out, s.status);
            out.extend_from_slice(format!(",\"code\":{}", s.code).as_bytes());
            out.extend_from_slice(b",\"reason\":");
            json_str(&mut out, s.reason);
            out.extend_from_slice(b",\"message\":");
            json_str(&mut out, &s.message);
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// `s` as a JSON string, escaped as `serde_json` escapes it.
fn json_str(out: &mut Vec<u8>, s: &str) {
    crate::json_str::write(out, s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_reader_reads_every_real_review_as_serde_json_does() {
        // The API server's own JSON: the fast reader must not give up on it (or nothing is
        // gained), and reads what serde_json reads.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let body = std::fs::read_to_string(&path).unwrap();
            let fast = scan_review(&body).unwrap_or_else(|| panic!("{}", path.display()));
            let serde: AdmissionReview = serde_json::from_str(&body).unwrap();
            assert_eq!(fast.api_version, serde.api_version, "{}", path.display());
            assert_eq!(fast.kind, serde.kind);
            assert_eq!(fast.request, serde.request, "{}", path.display());
            read += 1;
        }
        assert!(read >= 6, "{read} fixtures");
    }

    #[test]
    fn the_fast_reader_gives_up_where_the_derived_reader_refuses() {
        let request = r#""uid":"u","kind":{"kind":"Pod"},"operation":"CREATE""#;
        let ok = format!(r#"{{"apiVersion":"v","kind":"k","request":{{{request}}}}}"#);
        let r = scan_review(&ok).unwrap().request.unwrap();
        assert_eq!((r.uid.as_str(), r.kind.group.as_str()), ("u", ""));
        for bad in [
            // A field given twice, at each level.
            format!(r#"{{"apiVersion":"v","apiVersion":"v","kind":"k","request":{{{request}}}}}"#),
            format!(r#"{{"apiVersion":"v","kind":"k","request":{{{request},"uid":"u"}}}}"#),
            r#"{"apiVersion":"v","kind":"k","request":{"uid":"u","kind":{"kind":"Pod","kind":"Pod"},"operation":"C"}}"#.into(),
            // A missing one, a null one, one of another type.
            format!(r#"{{"kind":"k","request":{{{request}}}}}"#),
            r#"{"apiVersion":"v","kind":"k","request":{"uid":"u","operation":"C"}}"#.into(),
            r#"{"apiVersion":"v","kind":"k","request":null}"#.into(),
            format!(r#"{{"apiVersion":"v","kind":"k","request":{{{request},"name":7}}}}"#),
            format!(r#"{{"apiVersion":"v","kind":"k","request":{{{request},"dryRun":"yes"}}}}"#),
            r#"{"apiVersion":"v","kind":"k","request":{"uid":"u","kind":{"group":null,"kind":"Pod"},"operation":"C"}}"#.into(),
            // A struct given as a list (serde_json reads that), trailing text.
            format!(r#"["v","k",{{{request}}}]"#),
            format!("{ok} x"),
        ] {
            assert!(scan_review(&bad).is_none(), "{bad}");
            let fast = parse_review_with(bad.as_bytes(), Reader::Fast).map_err(|e| e.to_string());
            let serde = parse_review_with(bad.as_bytes(), Reader::Serde).map_err(|e| e.to_string());
            assert_eq!(fast, serde, "{bad}");
        }
    }

    fn out(patch: Option<&str>, warnings: &[&str], status: Option<&str>) -> ReviewOut {
        ReviewOut {
            api_version: "admission.k8s.io/v1".into(),
            kind: "AdmissionReview",
            response: ResponseOut {
                uid: "705ab4f5-\"6393\"\n\\u".into(),
                allowed: status.is_none(),
                patch_type: patch.map(|_| "JSONPatch"),
                patch: patch.map(|p| Base64Patch::encode(p.as_bytes())),
                warnings: warnings.iter().map(|w| w.to_string()).collect(),
                status: status.map(|m| StatusOut {
                    status: "Failure",
                    code: 403,
                    reason: "Forbidden",
                    message: m.into(),
                }),
            },
        }
    }

    const REQUEST: &str =
        r#""uid":"u1","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE""#;

    fn review(request: &str) -> String {
        format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{{request}}}}}"#
        )
    }

    #[test]
    fn the_envelope_is_read_in_any_order_and_with_escaped_keys() {
        let body = format!(
            r#" {{ "request" : {{ "object":{{"spec":{{"containers":[{{"image":"a:1"}}]}}}}, {REQUEST}, "userInfo":{{"groups":["x"]}}, "dryRun":true, "n\u0061me":null }} , "kind":"AdmissionReview", "\u0061piVersion":"admission.k8s.io/v1beta1" }} "#
        );
        let (api_version, r) = parse_review(body.as_bytes()).unwrap();
        assert_eq!(api_version, "admission.k8s.io/v1beta1");
        assert_eq!((r.uid.as_str(), r.operation.as_str()), ("u1", "CREATE"));
        assert_eq!(r.kind.kind, "Pod");
        assert_eq!(r.dry_run, Some(true));
        assert_eq!(r.name, None);
        assert_eq!(
            r.object.unwrap().to_value()["spec"]["containers"][0]["image"],
            "a:1"
        );
        assert!(r.old_object.is_none() && !r.too_large);
        assert_eq!(
            parse_review_header(body.as_bytes()).unwrap(),
            ("admission.k8s.io/v1beta1".to_string(), "u1".to_string())
        );
    }

    #[test]
    fn a_body_that_is_not_a_review_says_what_is_wrong() {
        let cases = [
            (
                review(&format!(r#"{REQUEST},"uid":"u2""#)),
                "duplicate field `uid`",
            ),
            (
                review(r#""uid":7,"kind":{"kind":"Pod"},"operation":"CREATE""#),
                "invalid type: integer `7`, expected a string",
            ),
            (
                review(r#""uid":"u","operation":"CREATE""#),
                "missing field `kind`",
            ),
            (
                review(r#""uid":"u","kind":{"group":""},"operation":"CREATE""#),
                "missing field `kind`",
            ),
            (
                review(&format!(r#"{REQUEST},"dryRun":"yes""#)),
                "expected a boolean",
            ),
            (
                review(&format!(r#"{REQUEST},"object":{{"a":[1,}}"#)),
                "line 1 column",
            ),
            (format!("{} x", review(REQUEST)), "trailing characters"),
            (
                r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":"x"}"#
                    .into(),
                "invalid type: string",
            ),
        ];
        for (body, says) in cases {
            let e = parse_review(body.as_bytes()).unwrap_err().to_string();
            assert!(
                e.starts_with("body is not an AdmissionReview: "),
                "{body}: {e}"
            );
            assert!(e.contains(says), "{body}: {e}");
        }
        let null_request =
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#;
        assert!(matches!(
            parse_review(null_request.as_bytes()),
            Err(ReviewError::NoRequest)
        ));
        let no_uid = review(r#""uid":"","kind":{"kind":"Pod"},"operation":"CREATE""#);
        assert!(matches!(
            parse_review(no_uid.as_bytes()),
            Err(ReviewError::NoUid)
        ));
        assert!(matches!(parse_review(b"\xff"), Err(ReviewError::Json(_))));
        // The uid alone is read, but the rest is still checked as JSON.
        let broken = review(&format!(r#"{REQUEST},"object":{{"a":tru}}"#));
        assert!(parse_review_header(broken.as_bytes()).is_err());
    }

    /// The patch is standard base64 (the encoder is not the one the tests decode with), and
    /// none of its characters needs a JSON escape, which `to_json` relies on.
    #[test]
    fn the_patch_is_standard_base64_that_needs_no_escape() {
        use base64::Engine as _;
        let every_byte: Vec<u8> = (0..=255u8).collect();
        for len in (0..40).chain([255, 256, 257, 1000]) {
            for shift in 0..3 {
                let bytes: Vec<u8> = every_byte
                    .iter()
                    .cycle()
                    .skip(shift)
                    .take(len)
                    .copied()
                    .collect();
                let ours = Base64Patch::encode(&bytes);
                let reference = base64::engine::general_purpose::STANDARD.encode(&bytes);
                assert_eq!(ours.as_str(), reference, "{len} bytes from {shift}");
                let mut escaped = Vec::new();
                json_str(&mut escaped, ours.as_str());
                assert_eq!(escaped, format!("\"{reference}\"").into_bytes());
            }
        }
    }

    #[test]
    fn the_answer_is_written_as_serde_json_writes_it() {
        for o in [
            out(None, &[], None),
            out(Some(r#"[{"op":"replace"}]"#), &[], None),
            // Padding of one and of two.
            out(Some("ab"), &["w1"], None),
            out(Some("a"), &[], None),
            out(
                None,
                &["tagpin: x left unpinned: \"quoted\"", "ünï\tcode\u{7f}"],
                None,
            ),
            out(
                None,
                &[],
                Some("tagpin: denied, 1 image(s) could not be pinned: \"x\"\n"),
            ),
        ] {
            let ours = o.to_json();
            let theirs = serde_json::to_vec(&o).unwrap();
            assert_eq!(
                String::from_utf8(ours).unwrap(),
                String::from_utf8(theirs).unwrap()
            );
        }
    }
}
