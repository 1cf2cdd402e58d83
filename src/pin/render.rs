//! Rendering: the registry's answers applied to a planned file as span edits, each document read
//! back and compared with the intended value as Kubernetes reads YAML. A document whose edit
//! cannot be expressed in place, or reads back differently, is left exactly as written and
//! reported; nothing is ever re-serialized. Pure.

use std::collections::{BTreeMap, HashMap};

use json_patch::{jsonptr::PointerBuf, PatchOperation};
use serde_json::Value;

use super::edit::{self, Edit, EditError};
use super::options::{Action, Options};
use super::plan::{ask, skipped, Ask, FilePlan};
use super::yaml::{self, Document};
use crate::podspec::{self, ImageSite};
use crate::resolve::Outcome;

/// One file's result: its new text and what happened.
#[derive(Debug, Default)]
pub struct Rendered {
    pub text: String,
    pub pinned: usize,
    /// Documents changed, all of them edited in place.
    pub edited: usize,
    /// One line per image left unpinned (pin), not pinned or moved (check), or document that
    /// could not be edited.
    pub problems: Vec<String>,
    /// One line per `image` field outside a known pod spec or undecided, and per object not
    /// judged: the same lines in `pin` and `--check` (problems instead with `--strict`).
    pub notes: Vec<String>,
}

/// Applies resolved digests (keyed by the image as written) to one file. Documents that cannot
/// be read (`--skip-invalid`) stay exactly as written, in every output mode.
pub fn render(plan: &FilePlan, opts: &Options, results: &HashMap<String, Outcome>) -> Rendered {
    let mut out = Rendered::default();
    let pins = decide(plan, opts, results, &mut out.problems);
    unjudged(plan, opts, &mut out);
    let text = &plan.source.text;
    let mut edits: Vec<Edit> = Vec::new();
    let mut expected: BTreeMap<usize, Value> = BTreeMap::new();
    for (di, doc_pins) in pins.iter().enumerate() {
        let Ok(doc) = &plan.docs[di].parsed else {
            continue;
        };
        if doc_pins.is_empty() {
            continue;
        }
        match edit_doc(plan, doc, doc_pins) {
            Ok((e, want)) => {
                edits.extend(e);
                expected.insert(di, want);
                out.pinned += doc_pins.len();
                out.edited += 1;
            }
            Err(why) => out.problems.push(format!(
                "{}: document {}: left as written, {} image(s) not pinned: cannot edit it in place: {why}",
                plan.source.name,
                plan.docs[di].number,
                doc_pins.len()
            )),
        }
    }
    out.text =
        match edit::apply(text, edits).and_then(|t| check_file(plan, &t, &expected).map(|()| t)) {
            Ok(t) => t,
            Err(why) => {
                out.problems
                    .push(format!("{}: left as written: {why}", plan.source.name));
                (out.pinned, out.edited) = (0, 0);
                text.clone()
            }
        };
    out
}

/// Per document, the sites to pin with their new value; problems for the rest.
fn decide(
    plan: &FilePlan,
    opts: &Options,
    results: &HashMap<String, Outcome>,
    problems: &mut Vec<String>,
) -> Vec<Vec<(usize, String)>> {
    let mut pins: Vec<Vec<(usize, String)>> = vec![Vec::new(); plan.docs.len()];
    for (si, s) in plan.sites.iter().enumerate() {
        let obj = &plan.objects[s.object];
        let at = format!(
            "{}: document {} ({}) {}",
            plan.source.name, plan.docs[obj.doc].number, obj.what, s.site.label
        );
        let image = &s.site.image;
        match ask(&s.site, obj.record.as_ref(), opts) {
            Ask::Nothing => {}
            Ask::Invalid(e) => problems.push(format!("{at}: {e}")),
            Ask::Pin(r) if opts.mode == Action::Check => {
                problems.push(format!("{at}: {r} is not pinned to a digest"));
            }
            Ask::Pin(r) => match results.get(r.original()) {
                Some(Outcome::Pinned(d) | Outcome::Stale { digest: d, .. }) => {
                    pins[obj.doc].push((si, r.pinned(d, opts.keep_tag)));
                }
                Some(Outcome::Failed(e)) => problems.push(format!("{at}: {r} left unpinned: {e}")),
                None => problems.push(format!("{at}: {r} left unpinned: not resolved")),
            },
            Ask::Check { recorded, digest } => match results.get(recorded.original()) {
                Some(Outcome::Pinned(d) | Outcome::Stale { digest: d, .. })
                    if d.to_string() != digest =>
                {
                    problems.push(format!(
                        "{at}: {image} is pinned from {recorded}, which now points to {d}"
                    ));
                }
                Some(Outcome::Pinned(_) | Outcome::Stale { .. }) => {}
                Some(Outcome::Failed(e)) => problems.push(format!(
                    "{at}: cannot check {image} against {recorded}: {e}"
                )),
                None => problems.push(format!(
                    "{at}: cannot check {image} against {recorded}: not resolved"
                )),
            },
        }
    }
    pins
}

/// `image` fields outside every known pod spec or undecided, and objects not judged: neither
/// `pin` nor `--check` can vouch for them, and both say so in the same words — a note, or a
/// problem with `--strict`.
fn unjudged(plan: &FilePlan, opts: &Options, out: &mut Rendered) {
    for u in &plan.unjudged {
        let at = format!(
            "{}: document {} ({})",
            plan.source.name, plan.docs[u.doc].number, u.what
        );
        let line = match u.incomplete {
            Some(why) => format!("{at} {}", why.words()),
            None if u.image.contains('@') || skipped(&u.image, opts) => continue,
            None => format!(
                "{at} {}: {} {}: left as written, not checked",
                u.label,
                u.image,
                u.why.words()
            ),
        };
        if opts.strict {
            out.problems.push(line);
        } else {
            out.notes.push(line);
        }
    }
}

/// The span edits of one document and the value it must read back as.
fn edit_doc(
    plan: &FilePlan,
    doc: &Document,
    pins: &[(usize, String)],
) -> Result<(Vec<Edit>, Value), EditError> {
    let text = &plan.source.text;
    let ops = operations(plan, pins);
    let mut expected = doc.value.clone();
    // The operations are built from this very value; a failure would be a bug.
    json_patch::patch(&mut expected, &ops).map_err(|e| EditError(e.to_string()))?;
    let mut edits = Vec::new();
    for op in &ops {
        edits.push(match op {
            PatchOperation::Replace(r) => match &r.value {
                Value::String(s) => edit::set_string(text, doc, &tokens(&r.path), s)?,
                _ => return Err(EditError("a replaced value is not a string".into())),
            },
            PatchOperation::Add(a) => {
                let mut parent = tokens(&a.path);
                let key = parent.pop().unwrap_or_default();
                edit::add(text, doc, &parent, &key, &a.value)?
            }
            _ => return Err(EditError("an unexpected operation".into())),
        });
    }
    // Read the edited document back on its own and compare.
    let span = doc.span.clone();
    let local: Vec<Edit> = edits
        .iter()
        .map(
            |e| match (e.at.start.checked_sub(span.start), e.at.end <= span.end) {
                (Some(s), true) => Ok(Edit {
                    at: s..e.at.end - span.start,
                    text: e.text.clone(),
                }),
                _ => Err(EditError("a change falls outside its document".into())),
            },
        )
        .collect::<Result<_, _>>()?;
    let edited = edit::apply(&text[doc.span.clone()], local)?;
    let back = yaml::read(&edited);
    match back.docs.as_slice() {
        [Ok(d)] if d.value == expected => Ok((edits, expected)),
        [Ok(_)] => Err(EditError(
            "the edit reads back as a different value (an alias or a merge key shares it?)".into(),
        )),
        _ => Err(EditError(
            "the edit does not read back as one document".into(),
        )),
    }
}

/// The image replacements and record additions of the pinned sites of one document.
fn operations(plan: &FilePlan, pins: &[(usize, String)]) -> Vec<PatchOperation> {
    let mut ops = Vec::new();
    let mut by_object: BTreeMap<usize, Vec<&ImageSite>> = BTreeMap::new();
    for (si, new) in pins {
        let s = &plan.sites[*si];
        by_object.entry(s.object).or_default().push(&s.site);
        ops.extend(podspec::replace_ops([(&s.site, new.clone())]));
    }
    for (oi, sites) in by_object {
        if let Some(record) = &plan.objects[oi].record {
            ops.extend(record.ops(&sites));
        }
    }
    ops
}

fn tokens(p: &PointerBuf) -> Vec<String> {
    p.tokens().map(|t| t.decoded().into_owned()).collect()
}

/// The whole edited file read back: every edited document as intended, every other one
/// unchanged. A last guard: [`edit_doc`] already checked each document alone.
fn check_file(
    plan: &FilePlan,
    text: &str,
    expected: &BTreeMap<usize, Value>,
) -> Result<(), EditError> {
    let back = yaml::read(text);
    let before = plan.docs.iter().enumerate();
    let mut after = back.docs.iter();
    for (di, d) in before {
        let now = after.next();
        let same = match (&d.parsed, now) {
            (Ok(doc), Some(Ok(n))) => expected.get(&di).unwrap_or(&doc.value) == &n.value,
            (Err(_), Some(Err(_))) => true,
            _ => false,
        };
        if !same {
            let msg = format!("document {} would read back differently", d.number);
            return Err(EditError(msg));
        }
    }
    match after.next() {
        None => Ok(()),
        Some(_) => Err(EditError("the edits would add a document".into())),
    }
}

/// Joins several files into one stream (`-o OUT`, stdout). A `---` must start a line, so a
/// file that does not end with a line break gets one; when its last value is a block scalar,
/// whose value that would change, its header gets strip chomping (`|` → `|-`) first. The joined
/// text is read back: `Err` names the file whose values would change.
pub fn join(pieces: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    for (i, (name, text)) in pieces.iter().enumerate() {
        let mut text = text.as_str();
        if i > 0 {
            text = text.strip_prefix('\u{feff}').unwrap_or(text);
        }
        let piece = if i + 1 < pieces.len() && !text.is_empty() && !text.ends_with('\n') {
            end_with_line_break(text).ok_or_else(|| {
                format!("{name}: cannot join it with the other inputs without changing its last value; write it alone")
            })?
        } else {
            text.to_string()
        };
        if !out.is_empty() && !piece.starts_with("---") && !piece.is_empty() {
            out.push_str(if piece.starts_with('%') {
                "...\n"
            } else {
                "---\n"
            });
        }
        out.push_str(&piece);
    }
    Ok(out)
}

/// `text` with a final line break, its values unchanged, or `None`.
fn end_with_line_break(text: &str) -> Option<String> {
    let before = yaml::read(text);
    let same = |t: &str| {
        let after = yaml::read(t);
        after.docs.len() == before.docs.len()
            && before
                .docs
                .iter()
                .zip(&after.docs)
                .all(|(a, b)| match (a, b) {
                    (Ok(a), Ok(b)) => a.value == b.value,
                    (Err(_), Err(_)) => true,
                    _ => false,
                })
    };
    let plain = format!("{text}\n");
    if same(&plain) {
        return Some(plain);
    }
    let last = before.docs.iter().rev().find_map(|d| d.as_ref().ok())?;
    let scalar = last
        .nodes
        .iter()
        .filter(|n| n.span.end == text.len())
        .find(|n| {
            matches!(
                n.kind,
                yaml::NodeKind::Scalar {
                    style: granit_parser::ScalarStyle::Literal | granit_parser::ScalarStyle::Folded,
                    ..
                }
            )
        })?;
    let header = edit::block_header(text, scalar.span.start)?;
    let rest = &text[header + 1..];
    let len = rest
        .find(|c: char| !matches!(c, '1'..='9' | '+' | '-'))
        .unwrap_or(rest.len());
    let indent: String = rest[..len].chars().filter(char::is_ascii_digit).collect();
    let stripped = format!(
        "{}{indent}-{}\n",
        &text[..header + 1],
        &text[header + 1 + len..]
    );
    same(&stripped).then_some(stripped)
}
