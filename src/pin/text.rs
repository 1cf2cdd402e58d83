//! Line-level edits of Kubernetes YAML that keep everything else byte for byte: comments, key
//! order, quoting, blank lines. Pure. Each edit is only a proposal: the caller re-parses the
//! result and compares it with the intended object, and falls back to re-serializing the document
//! when they differ (flow style, block scalars, anchors and the like).

use std::collections::HashMap;

use crate::podspec::PINNED_ANNOTATION;

/// Splits a YAML stream into chunks, each starting at a `---` line (except perhaps the first).
/// Concatenating the chunks gives back the input exactly.
pub fn split_chunks(text: &str) -> Vec<&str> {
    let mut starts = vec![0];
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if pos > 0 && is_separator(line) {
            starts.push(pos);
        }
        pos += line.len();
    }
    starts.push(text.len());
    starts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

/// Rewrites the value of every `image:` and `reference:` line whose value is a key of `replace`,
/// keeping the line's indentation, list dash, quoting and trailing comment.
pub fn replace_images(body: &str, replace: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(body.len() + 64 * replace.len());
    for line in body.split_inclusive('\n') {
        let (content, eol) = split_eol(line);
        match edit_image_line(content, replace) {
            Some(new) => {
                out.push_str(&new);
                out.push_str(eol);
            }
            None => out.push_str(line),
        }
    }
    out
}

fn split_eol(line: &str) -> (&str, &str) {
    let content = line.trim_end_matches(['\n', '\r']);
    (content, &line[content.len()..])
}

fn edit_image_line(line: &str, replace: &HashMap<String, String>) -> Option<String> {
    // Skip indentation and list dashes: `    - image: x`.
    let mut at = 0;
    loop {
        let rest = &line[at..];
        let trimmed = rest.trim_start_matches(' ');
        at += rest.len() - trimmed.len();
        match trimmed.strip_prefix("- ") {
            Some(_) => at += 2,
            None => break,
        }
    }
    let rest = &line[at..];
    let key = ["image:", "reference:"]
        .into_iter()
        .find(|k| rest.starts_with(k))?;
    let after = &rest[key.len()..];
    let value = after.trim_start_matches([' ', '\t']);
    if value.len() == after.len() {
        return None; // `image:x` is not a key
    }
    let value_at = line.len() - value.len();
    let (raw, quote, tail) = split_scalar(value)?;
    let new = replace.get(raw)?;
    Some(format!("{}{quote}{new}{quote}{tail}", &line[..value_at]))
}

/// A one-line scalar: its text, its quote character (or ""), and what follows it (a comment).
fn split_scalar(value: &str) -> Option<(&str, &'static str, &str)> {
    for (q, qs) in [('"', "\""), ('\'', "'")] {
        if let Some(inner) = value.strip_prefix(q) {
            let end = inner.find(q)?;
            let raw = &inner[..end];
            if raw.contains(['\\', '\'']) {
                return None; // escapes: leave it to the structured path
            }
            let tail = &inner[end + 1..];
            return is_blank_or_comment(tail).then_some((raw, qs, tail));
        }
    }
    if value.starts_with(['|', '>', '&', '*', '!', '{', '[']) {
        return None;
    }
    let end = value.find(" #").unwrap_or(value.len());
    let raw = value[..end].trim_end();
    Some((raw, "", &value[raw.len()..]))
}

fn is_blank_or_comment(s: &str) -> bool {
    let t = s.trim_start();
    t.is_empty() || t.starts_with('#')
}

struct Line {
    text: String,
    indent: usize,
    content: bool,
}

impl Line {
    fn new(text: &str) -> Self {
        let trimmed = text.trim_start_matches(' ');
        let content = !(trimmed.is_empty()
            || trimmed.starts_with('#')
            || text.starts_with("---")
            || text.starts_with("...")
            || text.starts_with('%'));
        Self {
            text: text.to_string(),
            indent: text.len() - trimmed.len(),
            content,
        }
    }

    /// `key:` or `key: rest` (rest without the leading space); quoted keys are unquoted.
    fn key(&self) -> Option<(&str, &str)> {
        let t = &self.text[self.indent..];
        let (key, after) = if let Some(inner) = t.strip_prefix('"').or_else(|| t.strip_prefix('\''))
        {
            let q = t.as_bytes()[0] as char;
            let end = inner.find(q)?;
            (&inner[..end], inner[end + 1..].strip_prefix(':')?)
        } else {
            let colon = t
                .find(": ")
                .or_else(|| t.ends_with(':').then(|| t.len() - 1))?;
            (&t[..colon], &t[colon + 1..])
        };
        if !(after.is_empty() || after.starts_with([' ', '\t'])) {
            return None;
        }
        Some((key, after.trim_start()))
    }
}

/// Sets `metadata.annotations["tagpin.io/pinned"]` (under `meta_at`, e.g. `["spec", "template",
/// "metadata"]`) to `value` in a block-style document, creating `metadata` and `annotations` when
/// absent. `None` when the document is not in a shape this can edit safely.
pub fn set_record(body: &str, meta_at: &[&str], value: &str) -> Option<String> {
    if body.contains('\r') || meta_at.is_empty() {
        return None;
    }
    let mut lines: Vec<Line> = body.lines().map(Line::new).collect();
    let mut path: Vec<&str> = meta_at.to_vec();
    path.push("annotations");
    let mut start = 0;
    let mut end = lines.len();
    let mut parent: Option<usize> = None;
    let first_content = |lines: &[Line], s: usize, e: usize| (s..e).find(|&i| lines[i].content);
    for (depth, key) in path.iter().enumerate() {
        let child_indent = first_content(&lines, start, end).map(|i| lines[i].indent);
        let found = child_indent.and_then(|ci| {
            (start..end).find(|&i| {
                lines[i].content
                    && lines[i].indent == ci
                    && lines[i].key().is_some_and(|(k, _)| k == *key)
            })
        });
        match (found, child_indent) {
            (Some(i), Some(ci)) => {
                let (_, rest) = lines[i].key()?;
                if !is_blank_or_comment(rest) {
                    return None; // `annotations: {}`, `metadata: {name: x}`: not block style
                }
                parent = Some(ci);
                start = i + 1;
                end = (start..end)
                    .find(|&j| lines[j].content && lines[j].indent <= ci)
                    .unwrap_or(end);
            }
            _ if depth == 0 => return None, // an object without `metadata` at the top
            _ => {
                let mut indent = child_indent.unwrap_or(parent? + 2);
                let mut insert = Vec::new();
                for k in &path[depth..] {
                    insert.push(Line::new(&format!("{}{k}:", " ".repeat(indent))));
                    indent += 2;
                }
                insert.push(Line::new(&format!(
                    "{}{PINNED_ANNOTATION}: {}",
                    " ".repeat(indent),
                    single_quoted(value)
                )));
                lines.splice(start..start, insert);
                return Some(join(&lines, body));
            }
        }
    }
    // Inside `annotations`: replace our key's line, or add one.
    let ci = first_content(&lines, start, end).map_or(parent? + 2, |i| lines[i].indent);
    let new = Line::new(&format!(
        "{}{PINNED_ANNOTATION}: {}",
        " ".repeat(ci),
        single_quoted(value)
    ));
    let existing = (start..end).find(|&i| {
        lines[i].content
            && lines[i].indent == ci
            && lines[i].key().is_some_and(|(k, _)| k == PINNED_ANNOTATION)
    });
    match existing {
        Some(i) => {
            // Only a value on one line is replaced; a folded one goes the structured way.
            let continues = first_content(&lines, i + 1, end).is_some_and(|j| lines[j].indent > ci);
            if continues {
                return None;
            }
            lines[i] = new;
        }
        None => lines.insert(start, new),
    }
    Some(join(&lines, body))
}

fn single_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn join(lines: &[Line], original: &str) -> String {
    let mut out = lines
        .iter()
        .map(|l| l.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if original.ends_with('\n') {
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_back_to_the_input() {
        let text = "# head\napiVersion: v1\n---\nkind: A\n--- # two\nkind: B\n---x: no\n---\n";
        let chunks = split_chunks(text);
        assert_eq!(chunks.concat(), text);
        assert_eq!(
            chunks,
            vec![
                "# head\napiVersion: v1\n",
                "---\nkind: A\n",
                "--- # two\nkind: B\n---x: no\n",
                "---\n"
            ]
        );
        assert_eq!(split_chunks(""), vec![""]);
    }

    #[test]
    fn image_lines_keep_quotes_dashes_and_comments() {
        let replace = HashMap::from([("nginx:1.27".to_string(), "nginx@sha256:ab".to_string())]);
        let body = "containers:\n- name: a\n  image: nginx:1.27 # web\n  - image: \"nginx:1.27\"\n    image: 'nginx:1.27'   # q\nimage: nginx:1.28\nenv: {image: nginx:1.27}\nreference: nginx:1.27\r\n";
        assert_eq!(
            replace_images(body, &replace),
            "containers:\n- name: a\n  image: nginx@sha256:ab # web\n  - image: \"nginx@sha256:ab\"\n    image: 'nginx@sha256:ab'   # q\nimage: nginx:1.28\nenv: {image: nginx:1.27}\nreference: nginx@sha256:ab\r\n"
        );
    }

    #[test]
    fn record_is_added_where_annotations_exist_or_not() {
        let v = r#"{"web":"nginx:1.27"}"#;
        // annotations exist
        let body = "kind: Deployment\nmetadata:\n  name: web\n  annotations:\n    team: a # owner\nspec:\n  template:\n    metadata:\n      labels:\n        app: web\n    spec: {}\n";
        let out = set_record(body, &["metadata"], v).unwrap();
        assert_eq!(
            out,
            "kind: Deployment\nmetadata:\n  name: web\n  annotations:\n    tagpin.io/pinned: '{\"web\":\"nginx:1.27\"}'\n    team: a # owner\nspec:\n  template:\n    metadata:\n      labels:\n        app: web\n    spec: {}\n"
        );
        // template metadata without annotations
        let out2 = set_record(&out, &["spec", "template", "metadata"], v).unwrap();
        assert!(
            out2.contains("    metadata:\n      annotations:\n        tagpin.io/pinned: '{\"web\":\"nginx:1.27\"}'\n      labels:\n"),
            "{out2}"
        );
        // template without metadata at all
        let body = "metadata:\n  name: j\nspec:\n  template:\n    # the pod\n    spec:\n      containers: []\n";
        let out = set_record(body, &["spec", "template", "metadata"], v).unwrap();
        assert_eq!(
            out,
            "metadata:\n  name: j\nspec:\n  template:\n    metadata:\n      annotations:\n        tagpin.io/pinned: '{\"web\":\"nginx:1.27\"}'\n    # the pod\n    spec:\n      containers: []\n"
        );
        // an existing record is replaced in place
        let body =
            "metadata:\n  annotations:\n    \"tagpin.io/pinned\": '{\"web\":\"nginx:1.26\"}'\n";
        assert_eq!(
            set_record(body, &["metadata"], v).unwrap(),
            "metadata:\n  annotations:\n    tagpin.io/pinned: '{\"web\":\"nginx:1.27\"}'\n"
        );
    }

    #[test]
    fn shapes_it_cannot_edit_are_refused() {
        let v = "{}";
        assert!(set_record("metadata: {name: x}\n", &["metadata"], v).is_none());
        assert!(set_record("metadata:\n  annotations: {}\n", &["metadata"], v).is_none());
        assert!(set_record("kind: A\n", &["metadata"], v).is_none());
        assert!(set_record("metadata:\r\n  name: x\r\n", &["metadata"], v).is_none());
        let folded = "metadata:\n  annotations:\n    tagpin.io/pinned: >-\n      {}\n";
        assert!(set_record(folded, &["metadata"], v).is_none());
    }
}
