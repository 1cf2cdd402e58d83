//! Where images live in an object, and the JSON Patch that pins them. Pure: values in, values out.

use json_patch::jsonptr::PointerBuf;
use json_patch::{PatchOperation, ReplaceOperation};
use serde_json::Value;

/// One image field in an object: its JSON pointer and the string found there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSite {
    pub pointer: PointerBuf,
    pub image: String,
    /// A short human label: `containers/web`, `initContainers/migrate`, `volumes/models`.
    pub label: String,
}

/// The JSON pointer (as tokens) to the pod spec inside an object of this kind, or `None` when
/// tagpin does not handle the kind. Workload kinds (templates) slot in here.
pub fn pod_spec_location(group: &str, kind: &str) -> Option<&'static [&'static str]> {
    match (group, kind) {
        ("", "Pod") => Some(&["spec"]),
        _ => None,
    }
}

/// Every image field in the pod spec at `spec_at` inside `object`: `containers[].image`,
/// `initContainers[].image`, `ephemeralContainers[].image` and `volumes[].image.reference`.
/// Fields that are absent or not strings are skipped (the API server validates them).
pub fn find_images(object: &Value, spec_at: &[&str]) -> Vec<ImageSite> {
    let base = PointerBuf::from_tokens(spec_at.iter().copied());
    let Some(spec) = spec_at.iter().try_fold(object, |v, t| v.get(t)) else {
        return Vec::new();
    };
    let mut sites = Vec::new();
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        let Some(items) = spec.get(list).and_then(Value::as_array) else {
            continue;
        };
        for (i, c) in items.iter().enumerate() {
            if let Some(image) = c.get("image").and_then(Value::as_str) {
                let mut pointer = base.clone();
                pointer.push_back(list);
                pointer.push_back(i);
                pointer.push_back("image");
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                sites.push(ImageSite {
                    pointer,
                    image: image.to_string(),
                    label: format!("{list}/{name}"),
                });
            }
        }
    }
    if let Some(vols) = spec.get("volumes").and_then(Value::as_array) {
        for (i, v) in vols.iter().enumerate() {
            if let Some(image) = v.pointer("/image/reference").and_then(Value::as_str) {
                let mut pointer = base.clone();
                pointer.push_back("volumes");
                pointer.push_back(i);
                pointer.push_back("image");
                pointer.push_back("reference");
                let name = v.get("name").and_then(Value::as_str).unwrap_or("?");
                sites.push(ImageSite {
                    pointer,
                    image: image.to_string(),
                    label: format!("volumes/{name}"),
                });
            }
        }
    }
    sites
}

/// On UPDATE, an image that is identical at the same place in the old object is already running
/// as written: rewriting it would restart the container (Pod) or roll out a workload the user did
/// not change. Only new or changed image fields are candidates.
pub fn changed_since(sites: Vec<ImageSite>, old: Option<&Value>) -> Vec<ImageSite> {
    let Some(old) = old else { return sites };
    sites
        .into_iter()
        .filter(|s| {
            old.pointer(s.pointer.as_str()).and_then(Value::as_str) != Some(s.image.as_str())
        })
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

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(changed_since(find_images(&new, &["spec"]), None).len(), 5);
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
}
