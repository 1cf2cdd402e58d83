//! Edits by source span: a changed value is written over its own bytes, a new map entry is
//! inserted before the map's first key in the map's own style (block or flow, YAML or JSON
//! quoting, the file's line endings). Everything else stays byte for byte. Pure. The caller
//! reads the result back and compares it with the intended value ([`super::render`]).

use std::ops::Range;

use granit_parser::ScalarStyle;
use serde_json::Value;

use super::yaml::{resolve_plain, Document, NodeId, NodeKind};

/// Replace the bytes `at` with `text` (an insertion when `at` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub at: Range<usize>,
    pub text: String,
}

/// Why an edit cannot be expressed in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EditError(pub String);

fn fail<T>(why: &str) -> Result<T, EditError> {
    Err(EditError(why.to_string()))
}

/// Sets the string at `path` (decoded JSON pointer tokens), keeping the scalar's style.
pub fn set_string(
    text: &str,
    doc: &Document,
    path: &[String],
    new: &str,
) -> Result<Edit, EditError> {
    let Some(id) = doc.written_at(path) else {
        return fail("the field is not in the text (a merge key?)");
    };
    // `image: *name`: the alias is replaced, the anchored value stays for its other users.
    if let NodeKind::Alias(_) = doc.nodes[id].kind {
        let text = match plain_safe(new) {
            true => new.to_string(),
            false => single_quoted(new),
        };
        return Ok(Edit {
            at: doc.nodes[id].span.clone(),
            text,
        });
    }
    replace_scalar(text, doc, id, new)
}

/// Adds `value` under `key` in the map at `parent`, or replaces the value already there.
pub fn add(
    text: &str,
    doc: &Document,
    parent: &[String],
    key: &str,
    value: &Value,
) -> Result<Edit, EditError> {
    let Some(map) = doc.at(parent) else {
        return fail("the parent map is not in the text");
    };
    match doc.get(map, key) {
        Some((_, v)) => {
            let v = doc.resolve(v);
            match (&doc.nodes[v].kind, value) {
                (NodeKind::Scalar { .. }, Value::String(s)) => replace_scalar(text, doc, v, s),
                (NodeKind::Scalar { .. }, _) => replace_null(text, doc, map, key, v, value),
                _ => fail("the field to replace is a list or a map"),
            }
        }
        None => insert_entry(text, doc, map, key, value),
    }
}

/// Applies edits (sorted, not overlapping) to `text`.
pub fn apply(text: &str, mut edits: Vec<Edit>) -> Result<String, EditError> {
    edits.sort_by_key(|e| (e.at.start, e.at.end));
    edits.dedup();
    let mut out = String::with_capacity(text.len() + 128 * edits.len());
    let mut pos = 0;
    for e in edits {
        if e.at.start < pos {
            return fail("two changes overlap (one value written through an alias?)");
        }
        out.push_str(&text[pos..e.at.start]);
        out.push_str(&e.text);
        pos = e.at.end;
    }
    out.push_str(&text[pos..]);
    Ok(out)
}

fn replace_scalar(text: &str, doc: &Document, id: NodeId, new: &str) -> Result<Edit, EditError> {
    let node = &doc.nodes[id];
    let NodeKind::Scalar { style, .. } = &node.kind else {
        return fail("the field is a list or a map");
    };
    let span = node.span.clone();
    let (at, new_text) = match style {
        ScalarStyle::Plain if span.is_empty() => return fail("the field has no value"),
        ScalarStyle::Plain if plain_safe(new) => (span, new.to_string()),
        ScalarStyle::Plain | ScalarStyle::SingleQuoted => (span, single_quoted(new)),
        ScalarStyle::DoubleQuoted => (span, double_quoted(new)),
        ScalarStyle::Literal | ScalarStyle::Folded => {
            // The header (`|-`, `>`) and the content lines become one double-quoted scalar.
            let Some(header) = block_header(text, span.start) else {
                return fail("cannot find the block scalar's header");
            };
            let end = span
                .start
                .max(span.start + text[span.clone()].trim_end().len());
            (header..end, double_quoted(new))
        }
    };
    Ok(Edit { at, text: new_text })
}

/// `key:` with no value (or `null`) becomes `key: {…}`.
fn replace_null(
    text: &str,
    doc: &Document,
    map: NodeId,
    key: &str,
    v: NodeId,
    value: &Value,
) -> Result<Edit, EditError> {
    let json = json_style(doc, map);
    let span = doc.nodes[v].span.clone();
    if !span.is_empty() {
        return Ok(Edit {
            at: span,
            text: flow(value, json),
        });
    }
    let (k, _) = doc
        .get(map, key)
        .ok_or_else(|| EditError("no key".into()))?;
    let after_key = doc.nodes[k].span.end;
    let colon = text[after_key..]
        .find(':')
        .map(|i| after_key + i + 1)
        .ok_or_else(|| EditError("cannot find the key's colon".into()))?;
    Ok(Edit {
        at: colon..colon,
        text: format!(" {}", flow(value, json)),
    })
}

/// Inserts `key: value` before the first key of `map` (block or flow), or into `{}`.
fn insert_entry(
    text: &str,
    doc: &Document,
    map: NodeId,
    key: &str,
    value: &Value,
) -> Result<Edit, EditError> {
    let node = &doc.nodes[map];
    let NodeKind::Map {
        flow: is_flow,
        entries,
    } = &node.kind
    else {
        return fail("the parent is not a map");
    };
    let json = json_style(doc, map);
    let Some((first, _)) = entries.first() else {
        // `{}`: the only entry.
        if !is_flow || !text[node.span.clone()].starts_with('{') {
            return fail("the parent map is empty and not written `{}`");
        }
        let at = node.span.start + 1;
        let entry = format!("{}: {}", key_text(key, json), flow(value, json));
        return Ok(Edit {
            at: at..at,
            text: entry,
        });
    };
    let first = &doc.nodes[*first];
    let at = first.span.start;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..at];
    let eol = eol_at(text, at);
    let entry = if *is_flow {
        let entry = format!("{}: {},", key_text(key, json), flow(value, json));
        if before.trim().is_empty() {
            format!("{entry}{eol}{before}")
        } else {
            format!("{entry} ")
        }
    } else {
        let indent = first.column - 1;
        let mut entry = format!("{}:", key_text(key, false));
        block(&mut entry, value, indent, eol);
        format!("{entry}{eol}{}", " ".repeat(indent))
    };
    Ok(Edit {
        at: at..at,
        text: entry,
    })
}

/// A flow map whose first key is double-quoted is JSON: new entries are JSON too.
fn json_style(doc: &Document, map: NodeId) -> bool {
    match &doc.nodes[doc.resolve(map)].kind {
        NodeKind::Map {
            flow: true,
            entries,
        } => entries.first().is_some_and(|(k, _)| {
            matches!(
                doc.nodes[*k].kind,
                NodeKind::Scalar {
                    style: ScalarStyle::DoubleQuoted,
                    ..
                }
            )
        }),
        _ => false,
    }
}

/// Writes ` 'string'` or, for a map, its entries on the following lines, `indent + 2` deep.
fn block(out: &mut String, value: &Value, indent: usize, eol: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                out.push_str(eol);
                out.push_str(&" ".repeat(indent + 2));
                out.push_str(&key_text(k, false));
                out.push(':');
                block(out, v, indent + 2, eol);
            }
        }
        Value::String(s) => {
            out.push(' ');
            out.push_str(&single_quoted(s));
        }
        other => {
            out.push(' ');
            out.push_str(&other.to_string());
        }
    }
}

fn flow(value: &Value, json: bool) -> String {
    match value {
        _ if json => value.to_string(),
        Value::Object(map) => {
            let entries: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", key_text(k, false), flow(v, false)))
                .collect();
            format!("{{{}}}", entries.join(", "))
        }
        Value::String(s) => single_quoted(s),
        other => other.to_string(),
    }
}

fn key_text(key: &str, json: bool) -> String {
    if json {
        double_quoted(key)
    } else if plain_safe(key) {
        key.to_string()
    } else {
        single_quoted(key)
    }
}

/// Text that reads back as this very string when written plain, in block and flow context.
fn plain_safe(s: &str) -> bool {
    s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:@+-".contains(&b))
        && !s.ends_with(':')
        && resolve_plain(s) == Value::String(s.to_string())
}

fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn double_quoted(s: &str) -> String {
    // JSON string escapes are YAML double-quoted escapes.
    Value::String(s.to_string()).to_string()
}

/// The line ending of the line at `at` (`\r\n` in a CRLF file).
fn eol_at(text: &str, at: usize) -> &'static str {
    let crlf = match text[at..].find('\n') {
        Some(i) => text[..at + i].ends_with('\r'),
        None => text[..at]
            .rfind('\n')
            .is_some_and(|i| text[..i].ends_with('\r')),
    };
    if crlf {
        "\r\n"
    } else {
        "\n"
    }
}

/// The byte offset of a block scalar's indicator (`|` or `>`), on the last non-blank line before
/// its content.
pub(super) fn block_header(text: &str, content: usize) -> Option<usize> {
    let before = text[..content].trim_end();
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = &before[line_start..];
    line.char_indices()
        .filter(|(_, c)| matches!(c, '|' | '>'))
        .find(|(i, _)| {
            let rest = &line[i + 1..];
            let ind = rest
                .find(|c: char| !matches!(c, '1'..='9' | '+' | '-'))
                .unwrap_or(rest.len());
            let after = rest[ind..].trim_start();
            ind <= 2
                && (after.is_empty()
                    || (after.starts_with('#') && rest[ind..].starts_with([' ', '\t'])))
        })
        .map(|(i, _)| line_start + i)
}

#[cfg(test)]
mod tests {
    use super::super::yaml::read;
    use super::*;
    use serde_json::json;

    fn doc(text: &str) -> Document {
        read(text).docs.remove(0).unwrap()
    }

    fn p(s: &str) -> Vec<String> {
        s.split('/')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    }

    fn edit1(text: &str, e: Result<Edit, EditError>) -> String {
        apply(text, vec![e.unwrap()]).unwrap()
    }

    #[test]
    fn scalars_keep_their_style() {
        for (text, want) in [
            ("image: nginx:1.27 # c\n", "image: nginx@sha256:ab # c\n"),
            ("image: 'nginx:1.27'\n", "image: 'nginx@sha256:ab'\n"),
            (
                "image: \"nginx:1.27\"\r\n",
                "image: \"nginx@sha256:ab\"\r\n",
            ),
            (
                "image: >-\n  nginx:1.27\nx: 1\n",
                "image: \"nginx@sha256:ab\"\nx: 1\n",
            ),
            ("{image: nginx:1.27}", "{image: nginx@sha256:ab}"),
        ] {
            let d = doc(text);
            assert_eq!(
                edit1(text, set_string(text, &d, &p("image"), "nginx@sha256:ab")),
                want
            );
        }
    }

    #[test]
    fn entries_go_before_the_first_key_in_the_map_style() {
        let v = json!({"tagpin.io/pinned": "{\"a\":\"x:1\"}"});
        let cases = [
            (
                "metadata:\n  name: p\n",
                "metadata:\n  annotations:\n    tagpin.io/pinned: '{\"a\":\"x:1\"}'\n  name: p\n",
            ),
            (
                "metadata:\r\n  name: p\r\n",
                "metadata:\r\n  annotations:\r\n    tagpin.io/pinned: '{\"a\":\"x:1\"}'\r\n  name: p\r\n",
            ),
            (
                "metadata: {name: p}\n",
                "metadata: {annotations: {tagpin.io/pinned: '{\"a\":\"x:1\"}'}, name: p}\n",
            ),
            (
                "metadata: {}\n",
                "metadata: {annotations: {tagpin.io/pinned: '{\"a\":\"x:1\"}'}}\n",
            ),
            (
                "{\"metadata\": {\n  \"name\": \"p\"}}",
                "{\"metadata\": {\n  \"annotations\": {\"tagpin.io/pinned\":\"{\\\"a\\\":\\\"x:1\\\"}\"},\n  \"name\": \"p\"}}",
            ),
            (
                "items:\n- metadata:\n    name: p\n",
                "items:\n- metadata:\n    annotations:\n      tagpin.io/pinned: '{\"a\":\"x:1\"}'\n    name: p\n",
            ),
        ];
        for (text, want) in cases {
            let d = doc(text);
            let parent = if text.starts_with("items") {
                p("items/0/metadata")
            } else {
                p("metadata")
            };
            let out = edit1(text, add(text, &d, &parent, "annotations", &v));
            assert_eq!(out, want);
            let back = doc(&out).value;
            let mut expected = d.value.clone();
            let meta = parent.iter().fold(&mut expected, |v, t| match v {
                Value::Array(a) => &mut a[t.parse::<usize>().unwrap()],
                other => &mut other[t.as_str()],
            });
            meta["annotations"] = v.clone();
            assert_eq!(back, expected);
        }
    }

    #[test]
    fn null_metadata_gets_a_flow_map() {
        let text = "template:\n  metadata:\n  spec: {}\n";
        let d = doc(text);
        let v = json!({"annotations": {"k": "v"}});
        let out = edit1(text, add(text, &d, &p("template"), "metadata", &v));
        assert_eq!(
            out,
            "template:\n  metadata: {annotations: {k: 'v'}}\n  spec: {}\n"
        );
    }

    #[test]
    fn an_alias_is_replaced_and_its_anchor_kept() {
        let text = "x: &img nginx:1.27\nimage: *img\n";
        let d = doc(text);
        let out = edit1(text, set_string(text, &d, &p("image"), "nginx@sha256:ab"));
        assert_eq!(out, "x: &img nginx:1.27\nimage: nginx@sha256:ab\n");
    }

    #[test]
    fn overlapping_edits_are_refused() {
        let e = |a, b| Edit {
            at: a..b,
            text: String::new(),
        };
        assert!(apply("abcdef", vec![e(0, 3), e(2, 4)]).is_err());
        assert_eq!(apply("abcdef", vec![e(0, 3), e(0, 3)]).unwrap(), "def");
    }
}
