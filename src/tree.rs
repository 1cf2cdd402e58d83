//! One way to read a JSON object, whatever holds it: the whole `serde_json::Value` (`tagpin pin`,
//! the audit, tests) or [`Kept`], the pruned object an admission keeps ([`crate::prune`]), whose
//! strings are borrowed from the review body. `podspec` reads both through [`Tree`]. Pure.

use std::borrow::Cow;

use serde_json::{Map, Value};

/// A JSON object read as `podspec` reads it: maps, lists, strings and booleans. Anything else
/// (numbers, `null`) is neither.
pub trait Tree: Sized {
    /// The value of `key` in a map (`None` for anything else).
    fn field(&self, key: &str) -> Option<&Self>;
    /// The string, if this is one.
    fn as_str(&self) -> Option<&str>;
    /// The boolean, if this is one.
    fn as_bool(&self) -> Option<bool>;
    /// The elements, if this is a list.
    fn as_list(&self) -> Option<&[Self]>;
    /// True for a map.
    fn is_map(&self) -> bool;
    /// A map's entries in key order (nothing for anything else).
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)>;

    /// The value under one unescaped JSON pointer token: a list's element by its index (no
    /// sign, no leading zero, as `serde_json::Value::pointer` reads it), else a map's field.
    fn child(&self, token: &str) -> Option<&Self> {
        match self.as_list() {
            Some(list) => list.get(list_index(token)?),
            None => self.field(token),
        }
    }

    /// The value at a JSON pointer (`/spec/containers/0/image`), as `serde_json::Value::pointer`
    /// finds it: `~1` is `/`, `~0` is `~`, then [`Tree::child`] token by token.
    fn pointer(&self, pointer: &str) -> Option<&Self> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/').try_fold(self, |v, token| {
            let token: Cow<str> = if token.contains('~') {
                Cow::Owned(token.replace("~1", "/").replace("~0", "~"))
            } else {
                Cow::Borrowed(token)
            };
            v.child(&token)
        })
    }
}

/// A JSON pointer token as a list index, by `serde_json::Value::pointer`'s rule.
fn list_index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

impl Tree for Value {
    fn field(&self, key: &str) -> Option<&Self> {
        map_get(self.as_object()?, key)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_bool(&self) -> Option<bool> {
        Value::as_bool(self)
    }
    fn as_list(&self) -> Option<&[Self]> {
        self.as_array().map(Vec::as_slice)
    }
    fn is_map(&self) -> bool {
        self.is_object()
    }
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)> {
        self.as_object()
            .into_iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.as_str(), v)))
    }
    fn pointer(&self, pointer: &str) -> Option<&Self> {
        Value::pointer(self, pointer)
    }
}

/// The value of `key` in `map`. Small maps are searched by equality, which rejects most keys on
/// their length, rather than by the map's ordered search, which compares bytes with every key
/// it passes (`Value::get` cost about 1.7k instructions more per cached admission,
/// `benches/hotpath.rs`); past eight keys, by that search.
fn map_get<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    if map.len() > 8 {
        return map.get(key);
    }
    map.iter().find_map(|(k, v)| (k == key).then_some(v))
}

/// The parts of an object an admission keeps ([`crate::prune`]), strings borrowed from the
/// document wherever they hold no escape. One allocation per kept map or list, none per string.
#[derive(Debug, Clone, PartialEq)]
pub enum Kept<'a> {
    /// A list element that was not kept: later elements keep their index.
    Dropped,
    Bool(bool),
    Str(Cow<'a, str>),
    List(Vec<Kept<'a>>),
    /// A map's entries, sorted by key, each key once.
    Map(Vec<(Cow<'a, str>, Kept<'a>)>),
}

impl Kept<'_> {
    /// The same as a `serde_json::Value` (a dropped element is `null`): for comparing with
    /// what serde_json reads, and for showing.
    pub fn to_value(&self) -> Value {
        match self {
            Kept::Dropped => Value::Null,
            Kept::Bool(b) => Value::Bool(*b),
            Kept::Str(s) => Value::String(s.to_string()),
            Kept::List(l) => Value::Array(l.iter().map(Kept::to_value).collect()),
            Kept::Map(m) => Value::Object(
                m.iter()
                    .map(|(k, v)| (k.to_string(), v.to_value()))
                    .collect(),
            ),
        }
    }

    /// A whole `serde_json::Value` as a `Kept` that owns its strings (numbers and `null` become
    /// [`Kept::Dropped`]): requests built by hand, in tests.
    pub fn from_value(v: &Value) -> Kept<'static> {
        match v {
            Value::Null | Value::Number(_) => Kept::Dropped,
            Value::Bool(b) => Kept::Bool(*b),
            Value::String(s) => Kept::Str(Cow::Owned(s.clone())),
            Value::Array(a) => Kept::List(a.iter().map(Kept::from_value).collect()),
            // A `Map` iterates in key order, each key once.
            Value::Object(m) => Kept::Map(
                m.iter()
                    .map(|(k, v)| (Cow::Owned(k.clone()), Kept::from_value(v)))
                    .collect(),
            ),
        }
    }
}

impl Tree for Kept<'_> {
    fn field(&self, key: &str) -> Option<&Self> {
        let Kept::Map(m) = self else { return None };
        // As `map_get`: by equality in a small map, else by the order the keys are kept in.
        if m.len() <= 8 {
            return m.iter().find_map(|(k, v)| (k == key).then_some(v));
        }
        let i = m.binary_search_by(|(k, _)| k.as_ref().cmp(key)).ok()?;
        Some(&m[i].1)
    }
    fn as_str(&self) -> Option<&str> {
        match self {
            Kept::Str(s) => Some(s),
            _ => None,
        }
    }
    fn as_bool(&self) -> Option<bool> {
        match self {
            Kept::Bool(b) => Some(*b),
            _ => None,
        }
    }
    fn as_list(&self) -> Option<&[Self]> {
        match self {
            Kept::List(l) => Some(l),
            _ => None,
        }
    }
    fn is_map(&self) -> bool {
        matches!(self, Kept::Map(_))
    }
    fn entries(&self) -> impl Iterator<Item = (&str, &Self)> {
        let m: &[(Cow<str>, Kept)] = match self {
            Kept::Map(m) => m,
            _ => &[],
        };
        m.iter().map(|(k, v)| (k.as_ref(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        let many: Map<String, Value> = (0..12).map(|i| (format!("k{i:02}"), json!(i))).collect();
        json!({
            "a/b": {"c~d": "x"},
            "spec": {"containers": [{"image": "a:1"}, 7, {"image": "b:2", "on": true}]},
            "many": many,
            "": "empty key"
        })
    }

    #[test]
    fn a_kept_object_reads_as_the_value_it_came_from() {
        let v = doc();
        let k = Kept::from_value(&v);
        assert_eq!(k.to_value(), {
            let mut v = v.clone();
            v["spec"]["containers"][1] = Value::Null;
            v["many"]
                .as_object_mut()
                .unwrap()
                .values_mut()
                .for_each(|n| *n = Value::Null);
            v
        });
        // `Kept` walks a pointer by the trait's own steps; `Value` by serde_json's.
        for p in [
            "",
            "/a~1b/c~0d",
            "/spec/containers/0/image",
            "/spec/containers/2/on",
            "/spec/containers/00/image",
            "/spec/containers/+2/on",
            "/spec/containers/3",
            "/spec/containers/x",
            "/many/k11",
            "/many/k05",
            "/many/k12",
            "/",
            "nope",
            "/spec/containers/0/image/deeper",
        ] {
            let (a, b) = (Tree::pointer(&v, p), Tree::pointer(&k, p));
            assert_eq!(a.is_some(), b.is_some(), "{p}");
            assert_eq!(a.and_then(Tree::as_str), b.and_then(Tree::as_str), "{p}");
            assert_eq!(a.and_then(Tree::as_bool), b.and_then(Tree::as_bool), "{p}");
            assert_eq!(a.map(Tree::is_map), b.map(Tree::is_map), "{p}");
        }
        let keys = |t: Vec<&str>| t.join(",");
        assert_eq!(
            keys(k.entries().map(|(k, _)| k).collect()),
            keys(v.entries().map(|(k, _)| k).collect())
        );
        assert!(Tree::field(&k, "spec").is_some() && Tree::field(&k, "none").is_none());
        assert!(Kept::Str("x".into()).entries().next().is_none());
        assert!(Tree::field(&Kept::Str("x".into()), "x").is_none());
    }
}
