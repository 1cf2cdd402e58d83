//! The pruning reader (`src/prune.rs`) against the whole `serde_json::Value`, and the fast reader
//! (`src/json_scan.rs`) against serde_json, on generated
//! documents, on the same documents with bytes deleted, replaced or inserted, on texts whose
//! maps repeat keys and keep many entries, and on every AdmissionReview fixture: what it keeps while reading is what pruning the whole value by the
//! same rules (stated again here, `reference`) gives.

use proptest::prelude::*;
use serde_json::{Map, Value};
use tagpin::admission::{parse_review_with, Reader};
use tagpin::prune::{Pruned, KEPT_STRINGS};
use tagpin::tree::{Kept, Tree};

/// Keys that matter to pruning, and some that do not.
const KEYS: &[&str] = &[
    "image",
    "name",
    "reference",
    "generateName",
    "serviceAccountName",
    "apiVersion",
    "kind",
    "controller",
    "containers",
    "initContainers",
    "spec",
    "template",
    "metadata",
    "annotations",
    "labels",
    "tagpin.io/pinned",
    "imagePullSecrets",
    "ownerReferences",
    "env",
    "volumes",
    "x",
    "caf\u{e9}",
    "tab\there",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z0-9:/@.\\-]{0,12}".prop_map(Value::String),
        "\\PC{0,6}".prop_map(Value::String),
        Just(Value::String(
            "quote\" backslash\\ nl\n \u{1} \u{1F600}".into()
        )),
    ]
}

fn document() -> impl Strategy<Value = Value> {
    document_of(leaf())
}

fn document_of(leaf: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Value> {
    leaf.prop_recursive(6, 96, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..6).prop_map(
                |entries| {
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

/// Pruning a whole value: the rules of `src/prune.rs`, written once more over a `Value`.
fn reference(v: &Value, ctx: &Ctx) -> Option<Value> {
    const NAME_KEYS: &[&str] = &["name", "generateName", "apiVersion", "kind"];
    match v {
        Value::String(_) => {
            let keep = match ctx {
                Ctx::Field(k) => KEPT_STRINGS.contains(&k.as_str()),
                Ctx::Record => true,
                _ => false,
            };
            keep.then(|| v.clone())
        }
        Value::Bool(_) => matches!(ctx, Ctx::Field(k) if k == "controller").then(|| v.clone()),
        Value::Array(items) => {
            let parent = match ctx {
                Ctx::Field(k) => k.clone(),
                _ => String::new(),
            };
            let kept: Vec<Value> = items
                .iter()
                .map(|i| reference(i, &Ctx::Element(parent.clone())).unwrap_or(Value::Null))
                .collect();
            kept.iter()
                .any(|k| !k.is_null())
                .then_some(Value::Array(kept))
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let child = match ctx {
                    Ctx::Annotations if k == "tagpin.io/pinned" => Ctx::Record,
                    Ctx::Annotations => continue,
                    _ if k == "labels" => continue,
                    _ if k == "annotations" => Ctx::Annotations,
                    _ => Ctx::Field(k.clone()),
                };
                if let Some(kept) = reference(v, &child) {
                    out.insert(k.clone(), kept);
                }
            }
            let keeps_empty = matches!(ctx, Ctx::Root | Ctx::Annotations)
                || matches!(ctx, Ctx::Field(k) if k == "metadata" || k == "annotations");
            if out.is_empty() && !keeps_empty {
                return None;
            }
            let names_only = !out.is_empty() && out.keys().all(|k| NAME_KEYS.contains(&k.as_str()));
            let keeps_names = matches!(ctx, Ctx::Root)
                || matches!(ctx, Ctx::Field(k) if k == "metadata")
                || matches!(ctx, Ctx::Element(k) if k == "imagePullSecrets");
            if names_only && !keeps_names {
                return None;
            }
            Some(Value::Object(out))
        }
        Value::Number(_) | Value::Null => None,
    }
}

enum Ctx {
    Root,
    Field(String),
    Annotations,
    Record,
    Element(String),
}

fn pruned_whole(v: &Value) -> Value {
    match reference(v, &Ctx::Root) {
        Some(o @ Value::Object(_)) => o,
        _ => Value::Object(Map::new()),
    }
}

/// A byte from JSON's own alphabet, or any byte.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        proptest::sample::select(b"{}[],:\"\\ -+.eE0123456789tfnulr/\t\n".to_vec()),
        any::<u8>(),
    ]
}

#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Replace(usize, u8),
    Insert(usize, u8),
    /// Inserted just before or after the n-th byte of JSON's syntax (brackets, braces, commas,
    /// colons, quotes, backslashes), where most of its rules are.
    Near(usize, bool, u8),
}

/// `doc` with `edits` made to it.
fn damaged(mut doc: Vec<u8>, edits: Vec<Edit>) -> Vec<u8> {
    for e in edits {
        let n = doc.len();
        match e {
            Edit::Delete(i) if n > 0 => {
                doc.remove(i % n);
            }
            Edit::Replace(i, b) if n > 0 => doc[i % n] = b,
            Edit::Insert(i, b) => doc.insert(i % (n + 1), b),
            Edit::Near(i, after, b) => {
                let syntax: Vec<usize> = (0..n)
                    .filter(|&j| b"[]{},:\"\\".contains(&doc[j]))
                    .collect();
                if !syntax.is_empty() {
                    doc.insert(syntax[i % syntax.len()] + usize::from(after), b);
                }
            }
            _ => {}
        }
    }
    doc
}

/// An AdmissionReview around `object` and `old`, as the API server writes one.
fn review(object: &Value, old: &Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "705ab4f5", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "ns", "operation": "UPDATE", "userInfo": {"username": "u", "groups": ["g"]},
            "object": object, "oldObject": old, "dryRun": false, "options": null}
    }))
    .unwrap()
}

/// Leaves without fractions or exponents: numbers the fast reader never gives up on.
fn whole_number_leaf() -> impl Strategy<Value = Value> {
    leaf().prop_filter("no float", |v| !v.is_f64())
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => any::<usize>().prop_map(Edit::Delete),
        1 => (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Replace(i, b)),
        1 => (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        3 => (
            any::<usize>(),
            any::<bool>(),
            proptest::sample::select(b",:[]{}\"\\0 ".to_vec())
        )
            .prop_map(|(i, after, b)| Edit::Near(i, after, b)),
    ]
}

/// A JSON text as written, not as a `Value` holds it: a map may name a key more than once and
/// hold more entries than [`document`] gives (the pruning reader settles maps past eight kept
/// entries differently from smaller ones).
#[derive(Debug, Clone)]
enum Written {
    Leaf(Value),
    List(Vec<Written>),
    Map(Vec<(&'static str, Written)>),
}

impl Written {
    fn write(&self, out: &mut String) {
        match self {
            Written::Leaf(v) => out.push_str(&v.to_string()),
            Written::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Written::Map(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::from(*k).to_string());
                    out.push(':');
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// [`KEYS`] and some more, so that a map keeps more than eight of them.
const WIDE_KEYS: &[&str] = &[
    "image",
    "name",
    "kind",
    "spec",
    "containers",
    "labels",
    "x",
    "a0",
    "a1",
    "a2",
    "a3",
    "a4",
    "a5",
    "a6",
    "a7",
    "a8",
    "a9",
];

fn written() -> impl Strategy<Value = Written> {
    // A value that is always kept under any key but `labels`.
    let kept = || {
        "[a-z]{1,3}".prop_map(|s| Written::Map(vec![("image", Written::Leaf(Value::String(s)))]))
    };
    leaf()
        .prop_map(Written::Leaf)
        .prop_recursive(4, 160, 24, move |inner| {
            let value = prop_oneof![2 => inner.clone(), 3 => kept()];
            let keys = prop_oneof![
                proptest::sample::select(KEYS),
                proptest::sample::select(WIDE_KEYS)
            ];
            prop_oneof![
                proptest::collection::vec(inner, 0..5).prop_map(Written::List),
                proptest::collection::vec((keys, value), 0..24).prop_map(Written::Map),
            ]
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn keys_given_more_than_once_in_maps_of_any_width_read_as_serde_json_reads_them(
        w in written(),
    ) {
        let mut doc = String::new();
        w.write(&mut doc);
        // serde_json keeps the last value of a key given twice.
        let whole: Value = serde_json::from_str(&doc).unwrap();
        let p = Pruned::from_slice(doc.as_bytes()).unwrap();
        prop_assert!(!p.over_budget);
        prop_assert_eq!(p.value.to_value(), pruned_whole(&whole), "{}", doc);
    }

    #[test]
    fn pruning_while_reading_is_pruning_the_whole_value(v in document(), pretty in any::<bool>()) {
        let doc = if pretty { serde_json::to_vec_pretty(&v) } else { serde_json::to_vec(&v) }.unwrap();
        let p = Pruned::from_slice(&doc).unwrap();
        prop_assert!(!p.over_budget);
        prop_assert_eq!(p.value.to_value(), pruned_whole(&v));
    }

    #[test]
    fn what_serde_json_reads_the_pruning_reader_reads_alike(
        v in document(),
        edits in proptest::collection::vec(edit(), 0..4),
    ) {
        let doc = damaged(serde_json::to_vec(&v).unwrap(), edits);
        // (The other way does not hold everywhere: inside `labels` and other annotations,
        // skipped unread, a `\u` escape is checked only for its four hex digits.)
        if let Ok(whole) = serde_json::from_slice::<Value>(&doc) {
            let p = Pruned::from_slice(&doc);
            prop_assert!(p.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&doc), p.err());
            prop_assert_eq!(p.unwrap().value.to_value(), pruned_whole(&whole));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// The fast reader (`src/json_scan.rs`), damaged texts and all: where it does not give up,
    /// serde_json reads the text too, and reads it the same.
    #[test]
    fn the_fast_reader_reads_as_serde_json_reads_or_gives_up(
        v in document(),
        edits in proptest::collection::vec(edit(), 0..4),
    ) {
        let doc = damaged(serde_json::to_vec(&v).unwrap(), edits);
        if let Some(fast) = std::str::from_utf8(&doc).ok().and_then(Pruned::scan_text) {
            let serde = Pruned::read_with_serde(&doc);
            prop_assert_eq!(Some(&fast), serde.as_ref().ok(), "{}", String::from_utf8_lossy(&doc));
        }
    }

    #[test]
    fn written_texts_read_alike_by_both_readers(w in written()) {
        let mut doc = String::new();
        w.write(&mut doc);
        let serde = Pruned::read_with_serde(doc.as_bytes()).unwrap();
        if let Some(fast) = Pruned::scan_text(&doc) {
            prop_assert_eq!(fast, serde, "{}", doc);
        }
    }

    /// It gives up only where it must: never on a document whose numbers are whole.
    #[test]
    fn the_fast_reader_reads_documents_of_whole_numbers(
        v in document_of(whole_number_leaf()),
        pretty in any::<bool>(),
    ) {
        let doc = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.unwrap();
        let fast = Pruned::scan_text(&doc);
        prop_assert!(fast.is_some(), "gave up on {}", doc);
        prop_assert_eq!(fast.unwrap().value.to_value(), pruned_whole(&v));
    }

    /// Whole reviews, damaged: the request read (or the error given) is the same whichever
    /// reader starts.
    #[test]
    fn reviews_read_alike_by_both_readers(
        object in document(),
        old in document(),
        edits in proptest::collection::vec(edit(), 0..3),
    ) {
        let body = damaged(review(&object, &old), edits);
        let fast = parse_review_with(&body, Reader::Fast).map_err(|e| e.to_string());
        let serde = parse_review_with(&body, Reader::Serde).map_err(|e| e.to_string());
        prop_assert_eq!(fast, serde, "{}", String::from_utf8_lossy(&body));
    }
}

#[test]
fn a_repeated_key_counts_once_with_its_last_value() {
    // serde_json reads the last of two `image`s; so does the pruning reader, even when the
    // last one is dropped (a number), and even when the first was kept.
    for (doc, image) in [
        (
            r#"{"spec":{"containers":[{"image":"a:1","image":"b:2"}]}}"#,
            Some("b:2"),
        ),
        (
            r#"{"spec":{"containers":[{"image":"a:1","image":7}]}}"#,
            None,
        ),
        (
            r#"{"spec":{"containers":[{"image":7,"image":"b:2"}]}}"#,
            Some("b:2"),
        ),
    ] {
        let whole: Value = serde_json::from_str(doc).unwrap();
        let p = Pruned::from_slice(doc.as_bytes()).unwrap();
        assert_eq!(p.value.to_value(), pruned_whole(&whole), "{doc}");
        assert_eq!(
            p.value
                .pointer("/spec/containers/0/image")
                .and_then(Tree::as_str),
            image,
            "{doc}"
        );
    }
}

#[test]
fn real_reviews_read_as_serde_json_reads_them() {
    // Every AdmissionReview fixture (the API server's own JSON): the request's fields, and the
    // objects pruned while scanning as the whole objects prune.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let body = std::fs::read(&path).unwrap();
        let whole: Value = serde_json::from_slice(&body).unwrap();
        let (api_version, req) = tagpin::admission::parse_review(&body)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let r = &whole["request"];
        assert_eq!(api_version, whole["apiVersion"], "{}", path.display());
        assert_eq!(req.uid, r["uid"]);
        assert_eq!(req.kind.kind, r["kind"]["kind"]);
        assert_eq!(req.kind.group, r["kind"]["group"]);
        assert_eq!(req.operation, r["operation"]);
        assert_eq!(req.namespace.as_deref(), r["namespace"].as_str());
        assert_eq!(req.name.as_deref(), r["name"].as_str());
        assert_eq!(req.sub_resource.as_deref(), r["subResource"].as_str());
        assert_eq!(req.dry_run, r["dryRun"].as_bool());
        for (ours, key) in [(&req.object, "object"), (&req.old_object, "oldObject")] {
            let theirs = r.get(key).filter(|v| !v.is_null()).map(pruned_whole);
            let ours = ours.as_ref().map(Kept::to_value);
            assert_eq!(ours, theirs, "{}: {key}", path.display());
        }
        assert!(tagpin::admission::parse_review_header(&body).is_ok());
        read += 1;
    }
    assert!(read >= 6, "{read} fixtures read");
}
