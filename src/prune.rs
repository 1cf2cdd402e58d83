//! Reading an admitted object without holding all of it: a [`Kept`] tree that keeps only what
//! tagpin reads, its strings borrowed from the document. Pure.
//!
//! An AdmissionReview can be megabytes (an UPDATE carries the object twice) and a whole
//! `serde_json::Value` of it costs many times its size. This deserializer streams the object and
//! keeps, at every depth, only the parts that can matter to pod-spec discovery, planning, the
//! `tagpin.io/pinned` record and credential lookup:
//!
//! * strings under the keys in [`KEPT_STRINGS`] (`image`, `name`, `reference`, the service
//!   account fields, …), `controller` booleans (owner references);
//! * in an `annotations` map, only `tagpin.io/pinned` (the map itself always stays, so a patch
//!   adds one key to it rather than replacing it);
//! * maps and lists that still hold something after pruning; `metadata` and `annotations` maps
//!   even when empty (the record's patch depends on whether they exist). A list that keeps any
//!   element keeps its length (dropped elements become [`Kept::Dropped`]), so JSON pointers into
//!   it stay right.
//!
//! Numbers, `null`, other strings and booleans, `labels`, and empty maps and lists are skipped
//! with [`IgnoredAny`] and never allocated. The nested shape is kept wherever a pod spec could be,
//! so discovery by shape (a map whose `containers` is a list of maps with an `image` string) works
//! on the pruned value as on the whole one. A key given twice counts once, with its last value,
//! as when the whole object is read (`tests/json_props.rs` holds the two together).
//!
//! Strings and keys without escapes are borrowed from the document, and a map's entries are one
//! sorted list: a kept object costs one allocation per map or list, where a `serde_json::Value`
//! costs one per string and key as well, and a B-tree node per map.
//!
//! What is kept is bounded: past [`MAX_KEPT_NODES`] values, the rest of the object is skipped
//! and [`Pruned::over_budget`] is set (the caller then refuses to inspect the object).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use crate::json_scan::Scanner;
use crate::podspec::PINNED_ANNOTATION;
use crate::tree::Kept;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// String fields kept wherever they appear.
pub const KEPT_STRINGS: &[&str] = &[
    "image",
    "reference",
    "name",
    "generateName",
    "serviceAccountName",
    "serviceAccount",
    "apiVersion",
    "kind",
];

/// Kept strings that only identify something: a map holding nothing else is dropped.
const NAME_KEYS: &[&str] = &["name", "generateName", "apiVersion", "kind"];

/// Most values (maps, lists, list slots and strings) kept from one object. A real pod keeps a
/// few dozen; 65,536 is far beyond any valid workload and bounds the pruned value to a few MiB.
pub const MAX_KEPT_NODES: usize = 65_536;

/// An object read through the pruning deserializer, borrowing from the document.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned<'a> {
    /// The kept parts (an empty map when the object is not a map or nothing was kept).
    pub value: Kept<'a>,
    /// True when the object held more than [`MAX_KEPT_NODES`] values worth keeping: the rest was
    /// skipped, and `value` must not be used to decide anything.
    pub over_budget: bool,
}

impl<'a> Pruned<'a> {
    /// Prunes a JSON document as an admission review's object is pruned: with the fast reader
    /// ([`crate::json_scan`]), and with serde_json where that gives up.
    pub fn from_slice(json: &'a [u8]) -> serde_json::Result<Self> {
        std::str::from_utf8(json)
            .ok()
            .and_then(Self::scan_text)
            .map_or_else(|| Self::read_with_serde(json), Ok)
    }

    /// Prunes a JSON document with serde_json alone (the reader the fast one is held to).
    pub fn read_with_serde(json: &'a [u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(json)
    }

    /// Prunes a whole JSON text with the fast reader; `None` where it gives up.
    pub fn scan_text(text: &'a str) -> Option<Self> {
        let mut s = Scanner::new(text);
        let p = Self::scan(&mut s)?;
        s.at_end().then_some(p)
    }

    /// Prunes the value at `s` with the fast reader; `None` where it gives up (the text must
    /// then be read again with serde_json).
    pub fn scan(s: &mut Scanner<'a>) -> Option<Self> {
        let budget = Budget::new();
        let kept = Node {
            budget: &budget,
            ctx: Ctx::Root,
        }
        .scan(s)?;
        // Past the budget the rest would have to be skipped as serde_json skips it: read it so.
        (!budget.over.get()).then(|| Self::of(kept, false))
    }

    /// What the pruning of the root value gave, as an object.
    fn of(kept: Option<Kept<'a>>, over_budget: bool) -> Self {
        let value = match kept {
            Some(v @ Kept::Map(_)) if !over_budget => v,
            _ => Kept::Map(Vec::new()),
        };
        Pruned { value, over_budget }
    }
}

struct Budget {
    left: Cell<usize>,
    over: Cell<bool>,
}

impl Budget {
    fn new() -> Self {
        Budget {
            left: Cell::new(MAX_KEPT_NODES),
            over: Cell::new(false),
        }
    }

    /// Takes `n` nodes; false (and marks the budget spent) when there are not that many left.
    fn take(&self, n: usize) -> bool {
        if self.over.get() {
            return false;
        }
        match self.left.get().checked_sub(n) {
            Some(l) => {
                self.left.set(l);
                true
            }
            None => {
                self.over.set(true);
                false
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Pruned<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let budget = Budget::new();
        let kept = Node {
            budget: &budget,
            ctx: Ctx::Root,
        }
        .deserialize(d)?;
        Ok(Pruned::of(kept, budget.over.get()))
    }
}

#[derive(Clone, Copy)]
enum Ctx<'k> {
    Root,
    /// The value of this key in a map.
    Field(&'k str),
    /// The entries of an `annotations` map.
    Annotations,
    /// The value of the `tagpin.io/pinned` annotation.
    Record,
    /// An element of the list under this key.
    Element(&'k str),
}

struct Node<'b, 'k> {
    budget: &'b Budget,
    ctx: Ctx<'k>,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_> {
    type Value = Option<Kept<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'k> Node<'_, 'k> {
    fn keeps_string(&self) -> bool {
        match self.ctx {
            Ctx::Field(k) => KEPT_STRINGS.contains(&k),
            Ctx::Record => true,
            _ => false,
        }
    }

    /// Maps holding nothing but names (an `env` entry, a `configMap` volume source) are dropped,
    /// except where a name is what is read: metadata and pull-secret references.
    fn keeps_names_only(&self) -> bool {
        matches!(
            self.ctx,
            Ctx::Root | Ctx::Field("metadata") | Ctx::Element("imagePullSecrets")
        )
    }

    fn keeps_empty_map(&self) -> bool {
        matches!(
            self.ctx,
            Ctx::Root | Ctx::Annotations | Ctx::Field("metadata" | "annotations")
        )
    }

    /// A string here, kept or not.
    fn string<'de>(&self, s: Cow<'de, str>) -> Option<Kept<'de>> {
        let keep = self.keeps_string() && self.budget.take(1);
        keep.then_some(Kept::Str(s))
    }

    /// A boolean here, kept or not.
    fn boolean<'de>(&self, b: bool) -> Option<Kept<'de>> {
        let keep = matches!(self.ctx, Ctx::Field("controller")) && self.budget.take(1);
        keep.then_some(Kept::Bool(b))
    }

    /// How the value of `key` in this map is read; `None`: skipped unread.
    fn field<'x>(&self, key: &'x str) -> Option<Ctx<'x>> {
        match self.ctx {
            Ctx::Annotations if key == PINNED_ANNOTATION => Some(Ctx::Record),
            Ctx::Annotations => None,
            _ if key == "labels" => None,
            _ if key == "annotations" => Some(Ctx::Annotations),
            _ => Some(Ctx::Field(key)),
        }
    }

    /// An element of this list.
    fn element(&self) -> Node<'_, 'k> {
        let parent = match self.ctx {
            Ctx::Field(k) => k,
            _ => "",
        };
        Node {
            budget: self.budget,
            ctx: Ctx::Element(parent),
        }
    }

    /// This list of `len` elements, given the ones kept (with their positions).
    fn list<'de>(&self, kept: Vec<(usize, Kept<'de>)>, len: usize) -> Option<Kept<'de>> {
        if kept.is_empty() || !self.budget.take(len - kept.len() + 1) {
            return None;
        }
        let mut out = Vec::with_capacity(len);
        for (i, v) in kept {
            out.resize(i, Kept::Dropped);
            out.push(v);
        }
        out.resize(len, Kept::Dropped);
        Some(Kept::List(out))
    }

    /// This map, given its entries as read.
    fn map<'de>(&self, entries: Entries<'de>) -> Option<Kept<'de>> {
        let out = settled(entries.out, entries.tombstones);
        if out.is_empty() && !self.keeps_empty_map() {
            return None;
        }
        let names_only =
            !out.is_empty() && out.iter().all(|(k, _)| NAME_KEYS.contains(&k.as_ref()));
        if names_only && !self.keeps_names_only() {
            return None;
        }
        self.budget.take(1).then_some(Kept::Map(out))
    }

    /// The value at `s`, read with the fast reader (`None`: it gave up).
    fn scan<'a>(self, s: &mut Scanner<'a>) -> Option<Option<Kept<'a>>> {
        match s.peek()? {
            b'"' => Some(self.string(s.string()?)),
            b'{' => {
                let mut entries = Entries::default();
                s.map(|s, key| {
                    let Some(ctx) = self.field(&key) else {
                        return s.skip();
                    };
                    let node = Node {
                        budget: self.budget,
                        ctx,
                    };
                    let v = node.scan(s)?;
                    if self.budget.over.get() {
                        return None;
                    }
                    entries.add(key, v, self.budget);
                    Some(())
                })?;
                Some(self.map(entries))
            }
            b'[' => {
                let mut kept = Vec::new();
                let mut len = 0usize;
                s.list(|s| {
                    if let Some(v) = self.element().scan(s)? {
                        kept.push((len, v));
                    }
                    if self.budget.over.get() {
                        return None;
                    }
                    len += 1;
                    Some(())
                })?;
                Some(self.list(kept, len))
            }
            b't' | b'f' => Some(self.boolean(s.bool()?)),
            b'n' => s.null()?.then_some(None),
            _ => s.number(true).map(|()| None),
        }
    }
}

/// A map's entries in the order read; sorted, and each key's last entry kept, once the map is
/// read ([`settled`]).
#[derive(Default)]
struct Entries<'de> {
    out: Vec<(Cow<'de, str>, Kept<'de>)>,
    /// The kept keys' lengths as bits (`len % 64`): a dropped key can have been kept before
    /// only if its length's bit is set, so most dropped keys are not searched for.
    kept_lengths: u64,
    /// Entries that stand for a dropped key given again after being kept (see `add`).
    tombstones: bool,
}

impl<'de> Entries<'de> {
    /// The value of `key`, kept or not.
    fn add(&mut self, key: Cow<'de, str>, value: Option<Kept<'de>>, budget: &Budget) {
        let length_bit = 1u64 << (key.len() % 64);
        match value {
            Some(v) => {
                self.kept_lengths |= length_bit;
                self.out.push((key, v));
            }
            // A repeated key: the last one counts, as when the whole object is read. Most
            // keys are dropped and most maps keep a few: looked for only when a kept key
            // had its length (searching the map for every dropped key cost 2.8k
            // instructions per cached admission, `benches/hotpath.rs`), and only in a map
            // of a few entries. In a larger one, it is marked gone (one node of the budget,
            // so marks are bounded too) and settled with the rest once the map is read.
            None if self.kept_lengths & length_bit == 0 => {}
            None if self.out.len() <= 8 => self.out.retain(|(k, _)| *k != key),
            None => {
                if budget.take(1) {
                    self.out.push((key, Kept::Dropped));
                    self.tombstones = true;
                }
            }
        }
    }
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Option<Kept<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(self.boolean(b))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(self.string(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        let keep = self.keeps_string() && self.budget.take(1);
        Ok(keep.then(|| Kept::Str(Cow::Owned(s.to_string()))))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(self.string(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Sparse while reading: a long list of dropped elements costs nothing.
        let mut kept: Vec<(usize, Kept<'de>)> = Vec::new();
        let mut len = 0usize;
        loop {
            if self.budget.over.get() {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            match seq.next_element_seed(self.element())? {
                None => break,
                Some(Some(v)) => kept.push((len, v)),
                Some(None) => {}
            }
            len += 1;
        }
        Ok(self.list(kept, len))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut entries = Entries::default();
        while let Some(MapKey(key)) = map.next_key::<MapKey<'de>>()? {
            if self.budget.over.get() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let Some(ctx) = self.field(&key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let node = Node {
                budget: self.budget,
                ctx,
            };
            let v = map.next_value_seed(node)?;
            entries.add(key, v, self.budget);
        }
        if self.budget.over.get() {
            return Ok(None);
        }
        Ok(self.map(entries))
    }
}

/// A map's entries as read, sorted by key with each key's last entry (a JSON object's meaning),
/// and without the keys that entry marks gone ([`Kept::Dropped`]).
fn settled<'de>(
    mut entries: Vec<(Cow<'de, str>, Kept<'de>)>,
    tombstones: bool,
) -> Vec<(Cow<'de, str>, Kept<'de>)> {
    // Stable: a key's entries stay in the order they were read.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    if !tombstones && entries.windows(2).all(|w| w[0].0 != w[1].0) {
        return entries;
    }
    let mut out = Vec::with_capacity(entries.len());
    let mut it = entries.into_iter().peekable();
    while let Some(e) = it.next() {
        let later = it.peek().is_some_and(|next| next.0 == e.0);
        if !later && !matches!(e.1, Kept::Dropped) {
            out.push(e);
        }
    }
    out
}

/// A map key, borrowed from the document when it can be (no escapes in it): most keys are
/// dropped with their values, and a key read as a `String` would cost an allocation each.
struct MapKey<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for MapKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = MapKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map key")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(MapKey(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(MapKey(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(MapKey(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Tree;
    use serde_json::{json, Value};

    /// `doc` read with serde_json; the fast reader, where it does not give up, reads the same.
    fn read(doc: &[u8]) -> serde_json::Result<Pruned<'_>> {
        let serde = Pruned::read_with_serde(doc);
        let fast = std::str::from_utf8(doc).ok().and_then(Pruned::scan_text);
        if let Some(fast) = &fast {
            let text = String::from_utf8_lossy(doc);
            assert_eq!(Some(fast), serde.as_ref().ok(), "{text}");
        }
        serde
    }

    /// `doc` read with the fast reader, which must not give up on it.
    fn scanned(doc: &str) -> Pruned<'_> {
        Pruned::scan_text(doc).unwrap_or_else(|| panic!("the fast reader gave up on {doc}"))
    }

    #[test]
    fn the_fast_reader_reads_what_serde_json_reads_and_gives_up_past_its_bounds() {
        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","labels":{"a":"\ud83d"},
            "annotations":{"x":"y","tagpin.io/pinned":"{\"c\":\"a:1\"}"},
            "ownerReferences":[{"controller":true,"kind":"ReplicaSet","name":"r","uid":"u"}]},
            "spec":{"serviceAccountName":"sa","imagePullSecrets":[{"name":"s"}],
            "containers":[{"name":"c","image":"r.io/a:1","ports":[{"containerPort":80}],
            "resources":{"limits":{"cpu":0.5}}},{"name":"d","image":"b@sha256:00"}]}}"#;
        assert_eq!(scanned(pod), read(pod.as_bytes()).unwrap());
        // Over the budget: the rest is skipped as serde_json skips it, so serde_json reads it.
        let many: Vec<Value> = (0..MAX_KEPT_NODES)
            .map(|i| json!({"image": i.to_string()}))
            .collect();
        let big = serde_json::to_string(&json!({"spec": {"containers": many}})).unwrap();
        assert!(Pruned::scan_text(&big).is_none());
        assert!(read(big.as_bytes()).unwrap().over_budget);
        // A number serde_json could find out of range, where it is read and where skipped.
        assert!(Pruned::scan_text(r#"{"spec":{"x":1e999}}"#).is_none());
        assert!(read(br#"{"spec":{"x":1e999}}"#).is_err());
        assert_eq!(
            scanned(r#"{"labels":{"x":1e999}}"#).value,
            Kept::Map(vec![])
        );
    }

    /// What is kept of `v`, as a `Value`, and whether the budget was spent.
    fn prune(v: &Value) -> (Value, bool) {
        let doc = serde_json::to_vec(v).unwrap();
        let p = read(&doc).unwrap();
        (p.value.to_value(), p.over_budget)
    }

    #[test]
    fn keys_with_escapes_are_read_as_the_keys_they_spell() {
        // `\u0069mage` is `image`, `cont\u0061iners` is `containers`: borrowed keys and keys
        // decoded from escapes are the same keys.
        let raw =
            br#"{"spec": {"cont\u0061iners": [{"n\u0061me": "web", "\u0069mage": "nginx:1"}]}}"#;
        let p = read(raw).unwrap();
        assert_eq!(
            p.value.to_value(),
            json!({"spec": {"containers": [{"name": "web", "image": "nginx:1"}]}})
        );
    }

    #[test]
    fn a_kept_key_given_again_and_dropped_is_gone_whatever_its_length() {
        // Dropped keys are searched for only when a kept key had the same length (modulo 64):
        // keys of 64 bytes and more, a map's key, and another key of the same length.
        let long = format!("spec{}", "x".repeat(66));
        let cases = [
            format!(r#"{{"{long}":{{"image":"a:1"}},"{long}":7,"kind":"Pod"}}"#),
            r#"{"spec":{"image":"a:1"},"spec":7,"kind":"Pod"}"#.to_string(),
            r#"{"spec":{"image":"a:1"},"spex":7,"kind":"Pod"}"#.to_string(),
            r#"{"kind":"Pod","spec":{"containers":[{"image":"a:1","image":null}]}}"#.to_string(),
        ];
        for doc in &cases {
            let whole: Value = serde_json::from_str(doc).unwrap();
            let p = read(doc.as_bytes()).unwrap();
            let whole = serde_json::to_vec(&whole).unwrap();
            let w = read(&whole).unwrap();
            assert_eq!(p, w, "{doc}");
        }
        let kept = |doc: &str| read(doc.as_bytes()).unwrap().value.to_value();
        assert_eq!(kept(&cases[0]), json!({"kind": "Pod"}));
        assert_eq!(kept(&cases[1]), json!({"kind": "Pod"}));
        assert_eq!(
            kept(&cases[2]),
            json!({"kind": "Pod", "spec": {"image": "a:1"}})
        );
        assert_eq!(kept(&cases[3]), json!({"kind": "Pod"}));
    }

    /// Every kept string and key of `k`, and whether it is borrowed from the document.
    fn strings<'k>(k: &'k Kept<'_>, out: &mut Vec<(&'k str, bool)>) {
        let cow = |c: &'k Cow<'_, str>| (c.as_ref(), matches!(c, Cow::Borrowed(_)));
        match k {
            Kept::Str(s) => out.push(cow(s)),
            Kept::List(l) => l.iter().for_each(|e| strings(e, out)),
            Kept::Map(m) => {
                for (key, v) in m {
                    out.push(cow(key));
                    strings(v, out);
                }
            }
            Kept::Dropped | Kept::Bool(_) => {}
        }
    }

    #[test]
    fn strings_are_borrowed_from_the_document_unless_escaped() {
        let raw =
            br#"{"kind":"Pod","spec":{"containers":[{"name":"w\u0065b","image":"nginx:1"}]}}"#;
        let p = read(raw).unwrap();
        let mut got = Vec::new();
        strings(&p.value, &mut got);
        assert_eq!(
            got,
            [
                ("kind", true),
                ("Pod", true),
                ("spec", true),
                ("containers", true),
                ("image", true),
                ("nginx:1", true),
                ("name", true),
                ("web", false),
            ]
        );
    }

    #[test]
    fn a_large_map_settles_repeated_keys_as_serde_json_does() {
        // More than eight kept keys: a dropped repeat is marked, not searched for, and the map
        // is settled once read (sorted, each key's last entry, marks gone).
        let mut doc = String::from("{\"spec\":{");
        for i in 0..12 {
            doc.push_str(&format!("\"p{i:02}\":{{\"image\":\"a{i}:1\"}},"));
        }
        doc.push_str(r#""p03":7,"p05":{"image":"b:2"},"p07":{"image":"c:3"},"p07":null,"p11":1,"p11":{"image":"d:4"},"p00":{"x":1}}}"#);
        let whole: Value = serde_json::from_str(&doc).unwrap();
        let (pruned, over) = prune(&whole);
        let p = read(doc.as_bytes()).unwrap();
        assert!(!p.over_budget && !over);
        assert_eq!(p.value.to_value(), pruned, "{doc}");
        let Kept::Map(root) = &p.value else {
            panic!("not a map")
        };
        let Kept::Map(spec) = &root[0].1 else {
            panic!("not a map")
        };
        let keys: Vec<&str> = spec.iter().map(|(k, _)| k.as_ref()).collect();
        assert_eq!(
            keys,
            ["p01", "p02", "p04", "p05", "p06", "p08", "p09", "p10", "p11"]
        );
        assert_eq!(
            p.value.pointer("/spec/p05/image").and_then(Tree::as_str),
            Some("b:2")
        );
        assert_eq!(
            p.value.pointer("/spec/p11/image").and_then(Tree::as_str),
            Some("d:4")
        );
    }

    #[test]
    fn marks_for_repeated_keys_are_bounded_by_the_budget() {
        // A large map followed by one of its keys given again and dropped, past the budget:
        // every mark is a node, so the object is over budget rather than growing a list of
        // marks as long as the body allows.
        let mut doc = String::from("{\"spec\":{");
        for i in 0..9 {
            doc.push_str(&format!("\"p{i}\":{{\"image\":\"a:1\"}},"));
        }
        for _ in 0..MAX_KEPT_NODES {
            doc.push_str("\"p0\":1,");
        }
        doc.push_str("\"kind\":\"Pod\"}}");
        let p = read(doc.as_bytes()).unwrap();
        assert!(p.over_budget);
        assert_eq!(p.value.to_value(), json!({}));
        // Without the 65,536 repeats, the same map is read whole.
        let fewer = doc.replacen("\"p0\":1,", "", MAX_KEPT_NODES - 10);
        let p = read(fewer.as_bytes()).unwrap();
        assert!(!p.over_budget);
        assert!(p.value.pointer("/spec/p0").is_none());
        assert!(p.value.pointer("/spec/p8/image").is_some());
    }

    #[test]
    fn keeps_image_sites_record_owner_and_credentials_drops_the_rest() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "x", "resourceVersion": "7",
                "labels": {"app": "web", "name": "web"},
                "annotations": {"big": "x".repeat(1000), "tagpin.io/pinned": "{\"web\":\"nginx:1\"}"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "uid": "u", "controller": true, "blockOwnerDeletion": true}],
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {
                "serviceAccountName": "builder",
                "imagePullSecrets": [{"name": "regcred"}],
                "containers": [
                    {"name": "web", "image": "nginx:1", "ports": [{"containerPort": 80}],
                     "env": [{"name": "A", "value": "secret-ish"}], "resources": {"limits": {"cpu": "1"}}},
                    {"name": "noimage"}
                ],
                "volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "m", "image": {"reference": "models:1", "pullPolicy": "Always"}}],
                "nodeSelector": {"disk": "ssd"},
                "terminationGracePeriodSeconds": 30
            },
            "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}
        });
        let (p, over_budget) = prune(&pod);
        assert!(!over_budget);
        assert_eq!(
            p,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": "p",
                    "annotations": {"tagpin.io/pinned": "{\"web\":\"nginx:1\"}"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r", "controller": true}]
                },
                "spec": {
                    "serviceAccountName": "builder",
                    "imagePullSecrets": [{"name": "regcred"}],
                    "containers": [
                        {"name": "web", "image": "nginx:1"},
                        null
                    ],
                    "volumes": [null, {"name": "m", "image": {"reference": "models:1"}}]
                }
            })
        );
    }

    #[test]
    fn list_positions_survive_and_empty_metadata_stays() {
        let v = json!({
            "metadata": {"annotations": {"other": "x"}, "uid": "1"},
            "spec": {"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                {"ports": [1]}, 7, {"image": "a:1"}
            ]}}}
        });
        let p = prune(&v).0;
        assert_eq!(p["metadata"], json!({"annotations": {}}));
        assert_eq!(p["spec"]["template"]["metadata"], json!({}));
        assert_eq!(
            p["spec"]["template"]["spec"]["containers"],
            json!([null, null, {"image": "a:1"}])
        );
        // Dropped elements between and after kept ones keep their places too.
        let list =
            json!({"spec": {"containers": [1, {"image": "a:1"}, 2, {}, {"image": "b:2"}, 3, 4]}});
        assert_eq!(
            prune(&list).0,
            json!({"spec": {"containers": [null, {"image": "a:1"}, null, null, {"image": "b:2"}, null, null]}})
        );
        // A custom resource: the pod spec deep inside keeps its shape.
        let cr = json!({"spec": {"workers": {"pod": {"spec": {"containers": [{"name": "w", "image": "w:1", "args": ["x"]}]}}}, "replicas": 3}});
        assert_eq!(
            prune(&cr).0,
            json!({"spec": {"workers": {"pod": {"spec": {"containers": [{"name": "w", "image": "w:1"}]}}}}})
        );
    }

    #[test]
    fn dropped_values_cost_nothing_and_kept_ones_are_bounded() {
        // A million numbers in a list are skipped, not stored as placeholders.
        let mut s = String::from("{\"spec\":{\"x\":[");
        for _ in 0..1_000_000 {
            s.push_str("0,");
        }
        s.push_str("0]}}");
        let p = read(s.as_bytes()).unwrap();
        assert_eq!(p.value.to_value(), json!({}));
        assert!(!p.over_budget);
        // …but a list that must keep its positions is counted slot by slot.
        let mut s = String::from("{\"spec\":{\"containers\":[");
        for _ in 0..MAX_KEPT_NODES {
            s.push_str("0,");
        }
        s.push_str("{\"image\":\"a\"}]}}");
        let p = read(s.as_bytes()).unwrap();
        assert!(p.over_budget);
        assert_eq!(p.value.to_value(), json!({}));
        // Many kept strings: the same.
        let items: Vec<Value> = (0..MAX_KEPT_NODES)
            .map(|i| json!({"image": format!("i{i}")}))
            .collect();
        assert!(prune(&json!({"spec": {"containers": items}})).1);
    }

    #[test]
    fn not_a_map_gives_an_empty_map() {
        for v in [json!("x"), json!(1), json!([{"image": "a"}]), json!(null)] {
            assert_eq!(prune(&v).0, json!({}));
        }
        assert!(read(b"{\"a\":").is_err());
    }
}
