//! Reading an admitted object without holding all of it: a `serde_json::Value` that keeps only
//! what tagpin reads. Pure.
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
//!   element keeps its length (dropped elements become `null`), so JSON pointers into it stay
//!   right.
//!
//! Numbers, `null`, other strings and booleans, `labels`, and empty maps and lists are skipped
//! with [`IgnoredAny`] and never allocated. The nested shape is kept wherever a pod spec could be,
//! so discovery by shape (a map whose `containers` is a list of maps with an `image` string) works
//! on the pruned value as on the whole one. A key given twice counts once, with its last value,
//! as when the whole object is read (`tests/json_props.rs` holds the two together).
//!
//! What is kept is bounded: past [`MAX_KEPT_NODES`] values, the rest of the object is skipped
//! and [`Pruned::over_budget`] is set (the caller then refuses to inspect the object).

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::podspec::{map_get, PINNED_ANNOTATION};

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

/// An object read through the pruning deserializer.
#[derive(Debug, Clone, PartialEq)]
pub struct Pruned {
    /// The kept parts (an empty map when the object is not a map or nothing was kept).
    pub value: Value,
    /// True when the object held more than [`MAX_KEPT_NODES`] values worth keeping: the rest was
    /// skipped, and `value` must not be used to decide anything.
    pub over_budget: bool,
}

impl Pruned {
    /// Prunes a JSON document (tests, fuzzing).
    pub fn from_slice(json: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(json)
    }
}

struct Budget {
    left: Cell<usize>,
    over: Cell<bool>,
}

impl Budget {
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

impl<'de> Deserialize<'de> for Pruned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let budget = Budget {
            left: Cell::new(MAX_KEPT_NODES),
            over: Cell::new(false),
        };
        let kept = Node {
            budget: &budget,
            ctx: Ctx::Root,
        }
        .deserialize(d)?;
        let over_budget = budget.over.get();
        let value = match kept {
            Some(v @ Value::Object(_)) if !over_budget => v,
            _ => Value::Object(Map::new()),
        };
        Ok(Pruned { value, over_budget })
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
    type Value = Option<Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Node<'_, '_> {
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
}

impl<'de> Visitor<'de> for Node<'_, '_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        let keep = matches!(self.ctx, Ctx::Field("controller")) && self.budget.take(1);
        Ok(keep.then_some(Value::Bool(b)))
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
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        let keep = self.keeps_string() && self.budget.take(1);
        Ok(keep.then(|| Value::String(s.to_string())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        let keep = self.keeps_string() && self.budget.take(1);
        Ok(keep.then_some(Value::String(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        // Sparse while reading: a long list of dropped elements costs nothing.
        let mut kept: Vec<(usize, Value)> = Vec::new();
        let mut len = 0usize;
        loop {
            if self.budget.over.get() {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                return Ok(None);
            }
            let parent = match self.ctx {
                Ctx::Field(k) => k,
                _ => "",
            };
            let node = Node {
                budget: self.budget,
                ctx: Ctx::Element(parent),
            };
            match seq.next_element_seed(node)? {
                None => break,
                Some(Some(v)) => kept.push((len, v)),
                Some(None) => {}
            }
            len += 1;
        }
        if kept.is_empty() || !self.budget.take(len - kept.len() + 1) {
            return Ok(None);
        }
        let mut out = vec![Value::Null; len];
        for (i, v) in kept {
            out[i] = v;
        }
        Ok(Some(Value::Array(out)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        // The kept keys' lengths as bits (`len % 64`): a dropped key can have been kept before
        // only if its length's bit is set, so most dropped keys are not searched for.
        let mut kept_lengths = 0u64;
        while let Some(MapKey(key)) = map.next_key::<MapKey<'de>>()? {
            if self.budget.over.get() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let ctx = match self.ctx {
                Ctx::Annotations if key == PINNED_ANNOTATION => Ctx::Record,
                Ctx::Annotations => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                _ if key == "labels" => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                _ if key == "annotations" => Ctx::Annotations,
                _ => Ctx::Field(&key),
            };
            let node = Node {
                budget: self.budget,
                ctx,
            };
            let length_bit = 1u64 << (key.len() % 64);
            match map.next_value_seed(node)? {
                Some(v) => {
                    kept_lengths |= length_bit;
                    out.insert(key.into_owned(), v);
                }
                // A repeated key: the last one counts, as when the whole object is read. Most
                // keys are dropped and most maps keep a few: looked for only when a kept key
                // had its length, and then as `podspec` looks up a field (searching the map for
                // every dropped key cost 2.8k instructions per cached admission,
                // `benches/hotpath.rs`; with `podspec`'s lookup, half).
                None if kept_lengths & length_bit != 0 && map_get(&out, &key).is_some() => {
                    out.remove(key.as_ref());
                }
                None => {}
            }
        }
        if self.budget.over.get() || (out.is_empty() && !self.keeps_empty_map()) {
            return Ok(None);
        }
        let names_only = !out.is_empty() && out.keys().all(|k| NAME_KEYS.contains(&k.as_str()));
        if names_only && !self.keeps_names_only() {
            return Ok(None);
        }
        Ok(self.budget.take(1).then_some(Value::Object(out)))
    }
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
    use serde_json::json;

    fn prune(v: &Value) -> Pruned {
        Pruned::from_slice(&serde_json::to_vec(v).unwrap()).unwrap()
    }

    #[test]
    fn keys_with_escapes_are_read_as_the_keys_they_spell() {
        // `\u0069mage` is `image`, `cont\u0061iners` is `containers`: borrowed keys and keys
        // decoded from escapes are the same keys.
        let raw =
            br#"{"spec": {"cont\u0061iners": [{"n\u0061me": "web", "\u0069mage": "nginx:1"}]}}"#;
        let p = Pruned::from_slice(raw).unwrap();
        assert_eq!(
            p.value,
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
            let p = Pruned::from_slice(doc.as_bytes()).unwrap();
            let w = Pruned::from_slice(&serde_json::to_vec(&whole).unwrap()).unwrap();
            assert_eq!(p, w, "{doc}");
        }
        let kept = |doc: &str| Pruned::from_slice(doc.as_bytes()).unwrap().value;
        assert_eq!(kept(&cases[0]), json!({"kind": "Pod"}));
        assert_eq!(kept(&cases[1]), json!({"kind": "Pod"}));
        assert_eq!(
            kept(&cases[2]),
            json!({"kind": "Pod", "spec": {"image": "a:1"}})
        );
        assert_eq!(kept(&cases[3]), json!({"kind": "Pod"}));
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
        let p = prune(&pod);
        assert!(!p.over_budget);
        assert_eq!(
            p.value,
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
        let p = prune(&v).value;
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
            prune(&list).value,
            json!({"spec": {"containers": [null, {"image": "a:1"}, null, null, {"image": "b:2"}, null, null]}})
        );
        // A custom resource: the pod spec deep inside keeps its shape.
        let cr = json!({"spec": {"workers": {"pod": {"spec": {"containers": [{"name": "w", "image": "w:1", "args": ["x"]}]}}}, "replicas": 3}});
        assert_eq!(
            prune(&cr).value,
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
        let p = Pruned::from_slice(s.as_bytes()).unwrap();
        assert_eq!(p.value, json!({}));
        assert!(!p.over_budget);
        // …but a list that must keep its positions is counted slot by slot.
        let mut s = String::from("{\"spec\":{\"containers\":[");
        for _ in 0..MAX_KEPT_NODES {
            s.push_str("0,");
        }
        s.push_str("{\"image\":\"a\"}]}}");
        let p = Pruned::from_slice(s.as_bytes()).unwrap();
        assert!(p.over_budget);
        assert_eq!(p.value, json!({}));
        // Many kept strings: the same.
        let items: Vec<Value> = (0..MAX_KEPT_NODES)
            .map(|i| json!({"image": format!("i{i}")}))
            .collect();
        let p = prune(&json!({"spec": {"containers": items}}));
        assert!(p.over_budget);
    }

    #[test]
    fn not_a_map_gives_an_empty_map() {
        for v in [json!("x"), json!(1), json!([{"image": "a"}]), json!(null)] {
            assert_eq!(prune(&v).value, json!({}));
        }
        assert!(Pruned::from_slice(b"{\"a\":").is_err());
    }
}
