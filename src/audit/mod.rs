//! `tagpin audit`: which running pods are not what their tags say.
//!
//! Pure: [`PodFacts::of`] keeps what the audit needs of a listed pod, [`Inventory::wanted`] says
//! which tags to resolve with whose credentials, and [`Inventory::findings`] turns the answers into
//! findings. Listing pods and resolving tags is in [`run`]; printing in [`report`].

pub mod report;
pub mod run;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus};
use serde::Serialize;

use crate::podspec;
use crate::reference::{Digest, ImageRef};
use crate::resolve::{classify, Class, LookupError, Outcome};

/// The namespace label that opts a namespace in, and its values (manifests/base/webhook.yaml).
pub const MODE_LABEL: &str = "tagpin.io/mode";
/// The pod label that exempts a pod from `/mutate` (not from `/enforce`).
pub const SKIP_LABEL: &str = "tagpin.io/skip";
/// The label the Deployment controller puts on a ReplicaSet's pods (and in the ReplicaSet's name).
const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// What a finding says about a container (or, for `Mixed`, a controller's container).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The spec names a tag, not a digest.
    Unpinned,
    /// A tag whose running build is not the digest the tag resolves to now.
    Stale,
    /// A controller whose pods run more than one digest for one container.
    Mixed,
    /// A pinned image whose recorded tag now points to another digest: a rollout is waiting.
    Moved,
    /// A pinned image whose running build is not its spec's digest.
    Mismatch,
    /// `:latest`, or no tag, pinned or not.
    Latest,
    /// A check (stale or moved) that could not be made: the registry did not answer.
    Unknown,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Unpinned,
        Kind::Stale,
        Kind::Mixed,
        Kind::Moved,
        Kind::Mismatch,
        Kind::Latest,
        Kind::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Unpinned => "unpinned",
            Kind::Stale => "stale",
            Kind::Mixed => "mixed",
            Kind::Moved => "moved",
            Kind::Mismatch => "mismatch",
            Kind::Latest => "latest",
            Kind::Unknown => "unknown",
        }
    }
}

/// An owner (controller) or workload: `ReplicaSet/web-7d4b9`, `Deployment/web`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Owner {
    pub kind: String,
    pub name: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// One image of a listed pod: a container's, or an image volume's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerFacts {
    /// The `tagpin.io/pinned` record key: `web`, `init/migrate`, `ephemeral/debug`,
    /// `volume/models`.
    pub key: String,
    /// The spec's image.
    pub image: String,
    /// The digest the node runs, from `status.*ContainerStatuses[].imageID` (none for a volume).
    pub running: Option<Digest>,
    /// The image as written before tagpin pinned it, from the pod's record.
    pub recorded: Option<String>,
}

/// What the audit keeps of one pod (the listed object itself is dropped page by page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    pub namespace: String,
    pub name: String,
    /// The controller `ownerReference`.
    pub owner: Option<Owner>,
    owner_uid: Option<String>,
    /// The workload an operator acts on: the Deployment of a ReplicaSet's pod, else the owner.
    pub workload: Option<Owner>,
    pub skip_label: bool,
    /// `imagePullSecrets` names, as the webhook reads them for a pod.
    pub pull_secrets: Vec<String>,
    pub containers: Vec<ContainerFacts>,
}

/// The digest a container status's `imageID` names: `docker-pullable://repo@sha256:…`
/// (dockershim), `repo@sha256:…` (containerd, CRI-O). A bare image ID (`sha256:…`,
/// `docker://sha256:…`) is the image's config digest, not a manifest digest: `None`.
pub fn running_digest(image_id: &str) -> Option<Digest> {
    let (_, digest) = image_id.rsplit_once('@')?;
    Digest::parse(digest)
}

impl PodFacts {
    /// The facts of a listed pod. Pure.
    pub fn of(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let labels = meta.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        let controller = meta
            .owner_references
            .iter()
            .flatten()
            .find(|r| r.controller == Some(true));
        let owner = controller.map(|r| Owner {
            kind: r.kind.clone(),
            name: r.name.clone(),
        });
        let workload = owner
            .as_ref()
            .map(|o| workload_of(o, label(TEMPLATE_HASH_LABEL)));
        let record = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(podspec::PINNED_ANNOTATION))
            .and_then(|r| podspec::parse_record(r))
            .unwrap_or_default();
        let spec = pod.spec.as_ref();
        Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            owner,
            owner_uid: controller.map(|r| r.uid.clone()),
            workload,
            skip_label: label(SKIP_LABEL) == Some("true"),
            pull_secrets: spec.map(pull_secrets_of).unwrap_or_default(),
            containers: spec
                .map(|s| images_of(s, pod.status.as_ref(), &record))
                .unwrap_or_default(),
        }
    }
}

/// The lists of a pod spec in the order their images are audited: init containers first (the
/// order they start), image volumes last.
const AUDIT_ORDER: [&str; 4] = [
    "initContainers",
    "containers",
    "ephemeralContainers",
    "volumes",
];

/// Every image of a pod spec, found by the walk the webhook pins with
/// ([`podspec::find_images`]: containers, init and ephemeral containers, image volumes), with
/// the digest the node runs (containers only: an image volume has no status) and the record's
/// entry.
fn images_of(
    spec: &PodSpec,
    status: Option<&PodStatus>,
    record: &BTreeMap<String, String>,
) -> Vec<ContainerFacts> {
    // A typed pod spec always serializes; `Null` would only mean no images.
    let spec = serde_json::to_value(spec).unwrap_or(serde_json::Value::Null);
    let mut sites = podspec::find_images(&spec, &[] as &[&str]);
    sites.sort_by_key(|s| AUDIT_ORDER.iter().position(|l| *l == s.list));
    let statuses = |list: &str| match list {
        "initContainers" => status.and_then(|s| s.init_container_statuses.as_ref()),
        "containers" => status.and_then(|s| s.container_statuses.as_ref()),
        "ephemeralContainers" => status.and_then(|s| s.ephemeral_container_statuses.as_ref()),
        _ => None,
    };
    sites
        .into_iter()
        .map(|site| ContainerFacts {
            running: statuses(site.list)
                .into_iter()
                .flatten()
                .find(|s| s.name == site.name)
                .and_then(|s| running_digest(&s.image_id)),
            recorded: record.get(&site.key).cloned(),
            key: site.key,
            image: site.image,
        })
        .collect()
}

/// `imagePullSecrets` names, each once, as the webhook reads them.
fn pull_secrets_of(spec: &PodSpec) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in spec.image_pull_secrets.iter().flatten() {
        if !r.name.is_empty() && !names.contains(&r.name) {
            names.push(r.name.clone());
        }
    }
    names
}

/// The Deployment that owns a ReplicaSet's pod: the Deployment controller names its ReplicaSets
/// `<deployment>-<pod-template-hash>` and labels their pods with the hash. Anything else is its
/// own workload (a ReplicaSet made by hand, a StatefulSet, a Job).
fn workload_of(owner: &Owner, template_hash: Option<&str>) -> Owner {
    if owner.kind == "ReplicaSet" {
        if let Some(name) =
            template_hash.and_then(|h| owner.name.strip_suffix(h).and_then(|n| n.strip_suffix('-')))
        {
            if !name.is_empty() {
                return Owner {
                    kind: "Deployment".into(),
                    name: name.to_string(),
                };
            }
        }
    }
    owner.clone()
}

/// Whose credentials resolve a tag: the webhook reads a pod's pull secrets in its namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asker {
    pub namespace: String,
    pub pull_secrets: Vec<String>,
}

/// What tagpin resolved, per asker and image string (the tag as written).
pub type Answers = BTreeMap<Asker, BTreeMap<String, Outcome>>;

/// What the spec of one container says, for the audit.
#[derive(Debug)]
enum Spec {
    Tag(ImageRef),
    Pinned {
        digest: Digest,
        recorded: Option<ImageRef>,
    },
    /// A `--skip-prefix` image: never pinned by design, not audited.
    Skipped,
    Invalid(String),
}

fn spec_of(c: &ContainerFacts, skip_prefixes: &[String]) -> Spec {
    match classify(&c.image, skip_prefixes) {
        Class::Skipped => Spec::Skipped,
        Class::Tag(r) => Spec::Tag(r),
        Class::Invalid(e) => Spec::Invalid(e.to_string()),
        Class::HasDigest => {
            let Some((before, digest)) = c.image.rsplit_once('@') else {
                return Spec::Invalid(format!("{:?} has no digest after '@'", c.image));
            };
            let Some(digest) = Digest::parse(digest) else {
                return Spec::Invalid(format!(
                    "{:?} carries a digest that is not sha256:<64 hex> or sha512:<128 hex>",
                    c.image
                ));
            };
            let recorded = podspec::recorded_tag(before, c.recorded.as_deref());
            Spec::Pinned { digest, recorded }
        }
    }
}

/// Every pod listed so far.
#[derive(Debug, Default)]
pub struct Inventory {
    pub pods: Vec<PodFacts>,
}

/// Whether each namespace has opted in: its `tagpin.io/mode` label, if the labels could be read.
#[derive(Debug, Default)]
pub struct Namespaces {
    labels: BTreeMap<String, BTreeMap<String, String>>,
}

impl Namespaces {
    pub fn new(labels: impl IntoIterator<Item = (String, BTreeMap<String, String>)>) -> Self {
        Self {
            labels: labels.into_iter().collect(),
        }
    }

    /// The namespace's `tagpin.io/mode`, `Some(None)` for none, `None` when not known.
    fn mode(&self, namespace: &str) -> Option<Option<&str>> {
        self.labels
            .get(namespace)
            .map(|l| l.get(MODE_LABEL).map(String::as_str))
    }
}

fn opted_in(mode: Option<&str>) -> bool {
    matches!(mode, Some("enabled" | "enforce"))
}

/// A shortened digest for sentences (`sha256:0123456789ab`); the JSON fields hold it whole.
pub fn short(d: &Digest) -> String {
    let s = d.to_string();
    match s.split_once(':') {
        Some((alg, hex)) if hex.len() > 12 => format!("{alg}:{}", &hex[..12]),
        _ => s,
    }
}

/// How many pods run one digest (a `mixed` finding).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DigestCount {
    pub digest: String,
    pub pods: usize,
}

/// One row of the audit. Every field is always present in the JSON (null when it does not
/// apply): scripts read these names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub namespace: String,
    /// `None` for `mixed`: a finding about a controller's pods.
    pub pod: Option<String>,
    pub container: String,
    pub owner: Option<Owner>,
    pub workload: Option<Owner>,
    /// The spec's image.
    pub image: String,
    /// The tag checked: the spec's tag, or the recorded tag of a pinned image.
    pub tag: Option<String>,
    /// The digest the node runs.
    pub running: Option<String>,
    /// The digest the tag resolves to now.
    pub resolved: Option<String>,
    /// The spec's digest (pinned images).
    pub pinned: Option<String>,
    /// `mixed`: each digest and how many pods run it, most pods first.
    pub digests: Option<Vec<DigestCount>>,
    /// `unpinned`: whether the namespace has opted in (`None`: its labels could not be read).
    pub opted_in: Option<bool>,
    /// `unpinned`: whether the pod carries `tagpin.io/skip=true`.
    pub skip_label: Option<bool>,
    /// `unknown`: the check that could not be made (`stale` or `moved`).
    pub check: Option<Kind>,
    pub detail: String,
}

impl Finding {
    fn new(kind: Kind, pod: &PodFacts, c: &ContainerFacts, detail: String) -> Self {
        Self {
            kind,
            namespace: pod.namespace.clone(),
            pod: Some(pod.name.clone()),
            container: c.key.clone(),
            owner: pod.owner.clone(),
            workload: pod.workload.clone(),
            image: c.image.clone(),
            tag: None,
            running: c.running.as_ref().map(Digest::to_string),
            resolved: None,
            pinned: None,
            digests: None,
            opted_in: None,
            skip_label: None,
            check: None,
            detail,
        }
    }
}

/// What the findings could not cover: registries that did not answer (each named once), and
/// warnings (invalid images).
#[derive(Debug, Default)]
pub struct Gaps {
    /// Registry host → the first error it gave.
    pub unreachable: BTreeMap<String, String>,
    pub warnings: Vec<String>,
}

impl Inventory {
    /// Adds one listed page.
    pub fn add(&mut self, pods: &[Pod]) {
        self.pods.extend(pods.iter().map(PodFacts::of));
    }

    pub fn containers(&self) -> usize {
        self.pods.iter().map(|p| p.containers.len()).sum()
    }

    /// The tags to resolve, per asker, each once, in first-seen order: the tags of unpinned
    /// containers that run (the stale check), and the recorded tags of pinned ones (the moved
    /// check). A tag no check needs is not asked for: fewer requests, and fewer hosts a pod spec
    /// can make tagpin connect to.
    pub fn wanted(&self, skip_prefixes: &[String]) -> BTreeMap<Asker, Vec<String>> {
        let mut out: BTreeMap<Asker, (Vec<String>, BTreeSet<String>)> = BTreeMap::new();
        for pod in &self.pods {
            let asker = Asker {
                namespace: pod.namespace.clone(),
                pull_secrets: pod.pull_secrets.clone(),
            };
            for c in &pod.containers {
                let tag = match spec_of(c, skip_prefixes) {
                    Spec::Tag(r) if c.running.is_some() => r,
                    Spec::Pinned {
                        recorded: Some(r), ..
                    } => r,
                    _ => continue,
                };
                let (list, seen) = out.entry(asker.clone()).or_default();
                if seen.insert(tag.original().to_string()) {
                    list.push(tag.original().to_string());
                }
            }
        }
        out.into_iter().map(|(k, (list, _))| (k, list)).collect()
    }

    /// Every finding, sorted by namespace, owner, pod, container and kind. Pure.
    pub fn findings(
        &self,
        answers: &Answers,
        namespaces: &Namespaces,
        skip_prefixes: &[String],
    ) -> (Vec<Finding>, Gaps) {
        let mut out = Vec::new();
        let mut gaps = Gaps::default();
        for pod in &self.pods {
            let asker = Asker {
                namespace: pod.namespace.clone(),
                pull_secrets: pod.pull_secrets.clone(),
            };
            let answer =
                |image: &ImageRef| answers.get(&asker).and_then(|a| a.get(image.original()));
            for c in &pod.containers {
                match spec_of(c, skip_prefixes) {
                    Spec::Skipped => {}
                    Spec::Invalid(why) => gaps.warnings.push(format!(
                        "pod {}/{} container {}: {why}; not audited",
                        pod.namespace, pod.name, c.key
                    )),
                    Spec::Tag(r) => {
                        tag_findings(pod, c, &r, answer(&r), namespaces, &mut out, &mut gaps)
                    }
                    Spec::Pinned { digest, recorded } => {
                        let now = recorded.as_ref().and_then(answer);
                        pinned_findings(
                            pod,
                            c,
                            &digest,
                            recorded.as_ref(),
                            now,
                            &mut out,
                            &mut gaps,
                        )
                    }
                }
            }
        }
        out.extend(mixed(&self.pods, skip_prefixes));
        out.sort_by(|a, b| {
            (&a.namespace, &a.owner, &a.pod, &a.container, a.kind).cmp(&(
                &b.namespace,
                &b.owner,
                &b.pod,
                &b.container,
                b.kind,
            ))
        });
        (out, gaps)
    }
}

/// Why a lookup gave no digest, for a row; registries that did not answer go to `gaps` once.
fn failure(image: &ImageRef, e: &LookupError, gaps: &mut Gaps) -> String {
    if e.is_outage() {
        gaps.unreachable
            .entry(image.registry().to_string())
            .or_insert_with(|| e.to_string());
    }
    e.to_string()
}

fn is_latest(r: &ImageRef) -> bool {
    r.tag() == "latest"
}

fn tag_findings(
    pod: &PodFacts,
    c: &ContainerFacts,
    r: &ImageRef,
    now: Option<&Outcome>,
    namespaces: &Namespaces,
    out: &mut Vec<Finding>,
    gaps: &mut Gaps,
) {
    let resolved = match now {
        Some(Outcome::Pinned(d)) | Some(Outcome::Stale { digest: d, .. }) => Some(d),
        _ => None,
    };
    let mode = namespaces.mode(&pod.namespace);
    let why = why_unpinned(mode, pod.skip_label);
    let now_says = match resolved {
        Some(d) => format!("; the tag is {} now", short(d)),
        None => String::new(),
    };
    let mut f = Finding::new(
        Kind::Unpinned,
        pod,
        c,
        format!("{} is a tag; {why}{now_says}", r.original()),
    );
    f.tag = Some(r.original().to_string());
    f.resolved = resolved.map(Digest::to_string);
    f.opted_in = mode.map(opted_in);
    f.skip_label = Some(pod.skip_label);
    let base = f.clone();
    out.push(f);
    if is_latest(r) {
        out.push(Finding {
            kind: Kind::Latest,
            opted_in: None,
            skip_label: None,
            detail: format!(
                "{} {}, which moves with every push",
                r.original(),
                if r.original().ends_with(":latest") {
                    "is :latest"
                } else {
                    "has no tag (:latest)"
                }
            ),
            ..base.clone()
        });
    }
    if let Some(running) = &c.running {
        out.extend(stale_check(base, r, running, now, resolved, gaps));
    }
}

/// Why a pod runs a tag, by its namespace's `tagpin.io/mode` (`None`: the labels could not be
/// read) and the pod's skip label.
fn why_unpinned(mode: Option<Option<&str>>, skip_label: bool) -> String {
    match mode {
        None => "namespace opt-in unknown (its labels could not be read)".to_string(),
        Some(Some("enforce")) => "namespace enforces pinning (tagpin.io/mode=enforce): created before that, or while the webhook was not called".to_string(),
        Some(Some(m)) if opted_in(Some(m)) && skip_label => {
            format!("namespace opted in (tagpin.io/mode={m}), pod has tagpin.io/skip=true")
        }
        Some(Some(m)) if opted_in(Some(m)) => format!("namespace opted in (tagpin.io/mode={m}): created before that, or admitted while tagpin was down (fallback-allow)"),
        Some(_) => "namespace has not opted in".to_string(),
    }
}

/// The stale check of a running tag (`base` is its `unpinned` finding): `stale` when the tag
/// names another digest now than the node runs, `unknown` when the registry did not say.
fn stale_check(
    base: Finding,
    r: &ImageRef,
    running: &Digest,
    now: Option<&Outcome>,
    resolved: Option<&Digest>,
    gaps: &mut Gaps,
) -> Option<Finding> {
    match (now, resolved) {
        (_, Some(d)) if d != running => Some(Finding {
            kind: Kind::Stale,
            opted_in: None,
            skip_label: None,
            detail: format!(
                "node runs {}, {} is {} now: pulled before the tag moved",
                short(running),
                r.original(),
                short(d)
            ),
            ..base
        }),
        (Some(Outcome::Failed(e)), _) => {
            let why = failure(r, e, gaps);
            Some(Finding {
                kind: Kind::Unknown,
                opted_in: None,
                skip_label: None,
                check: Some(Kind::Stale),
                detail: format!(
                    "cannot check {} against the node's {}: {why}",
                    r.original(),
                    short(running)
                ),
                ..base
            })
        }
        _ => None,
    }
}

fn pinned_findings(
    pod: &PodFacts,
    c: &ContainerFacts,
    digest: &Digest,
    recorded: Option<&ImageRef>,
    now: Option<&Outcome>,
    out: &mut Vec<Finding>,
    gaps: &mut Gaps,
) {
    let mut base = Finding::new(Kind::Moved, pod, c, String::new());
    base.pinned = Some(digest.to_string());
    base.tag = recorded.map(|r| r.original().to_string());
    if let Some(running) = c.running.as_ref().filter(|r| *r != digest) {
        out.push(Finding {
            kind: Kind::Mismatch,
            detail: format!(
                "spec pins {}, node runs {}: a registry or mirror served other content",
                short(digest),
                short(running)
            ),
            ..base.clone()
        });
    }
    let Some(r) = recorded else { return };
    if is_latest(r) {
        out.push(Finding {
            kind: Kind::Latest,
            detail: format!("pinned from {}, which moves with every push", r.original()),
            ..base.clone()
        });
    }
    let target = match &pod.workload {
        Some(w) => {
            format!("a rollout of {w} is waiting")
        }
        None => "the pod keeps the old build until it is recreated".to_string(),
    };
    match now {
        Some(Outcome::Pinned(d)) if d != digest => out.push(Finding {
            kind: Kind::Moved,
            resolved: Some(d.to_string()),
            detail: format!(
                "pinned {} from {}, which is {} now: {target}",
                short(digest),
                r.original(),
                short(d)
            ),
            ..base
        }),
        Some(Outcome::Failed(e)) => {
            let why = failure(r, e, gaps);
            out.push(Finding {
                kind: Kind::Unknown,
                check: Some(Kind::Moved),
                detail: format!(
                    "cannot check whether {} still is {}: {why}",
                    r.original(),
                    short(digest)
                ),
                ..base
            });
        }
        _ => {}
    }
}

/// `mixed`: per controller and container, the digests its pods run (the node's, else the spec's
/// pinned one), when there is more than one.
fn mixed(pods: &[PodFacts], skip_prefixes: &[String]) -> Vec<Finding> {
    type Group<'a> = (&'a PodFacts, &'a ContainerFacts, BTreeMap<String, usize>);
    let mut groups: BTreeMap<(&str, &str, &str), Group> = BTreeMap::new();
    for pod in pods {
        let Some(uid) = pod.owner_uid.as_deref() else {
            continue;
        };
        for c in &pod.containers {
            let digest = match (&c.running, spec_of(c, skip_prefixes)) {
                (_, Spec::Skipped) => continue,
                (Some(d), _) => d.clone(),
                (None, Spec::Pinned { digest, .. }) => digest,
                (None, _) => continue,
            };
            let g = groups
                .entry((pod.namespace.as_str(), uid, c.key.as_str()))
                .or_insert_with(|| (pod, c, BTreeMap::new()));
            *g.2.entry(digest.to_string()).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (pod, c, counts) in groups.into_values() {
        if counts.len() < 2 {
            continue;
        }
        let mut digests: Vec<DigestCount> = counts
            .into_iter()
            .map(|(digest, pods)| DigestCount { digest, pods })
            .collect();
        digests.sort_by(|a, b| b.pods.cmp(&a.pods).then_with(|| a.digest.cmp(&b.digest)));
        let list = digests
            .iter()
            .map(|d| {
                let shown = Digest::parse(&d.digest).map_or(d.digest.clone(), |x| short(&x));
                format!(
                    "{shown} ({} pod{})",
                    d.pods,
                    if d.pods == 1 { "" } else { "s" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut f = Finding::new(
            Kind::Mixed,
            pod,
            c,
            format!("pods run {} builds: {list}", digests.len()),
        );
        f.pod = None;
        f.running = None;
        f.digests = Some(digests);
        out.push(f);
    }
    out
}

#[cfg(test)]
mod tests;
