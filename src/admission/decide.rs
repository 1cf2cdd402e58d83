//! The decision for one request: what to pin, what to warn about, whether to deny; and the
//! AdmissionReview answer that says it. Pure.

use super::plan::Plan;
use super::review::{Base64Patch, ResponseOut, ReviewOut, StatusOut};
use super::warnings::{bound_warnings, bounded_list, truncate, MAX_DENIAL_BYTES};
use crate::podspec::{ImageSite, PatchText};
use crate::resolve::{ImageOutcome, Outcome};

/// `/mutate` pins what it can and never blocks; `/enforce` denies what it cannot pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Mutate,
    Enforce,
}

impl Endpoint {
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Mutate => "mutate",
            Endpoint::Enforce => "enforce",
        }
    }
}

/// The decision for one request. Pure.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// The JSON Patch (empty: no patch); [`PatchText::parsed`] gives its operations.
    pub patch: PatchText,
    pub warnings: Vec<String>,
    /// Set on denial: the images that could not be pinned and why (bounded, see
    /// [`MAX_DENIAL_BYTES`]).
    pub denial: Option<String>,
    pub pinned: usize,
    pub left: usize,
    /// How many of the first `warnings` are about a limit (they stay first).
    pub limits: usize,
}

/// Combines a plan with the resolver's outcomes (one per `plan.sites` entry, in order). Pure.
pub fn decide(
    plan: &Plan,
    outcomes: &[ImageOutcome],
    endpoint: Endpoint,
    keep_tag: bool,
) -> Decision {
    if let Some(why) = &plan.over_limit {
        return Decision::over_limit(why.clone(), endpoint);
    }
    Sorted::of(plan, outcomes, endpoint, keep_tag).answer(plan, endpoint)
}

/// A plan's outcomes, sorted by what the answer does with them.
struct Sorted<'a> {
    /// Sites to rewrite, with the reference they get.
    pins: Vec<(&'a ImageSite, String)>,
    warnings: Vec<String>,
    /// What is left unpinned and why, as `(image, why)`: one line for the images over the
    /// limit (first, when there are any), then failed lookups, then invalid images.
    failures: Vec<(String, String)>,
    /// Images not looked up: over `--max-images-per-review`.
    over_limit: usize,
}

impl<'a> Sorted<'a> {
    fn of(plan: &'a Plan, outcomes: &[ImageOutcome], endpoint: Endpoint, keep_tag: bool) -> Self {
        let mut s = Sorted {
            pins: Vec::new(),
            warnings: Vec::new(),
            failures: Vec::new(),
            over_limit: 0,
        };
        let mut invalid = Vec::new();
        for (i, (site, outcome)) in plan.sites.iter().zip(outcomes).enumerate() {
            let previous = plan.previous.get(i).and_then(Option::as_ref);
            let (image, outcome) = match outcome {
                ImageOutcome::Skipped | ImageOutcome::HasDigest => continue,
                ImageOutcome::Invalid(e) => {
                    invalid.push((format!("{} ({})", site.image, site.label), e.to_string()));
                    continue;
                }
                ImageOutcome::Resolved(image, outcome) => (image, outcome),
                ImageOutcome::OverLimit(_) => {
                    s.over_limit += 1;
                    continue;
                }
            };
            match outcome {
                Outcome::Pinned(d) => s.pins.push((site, image.pinned(d, keep_tag))),
                Outcome::Stale { digest, error } => {
                    s.pins.push((site, image.pinned(digest, keep_tag)));
                    s.warnings.push(format!(
                        "tagpin: {image} pinned to its last known digest {digest}: {error}"
                    ));
                }
                Outcome::Failed(e) => match previous {
                    Some(before) if endpoint == Endpoint::Mutate && e.is_outage() => {
                        s.pins.push((site, before.clone()));
                        s.warnings.push(format!(
                            "tagpin: {image} kept the digest it had ({before}): {e}"
                        ));
                    }
                    _ => s.failures.push((image.to_string(), e.to_string())),
                },
            }
        }
        s.failures.extend(invalid);
        if s.over_limit > 0 {
            // One line for all of them, first: the limit is why the rest is missing.
            let why = "not looked up: the object names more distinct images than --max-images-per-review allows";
            let what = format!("{} image(s)", s.over_limit);
            s.warnings
                .insert(0, format!("tagpin: {what} left unpinned, {why}"));
            s.failures.insert(0, (what, why.to_string()));
        }
        s
    }

    /// The answer: on `/enforce` a denial naming every image left unpinned, when there is one;
    /// otherwise the pins (and the record) as a patch, and a warning per image left unpinned.
    fn answer(self, plan: &Plan, endpoint: Endpoint) -> Decision {
        let Sorted {
            pins,
            mut warnings,
            failures,
            over_limit,
        } = self;
        let limited = usize::from(over_limit > 0);
        let left = failures.len() - limited + over_limit;
        if endpoint == Endpoint::Enforce && !failures.is_empty() {
            return Decision {
                allowed: false,
                patch: PatchText::default(),
                warnings: Vec::new(),
                denial: Some(bounded_list(
                    format!("tagpin: denied, {left} image(s) could not be pinned to a digest: "),
                    failures
                        .iter()
                        .map(|(image, why)| format!("{image}: {why}")),
                )),
                pinned: 0,
                left,
                limits: 0,
            };
        }
        let pinned = pins.len();
        warnings.extend(
            failures
                .iter()
                .skip(limited)
                .map(|(image, why)| format!("tagpin: {image} left unpinned: {why}")),
        );
        warnings.extend(plan.notes.iter().cloned());
        // The pins, then the record: as `podspec::replace_ops` and `Record::ops` would.
        let mut patch = PatchText::with_capacity(pinned + 2);
        for (site, value) in &pins {
            patch.replace(&site.pointer, value);
        }
        if let Some(r) = &plan.record {
            r.write_ops(
                &pins.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
                &mut patch,
            );
        }
        Decision {
            allowed: true,
            patch,
            warnings,
            denial: None,
            pinned,
            left,
            limits: limited,
        }
    }
}

impl Decision {
    /// The answer to a request that was not looked at because it is over a limit (`why`):
    /// allowed unchanged with `why` as its warning on `/mutate`, denied with it on `/enforce`.
    pub fn over_limit(why: String, endpoint: Endpoint) -> Decision {
        let allowed = endpoint == Endpoint::Mutate;
        Decision {
            allowed,
            patch: PatchText::default(),
            denial: (!allowed).then(|| format!("tagpin: denied: {why}")),
            warnings: if allowed { vec![why] } else { Vec::new() },
            pinned: 0,
            left: 0,
            limits: usize::from(allowed),
        }
    }

    /// The outcome label of the log line and the admissions metric. Pure.
    pub fn outcome(&self, ignored: Option<&str>) -> &'static str {
        match (ignored, self.allowed, self.pinned, self.left) {
            (_, false, ..) => "denied",
            (Some(_), ..) => "ignored",
            (_, _, 0, 0) => "unchanged",
            (_, _, _, 0) => "pinned",
            (_, _, 0, _) => "unpinned",
            _ => "partial",
        }
    }
}

/// Builds the AdmissionReview answer for a decision.
pub fn response(api_version: String, uid: String, d: &Decision) -> ReviewOut {
    let patch = (!d.patch.is_empty()).then(|| Base64Patch::encode(d.patch.as_bytes()));
    ReviewOut {
        api_version,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid,
            allowed: d.allowed,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            warnings: bound_warnings(&d.warnings),
            status: d.denial.as_ref().map(|m| StatusOut {
                status: "Failure",
                code: 403,
                reason: "Forbidden",
                message: truncate(m.clone(), MAX_DENIAL_BYTES),
            }),
        },
    }
}
