//! Planning: which documents can be read, which objects hold pod specs, and what to ask the
//! registry for each image. Pure.

use std::collections::BTreeSet;

use json_patch::jsonptr::PointerBuf;
use serde_json::Value;

use super::options::{Action, Options, Source};
use super::yaml::{self, Document, NodeKind};
use crate::podspec::{self, ImageSite, Incomplete, Record, Why};
use crate::reference::{ImageRef, ReferenceError};

/// One image field of one object of one document.
#[derive(Debug, Clone)]
pub struct Site {
    pub site: ImageSite,
    /// Index into `FilePlan::objects`.
    pub object: usize,
}

/// An object holding pod specs.
#[derive(Debug, Clone)]
pub struct Object {
    /// Index into `FilePlan::docs`.
    pub doc: usize,
    /// `Kind name` for messages.
    pub what: String,
    /// Where the `tagpin.io/pinned` record goes (none for an object with several pod specs).
    pub record: Option<Record>,
}

/// An `image` field outside every pod spec tagpin knows (a Tekton step, an operator's field),
/// or one the discovery rule cannot decide about; or (`image` empty, `incomplete` set) an
/// object the rule did not judge at all.
#[derive(Debug, Clone)]
pub struct Unjudged {
    pub doc: usize,
    pub what: String,
    pub label: String,
    pub image: String,
    pub why: Why,
    pub incomplete: Option<Incomplete>,
}

/// One document: read (with its number among the non-empty ones) or not.
#[derive(Debug, Clone)]
pub struct Doc {
    pub parsed: Result<Document, yaml::Invalid>,
    /// 1-based among the non-empty documents of the file.
    pub number: usize,
}

/// A read file and every image in it.
#[derive(Debug, Clone)]
pub struct FilePlan {
    pub source: Source,
    pub docs: Vec<Doc>,
    pub objects: Vec<Object>,
    pub sites: Vec<Site>,
    pub unjudged: Vec<Unjudged>,
    /// `line:column` of a `{{` that YAML does not read as part of a string: a Helm template.
    pub helm: Option<(usize, usize)>,
}

impl FilePlan {
    /// Every reason this file cannot be pinned as a whole or in part, in tagpin's words.
    pub fn invalid(&self) -> Vec<String> {
        let name = &self.source.name;
        if let Some((line, column)) = self.helm {
            return vec![format!(
                "{name}:{line}:{column}: a Helm template ({{{{ … }}}} outside a string), not YAML: render it first (helm template …) and pin the output"
            )];
        }
        self.docs
            .iter()
            .filter_map(|d| d.parsed.as_ref().err().map(|e| (d.number, &e.problem)))
            .map(|(n, p)| {
                format!(
                    "{name}:{}:{}: document {n} is not valid YAML: {}",
                    p.line, p.column, p.message
                )
            })
            .collect()
    }
}

/// Reads a file into documents and finds every image in every object tagpin handles (the
/// webhook's kinds, Pods, pod-spec shapes in custom resources, and the items of a `List`).
pub fn plan_file(source: Source) -> FilePlan {
    let stream = yaml::read(&source.text);
    let mut number = 0;
    let docs: Vec<Doc> = stream
        .docs
        .into_iter()
        .map(|parsed| {
            if parsed.as_ref().map_or(true, |d| !d.is_empty()) {
                number += 1;
            }
            Doc {
                parsed,
                number: number.max(1),
            }
        })
        .collect();
    let mut plan = FilePlan {
        helm: None,
        source,
        docs,
        objects: Vec::new(),
        sites: Vec::new(),
        unjudged: Vec::new(),
    };
    plan.helm = helm_at(&plan);
    if plan.helm.is_none() {
        for di in 0..plan.docs.len() {
            plan_doc(&mut plan, di);
        }
    }
    plan
}

/// The objects of one document: itself, or the items of a `List`.
fn plan_doc(plan: &mut FilePlan, di: usize) {
    let Ok(doc) = &plan.docs[di].parsed else {
        return;
    };
    let value = doc.value.clone();
    let is_list = value.get("kind").and_then(Value::as_str) == Some("List")
        && value.get("items").is_some_and(Value::is_array);
    let items: Vec<(PointerBuf, &Value)> = match value.get("items").and_then(Value::as_array) {
        Some(items) if is_list => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    PointerBuf::from_tokens(["items".to_string(), i.to_string()]),
                    v,
                )
            })
            .collect(),
        _ => vec![(PointerBuf::new(), &value)],
    };
    for (prefix, obj) in items {
        plan_object(plan, di, &prefix, obj);
    }
}

fn plan_object(plan: &mut FilePlan, di: usize, prefix: &PointerBuf, obj: &Value) {
    let str_of = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or("");
    let (kind, group) = (str_of("kind"), podspec::api_group(str_of("apiVersion")));
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("(no name)");
    let what = format!("{kind} {name}");
    let found = podspec::discover(group, kind, obj);
    let specs = found.specs;
    let owned = !specs.iter().any(|s| s.is_pod) && podspec::is_controller_owned(obj);
    if let Some(why) = found.incomplete {
        plan.unjudged.push(Unjudged {
            doc: di,
            what: what.clone(),
            label: String::new(),
            image: String::new(),
            why: Why::Undecided,
            incomplete: Some(why),
        });
    }
    for other in found.others {
        plan.unjudged.push(Unjudged {
            doc: di,
            what: what.clone(),
            label: other.label(),
            image: other.image,
            why: other.why,
            incomplete: None,
        });
    }
    if specs.is_empty() || owned {
        return;
    }
    let found = podspec::images_of(obj, &specs);
    let record = podspec::record_of(obj, &specs, &found).map(|r| r.prefixed(prefix));
    plan.objects.push(Object {
        doc: di,
        what,
        record,
    });
    for site in podspec::prefix_sites(found, prefix) {
        plan.sites.push(Site {
            site,
            object: plan.objects.len() - 1,
        });
    }
}

/// A `{{` that the YAML reader did not take as part of a string value: a template.
fn helm_at(plan: &FilePlan) -> Option<(usize, usize)> {
    let text = &plan.source.text;
    let in_string = |at: usize| {
        plan.docs.iter().any(|d| match &d.parsed {
            Ok(doc) => doc.nodes.iter().any(|n| {
                matches!(n.kind, NodeKind::Scalar { .. }) && n.span.start <= at && at < n.span.end
            }),
            Err(_) => false,
        })
    };
    let at = text
        .match_indices("{{")
        .map(|(i, _)| i)
        .find(|&i| !in_string(i) && !in_comment(text, i))?;
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let line = text[..at].matches('\n').count() + 1;
    Some((line, text[line_start..at].chars().count() + 1))
}

/// True when `at` follows a `#` that starts a comment on its line (a rough test: `#` at the
/// line start or after a space, outside quotes).
fn in_comment(text: &str, at: usize) -> bool {
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let before = &text[line_start..at];
    let mut quote = None;
    let mut prev = ' ';
    for c in before.chars() {
        match (quote, c) {
            (None, '#') if prev == ' ' || prev == '\t' => return true,
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
        prev = c;
    }
    false
}

/// What to ask the registry for one site.
pub enum Ask {
    /// A tag to pin.
    Pin(ImageRef),
    /// A digest whose recorded tag is checked.
    Check {
        recorded: ImageRef,
        digest: String,
    },
    Nothing,
    Invalid(ReferenceError),
}

pub fn skipped(image: &str, opts: &Options) -> bool {
    opts.skip_prefixes
        .iter()
        .any(|p| image.starts_with(p.as_str()))
}

pub fn ask(site: &ImageSite, record: Option<&Record>, opts: &Options) -> Ask {
    if skipped(&site.image, opts) {
        return Ask::Nothing;
    }
    match ImageRef::parse(&site.image) {
        Ok(r) => Ask::Pin(r),
        Err(ReferenceError::HasDigest { .. }) if opts.mode == Action::Check => {
            check_digest(site, record)
        }
        Err(ReferenceError::HasDigest { .. }) => Ask::Nothing,
        Err(e) => Ask::Invalid(e),
    }
}

/// `repo:tag@sha256:…` records its tag inline; otherwise the record annotation may.
fn check_digest(site: &ImageSite, record: Option<&Record>) -> Ask {
    let Some((before, digest)) = site.image.split_once('@') else {
        return Ask::Nothing;
    };
    let recorded = podspec::recorded_tag(before, record.and_then(|rec| rec.recorded(&site.key)));
    match recorded {
        Some(recorded) => Ask::Check {
            recorded,
            digest: digest.to_string(),
        },
        None => Ask::Nothing,
    }
}

/// Every distinct image the registry is asked for, in first-seen order.
pub fn wanted(plans: &[FilePlan], opts: &Options) -> Vec<ImageRef> {
    let mut wanted = Vec::new();
    let mut seen = BTreeSet::new();
    for plan in plans {
        for s in &plan.sites {
            let image = match ask(&s.site, plan.objects[s.object].record.as_ref(), opts) {
                Ask::Pin(r) if opts.mode == Action::Pin => r,
                Ask::Check { recorded, .. } => recorded,
                _ => continue,
            };
            if seen.insert(image.original().to_string()) {
                wanted.push(image);
            }
        }
    }
    wanted
}
