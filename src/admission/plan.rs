//! Which image sites of a request to consider, and where its pod spec's credentials are. Pure.

use super::review::AdmissionRequest;
use crate::podspec::{self, ImageSite, PodSpecAt};
use crate::prune::MAX_KEPT_NODES;
use crate::reference::ImageRef;
use crate::resolve::CredentialRequest;
use crate::tree::{Kept, Tree};

/// What a request asks of the resolver.
#[derive(Debug, Default)]
pub struct Plan {
    /// Image sites to consider, in order; the resolver says which are tags, digests, skipped or
    /// invalid.
    pub sites: Vec<ImageSite>,
    /// Why nothing is looked at, when that is the case (for the log line).
    pub ignored: Option<&'static str>,
    /// Where the `tagpin.io/pinned` record goes (none for subresource requests, whose metadata
    /// changes the API server drops).
    pub record: Option<podspec::Record>,
    /// For template UPDATEs, per site: the digest the old object held for this very image (by
    /// its record). Used when the registry is out, so a re-apply during an outage changes nothing
    /// instead of rolling the template back to a tag.
    pub previous: Vec<Option<String>>,
    /// Set when the object was not inspected because it exceeds a limit: the warning (on
    /// `/mutate`, where the object is admitted as written) or the denial (on `/enforce`).
    pub over_limit: Option<String>,
    /// Image fields the discovery rule leaves alone (outside every pod spec, or undecided), as
    /// warnings in the words `tagpin pin` uses for them.
    pub notes: Vec<String>,
    /// Where the first pod spec found is (its pull secrets and service account are the
    /// object's; [`credential_request`]); none when the plan stopped before looking for one
    /// (an ignored or over-limit request) or found none.
    pub pod_spec_at: Option<Vec<String>>,
}

/// Which image sites of the request to consider. Pure.
pub fn plan(req: &AdmissionRequest) -> Plan {
    let ignore = |why| Plan {
        ignored: Some(why),
        ..Plan::default()
    };
    let update = match req.operation.as_str() {
        "CREATE" => false,
        "UPDATE" => true,
        _ => return ignore("operation"),
    };
    // Built-in kinds by the table; a custom resource (an operator added its kind to the rules)
    // by the pod-spec shapes it holds.
    let table = podspec::target(&req.kind.group, &req.kind.kind);
    if table.is_none() && !podspec::is_custom_group(&req.kind.group) {
        // No pod spec, but its image fields are reported as `tagpin pin` reports them.
        let notes = req.object.as_ref().map_or_else(Vec::new, |o| {
            notes(&podspec::discover(&req.kind.group, &req.kind.kind, o).others)
        });
        return Plan {
            notes,
            ..ignore("kind")
        };
    }
    let is_pod = table.is_some_and(|t| t.is_pod);
    let subresource = req.sub_resource.as_deref().unwrap_or("");
    match subresource {
        "" => {}
        "ephemeralcontainers" if update && is_pod => {}
        _ => return ignore("subresource"),
    }
    if req.too_large {
        return Plan {
            over_limit: Some(format!(
                "tagpin: limit: the object holds more than {MAX_KEPT_NODES} fields that could name images; not inspected, nothing pinned"
            )),
            ignored: Some("over limit"),
            ..Plan::default()
        };
    }
    let Some(object) = &req.object else {
        return ignore("no object");
    };
    let found = podspec::discover(&req.kind.group, &req.kind.kind, object);
    if let Some(why) = found.incomplete {
        return Plan {
            over_limit: Some(format!("tagpin: limit: the object {}", why.words())),
            ignored: Some("over limit"),
            ..Plan::default()
        };
    }
    let notes = notes(&found.others);
    let specs = found.specs;
    if specs.is_empty() {
        return Plan {
            notes,
            ..ignore("kind")
        };
    }
    if !is_pod && podspec::is_controller_owned(object) {
        return ignore("controller-owned");
    }
    let all = podspec::images_of(object, &specs);
    let record = podspec::record_of(object, &specs, &all).filter(|_| subresource.is_empty());
    // A Pod's running containers restart when their image changes, so an UPDATE pins only new
    // or changed images. A template is pinned whole: re-applying it must pick up a moved tag (a
    // rollout) and give back the identical object when the tag did not move (no rollout).
    let sites = if update && is_pod {
        podspec::changed_since(all, req.old_object.as_ref())
    } else {
        all
    };
    let template_update = update && !is_pod;
    let previous = previous_pins(
        req.old_object.as_ref().filter(|_| template_update),
        &specs,
        &sites,
    );
    Plan {
        previous,
        sites,
        record,
        ignored: None,
        over_limit: None,
        notes,
        pod_spec_at: specs.into_iter().next().map(|s| s.spec_at),
    }
}

/// One warning per image field the discovery rule leaves alone that holds no digest (the words
/// of `tagpin pin`'s notes).
fn notes(others: &[podspec::OtherImage]) -> Vec<String> {
    others
        .iter()
        .filter(|o| !o.image.contains('@'))
        .map(|o| {
            format!(
                "tagpin: {}: {} {}: left as written",
                o.label(),
                o.image,
                o.why.words()
            )
        })
        .collect()
}

/// Per site, the pinned reference the old object of a template UPDATE held for this very image
/// (its record says the site was written as `site.image`, in the same repository).
fn previous_pins(
    old: Option<&Kept<'_>>,
    specs: &[PodSpecAt],
    sites: &[ImageSite],
) -> Vec<Option<String>> {
    let old_record = old.and_then(|old| podspec::record_of(old, specs, &[]).map(|r| (old, r)));
    let previous_of = |site: &ImageSite| -> Option<String> {
        let (old, rec) = old_record.as_ref()?;
        let before = old.pointer(site.pointer.as_str())?.as_str()?;
        let (repo, _) = before.split_once('@')?;
        let written = rec.recorded(&site.key)?;
        (written == site.image && ImageRef::parse(written).ok()?.written_repository() == repo)
            .then(|| before.to_string())
    };
    sites.iter().map(previous_of).collect()
}

/// Where the request's pod spec is, for reading its pull secrets (and, for a template, its
/// service account's): the first pod spec [`plan`] found (built-in kinds by their path, custom
/// resources by their shape), not searched for again. Pure.
pub fn credential_request<'r>(req: &'r AdmissionRequest<'_>, plan: &Plan) -> CredentialRequest<'r> {
    let pod_spec = req
        .object
        .as_ref()
        .zip(plan.pod_spec_at.as_ref())
        .and_then(|(o, at)| podspec::value_at(o, at));
    CredentialRequest {
        namespace: req.namespace.as_deref().filter(|n| !n.is_empty()),
        pod_spec,
        template: !(req.kind.group.is_empty() && req.kind.kind == "Pod"),
    }
}
