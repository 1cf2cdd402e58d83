//! `tagpin pin`: the webhook's resolver over Kubernetes YAML files, for CI and GitOps.
//!
//! Split by reason to change: [`yaml`] reads YAML as Kubernetes does, keeping source spans;
//! [`plan`] finds the images; [`edit`] and [`render`] write the digests over their own bytes
//! (never re-serializing: a document that cannot be edited in place is left as written and
//! reported); [`files`] reads and writes. [`run`] ties them to the resolver ([`lookup`], the one
//! place that calls it) and returns a [`Report`] whose messages `commands::pin` prints; [`options`] holds what a run is
//! given.

pub mod edit;
pub mod files;
pub mod options;
pub mod plan;
pub mod render;
pub mod yaml;

use std::collections::HashMap;
use std::time::{Duration, Instant};

pub use files::{read_inputs, Output};
pub use options::{Action, Options, PinError, Source};
pub use plan::{plan_file, FilePlan};
pub use render::{join, render, Rendered};

use crate::reference::ImageRef;
use crate::resolve::{BatchRequest, Budget, ImageOutcome, Outcome, Resolver};

/// What a run did, and every message for the user (printed by `commands::pin`).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub files: usize,
    pub documents: usize,
    pub pinned: usize,
    /// Documents changed (every one edited in place, by source span).
    pub edited: usize,
    /// Files and documents that cannot be read (with `file:line:column`), Helm templates.
    pub invalid: Vec<String>,
    /// True when `invalid` inputs were skipped (`--skip-invalid`) and the rest pinned.
    pub skipped_invalid: bool,
    /// Images left unpinned (pin), not pinned or moved (check), documents not editable.
    pub problems: Vec<String>,
    /// Image fields outside known pod specs, undecided ones, objects not judged (the same in
    /// `pin` and `--check`; problems instead with `--strict`).
    pub notes: Vec<String>,
    /// Credential sources that were skipped.
    pub warnings: Vec<String>,
}

impl Report {
    /// 0 all pinned (or current); 1 problems, or invalid inputs skipped; 2 invalid inputs,
    /// nothing written.
    pub fn exit_code(&self) -> u8 {
        match (
            self.invalid.is_empty(),
            self.skipped_invalid,
            self.problems.is_empty(),
        ) {
            (false, false, _) => 2,
            (true, _, true) => 0,
            _ => 1,
        }
    }

    /// The closing line: what was done and where it went (`--in-place` edits the files;
    /// stdout and `-o` get the edited text).
    pub fn summary(&self, mode: Action, output: &Output) -> String {
        let verb = match mode {
            Action::Pin => format!("pinned {} image(s)", self.pinned),
            Action::Check => "checked".to_string(),
        };
        let edited = match (mode, output) {
            (Action::Check, _) => String::new(),
            (Action::Pin, Output::InPlace) => format!(" ({} edited in place)", self.edited),
            (Action::Pin, Output::Stdout) => {
                format!(" ({} edited, written to stdout)", self.edited)
            }
            (Action::Pin, Output::File(p)) => {
                format!(" ({} edited, written to {})", self.edited, p.display())
            }
        };
        let notes = match self.notes.len() {
            0 => String::new(),
            n => format!(", {n} note(s)"),
        };
        format!(
            "{verb} in {} document(s){edited} of {} file(s); {} problem(s){notes}",
            self.documents,
            self.files,
            self.problems.len() + self.invalid.len()
        )
    }
}

/// Progress while resolving (a line now and then), for `commands::pin` to show.
pub use crate::progress::Progress;

/// The one place `pin` uses the resolver: images in, outcome per image (as written) out, plus
/// warnings about credential sources, through the resolver's one entry point (deduped,
/// coalesced and cached there). Files carry no namespace: pull secrets do not apply; credential
/// plugins and `--docker-config` do. `progress` hears every second while it takes longer.
pub async fn lookup(
    resolver: &Resolver,
    images: Vec<ImageRef>,
    timeout: Duration,
    progress: Progress<'_>,
) -> (HashMap<String, Outcome>, Vec<String>) {
    let total = images.len();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let req = BatchRequest {
        progress: Some(done.clone()),
        ..BatchRequest::default()
    };
    let names: Vec<&str> = images.iter().map(ImageRef::original).collect();
    // A CI run is not an admission: each lookup gets the lookup timeout, however many queue.
    let budget = Budget::for_queue(total, 16, timeout);
    let started = Instant::now();
    let line = || {
        format!(
            "resolving {total} image(s): {} done, {:.0?} so far",
            done.load(std::sync::atomic::Ordering::Relaxed),
            started.elapsed()
        )
    };
    let batch =
        crate::progress::report_while(resolver.resolve_batch(&req, &names, budget), line, progress)
            .await;
    let mut out = HashMap::with_capacity(total);
    for (image, outcome) in images.iter().zip(batch.outcomes) {
        if let ImageOutcome::Resolved(_, o) = outcome {
            out.insert(image.original().to_string(), o);
        }
    }
    (out, batch.warnings)
}

/// Runs `pin` or `--check` over the sources (`unreadable`: inputs that could not be read).
/// When any input is invalid nothing is resolved or written, unless `opts.skip_invalid`. `Err`
/// for output failures, and for an unreadable input that `--skip-invalid` would have to pass
/// through to stdout or `-o` (then nothing is written).
pub async fn run(
    sources: Vec<Source>,
    unreadable: Vec<String>,
    resolver: &Resolver,
    opts: &Options,
    output: &Output,
    progress: Progress<'_>,
) -> Result<Report, PinError> {
    if matches!(output, Output::InPlace) && sources.iter().any(|s| s.path.is_none()) {
        return Err(PinError::InPlaceStdin);
    }
    // Joined output leaves out what could not be read: refused rather than lost.
    if opts.skip_invalid
        && opts.mode == Action::Pin
        && !unreadable.is_empty()
        && !matches!(output, Output::InPlace)
    {
        return Err(PinError::CannotPassThrough(unreadable.join("; ")));
    }
    let plans: Vec<FilePlan> = sources.into_iter().map(plan_file).collect();
    let mut report = Report {
        files: plans.len(),
        invalid: unreadable,
        skipped_invalid: opts.skip_invalid,
        ..Report::default()
    };
    report
        .invalid
        .extend(plans.iter().flat_map(FilePlan::invalid));
    if report.invalid.is_empty() {
        report.skipped_invalid = false;
    } else if !opts.skip_invalid {
        return Ok(report);
    }
    // Helm templates are skipped whole (written as read: they hold no planned image).
    report.documents = plans
        .iter()
        .filter(|p| p.helm.is_none())
        .flat_map(|p| &p.docs)
        .filter(|d| d.parsed.as_ref().is_ok_and(|d| !d.is_empty()))
        .count();
    let (results, warnings) = lookup(
        resolver,
        plan::wanted(&plans, opts),
        opts.lookup_timeout,
        progress,
    )
    .await;
    report.warnings = warnings;
    let rendered = render_all(&plans, opts, &results, &mut report);
    if opts.mode == Action::Pin {
        write_out(&plans, &rendered, output)?;
    }
    Ok(report)
}

/// Every file rendered; a skipped (invalid) document or Helm template stays as read, in every
/// output mode.
fn render_all(
    plans: &[FilePlan],
    opts: &Options,
    results: &HashMap<String, Outcome>,
    report: &mut Report,
) -> Vec<Rendered> {
    plans
        .iter()
        .map(|plan| {
            let r = render(plan, opts, results);
            report.pinned += r.pinned;
            report.edited += r.edited;
            report.problems.extend(r.problems.iter().cloned());
            report.notes.extend(r.notes.iter().cloned());
            r
        })
        .collect()
}

fn write_out(plans: &[FilePlan], rendered: &[Rendered], output: &Output) -> Result<(), PinError> {
    match output {
        Output::InPlace => {
            for (plan, r) in plans.iter().zip(rendered) {
                if let (Some(path), true) = (&plan.source.path, r.text != plan.source.text) {
                    files::write_atomically(path, &r.text)?;
                }
            }
            Ok(())
        }
        Output::Stdout | Output::File(_) => {
            let pieces: Vec<(String, String)> = plans
                .iter()
                .zip(rendered)
                .map(|(p, r)| (p.source.name.clone(), r.text.clone()))
                .collect();
            let text = join(&pieces).map_err(PinError::Join)?;
            match output {
                Output::File(p) => files::write_atomically(p, &text),
                _ => files::write_stdout(&text),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Digest;
    use serde_json::Value;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn source(text: &str) -> Source {
        Source {
            name: "deploy/app.yaml".into(),
            path: None,
            text: text.into(),
        }
    }

    fn opts(mode: Action) -> Options {
        Options {
            mode,
            keep_tag: false,
            skip_prefixes: vec![],
            lookup_timeout: Duration::from_secs(5),
            skip_invalid: false,
            strict: false,
        }
    }

    fn plan_file(s: Source) -> Result<FilePlan, String> {
        let plan = super::plan_file(s);
        match plan.invalid().as_slice() {
            [] => Ok(plan),
            [first, ..] => Err(first.clone()),
        }
    }

    fn render(plan: &FilePlan, o: &Options, r: &HashMap<String, Outcome>) -> Rendered {
        super::render(plan, o, r)
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
        let r = render(&plan, &opts(Action::Pin), &results(&[("nginx:1.27", D1)]));
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
        let r = render(&plan, &opts(Action::Check), &HashMap::new());
        assert_eq!(
            r.problems,
            vec!["deploy/app.yaml: document 2 (Deployment web) containers/web: nginx:1.27 is not pinned to a digest"]
        );
        let pinned = render(&plan, &opts(Action::Pin), &results(&[("nginx:1.27", D1)])).text;
        let plan = plan_file(source(&pinned)).unwrap();
        let r = render(&plan, &opts(Action::Check), &results(&[("nginx:1.27", D1)]));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let r = render(&plan, &opts(Action::Check), &results(&[("nginx:1.27", D2)]));
        assert_eq!(
            r.problems,
            vec![format!("deploy/app.yaml: document 2 (Deployment web) containers/web: nginx@{D1} is pinned from nginx:1.27, which now points to {D2}")]
        );
    }

    #[test]
    fn lists_and_flow_style_are_edited_in_place() {
        let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n  spec: {containers: [{name: a, image: 'redis:7'}]}\n";
        let plan = plan_file(source(list)).unwrap();
        let r = render(&plan, &opts(Action::Pin), &results(&[("redis:7", D1)]));
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.edited, 1);
        assert_eq!(
            r.text,
            list.replace("'redis:7'", &format!("'redis@{D1}'")).replace(
                "metadata: {name: p}",
                "metadata: {annotations: {tagpin.io/pinned: '{\"a\":\"redis:7\"}'}, name: p}"
            )
        );
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
        let e = plan_file(source(bad)).unwrap_err();
        assert_eq!(
            e,
            "deploy/app.yaml:5:7: document 3 is not valid YAML: unclosed bracket '['"
        );
    }

    /// Issue 24 item 3: joined output (stdout, `-o`) used to leave skipped documents out; every
    /// output mode now keeps them exactly as read.
    #[test]
    fn skipped_documents_are_kept_as_read() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec:\n  containers: [{name: a, image: 'redis:7'}]\n---\nkind: [unclosed\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndata: {k: v}\ndata: {k: w}\n---\nkind: B\n";
        let plan = super::plan_file(source(text));
        assert_eq!(plan.invalid().len(), 2);
        let res = results(&[("redis:7", D1)]);
        let r = super::render(&plan, &opts(Action::Pin), &res);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        let pinned_pod = format!("apiVersion: v1\nkind: Pod\nmetadata: {{annotations: {{tagpin.io/pinned: '{{\"a\":\"redis:7\"}}'}}, name: a}}\nspec:\n  containers: [{{name: a, image: 'redis@{D1}'}}]\n");
        let rest = text.split_once("---\n").unwrap().1;
        assert_eq!(r.text, format!("{pinned_pod}---\n{rest}"));
        let joined = join(&[
            ("f.yaml".into(), r.text.clone()),
            ("g.yaml".into(), "kind: C\n".into()),
        ])
        .unwrap();
        assert_eq!(joined, format!("{pinned_pod}---\n{rest}---\nkind: C\n"));
    }

    #[test]
    fn the_summary_says_where_the_output_went() {
        let r = Report {
            files: 1,
            documents: 2,
            pinned: 1,
            edited: 1,
            ..Report::default()
        };
        let at = |o: &Output| r.summary(Action::Pin, o);
        assert_eq!(
            at(&Output::InPlace),
            "pinned 1 image(s) in 2 document(s) (1 edited in place) of 1 file(s); 0 problem(s)"
        );
        assert_eq!(
            at(&Output::File("out.yaml".into())),
            "pinned 1 image(s) in 2 document(s) (1 edited, written to out.yaml) of 1 file(s); 0 problem(s)"
        );
        assert!(!at(&Output::Stdout).contains("in place"));
    }

    #[test]
    fn a_json_document_stays_json() {
        let json_doc = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Pod\",\n  \"metadata\": {\"name\": \"p\"},\n  \"spec\": {\"containers\": [{\"name\": \"a\", \"image\": \"redis:7\"}]}\n}\n";
        let plan = plan_file(source(json_doc)).unwrap();
        let r = render(&plan, &opts(Action::Pin), &results(&[("redis:7", D1)]));
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
        let r = render(&plan, &opts(Action::Pin), &results(&[("redis:7", D1)]));
        let back: Vec<Value> = serde_saphyr::from_multiple(&r.text).unwrap();
        assert_eq!(back.len(), 2, "{}", r.text);
        assert_eq!(
            back[0]["spec"]["containers"][0]["image"],
            format!("redis@{D1}")
        );
        assert_eq!(back[1]["kind"], "ConfigMap");
    }
}
