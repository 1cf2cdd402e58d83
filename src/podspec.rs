//! Where images live in an object, and the JSON Patch that pins them. Pure: values in, values out.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use serde_json::{json, Value};

use crate::json_str;
use crate::tree::Tree;

/// One image field in an object: its JSON pointer and the string found there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSite {
    pub pointer: PointerBuf,
    pub image: String,
    /// A short human label: `containers/web`, `initContainers/migrate`, `volumes/models`.
    pub label: String,
    /// The pod-spec list the image is in: `containers`, `initContainers`,
    /// `ephemeralContainers` or `volumes`.
    pub list: &'static str,
    /// The container's (or volume's) name, `?` when it has none.
    pub name: String,
    /// The site's key in the `tagpin.io/pinned` record: `web`, `init/migrate`,
    /// `ephemeral/debug`, `volume/models`.
    pub key: String,
}

/// Where the pod spec of one kind of object lives, and what to record where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// JSON pointer tokens to the pod spec.
    pub spec_at: &'static [&'static str],
    /// JSON pointer tokens to the pod template's metadata (workloads only).
    pub template_meta_at: Option<&'static [&'static str]>,
    /// Pods are pinned even when a controller owns them; templates of owned objects never are.
    pub is_pod: bool,
}

const TEMPLATE: Target = Target {
    spec_at: &["spec", "template", "spec"],
    template_meta_at: Some(&["spec", "template", "metadata"]),
    is_pod: false,
};

/// What tagpin handles in an object of this API group and kind; `None` for other kinds.
pub fn target(group: &str, kind: &str) -> Option<Target> {
    match (group, kind) {
        ("", "Pod") => Some(Target {
            spec_at: &["spec"],
            template_meta_at: None,
            is_pod: true,
        }),
        // `apps/v1beta1`, `apps/v1beta2` and `batch/v1beta1` share their group with v1; the
        // oldest workloads were served as `extensions/v1beta1`.
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("extensions", "Deployment" | "DaemonSet" | "ReplicaSet")
        | ("", "ReplicationController")
        | ("batch", "Job") => Some(TEMPLATE),
        ("batch", "CronJob") => Some(Target {
            spec_at: &["spec", "jobTemplate", "spec", "template", "spec"],
            template_meta_at: Some(&["spec", "jobTemplate", "spec", "template", "metadata"]),
            is_pod: false,
        }),
        ("", "PodTemplate") => Some(Target {
            spec_at: &["template", "spec"],
            template_meta_at: Some(&["template", "metadata"]),
            is_pod: false,
        }),
        _ => None,
    }
}

/// Where one pod spec of an object is (found by kind, or by its shape in a custom resource).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSpecAt {
    /// JSON pointer tokens to the pod spec.
    pub spec_at: Vec<String>,
    /// JSON pointer tokens to the pod template's metadata, if there is a template.
    pub template_meta_at: Option<Vec<String>>,
    /// Pods are pinned even when a controller owns them; templates of owned objects never are.
    pub is_pod: bool,
}

impl From<Target> for PodSpecAt {
    fn from(t: Target) -> Self {
        let owned = |s: &[&str]| s.iter().map(|t| t.to_string()).collect();
        Self {
            spec_at: owned(t.spec_at),
            template_meta_at: t.template_meta_at.map(owned),
            is_pod: t.is_pod,
        }
    }
}

/// True for the API group of a custom resource (`argoproj.io`, `serving.knative.dev`): dotted,
/// and not one of Kubernetes' own `*.k8s.io` groups.
pub fn is_custom_group(group: &str) -> bool {
    group.contains('.') && !group.ends_with(".k8s.io") && group != "k8s.io"
}

/// How deep the discovery walk looks into an object (map and list levels below the top).
pub const MAX_SEARCH_DEPTH: usize = 32;

/// Most maps and lists the discovery walk visits in one object. A real custom resource has a
/// few hundred; past this the object is not judged at all ([`Incomplete::TooLarge`]).
pub const MAX_SEARCH_NODES: usize = 65_536;

/// Words that make a key selector-like (matched case-insensitively, anywhere in the key): a
/// `containers` list under such a key names containers to match (`matchingCriteria`,
/// `podSelector`, `exclude`), not containers to run, and is never a pod spec.
pub const SELECTOR_WORDS: &[&str] = &["selector", "match", "criteria", "filter", "exclude"];

/// True for a key whose value selects or matches things rather than describing them.
pub fn is_selector_key(key: &str) -> bool {
    // Compared in place rather than on a lowercased copy: the words are lowercase ASCII.
    let k = key.as_bytes();
    SELECTOR_WORDS.iter().any(|w| {
        k.windows(w.len())
            .any(|at| at.eq_ignore_ascii_case(w.as_bytes()))
    })
}

/// Why an `image` field found by [`discover`] is not pinned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Outside every pod spec (an operator's `spec.image`, a Tekton step, a selector's pattern).
    Outside,
    /// In a `containers` list some of whose items name no image: tagpin cannot tell whether it
    /// is a pod spec (an operator may fill the missing images in).
    Undecided,
}

impl Why {
    /// The words `pin`, `--check` and the webhook all use.
    pub fn words(self) -> &'static str {
        match self {
            Why::Outside => "is an image field outside every pod spec tagpin knows",
            Why::Undecided => {
                "is in a containers list tagpin cannot tell is a pod spec (not every item names an image)"
            }
        }
    }
}

/// An `image` string of an object that is not in a pod spec tagpin pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtherImage {
    /// JSON pointer tokens to the field.
    pub at: Vec<String>,
    pub image: String,
    pub why: Why,
}

impl OtherImage {
    /// `spec/image`, `spec/tasks/0/steps/1/image`: where it is, for messages.
    pub fn label(&self) -> String {
        self.at.join("/")
    }
}

/// Why an object was not judged: the walk stopped at a bound, so it cannot say that it found
/// every pod spec. Nothing in such an object is pinned, and every caller says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incomplete {
    /// Nested deeper than [`MAX_SEARCH_DEPTH`].
    TooDeep,
    /// More than [`MAX_SEARCH_NODES`] maps and lists.
    TooLarge,
}

impl Incomplete {
    pub fn words(self) -> String {
        match self {
            Incomplete::TooDeep => format!(
                "is nested deeper than {MAX_SEARCH_DEPTH} levels: not searched for pod specs, nothing pinned"
            ),
            Incomplete::TooLarge => format!(
                "holds more than {MAX_SEARCH_NODES} maps and lists: not searched for pod specs, nothing pinned"
            ),
        }
    }
}

/// What the one discovery rule says about an object: its pod specs, the image fields it does
/// not pin and why, and whether the walk stopped at a bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Empty when `incomplete` is set.
    pub specs: Vec<PodSpecAt>,
    pub others: Vec<OtherImage>,
    pub incomplete: Option<Incomplete>,
    /// Maps and lists visited (at most [`MAX_SEARCH_NODES`] + 1).
    pub visited: usize,
}

/// The one rule for where pod specs are, used by the webhook, `pin` and `audit`:
///
/// * a kind of the table ([`target`]): its one pod spec at its known path;
/// * a custom resource (a dotted group, not `*.k8s.io`): every map, at any depth and through
///   lists, whose `containers` is a non-empty list of maps each with an `image` string (Knative
///   leaves out `name`) — unless a key on the way is selector-like ([`is_selector_key`]). The
///   walk does not look inside a pod spec it found. A pod spec under a `spec` key has its
///   template's metadata beside it (`…template.spec` → `…template.metadata`);
/// * any other kind: no pod spec.
///
/// A ConfigMap or Secret is data, not a workload: nothing in it is listed.
/// Every other `image` string (outside `metadata` and `status` at the top) is listed in
/// `others`: [`Why::Undecided`] when it is in a `containers` list some of whose items name no
/// image, else [`Why::Outside`]. The walk stops, and judges nothing, past
/// [`MAX_SEARCH_DEPTH`] levels or [`MAX_SEARCH_NODES`] maps and lists.
pub fn discover<T: Tree>(group: &str, kind: &str, object: &T) -> Discovery {
    if group.is_empty() && matches!(kind, "ConfigMap" | "Secret") {
        return Discovery::default();
    }
    let table = target(group, kind);
    let mut walk = Walk {
        search: table.is_none() && is_custom_group(group),
        fixed: table.map(|t| t.spec_at.iter().map(|s| s.to_string()).collect()),
        out: Discovery::default(),
    };
    if let Some(t) = table {
        walk.out.specs.push(t.into());
    }
    walk.walk(object, &mut Vec::new(), false);
    match (walk.out.incomplete, walk.search) {
        (None, _) => {}
        // Searched by shape: what was not seen may hold pod specs, so nothing is judged.
        (Some(_), true) => {
            walk.out.specs.clear();
            walk.out.others.clear();
        }
        // A kind of the table: its pod spec is where the table says; only the list of other
        // image fields is cut short.
        (Some(_), false) => walk.out.incomplete = None,
    }
    walk.out
}

/// Every pod spec of an object, by [`discover`]'s rule (none when the object is not judged).
pub fn pod_specs<T: Tree>(group: &str, kind: &str, object: &T) -> Vec<PodSpecAt> {
    discover(group, kind, object).specs
}

struct Walk {
    /// Search by shape (custom resources).
    search: bool,
    /// The table's pod spec path, not walked (its images are the pod spec's).
    fixed: Option<Vec<String>>,
    out: Discovery,
}

impl Walk {
    fn walk<T: Tree>(&mut self, v: &T, path: &mut Vec<String>, under_selector: bool) {
        if self.out.incomplete.is_some() || !(v.is_map() || v.as_list().is_some()) {
            return;
        }
        if self.fixed.as_ref() == Some(path) {
            return;
        }
        self.out.visited += 1;
        if self.out.visited > MAX_SEARCH_NODES {
            self.out.incomplete = Some(Incomplete::TooLarge);
            return;
        }
        if path.len() > MAX_SEARCH_DEPTH {
            self.out.incomplete = Some(Incomplete::TooDeep);
            return;
        }
        let shape = if self.search && !under_selector {
            containers_shape(v)
        } else {
            Shape::None
        };
        match shape {
            Shape::PodSpec => {
                let template_meta_at =
                    (path.len() >= 2 && path.last().is_some_and(|l| l == "spec")).then(|| {
                        let mut m = path[..path.len() - 1].to_vec();
                        m.push("metadata".to_string());
                        m
                    });
                self.out.specs.push(PodSpecAt {
                    spec_at: path.clone(),
                    template_meta_at,
                    is_pod: false,
                });
                return;
            }
            Shape::Partial => {
                if let Some(items) = v.field("containers").and_then(T::as_list) {
                    for (i, c) in items.iter().enumerate() {
                        if let Some(image) = c.field("image").and_then(T::as_str) {
                            let mut at = path.clone();
                            at.extend(["containers".into(), i.to_string(), "image".into()]);
                            self.out.others.push(OtherImage {
                                at,
                                image: image.to_string(),
                                why: Why::Undecided,
                            });
                        }
                    }
                }
            }
            Shape::None => {}
        }
        if let Some(list) = v.as_list() {
            // An index is never `metadata`, `status`, `containers` or `image`: only a map or
            // list in a list is walked.
            for (i, child) in list.iter().enumerate() {
                if child.is_map() || child.as_list().is_some() {
                    path.push(i.to_string());
                    self.walk(child, path, under_selector);
                    path.pop();
                }
            }
        } else {
            for (k, child) in v.entries() {
                self.child(k, child, path, shape, under_selector || is_selector_key(k));
            }
        }
    }

    /// The child `key` of the map or list at `path`: an `image` string outside every pod spec
    /// is listed, a map or list walked. Its key is copied into the path only for those.
    fn child<T: Tree>(
        &mut self,
        key: &str,
        child: &T,
        path: &mut Vec<String>,
        shape: Shape,
        selector: bool,
    ) {
        if path.is_empty() && (key == "metadata" || key == "status") {
            return;
        }
        if shape == Shape::Partial && key == "containers" {
            return;
        }
        if let Some(image) = child.as_str().filter(|_| key == "image") {
            let mut at = path.clone();
            at.push(key.to_string());
            self.out.others.push(OtherImage {
                at,
                image: image.to_string(),
                why: Why::Outside,
            });
        } else if child.is_map() || child.as_list().is_some() {
            path.push(key.to_string());
            self.walk(child, path, selector);
            path.pop();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// A non-empty `containers` list, every item a map with an `image` string.
    PodSpec,
    /// A non-empty `containers` list where some items have an `image` string and some do not.
    Partial,
    None,
}

fn containers_shape<T: Tree>(v: &T) -> Shape {
    let Some(items) = v.field("containers").and_then(T::as_list) else {
        return Shape::None;
    };
    let with_image = items
        .iter()
        .filter(|c| c.field("image").and_then(T::as_str).is_some())
        .count();
    match with_image {
        0 => Shape::None,
        n if n == items.len() => Shape::PodSpec,
        _ => Shape::Partial,
    }
}

/// Every image field of the pod specs `specs` of `object`. When there are several pod specs,
/// each site's record key and label start with its pod spec's JSON pointer
/// (`/spec/workerGroupSpecs/0/template/spec#worker`), so names may repeat across them.
pub fn images_of<T: Tree>(object: &T, specs: &[PodSpecAt]) -> Vec<ImageSite> {
    // One pod spec (nearly every object): its sites as found, not moved again one by one.
    if let [one] = specs {
        return find_images(object, &one.spec_at);
    }
    let several = specs.len() > 1;
    specs
        .iter()
        .flat_map(|s| {
            // Only several pod specs need their pointer in each site's key and label.
            let at = several.then(|| PointerBuf::from_tokens(s.spec_at.iter().map(String::as_str)));
            find_images(object, &s.spec_at)
                .into_iter()
                .map(move |mut site| {
                    if let Some(at) = &at {
                        site.key = format!("{at}#{}", site.key);
                        site.label = format!("{at} {}", site.label);
                    }
                    site
                })
        })
        .collect()
}

/// The record of an object with these pod specs: on its metadata and its template's. With
/// several pod specs the object's record has every site under its qualified key (see
/// [`images_of`]), and each template's record its own sites under their plain keys.
pub fn record_of<T: Tree>(object: &T, specs: &[PodSpecAt], sites: &[ImageSite]) -> Option<Record> {
    match specs {
        [] => None,
        [one] => Some(Record::at(object, one.template_meta_at.as_deref(), sites)),
        several => Some(Record::several(object, several, sites)),
    }
}

/// The JSON pointer (as tokens) to the pod spec inside an object of this kind, or `None` when
/// tagpin does not handle the kind.
pub fn pod_spec_location(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    target(group, kind).map(|t| t.spec_at)
}

/// The API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// True when an owner reference marks a controller (`controller: true`): a ReplicaSet made by a
/// Deployment, a Job made by a CronJob. Their templates come from the owner; changing one makes
/// the owner's controller fight back (k8s-digester#25).
pub fn is_controller_owned<T: Tree>(object: &T) -> bool {
    object
        .field("metadata")
        .and_then(|m| m.field("ownerReferences"))
        .and_then(T::as_list)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.field("controller").and_then(T::as_bool) == Some(true))
        })
}

/// The tag a pinned image was resolved from, given the image up to its `@` (`before`) and the
/// record's entry for its site: `repo:tag@sha256:…` records it inline; otherwise the record's
/// entry, when it names the same repository as written. `None`: nothing says which tag it was.
pub fn recorded_tag(before: &str, recorded: Option<&str>) -> Option<crate::reference::ImageRef> {
    use crate::reference::ImageRef;
    match ImageRef::parse(before) {
        Ok(r) if r.written_repository() != before => Some(r),
        _ => recorded
            .and_then(|orig| ImageRef::parse(orig).ok())
            .filter(|r| r.written_repository() == before),
    }
}

/// The value at JSON pointer tokens: a map's key, or a list's index (a pod spec inside a list,
/// `spec/workerGroupSpecs/1/template/spec`, is reached through its index). `None` if absent.
pub fn value_at<'v, T: Tree, S: AsRef<str>>(object: &'v T, tokens: &[S]) -> Option<&'v T> {
    tokens.iter().try_fold(object, |v, t| v.child(t.as_ref()))
}

/// The `tagpin.io/pinned` record key of container `name` in `list` (`containers`,
/// `initContainers` or `ephemeralContainers`): `web`, `init/migrate`, `ephemeral/debug`.
pub fn container_key(list: &str, name: &str) -> String {
    match list {
        "initContainers" => joined(&["init/", name]),
        "ephemeralContainers" => joined(&["ephemeral/", name]),
        _ => name.to_string(),
    }
}

/// Every image field in the pod spec at `spec_at` inside `object`: `containers[].image`,
/// `initContainers[].image`, `ephemeralContainers[].image` and `volumes[].image.reference`.
/// Fields that are absent or not strings are skipped (the API server validates them).
pub fn find_images<T: Tree, S: AsRef<str>>(object: &T, spec_at: &[S]) -> Vec<ImageSite> {
    let Some(spec) = value_at(object, spec_at) else {
        return Vec::new();
    };
    let base = PointerBuf::from_tokens(spec_at.iter().map(AsRef::as_ref));
    let mut sites = Vec::new();
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(items) = spec.field(list).and_then(T::as_list) else {
            continue;
        };
        for (i, c) in items.iter().enumerate() {
            if let Some(image) = c.field("image").and_then(T::as_str) {
                let name = c.field("name").and_then(T::as_str).unwrap_or("?");
                sites.push(ImageSite {
                    pointer: site_pointer(&base, list, i, &["image"]),
                    image: image.to_string(),
                    label: joined(&[list, "/", name]),
                    list,
                    name: name.to_string(),
                    key: container_key(list, name),
                });
            }
        }
    }
    if let Some(vols) = spec.field("volumes").and_then(T::as_list) {
        for (i, v) in vols.iter().enumerate() {
            let reference = v.field("image").and_then(|i| i.field("reference"));
            if let Some(image) = reference.and_then(T::as_str) {
                let name = v.field("name").and_then(T::as_str).unwrap_or("?");
                sites.push(ImageSite {
                    pointer: site_pointer(&base, "volumes", i, &["image", "reference"]),
                    image: image.to_string(),
                    label: joined(&["volumes/", name]),
                    list: "volumes",
                    name: name.to_string(),
                    key: joined(&["volume/", name]),
                });
            }
        }
    }
    sites
}

/// The strings `parts`, one after the other, in a string of the right size.
fn joined(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

/// `base` followed by `list`, `i` and `tail` (`/containers/0/image`): one string written at once
/// rather than a token at a time.
fn site_pointer(base: &PointerBuf, list: &str, i: usize, tail: &[&str]) -> PointerBuf {
    let mut s = String::with_capacity(base.as_str().len() + 48);
    s.push_str(base.as_str());
    s.push('/');
    s.push_str(list);
    s.push('/');
    push_index(&mut s, i);
    for t in tail {
        s.push('/');
        s.push_str(t);
    }
    // The tokens are list and field names and an index, none of which needs escaping: a
    // pointer. Were one to, it is built token by token instead.
    PointerBuf::parse(s).unwrap_or_else(|_| {
        let mut p = base.clone();
        p.push_back(list);
        p.push_back(i);
        for t in tail {
            p.push_back(*t);
        }
        p
    })
}

/// The decimal digits of `i`, without the formatting machinery.
fn push_index(s: &mut String, i: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = i;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        s.push(char::from(d));
    }
}

/// On UPDATE, an image that is identical at the same place in the old object is already running
/// as written: rewriting it would restart the container (Pod) or roll out a workload the user did
/// not change. Only new or changed image fields are candidates.
pub fn changed_since<T: Tree>(sites: Vec<ImageSite>, old: Option<&T>) -> Vec<ImageSite> {
    let Some(old) = old else { return sites };
    sites
        .into_iter()
        .filter(|s| old.pointer(s.pointer.as_str()).and_then(T::as_str) != Some(s.image.as_str()))
        .collect()
}

/// A `replace` operation per pinned site.
pub fn replace_ops<'a>(
    pins: impl IntoIterator<Item = (&'a ImageSite, String)>,
) -> Vec<PatchOperation> {
    pins.into_iter()
        .map(|(site, value)| {
            PatchOperation::Replace(ReplaceOperation {
                path: site.pointer.clone(),
                value: Value::String(value),
            })
        })
        .collect()
}

/// A JSON Patch as the text an admission answer carries: `replace` operations for pins
/// ([`PatchText::replace`]) and `add` operations for the record ([`Record::write_ops`]), written
/// straight into one buffer. The bytes are those `serde_json` writes for the same
/// [`PatchOperation`]s ([`replace_ops`], [`Record::ops`]); a test holds them equal.
#[derive(Clone, PartialEq, Eq)]
pub struct PatchText {
    /// The JSON array, closing `]` included; UTF-8 (written only from `str`s and escapes).
    json: Vec<u8>,
    ops: usize,
}

impl Default for PatchText {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl std::fmt::Debug for PatchText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.json))
    }
}

impl PatchText {
    /// An empty patch with room for `ops` operations of a usual size.
    pub fn with_capacity(ops: usize) -> Self {
        let mut json = Vec::with_capacity(2 + ops * 200);
        json.extend_from_slice(b"[]");
        Self { json, ops: 0 }
    }

    /// How many operations it holds.
    pub fn len(&self) -> usize {
        self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops == 0
    }

    /// The JSON array (`[]` when empty).
    pub fn as_bytes(&self) -> &[u8] {
        &self.json
    }

    /// The operations, parsed back (tests, and whatever wants them typed).
    pub fn parsed(&self) -> serde_json::Result<Vec<PatchOperation>> {
        serde_json::from_slice(&self.json)
    }

    /// Opens one operation `{"op":<op>,"path":"<path><suffix>","value":`; `suffix` is written
    /// as it is (it must need no JSON escape).
    fn open(&mut self, op: &str, path: &str, suffix: &str) -> &mut Vec<u8> {
        let out = &mut self.json;
        out.pop();
        if self.ops > 0 {
            out.push(b',');
        }
        self.ops += 1;
        out.extend_from_slice(b"{\"op\":\"");
        out.extend_from_slice(op.as_bytes());
        out.extend_from_slice(b"\",\"path\":\"");
        json_str::escape(out, path);
        out.extend_from_slice(suffix.as_bytes());
        out.extend_from_slice(b"\",\"value\":");
        out
    }

    fn close(&mut self) {
        self.json.extend_from_slice(b"}]");
    }

    /// A `replace` of the string at `path` with `value` (as [`replace_ops`]).
    pub fn replace(&mut self, path: &PointerBuf, value: &str) {
        let out = self.open("replace", path.as_str(), "");
        json_str::write(out, value);
        self.close();
    }
}

/// The annotation that records, for each pinned site, the image as originally written.
pub const PINNED_ANNOTATION: &str = "tagpin.io/pinned";

/// The pointer from a metadata map to its [`PINNED_ANNOTATION`] (`/` escaped as `~1`).
const ANNOTATION_SUFFIX: &str = "/annotations/tagpin.io~1pinned";

/// What one metadata object looks like, as far as adding the annotation goes.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MetaState {
    /// No `metadata` object (a template may have none): add the whole map.
    Absent,
    /// `metadata` without an `annotations` object: add the annotations map.
    NoAnnotations,
    /// `annotations` exists: add (or overwrite) one key. Holds the current value.
    Annotations(Option<String>),
}

/// The `tagpin.io/pinned` record of one object: where it goes (the object's metadata, and the
/// pod template's for workloads) and what it says now. Pure.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Each metadata map the record goes on, its state, and, for a template of an object with
    /// several pod specs, the key prefix (`<pod spec pointer>#`) of the entries it carries.
    metas: Vec<(PointerBuf, MetaState, Option<String>)>,
    /// The current record (from the template when there is one, else the object).
    existing: BTreeMap<String, String>,
    /// Keys of sites that already hold a digest: their existing entries stay.
    digest_keys: BTreeSet<String>,
}

impl Record {
    /// Reads the record state of `object`, whose image sites are `sites` (all of them, not only
    /// those to pin now).
    pub fn new<T: Tree>(object: &T, target: &Target, sites: &[ImageSite]) -> Self {
        let meta = target
            .template_meta_at
            .map(|m| m.iter().map(|t| t.to_string()).collect::<Vec<_>>());
        Self::at(object, meta.as_deref(), sites)
    }

    /// [`Record::new`] for a pod spec found anywhere: the object's metadata and, if given, the
    /// template's.
    pub fn at<T: Tree>(
        object: &T,
        template_meta_at: Option<&[String]>,
        sites: &[ImageSite],
    ) -> Self {
        let object_meta = ["metadata".to_string()];
        let mut at: Vec<&[String]> = vec![&object_meta];
        at.extend(template_meta_at);
        let mut metas = Vec::new();
        let mut existing = BTreeMap::new();
        for tokens in at {
            let state = meta_state(object, tokens);
            // The template's record wins: it is what the pods will carry.
            if let Some(map) = state.current().and_then(parse_record) {
                existing = map;
            }
            metas.push((
                PointerBuf::from_tokens(tokens.iter().map(String::as_str)),
                state,
                None,
            ));
        }
        Self::with(metas, existing, sites)
    }

    /// The record of an object with several pod specs: every site under its qualified key on
    /// the object's metadata (which is also where the current record is read), and on each
    /// template's metadata the entries of its own pod spec under their plain keys.
    pub fn several<T: Tree>(object: &T, specs: &[PodSpecAt], sites: &[ImageSite]) -> Self {
        let object_meta = ["metadata".to_string()];
        let state = meta_state(object, &object_meta);
        let existing = state.current().and_then(parse_record).unwrap_or_default();
        let mut metas = vec![(PointerBuf::from_tokens(["metadata"]), state, None)];
        for spec in specs {
            if let Some(tokens) = &spec.template_meta_at {
                let at = PointerBuf::from_tokens(spec.spec_at.iter().map(String::as_str));
                metas.push((
                    PointerBuf::from_tokens(tokens.iter().map(String::as_str)),
                    meta_state(object, tokens),
                    Some(format!("{at}#")),
                ));
            }
        }
        Self::with(metas, existing, sites)
    }

    fn with(
        metas: Vec<(PointerBuf, MetaState, Option<String>)>,
        existing: BTreeMap<String, String>,
        sites: &[ImageSite],
    ) -> Self {
        let digest_keys = sites
            .iter()
            .filter(|s| s.image.contains('@'))
            .map(|s| s.key.clone())
            .collect();
        Self {
            metas,
            existing,
            digest_keys,
        }
    }

    /// The image originally written at the site with this key, if the record has it.
    pub fn recorded(&self, key: &str) -> Option<&str> {
        self.existing.get(key).map(String::as_str)
    }

    /// The same record with every pointer under `prefix` (objects inside a `List`).
    pub fn prefixed(mut self, prefix: &PointerBuf) -> Self {
        for (p, _, _) in &mut self.metas {
            *p = prefix.concat(p);
        }
        self
    }

    /// The operations that record `pinned` (each site with the image as written before pinning).
    /// Entries of sites that still hold a digest are kept; entries of sites that no longer exist
    /// or hold a tag again are dropped. No pins, no operations: an object tagpin did not change
    /// is not touched.
    pub fn ops(&self, pinned: &[&ImageSite]) -> Vec<PatchOperation> {
        self.adds(pinned)
            .into_iter()
            .map(|(meta, state, part)| {
                let value = record_text(&part);
                let (path, v) = match state {
                    MetaState::Annotations(_) => {
                        let mut p = meta.clone();
                        p.push_back("annotations");
                        p.push_back(PINNED_ANNOTATION);
                        (p, Value::String(value))
                    }
                    MetaState::NoAnnotations => {
                        let mut p = meta.clone();
                        p.push_back("annotations");
                        (p, json!({ PINNED_ANNOTATION: value }))
                    }
                    MetaState::Absent => (
                        meta.clone(),
                        json!({ "annotations": { PINNED_ANNOTATION: value } }),
                    ),
                };
                PatchOperation::Add(AddOperation { path, value: v })
            })
            .collect()
    }

    /// [`Record::ops`], written into `out`.
    pub fn write_ops(&self, pinned: &[&ImageSite], out: &mut PatchText) {
        for (meta, state, part) in self.adds(pinned) {
            let meta = meta.as_str();
            let json = match state {
                MetaState::Annotations(_) => out.open("add", meta, ANNOTATION_SUFFIX),
                MetaState::NoAnnotations => {
                    let json = out.open("add", meta, "/annotations");
                    json.extend_from_slice(b"{\"tagpin.io/pinned\":");
                    json
                }
                MetaState::Absent => {
                    let json = out.open("add", meta, "");
                    json.extend_from_slice(b"{\"annotations\":{\"tagpin.io/pinned\":");
                    json
                }
            };
            write_record(json, &part);
            match state {
                MetaState::Annotations(_) => {}
                MetaState::NoAnnotations => json.push(b'}'),
                MetaState::Absent => json.extend_from_slice(b"}}"),
            }
            out.close();
        }
    }

    /// Each metadata map to add the record of `pinned` to, its state, and the record's entries
    /// (see [`Record::ops`]).
    fn adds<'r>(&'r self, pinned: &[&'r ImageSite]) -> Vec<RecordAdd<'r>> {
        if pinned.is_empty() {
            return Vec::new();
        }
        let mut map: BTreeMap<&str, &str> = self
            .existing
            .iter()
            .filter(|(k, _)| self.digest_keys.contains(*k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for s in pinned {
            map.insert(&s.key, &s.image);
        }
        let mut adds = Vec::new();
        for (meta, state, only) in &self.metas {
            let part: BTreeMap<&str, &str> = match only {
                None => map.clone(),
                Some(p) => map
                    .iter()
                    .filter_map(|(k, v)| Some((k.strip_prefix(p.as_str())?, *v)))
                    .collect(),
            };
            if part.is_empty() {
                continue;
            }
            // Written only to compare with a record already there.
            if matches!(state, MetaState::Annotations(Some(cur)) if *cur == record_text(&part)) {
                continue;
            }
            adds.push((meta, state, part));
        }
        adds
    }
}

/// A metadata map to add the record to, its state, and the record's entries for it.
type RecordAdd<'r> = (&'r PointerBuf, &'r MetaState, BTreeMap<&'r str, &'r str>);

/// The record's text: `part` as a JSON object, the bytes `serde_json::to_string` writes for
/// it (a test holds them equal), written straight into one string.
fn record_text(part: &BTreeMap<&str, &str>) -> String {
    let len: usize = part.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    let mut out = Vec::with_capacity(len + 2);
    write_map(&mut out, part, b"\"", json_str::escape);
    // Only whole strings and ASCII punctuation were written.
    String::from_utf8(out).unwrap_or_default()
}

/// The record's text (see [`record_text`]) as a JSON string, written straight into `out`:
/// each key and value escaped twice rather than the whole text escaped after it is written.
fn write_record(out: &mut Vec<u8>, part: &BTreeMap<&str, &str>) {
    out.push(b'"');
    write_map(out, part, b"\\\"", json_str::escape_twice);
    out.push(b'"');
}

/// `part` as a JSON object of strings, each string between `quote`s and its inside written by
/// `escape`: the record's text itself, or that text inside a JSON string.
fn write_map(
    out: &mut Vec<u8>,
    part: &BTreeMap<&str, &str>,
    quote: &[u8],
    escape: fn(&mut Vec<u8>, &str),
) {
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(quote);
        escape(out, s);
        out.extend_from_slice(quote);
    };
    out.push(b'{');
    for (i, (k, v)) in part.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, k);
        out.push(b':');
        string(out, v);
    }
    out.push(b'}');
}

/// The record state of the metadata map at `tokens` of `object`.
fn meta_state<T: Tree>(object: &T, tokens: &[String]) -> MetaState {
    let meta = value_at(object, tokens).filter(|m| m.is_map());
    match meta.map(|m| m.field("annotations").filter(|a| a.is_map())) {
        None => MetaState::Absent,
        Some(None) => MetaState::NoAnnotations,
        Some(Some(a)) => MetaState::Annotations(
            a.field(PINNED_ANNOTATION)
                .and_then(T::as_str)
                .map(str::to_string),
        ),
    }
}

impl MetaState {
    fn current(&self) -> Option<&str> {
        match self {
            MetaState::Annotations(c) => c.as_deref(),
            _ => None,
        }
    }
}

/// A record value (the `tagpin.io/pinned` annotation): a JSON object of strings, site key to the
/// image as written before pinning. Anything else is treated as no record.
pub fn parse_record(s: &str) -> Option<BTreeMap<String, String>> {
    serde_json::from_str(s).ok()
}

/// The same sites with every pointer under `prefix` (objects inside a `List`).
pub fn prefix_sites(sites: Vec<ImageSite>, prefix: &PointerBuf) -> Vec<ImageSite> {
    sites
        .into_iter()
        .map(|mut s| {
            s.pointer = prefix.concat(&s.pointer);
            s
        })
        .collect()
}

/// The secret names in a pod spec's `imagePullSecrets`, in order, duplicates and empty names
/// dropped.
pub fn pull_secret_names<T: Tree>(pod_spec: &T) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let refs = pod_spec.field("imagePullSecrets").and_then(T::as_list);
    for r in refs.into_iter().flatten() {
        let name = r.field("name").and_then(T::as_str);
        if let Some(n) = name.filter(|n| !n.is_empty()) {
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    out
}

/// The service account a pod spec runs as: `serviceAccountName`, else the deprecated
/// `serviceAccount`, else `default`.
pub fn service_account_name<T: Tree>(pod_spec: &T) -> String {
    ["serviceAccountName", "serviceAccount"]
        .iter()
        .find_map(|f| {
            pod_spec
                .field(f)
                .and_then(T::as_str)
                .filter(|s| !s.is_empty())
        })
        .unwrap_or("default")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_text_is_what_serde_json_writes() {
        let maps: [&[(&str, &str)]; 4] = [
            &[],
            &[("web", "nginx:1")],
            &[
                ("initContainers/setup", "reg.example:5000/team/setup:v1"),
                ("a\"quoted\\key", "caf\u{e9}\n\u{1}\u{7f}\u{2028}:1"),
                ("web", "nginx@sha256:abc"),
            ],
            &[("", "")],
        ];
        for m in maps {
            let part: BTreeMap<&str, &str> = m.iter().copied().collect();
            assert_eq!(
                record_text(&part),
                serde_json::to_string(&part).unwrap(),
                "{m:?}"
            );
            // And in a patch: the text as a JSON string, written without the text.
            let mut written = Vec::new();
            write_record(&mut written, &part);
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&record_text(&part)).unwrap(),
                "{m:?}"
            );
        }
    }

    #[test]
    fn recorded_tag_inline_or_from_the_record_of_the_same_repository() {
        let tag = |before: &str, rec: Option<&str>| {
            recorded_tag(before, rec).map(|r| r.original().to_string())
        };
        assert_eq!(tag("app:2", None).as_deref(), Some("app:2"), "inline");
        assert_eq!(
            tag("app:2", Some("app:9")).as_deref(),
            Some("app:2"),
            "inline wins"
        );
        assert_eq!(
            tag("app", Some("app:2")).as_deref(),
            Some("app:2"),
            "recorded"
        );
        assert_eq!(
            tag("app", Some("app")).as_deref(),
            Some("app"),
            "recorded, implicit latest"
        );
        assert_eq!(tag("app", Some("other:2")), None, "another repository");
        assert_eq!(tag("app", None), None);
        assert_eq!(
            tag("reg:5000/app", Some("reg:5000/app:1")).as_deref(),
            Some("reg:5000/app:1")
        );
    }
    use serde_json::json;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {
                "initContainers": [{"name": "migrate", "image": "app:v3"}],
                "containers": [
                    {"name": "web", "image": "nginx:1.27"},
                    {"name": "side", "image": "reg.example:5000/team/side@sha256:00"},
                    {"name": "noimage"}
                ],
                "ephemeralContainers": [{"name": "debug", "image": "busybox"}],
                "volumes": [
                    {"name": "cfg", "configMap": {"name": "x"}},
                    {"name": "models", "image": {"reference": "models/llm:7b", "pullPolicy": "IfNotPresent"}}
                ]
            }
        })
    }

    #[test]
    fn finds_every_image_path() {
        let sites = find_images(&pod(), &["spec"]);
        let got: Vec<(&str, &str, &str)> = sites
            .iter()
            .map(|s| (s.pointer.as_str(), s.image.as_str(), s.label.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("/spec/containers/0/image", "nginx:1.27", "containers/web"),
                (
                    "/spec/containers/1/image",
                    "reg.example:5000/team/side@sha256:00",
                    "containers/side"
                ),
                (
                    "/spec/initContainers/0/image",
                    "app:v3",
                    "initContainers/migrate"
                ),
                (
                    "/spec/ephemeralContainers/0/image",
                    "busybox",
                    "ephemeralContainers/debug"
                ),
                (
                    "/spec/volumes/1/image/reference",
                    "models/llm:7b",
                    "volumes/models"
                ),
            ]
        );
    }

    #[test]
    fn odd_shapes_do_not_panic() {
        for v in [
            json!(null),
            json!({"spec": null}),
            json!({"spec": {"containers": "nope"}}),
            json!({"spec": {"containers": [1, null, {"image": 7}]}}),
            json!({"spec": {"volumes": [{"image": "x"}]}}),
        ] {
            assert!(find_images(&v, &["spec"]).is_empty(), "{v}");
        }
    }

    #[test]
    fn update_keeps_unchanged_images() {
        let mut new = pod();
        let old = pod();
        new["spec"]["containers"][0]["image"] = json!("nginx:1.28");
        let sites = changed_since(find_images(&new, &["spec"]), Some(&old));
        assert_eq!(sites.len(), 1);
        assert_eq!(sites[0].image, "nginx:1.28");
        // No old object: everything is a candidate.
        assert_eq!(
            changed_since::<Value>(find_images(&new, &["spec"]), None).len(),
            5
        );
    }

    #[test]
    fn replace_ops_apply_to_the_object() {
        let mut obj = pod();
        let sites = find_images(&obj, &["spec"]);
        let ops = replace_ops([
            (&sites[0], "nginx@sha256:aa".to_string()),
            (&sites[4], "m@sha256:bb".into()),
        ]);
        json_patch::patch(&mut obj, &ops).unwrap();
        assert_eq!(obj["spec"]["containers"][0]["image"], "nginx@sha256:aa");
        assert_eq!(
            obj["spec"]["volumes"][1]["image"]["reference"],
            "m@sha256:bb"
        );
        let mut expected = pod();
        expected["spec"]["containers"][0]["image"] = json!("nginx@sha256:aa");
        expected["spec"]["volumes"][1]["image"]["reference"] = json!("m@sha256:bb");
        assert_eq!(obj, expected);
    }

    fn deployment(template_meta: Option<Value>) -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"team": "a"}},
            "spec": {"template": {"spec": {
                "initContainers": [{"name": "migrate", "image": "app:v3"}],
                "containers": [{"name": "web", "image": "nginx:1.27"}]
            }}}
        });
        if let Some(m) = template_meta {
            d["spec"]["template"]["metadata"] = m;
        }
        d
    }

    fn apply_ops(mut v: Value, ops: &[PatchOperation]) -> Value {
        json_patch::patch(&mut v, ops).unwrap();
        v
    }

    #[test]
    fn every_workload_kind_has_its_template_path() {
        let cases = [
            ("apps", "Deployment", "/spec/template/spec"),
            ("apps", "StatefulSet", "/spec/template/spec"),
            ("apps", "DaemonSet", "/spec/template/spec"),
            ("apps", "ReplicaSet", "/spec/template/spec"),
            ("", "ReplicationController", "/spec/template/spec"),
            ("batch", "Job", "/spec/template/spec"),
            ("batch", "CronJob", "/spec/jobTemplate/spec/template/spec"),
            ("", "PodTemplate", "/template/spec"),
            ("", "Pod", "/spec"),
        ];
        for (g, k, want) in cases {
            let t = target(g, k).unwrap_or_else(|| panic!("{g}/{k}"));
            let got = PointerBuf::from_tokens(t.spec_at.iter().copied());
            assert_eq!(got.as_str(), want, "{g}/{k}");
            assert_eq!(t.is_pod, k == "Pod");
        }
        assert!(target("apps", "Pod").is_none(), "group matters");
        assert!(target("", "ConfigMap").is_none());
        assert_eq!(api_group("apps/v1"), "apps");
        assert_eq!(api_group("v1"), "");
    }

    #[test]
    fn legacy_api_groups_use_the_same_paths() {
        for (api_version, kind, want) in [
            ("extensions/v1beta1", "DaemonSet", "/spec/template/spec"),
            ("extensions/v1beta1", "Deployment", "/spec/template/spec"),
            ("extensions/v1beta1", "ReplicaSet", "/spec/template/spec"),
            ("apps/v1beta1", "Deployment", "/spec/template/spec"),
            ("apps/v1beta1", "StatefulSet", "/spec/template/spec"),
            ("apps/v1beta2", "DaemonSet", "/spec/template/spec"),
            (
                "batch/v1beta1",
                "CronJob",
                "/spec/jobTemplate/spec/template/spec",
            ),
        ] {
            let t = target(api_group(api_version), kind)
                .unwrap_or_else(|| panic!("{api_version} {kind}"));
            let got = PointerBuf::from_tokens(t.spec_at.iter().copied());
            assert_eq!(got.as_str(), want, "{api_version} {kind}");
        }
    }

    #[test]
    fn pod_spec_shapes_are_found_in_custom_resources() {
        let rollout = json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
            "metadata": {"name": "r"},
            "spec": {"template": {"metadata": {"labels": {}}, "spec": {
                "containers": [{"name": "web", "image": "nginx:1.27"}]}}}
        });
        let found = pod_specs("argoproj.io", "Rollout", &rollout);
        assert_eq!(
            found,
            vec![PodSpecAt {
                spec_at: vec!["spec".into(), "template".into(), "spec".into()],
                template_meta_at: Some(vec!["spec".into(), "template".into(), "metadata".into()]),
                is_pod: false,
            }]
        );
        // Knative: no container name.
        let ksvc = json!({"spec": {"template": {"spec": {"containers": [{"image": "app:1"}]}}}});
        let found = pod_specs("serving.knative.dev", "Service", &ksvc);
        assert_eq!(found.len(), 1);
        let sites = find_images(&ksvc, &found[0].spec_at);
        assert_eq!(
            sites[0].pointer.as_str(),
            "/spec/template/spec/containers/0/image"
        );
        // Not a pod spec: an item without an image; built-in groups are never searched.
        let no = json!({"spec": {"containers": [{"image": "a:1"}, {"name": "b"}]}});
        assert!(pod_specs("example.com", "X", &no).is_empty());
        assert!(pod_specs("", "ConfigMap", &ksvc).is_empty());
        assert!(pod_specs("networking.k8s.io", "Ingress", &ksvc).is_empty());
        // Status is not searched.
        let st = json!({"status": {"containers": [{"image": "a:1"}]}});
        assert!(pod_specs("example.com", "X", &st).is_empty());
    }

    /// Was: an object nested past the bound was silently found to hold no pod spec. Now the
    /// walk says it stopped (and judges nothing), so every caller reports it.
    #[test]
    fn the_shape_search_is_bounded_in_depth() {
        let mut v = json!({"containers": [{"image": "a:1"}]});
        for _ in 0..MAX_SEARCH_DEPTH + 1 {
            v = json!({ "x": v });
        }
        let deep = json!({ "spec": v.clone(), "other": {"containers": [{"image": "b:1"}]} });
        let d = discover("example.com", "X", &deep);
        assert_eq!(d.incomplete, Some(Incomplete::TooDeep));
        assert!(d.specs.is_empty() && d.others.is_empty(), "{d:?}");
        let mut v = json!({"containers": [{"image": "a:1"}]});
        for _ in 0..MAX_SEARCH_DEPTH - 2 {
            v = json!({ "x": v });
        }
        let d = discover("example.com", "X", &json!({ "spec": v }));
        assert_eq!((d.specs.len(), d.incomplete), (1, None));
        // Depth through lists counts the same.
        let mut v = json!({"containers": [{"image": "a:1"}]});
        for _ in 0..MAX_SEARCH_DEPTH + 1 {
            v = json!([v]);
        }
        let d = discover("example.com", "X", &json!({ "spec": v }));
        assert_eq!(d.incomplete, Some(Incomplete::TooDeep));
    }

    #[test]
    fn the_walk_is_bounded_in_nodes() {
        // A pod spec first, then more maps than the bound: not judged, nothing pinned.
        let mut spec = serde_json::Map::new();
        spec.insert("a".into(), json!({"containers": [{"image": "a:1"}]}));
        for i in 0..MAX_SEARCH_NODES + 10 {
            spec.insert(format!("k{i:06}"), json!({}));
        }
        let obj = json!({ "spec": spec });
        let d = discover("example.com", "X", &obj);
        assert_eq!(d.incomplete, Some(Incomplete::TooLarge));
        assert_eq!(d.visited, MAX_SEARCH_NODES + 1, "stops at the bound");
        assert!(d.specs.is_empty());
        // A kind of the table keeps its pod spec; only the other-fields list is cut short.
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "a:1"}]}, "x": spec});
        let d = discover("", "Pod", &pod);
        assert_eq!((d.specs.len(), d.incomplete), (1, None));
        assert_eq!(d.visited, MAX_SEARCH_NODES + 1);
    }

    #[test]
    fn pod_specs_in_lists_at_any_depth() {
        let ray = json!({
            "spec": {
                "headGroupSpec": {"template": {"spec": {"containers": [{"name": "head", "image": "rayproject/ray:2.37.0"}]}}},
                "workerGroupSpecs": [
                    {"groupName": "w", "template": {"spec": {"containers": [{"name": "worker", "image": "rayproject/ray:2.37.0"}]}}},
                    {"groupName": "g", "template": {"metadata": {}, "spec": {"containers": [{"name": "worker", "image": "rayproject/ray:2.37.0-gpu"}]}}}
                ]
            }
        });
        let d = discover("ray.io", "RayCluster", &ray);
        let at: Vec<String> = d.specs.iter().map(|s| s.spec_at.join("/")).collect();
        assert_eq!(
            at,
            [
                "spec/headGroupSpec/template/spec",
                "spec/workerGroupSpecs/0/template/spec",
                "spec/workerGroupSpecs/1/template/spec"
            ]
        );
        assert_eq!(
            d.specs[1].template_meta_at.as_ref().unwrap().join("/"),
            "spec/workerGroupSpecs/0/template/metadata"
        );
        let sites = images_of(&ray, &d.specs);
        let keys: Vec<&str> = sites.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "/spec/headGroupSpec/template/spec#head",
                "/spec/workerGroupSpecs/0/template/spec#worker",
                "/spec/workerGroupSpecs/1/template/spec#worker"
            ]
        );
        let jobset = json!({"spec": {"replicatedJobs": [{"name": "w", "template": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "python:3.12"}]}}}}}]}});
        let d = discover("jobset.x-k8s.io", "JobSet", &jobset);
        assert_eq!(d.specs.len(), 1);
        assert_eq!(
            d.specs[0].spec_at.join("/"),
            "spec/replicatedJobs/0/template/spec/template/spec"
        );
        // x-k8s.io is a custom group (only *.k8s.io and k8s.io are Kubernetes' own).
        assert!(is_custom_group("jobset.x-k8s.io"));
    }

    #[test]
    fn containers_under_selector_keys_are_not_pod_specs() {
        let allow = json!({
            "spec": {
                "matchingCriteria": {"containers": [{"image": "nginx:1.27"}]},
                "podSelector": {"matchExpressions": [{"containers": [{"image": "a:1"}]}]},
                "rules": [{"exclude": {"resources": {"containers": [{"image": "b:1"}]}}}],
                "template": {"spec": {"containers": [{"name": "c", "image": "app:1"}]}}
            }
        });
        let d = discover("policy.example.com", "ImageAllowList", &allow);
        assert_eq!(d.specs.len(), 1, "{d:?}");
        assert_eq!(d.specs[0].spec_at.join("/"), "spec/template/spec");
        let others: Vec<(String, &str, Why)> = d
            .others
            .iter()
            .map(|o| (o.label(), o.image.as_str(), o.why))
            .collect();
        assert_eq!(
            others,
            [
                (
                    "spec/matchingCriteria/containers/0/image".to_string(),
                    "nginx:1.27",
                    Why::Outside
                ),
                (
                    "spec/podSelector/matchExpressions/0/containers/0/image".to_string(),
                    "a:1",
                    Why::Outside
                ),
                (
                    "spec/rules/0/exclude/resources/containers/0/image".to_string(),
                    "b:1",
                    Why::Outside
                ),
            ]
        );
        for k in [
            "matchingCriteria",
            "podSelector",
            "MatchLabels",
            "imageFilter",
            "excludes",
        ] {
            assert!(is_selector_key(k), "{k}");
        }
        for k in [
            "template",
            "workerGroupSpecs",
            "podTemplate",
            "spec",
            "containers",
        ] {
            assert!(!is_selector_key(k), "{k}");
        }
    }

    #[test]
    fn a_partial_containers_list_is_undecided_and_outside_fields_are_listed() {
        // Flink: the main container takes spec.image from the operator; the sidecar names one.
        let flink = json!({
            "spec": {
                "image": "flink:1.20",
                "podTemplate": {"spec": {"containers": [
                    {"name": "flink-main-container"},
                    {"name": "log", "image": "fluent-bit:3.1"}
                ]}}
            },
            "status": {"image": "flink:1.20"}
        });
        let d = discover("flink.apache.org", "FlinkDeployment", &flink);
        assert!(d.specs.is_empty());
        let others: Vec<(String, Why)> = d.others.iter().map(|o| (o.label(), o.why)).collect();
        assert_eq!(
            others,
            [
                ("spec/image".to_string(), Why::Outside),
                (
                    "spec/podTemplate/spec/containers/1/image".to_string(),
                    Why::Undecided
                ),
            ]
        );
        // The webhook reads a pruned object, where the image-less container is `null`: same verdict.
        let pruned = json!({"spec": {"image": "flink:1.20", "podTemplate": {"spec": {"containers": [null, {"name": "log", "image": "fluent-bit:3.1"}]}}}});
        assert_eq!(
            discover("flink.apache.org", "FlinkDeployment", &pruned).others,
            d.others
        );
        // Built-in kinds: the table's spec, and other image fields listed the same way.
        let pod = json!({"spec": {"containers": [{"name": "c", "image": "a:1"}]}, "extra": {"image": "b:1"}});
        let d = discover("", "Pod", &pod);
        assert_eq!(d.specs.len(), 1);
        assert_eq!(d.others.len(), 1);
        assert_eq!(d.others[0].label(), "extra/image");
    }

    #[test]
    fn several_pod_specs_get_one_record_each_and_one_on_the_object() {
        let mut ray = json!({
            "metadata": {"name": "rc"},
            "spec": {
                "headGroupSpec": {"template": {"spec": {"containers": [{"name": "head", "image": "ray:1"}]}}},
                "workerGroupSpecs": [{"template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "head", "image": "ray:2"}]}}}]
            }
        });
        let specs = pod_specs("ray.io", "RayCluster", &ray);
        let sites = images_of(&ray, &specs);
        let rec = record_of(&ray, &specs, &sites).expect("a record");
        json_patch::patch(&mut ray, &rec.ops(&sites.iter().collect::<Vec<_>>())).unwrap();
        let ann = |p: &str| {
            ray.pointer(&format!("{p}/annotations/tagpin.io~1pinned"))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        assert_eq!(
            ann("/metadata").as_deref(),
            Some(
                r#"{"/spec/headGroupSpec/template/spec#head":"ray:1","/spec/workerGroupSpecs/0/template/spec#head":"ray:2"}"#
            )
        );
        assert_eq!(
            ann("/spec/headGroupSpec/template/metadata").as_deref(),
            Some(r#"{"head":"ray:1"}"#)
        );
        assert_eq!(
            ann("/spec/workerGroupSpecs/0/template/metadata").as_deref(),
            Some(r#"{"head":"ray:2"}"#)
        );
        assert_eq!(
            ray["spec"]["workerGroupSpecs"][0]["template"]["metadata"]["labels"]["a"],
            "b"
        );
        // Read back: the record answers for each site by its qualified key; re-recording the
        // same pins changes nothing.
        let sites = images_of(&ray, &specs);
        let rec = record_of(&ray, &specs, &sites).unwrap();
        assert_eq!(rec.recorded(&sites[1].key), Some("ray:2"));
        assert!(rec.ops(&sites.iter().collect::<Vec<_>>()).is_empty());
    }

    #[test]
    fn controller_owner_is_detected_only_with_controller_true() {
        let owned = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"},
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "2", "controller": true}
        ]}});
        assert!(is_controller_owned(&owned));
        let not = json!({"metadata": {"ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1", "controller": false}
        ]}});
        assert!(!is_controller_owned(&not));
        assert!(!is_controller_owned(&json!({"metadata": {}})));
    }

    #[test]
    fn record_is_added_to_object_and_template_with_escaped_key() {
        let t = target("apps", "Deployment").unwrap();
        // Template metadata absent: the whole map is added; object annotations exist: one key.
        let d = deployment(None);
        let sites = find_images(&d, t.spec_at);
        let rec = Record::new(&d, &t, &sites);
        let ops = rec.ops(&sites.iter().collect::<Vec<_>>());
        let paths: Vec<String> = ops
            .iter()
            .map(|o| match o {
                PatchOperation::Add(a) => a.path.to_string(),
                _ => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(
            paths,
            vec![
                "/metadata/annotations/tagpin.io~1pinned",
                "/spec/template/metadata"
            ]
        );
        let out = apply_ops(d, &ops);
        let want = r#"{"init/migrate":"app:v3","web":"nginx:1.27"}"#;
        assert_eq!(out["metadata"]["annotations"]["tagpin.io/pinned"], want);
        assert_eq!(out["metadata"]["annotations"]["team"], "a", "others kept");
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["tagpin.io/pinned"],
            want
        );

        // Template metadata without annotations: the annotations map is added.
        let d = deployment(Some(json!({"labels": {"app": "web"}})));
        let rec = Record::new(&d, &t, &find_images(&d, t.spec_at));
        let sites = find_images(&d, t.spec_at);
        let out = apply_ops(d, &rec.ops(&[&sites[0]]));
        assert_eq!(
            out["spec"]["template"]["metadata"],
            json!({"labels": {"app": "web"}, "annotations": {"tagpin.io/pinned": r#"{"web":"nginx:1.27"}"#}})
        );
        // A Pod with no annotations at all.
        let p = pod();
        let t = target("", "Pod").unwrap();
        let sites = find_images(&p, t.spec_at);
        let out = apply_ops(p.clone(), &Record::new(&p, &t, &sites).ops(&[&sites[0]]));
        assert_eq!(
            out["metadata"],
            json!({"name": "p", "annotations": {"tagpin.io/pinned": r#"{"web":"nginx:1.27"}"#}})
        );
        // Nothing pinned, nothing recorded.
        assert!(Record::new(&p, &t, &sites).ops(&[]).is_empty());
    }

    #[test]
    fn record_keeps_entries_of_digests_and_drops_stale_ones() {
        let t = target("apps", "Deployment").unwrap();
        let old_record = r#"{"gone":"x:1","init/migrate":"app:v2","web":"nginx:1.26"}"#;
        let mut d = deployment(Some(
            json!({"annotations": {"tagpin.io/pinned": old_record}}),
        ));
        // migrate holds a digest (pinned before), web a new tag, "gone" no longer exists.
        d["spec"]["template"]["spec"]["initContainers"][0]["image"] = json!("app@sha256:aa");
        let sites = find_images(&d, t.spec_at);
        let rec = Record::new(&d, &t, &sites);
        assert_eq!(rec.recorded("init/migrate"), Some("app:v2"));
        let web: Vec<&ImageSite> = sites.iter().filter(|s| s.key == "web").collect();
        let out = apply_ops(d, &rec.ops(&web));
        let want = r#"{"init/migrate":"app:v2","web":"nginx:1.27"}"#;
        assert_eq!(
            out["spec"]["template"]["metadata"]["annotations"]["tagpin.io/pinned"],
            want
        );
        assert_eq!(out["metadata"]["annotations"]["tagpin.io/pinned"], want);

        // Already recorded exactly so: no operation (an unmoved re-apply changes nothing).
        let same = json!({"annotations": {"tagpin.io/pinned": r#"{"web":"nginx:1.27"}"#}});
        let mut d = deployment(Some(same.clone()));
        d["metadata"] = json!({"name": "web", "annotations": same["annotations"].clone()});
        d["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("initContainers");
        let sites = find_images(&d, t.spec_at);
        assert!(Record::new(&d, &t, &sites)
            .ops(&sites.iter().collect::<Vec<_>>())
            .is_empty());
    }

    #[test]
    fn prefixed_pointers_reach_into_lists() {
        let list = json!({"kind": "List", "items": [{"metadata": {}, "spec": {"containers": [{"name": "a", "image": "x:1"}]}}]});
        let item = &list["items"][0];
        let t = target("", "Pod").unwrap();
        let prefix = PointerBuf::parse("/items/0").unwrap();
        let sites = prefix_sites(find_images(item, t.spec_at), &prefix);
        assert_eq!(
            sites[0].pointer.as_str(),
            "/items/0/spec/containers/0/image"
        );
        let rec = Record::new(item, &t, &sites).prefixed(&prefix);
        let out = apply_ops(list, &rec.ops(&[&sites[0]]));
        assert_eq!(
            out["items"][0]["metadata"]["annotations"]["tagpin.io/pinned"],
            r#"{"a":"x:1"}"#
        );
    }

    #[test]
    fn pull_secret_names_in_order_without_duplicates() {
        let spec = json!({"imagePullSecrets": [{"name": "a"}, {"name": ""}, {}, {"name": "b"}, {"name": "a"}, "junk"]});
        assert_eq!(pull_secret_names(&spec), vec!["a", "b"]);
        assert!(pull_secret_names(&json!({})).is_empty());
        assert!(pull_secret_names(&json!({"imagePullSecrets": "x"})).is_empty());
    }

    #[test]
    fn service_account_defaults() {
        assert_eq!(service_account_name(&json!({})), "default");
        assert_eq!(
            service_account_name(&json!({"serviceAccountName": ""})),
            "default"
        );
        assert_eq!(
            service_account_name(&json!({"serviceAccount": "old"})),
            "old"
        );
        assert_eq!(
            service_account_name(&json!({"serviceAccountName": "new", "serviceAccount": "old"})),
            "new"
        );
    }

    /// The patch written straight as text is, byte for byte, what `serde_json` writes for the
    /// typed operations: pointers with `~0`/`~1` and JSON escapes, images with quotes,
    /// backslashes, control characters and non-ASCII, and every state of a record's metadata.
    #[test]
    fn the_patch_text_is_what_serde_json_writes_for_the_typed_ops() {
        let weird = "we/ird~0\"key\\ü\u{7}";
        let spec = |img: &str| {
            json!({"containers": [
                {"name": "a\"b\\c", "image": img},
                {"name": "ü/~x", "image": "café:ß\u{1}\t\u{7f}"}
            ], "volumes": [{"name": "v~1", "image": {"reference": "m/\"q\":1\r\n"}}]})
        };
        let objects = [
            // No annotations on the object, no metadata on the template.
            json!({"metadata": {"name": "x"}, "spec": {weird: {"template": {"spec": spec("r.io/x:1\"\\ü")}}}}),
            // Annotations without a record; a template metadata without annotations.
            json!({"metadata": {"annotations": {"a": "b"}},
                "spec": {weird: {"template": {"metadata": {"labels": {}}, "spec": spec("x")}}}}),
            // A record that says something else, on both.
            json!({"metadata": {"annotations": {PINNED_ANNOTATION: "{\"old\":\"x:1\"}"}},
                "spec": {weird: {"template": {"metadata": {"annotations": {PINNED_ANNOTATION: "{}"}},
                "spec": spec("y:2")}}}}),
            // No metadata at all.
            json!({"spec": {weird: {"template": {"spec": spec("z")}}}}),
        ];
        let spec_at: Vec<String> = ["spec", weird, "template", "spec"].map(String::from).into();
        let meta_at: Vec<String> = ["spec", weird, "template", "metadata"]
            .map(String::from)
            .into();
        let mut cases = 0;
        for obj in &objects {
            let sites = find_images(obj, &spec_at);
            assert_eq!(sites.len(), 3);
            let two = PodSpecAt {
                spec_at: ["spec", "other~/"].map(String::from).into(),
                template_meta_at: Some(["spec", "other~/", "metadata"].map(String::from).into()),
                is_pod: false,
            };
            let one = PodSpecAt {
                spec_at: spec_at.clone(),
                template_meta_at: Some(meta_at.clone()),
                is_pod: false,
            };
            let records = [
                None,
                Some(Record::at(obj, None, &sites)),
                Some(Record::at(obj, Some(&meta_at), &sites)),
                Some(Record::several(obj, &[one, two], &sites)),
            ];
            for record in &records {
                for n in 0..=sites.len() {
                    let pins: Vec<(&ImageSite, String)> = sites[..n]
                        .iter()
                        .map(|s| (s, format!("{}@sha256:{}\"\\ü", s.image, "a".repeat(64))))
                        .collect();
                    let pinned: Vec<&ImageSite> = pins.iter().map(|(s, _)| *s).collect();
                    let mut typed = replace_ops(pins.iter().cloned());
                    let mut text = PatchText::default();
                    for (s, v) in &pins {
                        text.replace(&s.pointer, v);
                    }
                    if let Some(r) = record {
                        typed.extend(r.ops(&pinned));
                        r.write_ops(&pinned, &mut text);
                    }
                    assert_eq!(
                        String::from_utf8(text.as_bytes().to_vec()).unwrap(),
                        serde_json::to_string(&typed).unwrap()
                    );
                    assert_eq!(text.len(), typed.len());
                    assert_eq!(text.is_empty(), typed.is_empty());
                    assert_eq!(text.parsed().unwrap(), typed);
                    cases += usize::from(!typed.is_empty());
                }
            }
        }
        assert!(cases > 40, "{cases}");
    }

    #[test]
    fn indexes_and_small_maps_read_as_the_formatting_and_map_lookups_do() {
        for i in [0, 7, 9, 10, 99, 100, 12_345, usize::MAX] {
            let mut s = String::new();
            push_index(&mut s, i);
            assert_eq!(s, i.to_string());
        }
        let small = json!({"a": 1, "image": "x", "name": "n"});
        let big: Value = (0..20).map(|i| (format!("k{i}"), json!(i))).collect();
        for (v, k) in [
            (&small, "image"),
            (&small, "nope"),
            (&big, "k17"),
            (&big, "k99"),
        ] {
            assert_eq!(v.field(k), v.get(k));
        }
        assert_eq!(json!(["image"]).field("image"), None);
    }
}
