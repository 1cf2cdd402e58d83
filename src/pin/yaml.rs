//! Reading YAML the way Kubernetes reads it, keeping where every node is in the text.
//!
//! The parser's events (granit-parser, the parser under serde-saphyr) carry byte spans; this
//! module builds a small tree per document from them, and turns it into a `serde_json::Value`
//! under the rules of the YAML library Kubernetes uses (go-yaml v2, YAML 1.1): `0400` is the
//! integer 256, `yes`/`no`/`on`/`off` are booleans, `1e3` is a float and never equals an
//! integer. Plain scalars that other YAML 1.1 readers take for numbers or times (sexagesimal
//! `1:30`, timestamps) are kept apart from the same text quoted, so changing their quoting counts
//! as a change. Pure: text in, trees, values and problems out.

use std::collections::HashMap;
use std::ops::Range;

use granit_parser::{Event, Options, Parser, ScalarStyle, Span};
use serde_json::{Map, Number, Value};

/// Deepest nesting of collections accepted (the tree and its value are built recursively).
pub const MAX_DEPTH: usize = 100;

/// Most values aliases may add to a document beyond the nodes written in it.
pub const MAX_ALIAS_VALUES: usize = 100_000;

pub type NodeId = usize;

/// One node of a document, with its place in the file.
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    /// Byte range in the file. Block collections start at their first entry; flow ones at the
    /// bracket and end after the closing one; block scalars cover their content lines only.
    pub span: Range<usize>,
    /// 1-based line and column of the start.
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    Scalar {
        value: String,
        style: ScalarStyle,
        tag: Option<String>,
    },
    Seq {
        flow: bool,
        items: Vec<NodeId>,
    },
    Map {
        flow: bool,
        entries: Vec<(NodeId, NodeId)>,
    },
    /// `*name`: the anchored node it stands for.
    Alias(NodeId),
}

/// One parsed document.
#[derive(Debug, Clone)]
pub struct Document {
    pub nodes: Vec<Node>,
    pub root: NodeId,
    /// Byte range of the document in the file (from its first node or `---` to its end).
    pub span: Range<usize>,
    /// The value Kubernetes reads.
    pub value: Value,
}

impl Document {
    /// An empty document (only comments, or nothing between two `---`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.nodes[self.root].kind, NodeKind::Scalar { value, style: ScalarStyle::Plain, .. }
            if self.nodes[self.root].span.is_empty() && (value == "~" || value.is_empty()))
    }

    /// The node an alias stands for, or the node itself.
    pub fn resolve(&self, id: NodeId) -> NodeId {
        match self.nodes[id].kind {
            NodeKind::Alias(t) => t,
            _ => id,
        }
    }

    /// The value node under `key` in the map `map` (merge keys included), with its key node.
    pub fn get(&self, map: NodeId, key: &str) -> Option<(NodeId, NodeId)> {
        let NodeKind::Map { entries, .. } = &self.nodes[self.resolve(map)].kind else {
            return None;
        };
        let own = entries
            .iter()
            .find(|(k, _)| key_string(&self.nodes, *k).as_deref() == Some(key));
        own.copied().or_else(|| {
            let (_, merged) = entries.iter().find(|(k, _)| self.is_merge(*k))?;
            let merged = self.resolve(*merged);
            match &self.nodes[merged].kind {
                NodeKind::Seq { items, .. } => items.iter().find_map(|m| self.get(*m, key)),
                _ => self.get(merged, key),
            }
        })
    }

    /// The node at a JSON pointer (decoded tokens), aliases followed.
    pub fn at(&self, tokens: &[String]) -> Option<NodeId> {
        self.written_at(tokens).map(|id| self.resolve(id))
    }

    /// The node written at a JSON pointer: an alias there is returned as itself.
    pub fn written_at(&self, tokens: &[String]) -> Option<NodeId> {
        let mut id = self.root;
        for t in tokens {
            let here = self.resolve(id);
            id = match &self.nodes[here].kind {
                NodeKind::Map { .. } => self.get(here, t)?.1,
                NodeKind::Seq { items, .. } => *items.get(t.parse::<usize>().ok()?)?,
                _ => return None,
            };
        }
        Some(id)
    }

    fn is_merge(&self, id: NodeId) -> bool {
        matches!(&self.nodes[id].kind, NodeKind::Scalar { value, style: ScalarStyle::Plain, tag: None } if value == "<<")
    }
}

/// Why a document cannot be read, with where (1-based line and column in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A document that cannot be read: the problem, and the bytes it covers (to the next `---`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub problem: Problem,
    pub span: Range<usize>,
}

/// A file: its documents in order, each either read or not.
#[derive(Debug, Clone)]
pub struct Stream {
    pub docs: Vec<Result<Document, Invalid>>,
}

/// Reads every document of a file. A document that cannot be read is recorded with its problem
/// and reading goes on at the next `---` line, so one run reports every problem.
pub fn read(text: &str) -> Stream {
    let mut docs = Vec::new();
    let mut base = 0;
    while base < text.len() || docs.is_empty() {
        let (mut read, failed) = read_from(text, base);
        docs.append(&mut read);
        let Some((problem, at, start)) = failed else {
            break;
        };
        let next = next_separator(text, at);
        let end = next.unwrap_or(text.len());
        docs.push(Err(Invalid {
            problem,
            span: start..end,
        }));
        match next {
            Some(next) => base = next,
            None => break,
        }
    }
    Stream { docs }
}

/// The start of the first `---` line after byte `at`.
fn next_separator(text: &str, at: usize) -> Option<usize> {
    let mut pos = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    for line in text[pos..].split_inclusive('\n') {
        if pos > at
            && line
                .strip_prefix("---")
                .is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t', '\r', '\n']))
        {
            return Some(pos);
        }
        pos += line.len();
    }
    None
}

fn parser_options() -> Options {
    let mut o = Options::default();
    o.flow_nesting_limit = MAX_DEPTH;
    o.block_nesting_limit = MAX_DEPTH;
    o
}

/// A problem, where it was found, and where its document starts.
type Failed = (Problem, usize, usize);

/// Parses from byte `base` to the end or to the first problem.
fn read_from(text: &str, base: usize) -> (Vec<Result<Document, Invalid>>, Option<Failed>) {
    let mut parser = Parser::new_from_str_with_options(&text[base..], parser_options());
    // Lines and columns of the slice are relative to `base`.
    let base_line = text[..base].matches('\n').count();
    let mut builder = Builder::new(text, base, base_line);
    let mut docs: Vec<Result<Document, Invalid>> = Vec::new();
    while let Some(next) = parser.next_event() {
        let problem = match next {
            Ok((event, span)) => match builder.event(event, span) {
                Ok(Some(doc)) => {
                    docs.push(Ok(doc));
                    continue;
                }
                Ok(None) => continue,
                Err(p) => p,
            },
            Err(e) => {
                let m = e.marker();
                let at = base + m.byte_offset().unwrap_or(0);
                let problem = Problem {
                    line: base_line + m.line(),
                    column: m.col() + 1,
                    message: e.info(),
                };
                (problem, at)
            }
        };
        let start = builder.doc_start.max(docs.last().map_or(base, |d| match d {
            Ok(d) => d.span.end,
            Err(i) => i.span.end,
        }));
        return (docs, Some((problem.0, problem.1, start.min(problem.1))));
    }
    (docs, None)
}

/// A collection being built.
enum Open {
    Seq(Vec<NodeId>, bool, usize),
    Map(Vec<NodeId>, bool, usize),
}

struct Builder<'t> {
    text: &'t str,
    base: usize,
    base_line: usize,
    nodes: Vec<Node>,
    stack: Vec<(Open, Span)>,
    anchors: HashMap<usize, NodeId>,
    root: Option<NodeId>,
    doc_start: usize,
}

impl<'t> Builder<'t> {
    fn new(text: &'t str, base: usize, base_line: usize) -> Self {
        Self {
            text,
            base,
            base_line,
            nodes: Vec::new(),
            stack: Vec::new(),
            anchors: HashMap::new(),
            root: None,
            doc_start: base,
        }
    }

    fn offset(&self, m: granit_parser::Marker) -> usize {
        self.base + m.byte_offset().unwrap_or(0)
    }

    fn problem_at(&self, m: granit_parser::Marker, message: String) -> (Problem, usize) {
        let p = Problem {
            line: self.base_line + m.line(),
            column: m.col() + 1,
            message,
        };
        (p, self.offset(m))
    }

    /// Takes one event; a finished document comes back.
    fn event(
        &mut self,
        event: Event<'_>,
        span: Span,
    ) -> Result<Option<Document>, (Problem, usize)> {
        match event {
            Event::DocumentStart(..) => {
                self.doc_start = self.offset(span.start);
                self.nodes.clear();
                self.anchors.clear();
                self.root = None;
            }
            Event::DocumentEnd => return self.finish(span).map(Some),
            Event::Scalar(value, style, anchor, tag) => {
                let value = self.block_scalar_at_eof(value.into_owned(), style, &span);
                let tag = tag.map(|t| t.original());
                let id = self.push(NodeKind::Scalar { value, style, tag }, &span, span.end);
                self.anchor(anchor, id);
                self.attach(id);
            }
            Event::Alias(a) => {
                let target = *self.anchors.get(&a).ok_or_else(|| {
                    self.problem_at(span.start, "an alias names no anchor".to_string())
                })?;
                let id = self.push(NodeKind::Alias(target), &span, span.end);
                self.attach(id);
            }
            Event::SequenceStart(style, anchor, _) | Event::MappingStart(style, anchor, _) => {
                if self.stack.len() >= MAX_DEPTH {
                    let msg = format!("nested deeper than {MAX_DEPTH} levels");
                    return Err(self.problem_at(span.start, msg));
                }
                let flow = style == granit_parser::StructureStyle::Flow;
                let open = if matches!(event, Event::SequenceStart(..)) {
                    Open::Seq(Vec::new(), flow, anchor)
                } else {
                    Open::Map(Vec::new(), flow, anchor)
                };
                self.stack.push((open, span));
            }
            Event::SequenceEnd | Event::MappingEnd => self.close(span)?,
            _ => {}
        }
        Ok(None)
    }

    /// go-yaml gives a block scalar that ends the file without a line break no final `\n`
    /// (granit-parser adds one).
    fn block_scalar_at_eof(&self, mut value: String, style: ScalarStyle, span: &Span) -> String {
        let block = matches!(style, ScalarStyle::Literal | ScalarStyle::Folded);
        let at_eof = self.offset(span.end) == self.text.len() && !self.text.ends_with('\n');
        if block && at_eof && value.ends_with('\n') {
            value.pop();
        }
        value
    }

    fn push(&mut self, kind: NodeKind, span: &Span, end: granit_parser::Marker) -> NodeId {
        self.nodes.push(Node {
            kind,
            span: self.offset(span.start)..self.offset(end),
            line: self.base_line + span.start.line(),
            column: span.start.col() + 1,
        });
        self.nodes.len() - 1
    }

    fn anchor(&mut self, anchor: usize, id: NodeId) {
        if anchor != 0 {
            self.anchors.insert(anchor, id);
        }
    }

    fn close(&mut self, end: Span) -> Result<(), (Problem, usize)> {
        let Some((open, start)) = self.stack.pop() else {
            return Ok(());
        };
        // A flow collection ends after its bracket; a block one where its last child ends.
        let (kind, anchor, flow) = match open {
            Open::Seq(items, flow, a) => (NodeKind::Seq { flow, items }, a, flow),
            Open::Map(keys, flow, a) => {
                let entries = keys
                    .chunks(2)
                    .map(|c| (c[0], c.get(1).copied().unwrap_or(c[0])))
                    .collect();
                (NodeKind::Map { flow, entries }, a, flow)
            }
        };
        let stop = if flow { end.end } else { end.start };
        let id = self.push(kind, &start, stop);
        if !flow {
            let last = self.last_child_end(id);
            if let Some(last) = last {
                self.nodes[id].span.end = last;
            }
        }
        self.anchor(anchor, id);
        if let NodeKind::Map { .. } = self.nodes[id].kind {
            self.check_keys(id)?;
        }
        self.attach(id);
        Ok(())
    }

    fn last_child_end(&self, id: NodeId) -> Option<usize> {
        match &self.nodes[id].kind {
            NodeKind::Seq { items, .. } => items.last().map(|i| self.nodes[*i].span.end),
            NodeKind::Map { entries, .. } => entries.last().map(|(_, v)| self.nodes[*v].span.end),
            _ => None,
        }
    }

    fn attach(&mut self, id: NodeId) {
        match self.stack.last_mut() {
            Some((Open::Seq(items, ..) | Open::Map(items, ..), _)) => items.push(id),
            None => self.root = Some(id),
        }
    }

    /// Duplicate keys (as Kubernetes compares them) and keys that are not scalars.
    fn check_keys(&self, map: NodeId) -> Result<(), (Problem, usize)> {
        let NodeKind::Map { entries, .. } = &self.nodes[map].kind else {
            return Ok(());
        };
        let mut seen: HashMap<String, NodeId> = HashMap::new();
        for (k, _) in entries {
            let node = &self.nodes[*k];
            let problem = |message: String| {
                let p = Problem {
                    line: node.line,
                    column: node.column,
                    message,
                };
                (p, node.span.start)
            };
            let Some(key) = key_string(&self.nodes, *k) else {
                let msg = "a map key that is a list or a map (Kubernetes cannot read it)";
                return Err(problem(msg.to_string()));
            };
            if key == "<<" {
                continue;
            }
            if let Some(first) = seen.insert(key.clone(), *k) {
                let f = &self.nodes[first];
                let msg = format!("duplicate key {key:?}, first at {}:{}", f.line, f.column);
                return Err(problem(msg));
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: Span) -> Result<Document, (Problem, usize)> {
        let root = match self.root.take() {
            Some(r) => r,
            None => {
                let s = Span::empty(end.start);
                self.push(
                    NodeKind::Scalar {
                        value: String::new(),
                        style: ScalarStyle::Plain,
                        tag: None,
                    },
                    &s,
                    end.start,
                )
            }
        };
        let nodes = std::mem::take(&mut self.nodes);
        let mut budget = nodes.len() + MAX_ALIAS_VALUES;
        let Some(value) = to_value(&nodes, root, 0, &mut budget) else {
            let n = &nodes[root];
            let p = Problem {
                line: n.line,
                column: n.column,
                message: format!(
                    "aliases expand this document to more than {MAX_ALIAS_VALUES} values beyond its own"
                ),
            };
            return Err((p, n.span.start));
        };
        let span = self.doc_start..self.offset(end.end).max(nodes[root].span.end);
        Ok(Document {
            nodes,
            root,
            span,
            value,
        })
    }
}

/// A map key as Kubernetes turns it into a JSON object key; `None` for collections.
fn key_string(nodes: &[Node], id: NodeId) -> Option<String> {
    let id = match nodes[id].kind {
        NodeKind::Alias(t) => t,
        _ => id,
    };
    let NodeKind::Scalar { .. } = &nodes[id].kind else {
        return None;
    };
    Some(match scalar_value(&nodes[id].kind) {
        Value::String(s) => s,
        Value::Null => "null".to_string(),
        other => other.to_string(),
    })
}

/// The value of a node as Kubernetes reads it; `None` when aliases expand it beyond `budget`
/// values (a "billion laughs" document). Depth is bounded by the parser and [`MAX_DEPTH`];
/// aliases point backwards only, so this ends.
fn to_value(nodes: &[Node], id: NodeId, depth: usize, budget: &mut usize) -> Option<Value> {
    *budget = budget.checked_sub(1)?;
    if depth > 2 * MAX_DEPTH {
        return None;
    }
    Some(match &nodes[id].kind {
        NodeKind::Scalar { .. } => scalar_value(&nodes[id].kind),
        NodeKind::Alias(t) => to_value(nodes, *t, depth + 1, budget)?,
        NodeKind::Seq { items, .. } => Value::Array(
            items
                .iter()
                .map(|i| to_value(nodes, *i, depth + 1, budget))
                .collect::<Option<_>>()?,
        ),
        NodeKind::Map { entries, .. } => {
            let mut map = Map::new();
            let mut merged = Vec::new();
            for (k, v) in entries {
                let key = key_string(nodes, *k).unwrap_or_default();
                let plain_merge = matches!(
                    &nodes[*k].kind,
                    NodeKind::Scalar {
                        style: ScalarStyle::Plain,
                        tag: None,
                        ..
                    }
                ) && key == "<<";
                let value = to_value(nodes, *v, depth + 1, budget)?;
                if plain_merge {
                    merged.push(value);
                } else {
                    map.insert(key, value);
                }
            }
            // Explicit keys win over merged ones; earlier merged maps over later ones.
            for m in merged.into_iter().flat_map(|m| match m {
                Value::Array(a) => a,
                other => vec![other],
            }) {
                if let Value::Object(o) = m {
                    for (k, v) in o {
                        map.entry(k).or_insert(v);
                    }
                }
            }
            Value::Object(map)
        }
    })
}

fn scalar_value(kind: &NodeKind) -> Value {
    let NodeKind::Scalar { value, style, tag } = kind else {
        return Value::Null;
    };
    let tag = tag.as_deref().map(|t| {
        t.trim_start_matches("tag:yaml.org,2002:")
            .trim_start_matches("!!")
    });
    match (style, tag) {
        (_, Some("str")) => Value::String(value.clone()),
        (ScalarStyle::Plain, _) | (_, Some("int" | "float" | "bool" | "null")) => {
            resolve_plain(value)
        }
        _ => Value::String(value.clone()),
    }
}

/// A plain scalar under go-yaml v2's rules (what `kubectl` and the API server read).
pub fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return marker("float", "+inf"),
        "-.inf" | "-.Inf" | "-.INF" => return marker("float", "-inf"),
        ".nan" | ".NaN" | ".NAN" => return marker("float", "nan"),
        _ => {}
    }
    let first = s.as_bytes()[0];
    if first == b'.' {
        return s
            .parse::<f64>()
            .ok()
            .and_then(float)
            .unwrap_or_else(|| Value::String(s.into()));
    }
    if !(first.is_ascii_digit() || first == b'+' || first == b'-') {
        return Value::String(s.into());
    }
    if first.is_ascii_digit() && is_timestamp(s) {
        return marker("timestamp", s);
    }
    if is_sexagesimal(s) {
        return marker("sexagesimal", s);
    }
    number(s).unwrap_or_else(|| Value::String(s.into()))
}

/// A value no JSON number can hold, kept distinct from any string a person would write.
fn marker(kind: &str, text: &str) -> Value {
    Value::String(format!("\u{0}{kind}:{text}"))
}

fn float(f: f64) -> Option<Value> {
    Number::from_f64(f).map(Value::Number)
}

/// Integers as Go's `strconv.ParseInt(s, 0, 64)` after removing `_` (so `0400` is octal), then
/// unsigned, then floats of YAML's float shape, then `0b` binary.
fn number(s: &str) -> Option<Value> {
    let plain: String = s.chars().filter(|c| *c != '_').collect();
    let (neg, digits) = match plain.as_bytes().first()? {
        b'-' => (true, &plain[1..]),
        b'+' => (false, &plain[1..]),
        _ => (false, plain.as_str()),
    };
    let (radix, body) = if let Some(h) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        (16, h)
    } else if let Some(b) = digits
        .strip_prefix("0b")
        .or_else(|| digits.strip_prefix("0B"))
    {
        (2, b)
    } else if let Some(o) = digits
        .strip_prefix("0o")
        .or_else(|| digits.strip_prefix("0O"))
    {
        (8, o)
    } else if digits.len() > 1 && digits.starts_with('0') {
        (8, &digits[1..])
    } else {
        (10, digits)
    };
    if !body.is_empty() && body.bytes().all(|b| b.is_ascii_alphanumeric()) {
        if let Ok(u) = u64::from_str_radix(body, radix) {
            if !neg {
                return Some(Value::Number(u.into()));
            }
            if let Ok(i) = i64::try_from(-(i128::from(u))) {
                return Some(Value::Number(i.into()));
            }
        }
    }
    is_yaml_float(&plain)
        .then(|| plain.parse::<f64>().ok().and_then(float))
        .flatten()
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn is_yaml_float(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let (mantissa, exp) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", frac)) => digits(frac),
        Some((int, frac)) => digits(int) && (frac.is_empty() || digits(frac)),
        None => digits(mantissa),
    };
    mantissa_ok && exp.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)))
}

/// `2001-12-14`, `2001-12-14t21:59:43.10-05:00`, `2001-12-14 21:59:43.10`: a date first
/// (go-yaml v2 reads these as times).
fn is_timestamp(s: &str) -> bool {
    let date = s.split(['T', 't', ' ']).next().unwrap_or("");
    let parts: Vec<&str> = date.split('-').collect();
    let digits = |p: &str, n: std::ops::RangeInclusive<usize>| {
        n.contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit())
    };
    parts.len() == 3
        && digits(parts[0], 4..=4)
        && digits(parts[1], 1..=2)
        && digits(parts[2], 1..=2)
}

/// `[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?` (YAML 1.1 base 60).
fn is_sexagesimal(s: &str) -> bool {
    let s = s.strip_prefix(['-', '+']).unwrap_or(s);
    let s = s.split_once('.').map_or(s, |(a, frac)| {
        if frac.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
            a
        } else {
            "x"
        }
    });
    let mut parts = s.split(':');
    let head = parts.next().unwrap_or("");
    let head_ok = head.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && head.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    let mut rest = 0;
    for p in parts {
        let ok = (1..=2).contains(&p.len())
            && p.bytes().all(|b| b.is_ascii_digit())
            && (p.len() == 1 || p.as_bytes()[0] <= b'5');
        if !ok {
            return false;
        }
        rest += 1;
    }
    head_ok && rest > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(text: &str) -> Vec<Value> {
        read(text)
            .docs
            .into_iter()
            .map(|d| d.unwrap().value)
            .collect()
    }

    #[test]
    fn scalars_read_as_kubernetes_reads_them() {
        let v = &values("a: 0400\nb: '0400'\nc: yes\nd: on\ne: 1e3\nf: 1000\ng: 0x1F\nh: 1_000\ni: 08\nj: ~\nk: .5\nl: 0b101\nm: -12\nn: 1:30\no: 2001-12-14\np: !!str 0400\nq: +12\nr: .inf\ns: 18446744073709551615\nt: 99999999999999999999\nu: nginx:1.27\n")[0];
        assert_eq!(v["a"], json!(256));
        assert_eq!(v["b"], json!("0400"));
        assert_eq!(v["c"], json!(true));
        assert_eq!(v["d"], json!(true));
        assert_eq!(v["e"], json!(1000.0));
        assert_ne!(v["e"], v["f"], "a float never equals an integer");
        assert_eq!(v["g"], json!(31));
        assert_eq!(v["h"], json!(1000));
        assert_eq!(v["i"], json!(8.0), "08 is no octal: go-yaml reads a float");
        assert_eq!(v["j"], Value::Null);
        assert_eq!(v["k"], json!(0.5));
        assert_eq!(v["l"], json!(5));
        assert_eq!(v["m"], json!(-12));
        assert_ne!(
            v["n"],
            json!("1:30"),
            "sexagesimal differs from the quoted text"
        );
        assert_ne!(v["o"], json!("2001-12-14"));
        assert_eq!(v["p"], json!("0400"));
        assert_eq!(v["q"], json!(12));
        assert_ne!(v["r"], json!(".inf"));
        assert_eq!(v["s"], json!(u64::MAX));
        assert_eq!(v["t"], json!(1e20));
        assert_eq!(v["u"], json!("nginx:1.27"));
    }

    #[test]
    fn block_scalar_at_end_of_file_without_line_break_has_none() {
        assert_eq!(values("a: |\n  last")[0]["a"], json!("last"));
        assert_eq!(values("a: |\n  last\n")[0]["a"], json!("last\n"));
        assert_eq!(values("a: |-\n  last\n---\n")[0]["a"], json!("last"));
    }

    #[test]
    fn every_bad_document_is_reported_and_good_ones_read() {
        let s = read("kind: A\n---\nkind: [unclosed\n---\nspec:\n  selector: 1\n  x: 2\n  selector: 3\n---\nkind: B\n");
        assert_eq!(s.docs.len(), 4);
        assert_eq!(s.docs[0].as_ref().unwrap().value, json!({"kind": "A"}));
        let e = &s.docs[1].as_ref().unwrap_err().problem;
        assert_eq!(
            (e.line, e.column, e.message.as_str()),
            (3, 7, "unclosed bracket '['")
        );
        let e = &s.docs[2].as_ref().unwrap_err().problem;
        assert_eq!(
            (e.line, e.column, e.message.as_str()),
            (8, 3, "duplicate key \"selector\", first at 6:3")
        );
        assert_eq!(s.docs[3].as_ref().unwrap().value, json!({"kind": "B"}));
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 5), "]".repeat(MAX_DEPTH + 5));
        assert!(read(&deep).docs[0].is_err());
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert!(read(&ok).docs[0].is_ok());
    }

    #[test]
    fn alias_expansion_is_bounded() {
        // Nine levels of nine aliases: 9^9 values from 90 nodes.
        let mut bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n".to_string();
        for i in 1..9 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            bomb.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = read(&bomb).docs.remove(0).unwrap_err();
        assert!(e.problem.message.contains("aliases expand"), "{e:?}");
        // Aliases within the budget are fine.
        let few = "a: &a [x, x]\nb: [*a, *a, *a]\n";
        assert_eq!(
            values(few)[0]["b"],
            json!([["x", "x"], ["x", "x"], ["x", "x"]])
        );
    }

    #[test]
    fn spans_locate_nodes_in_crlf_and_bom_files() {
        let text = "\u{feff}# c\r\nspec:\r\n  containers: [{name: a, image: \"nginx:1.27\"}]\r\n";
        let s = read(text);
        let d = s.docs[0].as_ref().unwrap();
        let id = d
            .at(&[
                "spec".into(),
                "containers".into(),
                "0".into(),
                "image".into(),
            ])
            .unwrap();
        assert_eq!(&text[d.nodes[id].span.clone()], "\"nginx:1.27\"");
        assert_eq!((d.nodes[id].line, d.nodes[id].column), (3, 33));
    }

    #[test]
    fn directives_tags_and_document_ends_are_read() {
        let v = values("%YAML 1.1\n---\na: !!str 0755\nb: !!int \"12\"\n...\n---\nc: 1\n");
        assert_eq!(v, vec![json!({"a": "0755", "b": 12}), json!({"c": 1})]);
        assert!(read("")
            .docs
            .iter()
            .all(|d| d.as_ref().is_ok_and(Document::is_empty)));
    }

    #[test]
    fn merge_keys_and_aliases_are_followed() {
        let v = &values("base: &b {x: 1, w: 2}\nm:\n  <<: *b\n  w: 3\nz: *b\n")[0];
        assert_eq!(v["m"], json!({"x": 1, "w": 3}));
        assert_eq!(v["z"], json!({"x": 1, "w": 2}));
        // go-yaml v2 reads the key `y` as the boolean true, and Kubernetes writes it "true".
        assert_eq!(values("y: 1\n")[0], json!({"true": 1}));
    }
}
