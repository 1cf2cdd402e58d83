//! `tagpin pin`: the webhook's resolver over Kubernetes YAML files, for CI and GitOps.
//!
//! Reading, planning and editing are pure ([`plan_file`], [`render`]); [`run`] adds the files,
//! the resolver and the output. A document is rewritten line by line (comments and layout kept),
//! and the result is re-parsed and compared with the intended object; when they differ (flow
//! style, block scalars, anchors) that one document is re-serialized instead, and stderr says so.

pub mod text;

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use json_patch::jsonptr::PointerBuf;
use serde_json::Value;

use crate::podspec::{self, ImageSite, Record};
use crate::reference::{ImageRef, ReferenceError};
use crate::resolve::{BatchRequest, Budget, ImageOutcome, Outcome, Resolver};

/// Input and output problems: nothing is written when one occurs.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: document {doc} is not valid YAML: {message}")]
    Parse {
        file: String,
        doc: usize,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("--in-place needs files: stdin cannot be rewritten")]
    InPlaceStdin,
}

/// One input: a file, or stdin (`-`).
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub path: Option<PathBuf>,
    pub text: String,
}

/// What `pin` does with the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pin,
    Check,
}

/// Settings for one run.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub keep_tag: bool,
    pub skip_prefixes: Vec<String>,
    /// Budget of one image's lookup.
    pub lookup_timeout: Duration,
}

/// One image field of one object of one document.
#[derive(Debug, Clone)]
struct Site {
    site: ImageSite,
    /// Index into `FilePlan::objects`.
    object: usize,
}

#[derive(Debug, Clone)]
struct Object {
    doc: usize,
    /// `Kind name` for messages.
    what: String,
    record: Record,
    /// Metadata locations of the record, as tokens (for the text edit; only top-level objects).
    metas: Vec<Vec<&'static str>>,
    in_list: bool,
}

/// One YAML document: its text chunk and parsed value (`None` for an empty document).
#[derive(Debug, Clone)]
struct Doc {
    chunk: String,
    value: Option<Value>,
    /// 1-based among the non-empty documents of the file.
    number: usize,
}

/// A parsed file and every image site in it.
#[derive(Debug, Clone)]
pub struct FilePlan {
    source: Source,
    docs: Vec<Doc>,
    objects: Vec<Object>,
    sites: Vec<Site>,
}

/// The error's text without its location prefix and source snippet (we give our own).
fn plain_message(e: &serde_saphyr::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    match first.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((_, msg)) => msg.to_string(),
        None => first.to_string(),
    }
}

fn parse_chunk(chunk: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    serde_saphyr::from_multiple::<Value>(chunk)
}

/// Parses a file into documents and finds every image in every object tagpin handles
/// (the webhook's kinds, Pods, and the items of a `List`). Pure.
pub fn plan_file(source: Source) -> Result<FilePlan, PinError> {
    let mut docs = Vec::new();
    let mut number = 0;
    let mut line: u64 = 1;
    for chunk in text::split_chunks(&source.text) {
        let values = parse_chunk(chunk).map_err(|e| {
            let (l, column) = e.location().map_or((1, 0), |l| (l.line(), l.column()));
            PinError::Parse {
                file: source.name.clone(),
                doc: number + 1,
                line: line + l.saturating_sub(1),
                column,
                message: plain_message(&e),
            }
        })?;
        line += chunk.matches('\n').count() as u64;
        // `...` followed by more content puts two documents in one chunk: keep them apart.
        let n = values.len();
        for (i, value) in values.into_iter().enumerate() {
            number += 1;
            docs.push(Doc {
                chunk: if i + 1 == n {
                    chunk.to_string()
                } else {
                    String::new()
                },
                value: Some(value),
                number,
            });
        }
        if n > 1 {
            // The text cannot be split per document: re-serialize these.
            for d in docs.iter_mut().rev().take(n) {
                d.chunk.clear();
            }
        }
        if n == 0 {
            docs.push(Doc {
                chunk: chunk.to_string(),
                value: None,
                number,
            });
        }
    }
    let mut objects = Vec::new();
    let mut sites = Vec::new();
    for (di, doc) in docs.iter().enumerate() {
        let Some(value) = &doc.value else { continue };
        let is_list = value.get("kind").and_then(Value::as_str) == Some("List");
        let items: Vec<(PointerBuf, &Value)> = if is_list {
            value
                .get("items")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .enumerate()
                        .map(|(i, v)| {
                            (
                                PointerBuf::from_tokens(["items".to_string(), i.to_string()]),
                                v,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            vec![(PointerBuf::new(), value)]
        };
        for (prefix, obj) in items {
            let str_of = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or("");
            let kind = str_of("kind");
            let Some(target) = podspec::target(podspec::api_group(str_of("apiVersion")), kind)
            else {
                continue;
            };
            if !target.is_pod && podspec::is_controller_owned(obj) {
                continue;
            }
            let found = podspec::find_images(obj, target.spec_at);
            let record = Record::new(obj, &target, &found).prefixed(&prefix);
            let mut metas = vec![vec!["metadata"]];
            metas.extend(target.template_meta_at.map(<[&str]>::to_vec));
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("(no name)");
            objects.push(Object {
                doc: di,
                what: format!("{kind} {name}"),
                record,
                metas,
                in_list: is_list,
            });
            for site in podspec::prefix_sites(found, &prefix) {
                sites.push(Site {
                    site,
                    object: objects.len() - 1,
                });
            }
        }
    }
    Ok(FilePlan {
        source,
        docs,
        objects,
        sites,
    })
}

/// What to ask the registry for one site.
enum Ask {
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

fn ask(site: &ImageSite, record: &Record, opts: &Options) -> Ask {
    if opts
        .skip_prefixes
        .iter()
        .any(|p| site.image.starts_with(p.as_str()))
    {
        return Ask::Nothing;
    }
    match ImageRef::parse(&site.image) {
        Ok(r) => Ask::Pin(r),
        Err(ReferenceError::HasDigest { .. }) => {
            if opts.mode == Mode::Pin {
                return Ask::Nothing;
            }
            let Some((before, digest)) = site.image.split_once('@') else {
                return Ask::Nothing;
            };
            // `repo:tag@sha256:…` records its tag inline; otherwise the record annotation.
            let recorded = match ImageRef::parse(before) {
                Ok(r) if r.written_repository() != before => Some(r),
                _ => record
                    .recorded(&site.key)
                    .and_then(|orig| ImageRef::parse(orig).ok())
                    .filter(|r| r.written_repository() == before),
            };
            match recorded {
                Some(recorded) => Ask::Check {
                    recorded,
                    digest: digest.to_string(),
                },
                None => Ask::Nothing,
            }
        }
        Err(e) => Ask::Invalid(e),
    }
}

/// The outcome of a run, for the exit code.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub documents: usize,
    pub pinned: usize,
    /// Images that could not be pinned (pin) or are not pinned / not current (check).
    pub problems: usize,
    /// Documents that had to be re-serialized (comments and layout lost).
    pub reserialized: usize,
}

/// One file's result: its new text and what happened.
#[derive(Debug)]
pub struct Rendered {
    pub text: String,
    pub pinned: usize,
    /// One line per image left unpinned (pin) or not pinned / moved (check).
    pub problems: Vec<String>,
    /// One line per document that had to be re-serialized.
    pub notes: Vec<String>,
}

/// Applies resolved digests (keyed by the image as written) to one file. Pure.
pub fn render(plan: &FilePlan, opts: &Options, results: &HashMap<String, Outcome>) -> Rendered {
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    // Per document: the sites pinned, with their new value.
    let mut pins: Vec<Vec<(usize, String)>> = vec![Vec::new(); plan.docs.len()];
    for (si, s) in plan.sites.iter().enumerate() {
        let obj = &plan.objects[s.object];
        let doc = &plan.docs[obj.doc];
        let at = format!(
            "{}: document {} ({}) {}",
            plan.source.name, doc.number, obj.what, s.site.label
        );
        match ask(&s.site, &obj.record, opts) {
            Ask::Nothing => {}
            Ask::Invalid(e) => problems.push(format!("{at}: {e}")),
            Ask::Pin(image) => match (opts.mode, results.get(image.original())) {
                (Mode::Check, _) => {
                    problems.push(format!("{at}: {image} is not pinned to a digest"));
                }
                (Mode::Pin, Some(Outcome::Pinned(d) | Outcome::Stale { digest: d, .. })) => {
                    pins[obj.doc].push((si, image.pinned(d, opts.keep_tag)));
                }
                (Mode::Pin, Some(Outcome::Failed(e))) => {
                    problems.push(format!("{at}: {image} left unpinned: {e}"));
                }
                (Mode::Pin, None) => {
                    problems.push(format!("{at}: {image} left unpinned: not resolved"));
                }
            },
            Ask::Check { recorded, digest } => match results.get(recorded.original()) {
                Some(Outcome::Pinned(d) | Outcome::Stale { digest: d, .. })
                    if d.to_string() != digest =>
                {
                    problems.push(format!(
                        "{at}: {} is pinned from {recorded}, which now points to {d}",
                        s.site.image
                    ));
                }
                Some(Outcome::Pinned(_) | Outcome::Stale { .. }) => {}
                Some(Outcome::Failed(e)) => problems.push(format!(
                    "{at}: cannot check {} against {recorded}: {e}",
                    s.site.image
                )),
                None => problems.push(format!(
                    "{at}: cannot check {} against {recorded}: not resolved",
                    s.site.image
                )),
            },
        }
    }
    let mut out = String::with_capacity(plan.source.text.len());
    let mut pinned = 0;
    for (di, doc) in plan.docs.iter().enumerate() {
        let (Some(value), false) = (&doc.value, pins[di].is_empty()) else {
            out.push_str(&doc.chunk);
            if doc.chunk.is_empty() {
                // One of several documents sharing a chunk: nothing to change, re-serialize.
                if let Some(v) = &doc.value {
                    let lead = if out.is_empty() { "" } else { "---\n" };
                    push_serialized(&mut out, v, lead);
                }
            }
            continue;
        };
        pinned += pins[di].len();
        let (expected, edits) = intended(plan, di, value, &pins[di]);
        match text_edit(&doc.chunk, &pins[di], plan, &edits, &expected) {
            Some(edited) => out.push_str(&edited),
            None => {
                notes.push(format!(
                    "{}: document {}: comments and layout not kept (a shape the line editor does not handle); the document was re-serialized",
                    plan.source.name, doc.number
                ));
                let lead = doc
                    .chunk
                    .lines()
                    .next()
                    .filter(|l| l.starts_with("---"))
                    .map(|l| format!("{l}\n"))
                    .unwrap_or_else(|| {
                        if out.is_empty() {
                            String::new()
                        } else {
                            "---\n".to_string()
                        }
                    });
                if doc.chunk.trim_start().starts_with('{') {
                    // A JSON document stays JSON.
                    out.push_str(&lead);
                    out.push_str(
                        &serde_json::to_string_pretty(&expected)
                            .unwrap_or_else(|_| expected.to_string()),
                    );
                    out.push('\n');
                } else {
                    push_serialized(&mut out, &expected, &lead);
                }
            }
        }
    }
    Rendered {
        text: out,
        pinned,
        problems,
        notes,
    }
}

fn push_serialized(out: &mut String, v: &Value, lead: &str) {
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(lead);
    match serde_saphyr::to_string(v) {
        Ok(s) => {
            out.push_str(&s);
            if !s.ends_with('\n') {
                out.push('\n');
            }
        }
        // A JSON value always serializes; keep JSON (valid YAML) if it ever does not.
        Err(_) => {
            out.push_str(&v.to_string());
            out.push('\n');
        }
    }
}

/// The intended document after pinning, and the record values to write per object metadata
/// (object index, metadata tokens, value).
#[allow(clippy::type_complexity)]
fn intended(
    plan: &FilePlan,
    di: usize,
    value: &Value,
    pins: &[(usize, String)],
) -> (Value, Vec<(usize, Vec<&'static str>, String)>) {
    let mut ops = Vec::new();
    let mut objects: BTreeSet<usize> = BTreeSet::new();
    for (si, new) in pins {
        let s = &plan.sites[*si];
        objects.insert(s.object);
        ops.extend(podspec::replace_ops([(&s.site, new.clone())]));
    }
    for &oi in &objects {
        let these: Vec<&ImageSite> = pins
            .iter()
            .map(|(si, _)| &plan.sites[*si])
            .filter(|s| s.object == oi)
            .map(|s| &s.site)
            .collect();
        ops.extend(plan.objects[oi].record.ops(&these));
    }
    let mut expected = value.clone();
    // The operations are built from this very value; a failure would be a bug: keep the original.
    if json_patch::patch(&mut expected, &ops).is_err() {
        expected = value.clone();
    }
    let mut edits = Vec::new();
    for &oi in &objects {
        let o = &plan.objects[oi];
        debug_assert_eq!(o.doc, di);
        if o.in_list {
            continue;
        }
        for meta in &o.metas {
            let ptr = PointerBuf::from_tokens(
                meta.iter()
                    .copied()
                    .chain(["annotations", podspec::PINNED_ANNOTATION]),
            );
            let now = expected.pointer(ptr.as_str()).and_then(Value::as_str);
            let before = value.pointer(ptr.as_str()).and_then(Value::as_str);
            if let Some(now) = now.filter(|n| Some(*n) != before) {
                edits.push((oi, meta.clone(), now.to_string()));
            }
        }
    }
    (expected, edits)
}

/// The line-level edit of one document, accepted only when it parses back to `expected`.
fn text_edit(
    chunk: &str,
    pins: &[(usize, String)],
    plan: &FilePlan,
    records: &[(usize, Vec<&'static str>, String)],
    expected: &Value,
) -> Option<String> {
    if chunk.is_empty() || plan.objects[plan.sites[pins.first()?.0].object].in_list {
        return None;
    }
    let replace: HashMap<String, String> = pins
        .iter()
        .map(|(si, new)| (plan.sites[*si].site.image.clone(), new.clone()))
        .collect();
    let mut edited = text::replace_images(chunk, &replace);
    for (_, meta, value) in records {
        edited = text::set_record(&edited, meta, value)?;
    }
    let back = parse_chunk(&edited).ok()?;
    (back.len() == 1 && back[0] == *expected).then_some(edited)
}

/// Reads the inputs: files, directories (recursively, `*.yaml` and `*.yml`, sorted, hidden
/// directories skipped), and `-` for stdin. No inputs means stdin.
pub fn read_inputs(inputs: &[PathBuf]) -> Result<Vec<Source>, PinError> {
    let mut out = Vec::new();
    if inputs.is_empty() {
        return Ok(vec![read_stdin()?]);
    }
    for p in inputs {
        if p.as_os_str() == "-" {
            out.push(read_stdin()?);
        } else if p.is_dir() {
            let mut files = Vec::new();
            walk(p, &mut files)?;
            files.sort();
            for f in files {
                out.push(read_file(&f)?);
            }
        } else {
            out.push(read_file(p)?);
        }
    }
    Ok(out)
}

fn read_stdin() -> Result<Source, PinError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| PinError::Read {
            path: "stdin".into(),
            source,
        })?;
    Ok(Source {
        name: "stdin".into(),
        path: None,
        text,
    })
}

fn read_file(p: &Path) -> Result<Source, PinError> {
    let text = std::fs::read_to_string(p).map_err(|source| PinError::Read {
        path: p.display().to_string(),
        source,
    })?;
    Ok(Source {
        name: p.display().to_string(),
        path: Some(p.to_path_buf()),
        text,
    })
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), PinError> {
    let err = |source| PinError::Read {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ft = entry.file_type().map_err(err)?;
        if ft.is_dir() {
            if !name.starts_with('.') {
                walk(&path, out)?;
            }
        } else if (ft.is_file() || ft.is_symlink())
            && path.is_file()
            && path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        {
            out.push(path);
        }
    }
    Ok(())
}

/// Where the result goes.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File(PathBuf),
    InPlace,
}

/// Resolves every distinct image of all files through the resolver's one entry point (deduped,
/// coalesced and cached there), with a progress line on stderr when it takes over a second.
/// Files carry no namespace: pull secrets do not apply; credential plugins and
/// `--docker-config` do. Credential warnings go to stderr.
async fn resolve(
    resolver: &Resolver,
    images: Vec<ImageRef>,
    timeout: Duration,
) -> HashMap<String, Outcome> {
    let total = images.len();
    let done = Arc::new(AtomicUsize::new(0));
    let progress = {
        let done = done.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval_at(
                tokio::time::Instant::now() + Duration::from_secs(1),
                Duration::from_secs(1),
            );
            loop {
                tick.tick().await;
                eprintln!(
                    "tagpin: resolving {total} image(s): {} done, {:.0?} so far",
                    done.load(Ordering::Relaxed),
                    started.elapsed()
                );
            }
        })
    };
    let req = BatchRequest {
        progress: Some(done),
        ..BatchRequest::default()
    };
    let names: Vec<&str> = images.iter().map(ImageRef::original).collect();
    // A CI run is not an admission: each lookup gets the lookup timeout, however many queue.
    let rounds = u32::try_from(total.div_ceil(16).max(1)).unwrap_or(u32::MAX);
    let batch = resolver
        .resolve_batch(
            &req,
            &names,
            Budget::from_now(timeout.saturating_mul(rounds)),
        )
        .await;
    progress.abort();
    for w in &batch.warnings {
        eprintln!("{w}");
    }
    let mut out = HashMap::with_capacity(total);
    for (image, outcome) in images.iter().zip(batch.outcomes) {
        if let ImageOutcome::Resolved(_, o) = outcome {
            out.insert(image.original().to_string(), o);
        }
    }
    out
}

/// Runs `pin` or `--check` over the sources. Problems go to stderr; the report decides the exit
/// code. `Err` only for input and output failures (then nothing is written).
pub async fn run(
    sources: Vec<Source>,
    resolver: &Resolver,
    opts: &Options,
    output: &Output,
) -> Result<Report, PinError> {
    if matches!(output, Output::InPlace) && sources.iter().any(|s| s.path.is_none()) {
        return Err(PinError::InPlaceStdin);
    }
    let plans = sources
        .into_iter()
        .map(plan_file)
        .collect::<Result<Vec<_>, _>>()?;
    let mut wanted: Vec<ImageRef> = Vec::new();
    let mut seen = BTreeSet::new();
    for plan in &plans {
        for s in &plan.sites {
            let image = match ask(&s.site, &plan.objects[s.object].record, opts) {
                Ask::Pin(r) if opts.mode == Mode::Pin => r,
                Ask::Check { recorded, .. } => recorded,
                _ => continue,
            };
            if seen.insert(image.original().to_string()) {
                wanted.push(image);
            }
        }
    }
    let results = resolve(resolver, wanted, opts.lookup_timeout).await;
    let mut report = Report {
        files: plans.len(),
        documents: plans
            .iter()
            .map(|p| p.docs.iter().filter(|d| d.value.is_some()).count())
            .sum(),
        ..Report::default()
    };
    let mut stdout_text = String::new();
    for plan in &plans {
        let r = render(plan, opts, &results);
        report.pinned += r.pinned;
        report.problems += r.problems.len();
        report.reserialized += r.notes.len();
        for p in &r.problems {
            eprintln!("tagpin: {p}");
        }
        for n in &r.notes {
            eprintln!("tagpin: note: {n}");
        }
        if opts.mode == Mode::Check {
            continue;
        }
        match (output, &plan.source.path) {
            (Output::InPlace, Some(path)) => {
                if r.text != plan.source.text {
                    write_atomically(path, &r.text)?;
                }
            }
            _ => {
                if !stdout_text.is_empty() {
                    if !stdout_text.ends_with('\n') {
                        stdout_text.push('\n');
                    }
                    if !r.text.starts_with("---") {
                        stdout_text.push_str("---\n");
                    }
                }
                stdout_text.push_str(&r.text);
            }
        }
    }
    match output {
        Output::InPlace => {}
        _ if opts.mode == Mode::Check => {}
        Output::Stdout => {
            let mut o = std::io::stdout().lock();
            o.write_all(stdout_text.as_bytes())
                .and_then(|()| o.flush())
                .map_err(|source| PinError::Write {
                    path: "stdout".into(),
                    source,
                })?;
        }
        Output::File(p) => write_atomically(p, &stdout_text)?,
    }
    let verb = match opts.mode {
        Mode::Pin => format!("pinned {} image(s)", report.pinned),
        Mode::Check => "checked".to_string(),
    };
    if std::io::stderr().is_terminal() || report.problems > 0 || opts.mode == Mode::Check {
        eprintln!(
            "tagpin: {verb} in {} document(s) of {} file(s); {} problem(s)",
            report.documents, report.files, report.problems
        );
    }
    Ok(report)
}

/// Writes via a temporary file in the same directory and a rename, keeping the permissions. A
/// symlink is followed: its target is rewritten, the link stays.
fn write_atomically(path: &Path, text: &str) -> Result<(), PinError> {
    let err = |source| PinError::Write {
        path: path.display().to_string(),
        source,
    };
    let resolved = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => path.to_path_buf(),
        Err(e) => return Err(err(e)),
    };
    let path = resolved.as_path();
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tagpin-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn source(text: &str) -> Source {
        Source {
            name: "deploy/app.yaml".into(),
            path: None,
            text: text.into(),
        }
    }

    fn opts(mode: Mode) -> Options {
        Options {
            mode,
            keep_tag: false,
            skip_prefixes: vec![],
            lookup_timeout: Duration::from_secs(5),
        }
    }

    fn results(pairs: &[(&str, &str)]) -> HashMap<String, Outcome> {
        pairs
            .iter()
            .map(|(i, d)| (i.to_string(), Outcome::Pinned(Digest::parse(d).unwrap())))
            .collect()
    }

    const MIXED: &str = "# app manifests\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg # no images\ndata:\n  image: nginx:1.27\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n        - name: web\n          image: nginx:1.27 # pinned by CI\n---\n# empty\n";

    #[test]
    fn pins_in_place_keeping_comments_and_other_documents() {
        let plan = plan_file(source(MIXED)).unwrap();
        let r = render(&plan, &opts(Mode::Pin), &results(&[("nginx:1.27", D1)]));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(r.pinned, 1);
        let want = MIXED
            .replace(
                "image: nginx:1.27 # pinned",
                &format!("image: nginx@{D1} # pinned"),
            )
            .replace(
                "metadata:\n  name: web\n",
                "metadata:\n  annotations:\n    tagpin.io/pinned: '{\"web\":\"nginx:1.27\"}'\n  name: web\n",
            )
            .replace(
                "    metadata:\n      labels",
                "    metadata:\n      annotations:\n        tagpin.io/pinned: '{\"web\":\"nginx:1.27\"}'\n      labels",
            );
        assert_eq!(r.text, want);
    }

    #[test]
    fn check_reports_unpinned_and_moved_tags() {
        let plan = plan_file(source(MIXED)).unwrap();
        let r = render(&plan, &opts(Mode::Check), &HashMap::new());
        assert_eq!(
            r.problems,
            vec!["deploy/app.yaml: document 2 (Deployment web) containers/web: nginx:1.27 is not pinned to a digest"]
        );
        let pinned = render(&plan, &opts(Mode::Pin), &results(&[("nginx:1.27", D1)])).text;
        let plan = plan_file(source(&pinned)).unwrap();
        let r = render(&plan, &opts(Mode::Check), &results(&[("nginx:1.27", D1)]));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let r = render(&plan, &opts(Mode::Check), &results(&[("nginx:1.27", D2)]));
        assert_eq!(
            r.problems,
            vec![format!("deploy/app.yaml: document 2 (Deployment web) containers/web: nginx@{D1} is pinned from nginx:1.27, which now points to {D2}")]
        );
    }

    #[test]
    fn lists_and_flow_style_fall_back_to_reserializing() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: a, image: 'redis:7'}]}\n";
        let plan = plan_file(source(list)).unwrap();
        let r = render(&plan, &opts(Mode::Pin), &results(&[("redis:7", D1)]));
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        let back: Value = serde_saphyr::from_str(&r.text).unwrap();
        assert_eq!(
            back.pointer("/items/0/spec/containers/0/image").unwrap(),
            &Value::String(format!("redis@{D1}"))
        );
        assert_eq!(
            back.pointer("/items/0/metadata/annotations/tagpin.io~1pinned")
                .unwrap(),
            r#"{"a":"redis:7"}"#
        );
    }

    #[test]
    fn parse_errors_name_file_document_and_line() {
        let bad = "kind: A\n---\nkind: B\n---\nkind: [unclosed\n";
        let e = plan_file(source(bad)).unwrap_err().to_string();
        assert_eq!(
            e,
            "deploy/app.yaml:5:7: document 3 is not valid YAML: unclosed bracket '['"
        );
    }

    #[test]
    fn a_json_document_stays_json() {
        let json_doc = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Pod\",\n  \"metadata\": {\"name\": \"p\"},\n  \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"redis:7\"}]}\n}\n";
        let plan = plan_file(source(json_doc)).unwrap();
        let r = render(&plan, &opts(Mode::Pin), &results(&[("redis:7", D1)]));
        let v: Value = serde_json::from_str(&r.text).unwrap();
        assert_eq!(v["spec"]["containers"][0]["image"], format!("redis@{D1}"));
        assert_eq!(
            v["metadata"]["annotations"]["tagpin.io/pinned"],
            r#"{"a":"redis:7"}"#
        );
    }

    #[test]
    fn documents_sharing_a_chunk_stay_separate_documents() {
        // `...` ends a document; the next one starts without `---`.
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers:\n  - {name: a, image: 'redis:7'}\n...\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\n";
        let plan = plan_file(source(text)).unwrap();
        let r = render(&plan, &opts(Mode::Pin), &results(&[("redis:7", D1)]));
        let back: Vec<Value> = serde_saphyr::from_multiple(&r.text).unwrap();
        assert_eq!(back.len(), 2, "{}", r.text);
        assert_eq!(
            back[0]["spec"]["containers"][0]["image"],
            format!("redis@{D1}")
        );
        assert_eq!(back[1]["kind"], "ConfigMap");
    }
}
