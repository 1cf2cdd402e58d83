//! Property: any generated manifest — block or flow style, LF or CRLF, with or without a byte
//! order mark, metadata absent / block / flow / `{}`, YAML 1.1 scalars that Kubernetes reads as
//! numbers, booleans, nulls or times — goes through `pin` with every image pinned, and reads back
//! (as Kubernetes reads YAML) exactly as before except for the images and the record. Pure: the
//! library's planning and rendering, no registry.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use serde_json::Value;
use tagpin::pin::{self, yaml, Action, Options, Source};
use tagpin::reference::Digest;
use tagpin::resolve::Outcome;

const IMAGES: [&str; 3] = ["nginx:1.27", "registry.example:5000/team/app:v3", "redis"];

fn digest(i: usize) -> String {
    format!(
        "sha256:{}",
        format!("{i}")
            .repeat(64)
            .chars()
            .take(64)
            .collect::<String>()
    )
}

/// Scalars whose meaning depends on YAML 1.1 rules, as written in the file.
const SCALARS: [&str; 22] = [
    "0400",
    "0755",
    "0o700",
    "yes",
    "no",
    "on",
    "Off",
    "1e3",
    "1:30",
    "'0400'",
    "\"yes\"",
    "~",
    "null",
    "2001-12-14",
    ".inf",
    "+12",
    "0x1F",
    "08",
    "1_000",
    "true",
    "text # comment",
    "\"\"",
];

#[derive(Debug, Clone)]
enum Meta {
    Absent,
    Block,
    BlockWithAnnotations,
    Flow,
    FlowEmptyAnnotations,
}

#[derive(Debug, Clone)]
struct Manifest {
    kind: usize,
    crlf: bool,
    bom: bool,
    meta: Meta,
    template_meta: Meta,
    flow_containers: bool,
    /// (has a name, image index, quoting 0 plain / 1 single / 2 double)
    containers: Vec<(bool, usize, u8)>,
    extras: Vec<usize>,
    /// The custom resource (kind 4): how many pod templates in its list, and whether each is
    /// inside a Job template (`groups[].template.spec.template.spec`, as a JobSet nests them).
    groups: usize,
    nested: bool,
}

fn meta_strategy() -> impl Strategy<Value = Meta> {
    prop_oneof![
        Just(Meta::Absent),
        Just(Meta::Block),
        Just(Meta::BlockWithAnnotations),
        Just(Meta::Flow),
        Just(Meta::FlowEmptyAnnotations),
    ]
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        0usize..5,
        any::<bool>(),
        any::<bool>(),
        meta_strategy(),
        meta_strategy(),
        any::<bool>(),
        prop::collection::vec((any::<bool>(), 0usize..IMAGES.len(), 0u8..3), 1..4),
        prop::collection::vec(0usize..SCALARS.len(), 0..6),
        (1usize..4, any::<bool>()),
    )
        .prop_map(
            |(
                kind,
                crlf,
                bom,
                meta,
                template_meta,
                flow_containers,
                containers,
                extras,
                (groups, nested),
            )| {
                Manifest {
                    groups,
                    nested,
                    kind,
                    crlf,
                    bom,
                    meta,
                    template_meta,
                    flow_containers,
                    containers,
                    extras,
                }
            },
        )
}

fn quoted(s: &str, q: u8) -> String {
    match q {
        1 => format!("'{s}'"),
        2 => format!("\"{s}\""),
        _ => s.to_string(),
    }
}

fn meta_lines(m: &Meta, name: &str, ind: &str, out: &mut Vec<String>) {
    match m {
        Meta::Absent => {}
        Meta::Block => out.extend([format!("{ind}metadata:"), format!("{ind}  name: {name}")]),
        Meta::BlockWithAnnotations => out.extend([
            format!("{ind}metadata:"),
            format!("{ind}  annotations:"),
            format!("{ind}    team: a # owner"),
            format!("{ind}  name: {name}"),
        ]),
        Meta::Flow => out.push(format!("{ind}metadata: {{name: {name}}}")),
        Meta::FlowEmptyAnnotations => out.push(format!("{ind}metadata: {{annotations: {{}}}}")),
    }
}

fn container_lines(m: &Manifest, ind: &str, out: &mut Vec<String>) {
    let item = |i: usize, (named, img, q): &(bool, usize, u8)| {
        let name = if *named {
            format!("name: c{i}, ")
        } else {
            String::new()
        };
        (name, quoted(IMAGES[*img], *q))
    };
    if m.flow_containers {
        let items: Vec<String> = m
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (name, image) = item(i, c);
                format!("{{{name}image: {image}}}")
            })
            .collect();
        out.push(format!("{ind}containers: [{}]", items.join(", ")));
        return;
    }
    out.push(format!("{ind}containers:"));
    for (i, c) in m.containers.iter().enumerate() {
        let (name, image) = item(i, c);
        match name.is_empty() {
            true => out.push(format!("{ind}- image: {image}")),
            false => out.extend([
                format!("{ind}- name: c{i}"),
                format!("{ind}  image: {image}"),
            ]),
        }
    }
}

fn extra_lines(m: &Manifest, ind: &str, out: &mut Vec<String>) {
    for (i, s) in m.extras.iter().enumerate() {
        out.push(format!("{ind}x{i}: {}", SCALARS[*s]));
    }
}

/// The manifest as text: a Pod, a Deployment, an Argo Rollout, a List holding a Pod, or a
/// custom resource with a list of pod templates, nested or not (issue 24).
fn text(m: &Manifest) -> String {
    let mut lines = vec!["# generated".to_string()];
    let (api, kind) = [
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("argoproj.io/v1alpha1", "Rollout"),
        ("v1", "List"),
        ("fleet.example.com/v1", "Fleet"),
    ][m.kind];
    lines.push(format!("apiVersion: {api}"));
    lines.push(format!("kind: {kind}"));
    let ind = if kind == "List" {
        lines.extend([
            "items:".to_string(),
            "- apiVersion: v1".to_string(),
            "  kind: Pod".to_string(),
        ]);
        "  "
    } else {
        ""
    };
    meta_lines(&m.meta, "obj", ind, &mut lines);
    extra_lines(m, ind, &mut lines);
    lines.push(format!("{ind}spec:"));
    if kind == "Pod" || kind == "List" {
        container_lines(m, &format!("{ind}  "), &mut lines);
    } else if kind == "Fleet" {
        lines.push("  groups:".to_string());
        for g in 0..m.groups {
            lines.push(format!("  - name: g{g}"));
            lines.push("    template:".to_string());
            let mut at = "      ".to_string();
            if m.nested {
                lines.push(format!("{at}spec:"));
                lines.push(format!("{at}  parallelism: 2"));
                lines.push(format!("{at}  template:"));
                at.push_str("    ");
            }
            meta_lines(&m.template_meta, "tpl", &at, &mut lines);
            lines.push(format!("{at}spec:"));
            container_lines(m, &format!("{at}  "), &mut lines);
        }
    } else {
        lines.push("  template:".to_string());
        meta_lines(&m.template_meta, "tpl", "    ", &mut lines);
        lines.push("    spec:".to_string());
        container_lines(m, "      ", &mut lines);
    }
    let eol = if m.crlf { "\r\n" } else { "\n" };
    let bom = if m.bom { "\u{feff}" } else { "" };
    format!("{bom}{}{eol}", lines.join(eol))
}

/// A value with the record and then-empty `annotations` / `metadata` maps removed, and every
/// pinned image turned back into the tag it came from.
fn normalize(v: &mut Value, back: &HashMap<String, String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(a)) = map.get_mut("annotations") {
                a.remove("tagpin.io/pinned");
            }
            for child in map.values_mut() {
                normalize(child, back);
            }
            map.retain(|k, v| {
                !(matches!(k.as_str(), "annotations" | "metadata")
                    && v == &Value::Object(Default::default()))
            });
        }
        Value::Array(a) => a.iter_mut().for_each(|c| normalize(c, back)),
        Value::String(s) => {
            if let Some(orig) = back.get(s) {
                *s = orig.clone();
            }
        }
        _ => {}
    }
}

fn values(text: &str) -> Vec<Value> {
    yaml::read(text)
        .docs
        .into_iter()
        .map(|d| d.expect("readable").value)
        .collect()
}

/// Every `image` string that holds no digest.
fn tags(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, c) in map {
                match c {
                    Value::String(s) if k == "image" && !s.contains('@') => out.push(s.clone()),
                    _ => tags(c, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|c| tags(c, out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn pinning_changes_only_images_and_the_record(m in manifest()) {
        let input = text(&m);
        let opts = Options {
            mode: Action::Pin,
            keep_tag: false,
            skip_prefixes: vec![],
            lookup_timeout: Duration::from_secs(1),
            skip_invalid: false,
            strict: false,
        };
        let mut results = HashMap::new();
        let mut back = HashMap::new();
        for (i, image) in IMAGES.iter().enumerate() {
            let d = digest(i + 1);
            results.insert(image.to_string(), Outcome::Pinned(Digest::parse(&d).unwrap()));
            let repo = image.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map_or(*image, |(r, _)| r);
            back.insert(format!("{repo}@{d}"), image.to_string());
        }
        let plan = pin::plan_file(Source { name: "gen.yaml".into(), path: None, text: input.clone() });
        prop_assert!(plan.invalid().is_empty(), "{:?}\n{input}", plan.invalid());
        let r = pin::render(&plan, &opts, &results);
        prop_assert!(r.problems.is_empty(), "{:?}\n{input}", r.problems);
        let templates = if m.kind == 4 { m.groups } else { 1 };
        prop_assert_eq!(r.pinned, m.containers.len() * templates);
        prop_assert!(r.notes.is_empty(), "{:?}\n{input}", r.notes);
        prop_assert_eq!(r.edited, 1);
        // Read back as Kubernetes reads it: only images and the record changed.
        let mut before = values(&input);
        let mut after = values(&r.text);
        prop_assert_eq!(before.len(), after.len());
        let mut left = Vec::new();
        after.iter().for_each(|v| tags(v, &mut left));
        prop_assert!(left.is_empty(), "tags left: {:?}\n{}", left, r.text);
        for v in before.iter_mut().chain(after.iter_mut()) {
            normalize(v, &back);
        }
        prop_assert_eq!(&before, &after, "\n{}\n---- became ----\n{}", input, r.text);
        // Every object pinned carries the record.
        let top = values(&r.text);
        let obj = if m.kind == 3 { &top[0]["items"][0] } else { &top[0] };
        prop_assert!(obj.pointer("/metadata/annotations/tagpin.io~1pinned").is_some(), "no record:\n{}", r.text);
        // The BOM and line endings are kept, and pinning the output again changes nothing.
        prop_assert_eq!(r.text.starts_with('\u{feff}'), m.bom);
        let (lf, crlf) = (r.text.matches('\n').count(), r.text.matches("\r\n").count());
        prop_assert_eq!(crlf, if m.crlf { lf } else { 0 });
        let again = pin::render(&pin::plan_file(Source { name: "gen.yaml".into(), path: None, text: r.text.clone() }), &opts, &results);
        prop_assert_eq!(again.text, r.text);
    }
}

/// Pieces of YAML, valid and not, to build arbitrary text from.
const PIECES: [&str; 24] = [
    "image: nginx:1.27",
    "\n",
    "\r\n",
    "  ",
    "- ",
    ": ",
    "{",
    "}",
    "[",
    "]",
    ", ",
    "'",
    "\"",
    "|",
    ">-",
    "&a ",
    "*a",
    "<<: ",
    "---\n",
    "...\n",
    "# c",
    "metadata:",
    "containers:",
    "\u{feff}",
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    /// Any text: reading, planning and rendering never panic, and whatever is written reads
    /// back with the same number of documents.
    #[test]
    fn any_text_is_handled_without_panicking(parts in prop::collection::vec(0usize..PIECES.len(), 0..40), kind in 0usize..3) {
        let head = ["apiVersion: v1\nkind: Pod\nspec:\n  ", "kind: List\nitems:\n- kind: Pod\n  spec: ", ""][kind];
        let input: String = std::iter::once(head).chain(parts.iter().map(|i| PIECES[*i])).collect();
        let opts = Options {
            mode: Action::Pin,
            keep_tag: false,
            skip_prefixes: vec![],
            lookup_timeout: Duration::from_secs(1),
            skip_invalid: true,
            strict: false,
        };
        let results = HashMap::from([(
            "nginx:1.27".to_string(),
            Outcome::Pinned(Digest::parse(&digest(1)).unwrap()),
        )]);
        let plan = pin::plan_file(Source { name: "any.yaml".into(), path: None, text: input.clone() });
        let r = pin::render(&plan, &opts, &results);
        if r.text != input {
            let before = yaml::read(&input).docs.len();
            prop_assert_eq!(yaml::read(&r.text).docs.len(), before, "\n{}\n----\n{}", input, r.text);
        }
        let _ = pin::join(&[("a".into(), input.clone()), ("b".into(), r.text)]);
    }
}
