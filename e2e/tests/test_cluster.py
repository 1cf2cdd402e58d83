"""tagpin against a real kube-apiserver, kube-controller-manager and etcd (started by scripts/e2e),
driven with the real kubectl as a person would: reading what it prints and what the API server
stored. The cases run in file order; the last one uninstalls tagpin.

Pods never run (no scheduler, no kubelet): they stay Pending, which is all admission needs.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import shlex
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import yaml

from harness import exists, get, images, kubectl, kustomize, namespace, wait_for, write_overlay

PINNED = "tagpin.io/pinned"
SA = "system:serviceaccount:tagpin-system:tagpin"


def webhook_timeout() -> int:
    """The timeoutSeconds of tagpin's installed webhooks (the same for all three)."""
    (timeout,) = {h["timeoutSeconds"] for h in get("mutatingwebhookconfiguration", "tagpin")["webhooks"]}
    return timeout


def pinned(image: str, digest: str) -> str:
    """The pinned spelling: repository as written, tag dropped."""
    repo = image.rsplit(":", 1)[0] if image.rfind(":") > image.rfind("/") else image
    return f"{repo}@{digest}"


def pod_manifest(name: str, image: str, labels: dict | None = None, **spec) -> str:
    """A Pod that Pod Security 'restricted' admits (tagpin-system enforces it)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "main",
                    "image": image,
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }
            ],
            **spec,
        },
    }
    return yaml.safe_dump(pod)


def apply_pod(ns: str, name: str, image: str, **kw):
    return kubectl("apply", "-n", ns, "-f", "-", input=pod_manifest(name, image, **kw))


def deployment_manifest(name: str, image: str, replicas: int = 1) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": name, "image": image}]},
                },
            },
        }
    )


def owned_by(kind: str, ns: str, owner_uid: str) -> list[dict]:
    items = json.loads(kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]
    return [
        o
        for o in items
        if any(r.get("uid") == owner_uid and r.get("controller") for r in o["metadata"].get("ownerReferences", []))
    ]


def api_kind(obj: dict) -> str:
    """kind.group as kubectl get takes it (just kind for the core group)."""
    kind = obj["kind"].lower()
    return f"{kind}.{obj['apiVersion'].split('/')[0]}" if "/" in obj["apiVersion"] else kind


# --- 1 ------------------------------------------------------------------------------------------


def test_01_every_manifest_object_is_accepted_by_the_api_server(env, tmp_path):
    root = Path(env["root"])
    work = tmp_path / "manifests"
    shutil.copytree(root / "manifests", work)
    for f in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
        (work / "overlays" / "plain" / f).unlink(missing_ok=True)

    # The e2e overlay changes each webhook's clientConfig and nothing else.
    base = kustomize(work / "base")
    over = kustomize(write_overlay(work / "base", tmp_path / "e2e-base", env["tagpin_url"], env["webhook_ca"]))
    assert len(base) == len(over)
    ca = base64.b64encode(Path(env["webhook_ca"]).read_bytes()).decode()
    for b, o in zip(base, over):
        if b["kind"] != "MutatingWebhookConfiguration":
            assert b == o
            continue
        for bh, oh in zip(b["webhooks"], o["webhooks"]):
            assert oh["clientConfig"] == {"url": env["tagpin_url"] + bh["clientConfig"]["service"]["path"], "caBundle": ca}
            assert {k: v for k, v in bh.items() if k != "clientConfig"} == {k: v for k, v in oh.items() if k != "clientConfig"}

    # Install path 1: the base with the e2e overlay (scripts/e2e applied it; apply again: no error).
    # Install path 2: the plain-openssl overlay (make-certs, as manifests/README.md says) with the
    # e2e overlay on top.
    subprocess.run([str(work / "overlays" / "plain" / "make-certs")], check=True, capture_output=True)
    plain_dir = write_overlay(work / "overlays" / "plain", tmp_path / "e2e-plain", env["tagpin_url"], env["webhook_ca"])
    for d in (tmp_path / "e2e-base", plain_dir):
        r = kubectl("apply", "-k", str(d))
        assert "error" not in r.stderr.lower(), r
        for obj in kustomize(d):
            meta = obj["metadata"]
            kind = api_kind(obj)
            assert exists(kind, meta["name"], meta.get("namespace")), f"{kind} {meta['name']} not stored"

    secret = get("secret", "tagpin-tls", "tagpin-system")
    assert secret["type"] == "kubernetes.io/tls" and set(secret["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    stored = get("mutatingwebhookconfiguration", "tagpin")
    assert [h["clientConfig"]["caBundle"] for h in stored["webhooks"]] == [ca] * 3, "the e2e overlay's caBundle wins"

    # Server-side admission of what the Deployment makes: its ReplicaSet creates both pods in
    # tagpin-system, where Pod Security 'restricted' is enforced (a violation would be a
    # FailedCreate event and no pod).
    deploy = get("deployment", "tagpin", "tagpin-system")
    def tagpin_pods():
        out = kubectl("get", "pods", "-n", "tagpin-system", "-l", "app.kubernetes.io/name=tagpin", "-o", "json").stdout
        items = json.loads(out)["items"]
        return items if len(items) >= deploy["spec"]["replicas"] else None

    pods = wait_for("the tagpin Deployment's pods (admitted by Pod Security restricted)", tagpin_pods)
    assert all(p["spec"]["containers"][0]["image"] == "ghcr.io/tagpin/tagpin:0.1.0" for p in pods), "tagpin-system is never pinned"
    events = kubectl("get", "events", "-n", "tagpin-system", "--field-selector", "reason=FailedCreate", "-o", "name").stdout
    assert events.strip() == "", f"the ReplicaSet could not create pods: {events}"


# --- 2 ------------------------------------------------------------------------------------------


def test_02_enabled_namespace_pins_run_and_apply_and_leaves_the_rest_as_written(app, tmp_path):
    image, digest = app
    ns = namespace("pin-enabled", {"tagpin.io/mode": "enabled"})
    other = namespace("pin-unlabelled")

    kubectl("run", "web", "-n", ns, f"--image={image}")
    pod = get("pod", "web", ns)
    assert images(pod) == [pinned(image, digest)]
    assert json.loads(pod["metadata"]["annotations"][PINNED]) == {"web": image}

    manifest = tmp_path / "pod.yaml"
    manifest.write_text(pod_manifest("applied", image))
    kubectl("apply", "-n", ns, "-f", str(manifest))
    pod = get("pod", "applied", ns)
    assert images(pod) == [pinned(image, digest)]
    assert json.loads(pod["metadata"]["annotations"][PINNED]) == {"main": image}

    apply_pod(ns, "skipped", image, labels={"tagpin.io/skip": "true"})
    kubectl("run", "web", "-n", other, f"--image={image}")
    as_written = [("skipped", ns), ("web", other)]

    # kube-system and tagpin-system are excluded by name, even when labelled to opt in.
    systems = ("kube-system", "tagpin-system")
    before = {ns_: get("namespace", ns_)["metadata"]["labels"].get("tagpin.io/mode") for ns_ in systems}
    assert before == {"kube-system": None, "tagpin-system": "disabled"}
    for system in systems:
        kubectl("label", "namespace", system, "tagpin.io/mode=enabled", "--overwrite")
    try:
        for system in systems:
            apply_pod(system, "e2e-as-written", image)
            as_written.append(("e2e-as-written", system))
        for name, where in as_written:
            pod = get("pod", name, where)
            assert images(pod) == [image], f"{where}/{name} was changed"
            assert PINNED not in pod["metadata"].get("annotations", {})
    finally:
        kubectl("label", "namespace", "kube-system", "tagpin.io/mode-")
        kubectl("label", "namespace", "tagpin-system", "tagpin.io/mode=disabled", "--overwrite")
        for system in systems:
            kubectl("delete", "pod", "e2e-as-written", "-n", system, "--ignore-not-found", "--wait=false")


# --- 3 ------------------------------------------------------------------------------------------


def test_03_unresolvable_image_is_created_with_tagpins_warning(registry):
    ns = namespace("pin-warning", {"tagpin.io/mode": "enabled"})
    missing = f"{registry.addr}/e2e/missing:1"
    r = kubectl("run", "web", "-n", ns, f"--image={missing}")
    assert f"Warning: tagpin: {missing} left unpinned: manifest not found (404)" in r.stderr, r
    assert images(get("pod", "web", ns)) == [missing]


# --- 4 ------------------------------------------------------------------------------------------


def test_04_enforce_refuses_the_unresolvable_and_pins_the_resolvable(registry, app):
    image, digest = app
    ns = namespace("pin-enforce", {"tagpin.io/mode": "enforce"})
    missing = f"{registry.addr}/e2e/missing:1"
    r = kubectl("run", "bad", "-n", ns, f"--image={missing}", check=False)
    assert r.returncode != 0, r
    assert 'admission webhook "enforce.pods.tagpin.io" denied the request' in r.stderr, r
    assert missing in r.stderr and "manifest not found (404)" in r.stderr, r
    assert not exists("pod", "bad", ns)

    kubectl("run", "good", "-n", ns, f"--image={image}")
    assert images(get("pod", "good", ns)) == [pinned(image, digest)]


# --- 5 ------------------------------------------------------------------------------------------


def test_05_pull_secrets_of_the_service_account_are_used_through_the_shipped_rbac(env, private_registry):
    image = f"{private_registry.addr}/e2e/private:1"
    digest = private_registry.push("e2e/private", "1")
    ns = namespace("pin-secrets", {"tagpin.io/mode": "enabled"})

    def service_account_with_secret(sa: str, secret: str):
        kubectl(
            "create", "secret", "docker-registry", secret, "-n", ns,
            f"--docker-server={private_registry.addr}",
            f"--docker-username={env['registry_user']}",
            f"--docker-password={env['registry_password']}",
        )
        kubectl("create", "serviceaccount", sa, "-n", ns)
        kubectl("patch", "serviceaccount", sa, "-n", ns, "-p", json.dumps({"imagePullSecrets": [{"name": secret}]}))

    # Without a secret the registry refuses tagpin (the control: the secret is what pins).
    r = apply_pod(ns, "anonymous", image)
    assert f"Warning: tagpin: {image} left unpinned" in r.stderr, r
    assert images(get("pod", "anonymous", ns)) == [image]

    service_account_with_secret("builder", "regcred")
    apply_pod(ns, "built", image, serviceAccountName="builder")
    pod = get("pod", "built", ns)
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}], "the ServiceAccount plugin copies the secret"
    assert images(pod) == [pinned(image, digest)]

    binding = get("clusterrolebinding", "tagpin")
    for k in ("resourceVersion", "uid", "creationTimestamp", "managedFields"):
        binding["metadata"].pop(k, None)
    kubectl("delete", "clusterrolebinding", "tagpin")
    try:
        wait_for(
            "RBAC to stop tagpin reading secrets",
            lambda: kubectl("auth", "can-i", "get", "secrets", "-n", ns, f"--as={SA}", check=False).stdout.strip() == "no",
        )
        # A new ServiceAccount and secret: nothing tagpin has read (and cached) before.
        service_account_with_secret("builder2", "regcred2")
        r = apply_pod(ns, "unbound", image, serviceAccountName="builder2")
        assert f"Warning: tagpin: not allowed to read pull secret {ns}/regcred2 (403)" in r.stderr, r
        assert images(get("pod", "unbound", ns)) == [image], "created, as written"
    finally:
        kubectl("create", "-f", "-", input=json.dumps(binding))
        wait_for(
            "RBAC to let tagpin read secrets again",
            lambda: kubectl("auth", "can-i", "get", "secrets", "-n", ns, f"--as={SA}", check=False).stdout.strip() == "yes",
        )


# --- 6 ------------------------------------------------------------------------------------------


def test_06_workloads_are_pinned_and_their_owned_objects_left_alone(registry, app):
    image, digest = app
    ns = namespace("pin-workloads", {"tagpin.io/mode": "enabled", "tagpin.io/workloads": "enabled"})
    job_image = f"{registry.addr}/e2e/job:1"
    job_digest = registry.push("e2e/job", "1")

    # The CronJob first: its controller starts a Job at the next full minute.
    cronjob = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly"},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "job", "image": job_image}]}}}
            },
        },
    }
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(cronjob))
    cj = get("cronjob", "nightly", ns)
    assert images(cj, "spec.jobTemplate.spec.template.spec") == [pinned(job_image, job_digest)]
    assert json.loads(cj["metadata"]["annotations"][PINNED]) == {"job": job_image}
    job_lookups = registry.manifest_requests("e2e/job")

    kubectl("apply", "-n", ns, "-f", "-", input=deployment_manifest("web", image, replicas=2))
    deploy = get("deployment", "web", ns)
    assert images(deploy, "spec.template.spec") == [pinned(image, digest)]
    assert json.loads(deploy["metadata"]["annotations"][PINNED]) == {"web": image}
    app_lookups = registry.manifest_requests("e2e/app")

    rs = wait_for("the Deployment's ReplicaSet", lambda: owned_by("replicasets", ns, deploy["metadata"]["uid"]))
    pods = wait_for(
        "the ReplicaSet's 2 pods",
        lambda: (p := owned_by("pods", ns, rs[0]["metadata"]["uid"])) and len(p) == 2 and p,
    )
    template = copy.deepcopy(rs[0]["spec"]["template"])
    template["metadata"]["labels"].pop("pod-template-hash")
    assert template == deploy["spec"]["template"], "the ReplicaSet's template is the Deployment's"
    assert all(images(p) == [pinned(image, digest)] for p in pods)

    job = wait_for("a Job of the CronJob (next full minute)", lambda: owned_by("jobs", ns, cj["metadata"]["uid"]), timeout=90)
    assert images(job[0], "spec.template.spec") == [pinned(job_image, job_digest)]
    job_pods = wait_for("the Job's pod", lambda: owned_by("pods", ns, job[0]["metadata"]["uid"]))
    assert images(job_pods[0]) == [pinned(job_image, job_digest)]

    # Digests all the way down: no pod, ReplicaSet or Job sent tagpin to the registry.
    assert registry.manifest_requests("e2e/app") == app_lookups
    assert registry.manifest_requests("e2e/job") == job_lookups
    # One ReplicaSet: tagpin did not change the owned one (which would make the Deployment
    # controller create another).
    assert len(owned_by("replicasets", ns, deploy["metadata"]["uid"])) == 1


# --- 7 ------------------------------------------------------------------------------------------


def test_07_moved_tag_reapply_rolls_to_the_new_digest_and_rollout_undo_returns(registry):
    """docs/pinning.md, "Pod pinning, workload pinning": a re-apply of the unchanged manifest after the tag
    moved rolls out; `rollout undo` returns to the old digest; `rollout restart` keeps it. Both kinds of apply send the tag
    again: server-side apply sends the whole manifest, and client-side apply's three-way merge
    compares the manifest with the live object, whose image is the digest."""
    ns = namespace("pin-moved", {"tagpin.io/workloads": "enabled"})
    image = f"{registry.addr}/e2e/moving:1"
    old = registry.push("e2e/moving", "1")
    ssa, csa = deployment_manifest("ssa", image), deployment_manifest("csa", image)

    def stored(name: str) -> tuple[str, int]:
        d = get("deployment", name, ns)
        return images(d, "spec.template.spec")[0], d["metadata"]["generation"]

    kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=ssa)
    kubectl("apply", "-n", ns, "-f", "-", input=csa)
    assert stored("ssa") == (pinned(image, old), 1)
    assert stored("csa") == (pinned(image, old), 1)

    # Re-applying while the tag has not moved changes nothing.
    r = kubectl("apply", "-n", ns, "-f", "-", input=csa)
    assert stored("csa") == (pinned(image, old), 1), r
    kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=ssa)
    assert stored("ssa") == (pinned(image, old), 1)

    new = registry.push("e2e/moving", "1")
    assert new != old
    # tagpin's cache (--cache-ttl 1s in scripts/e2e) forgets the old digest: a server-side dry run
    # shows the new one without storing anything.
    wait_for(
        "tagpin to resolve the moved tag",
        lambda: pinned(image, new)
        in kubectl("apply", "--server-side", "--dry-run=server", "-n", ns, "-f", "-", "-o", "json", input=ssa).stdout,
        timeout=30,
    )

    kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=ssa)
    assert stored("ssa") == (pinned(image, new), 2), "server-side apply of the unchanged manifest rolls out"
    r = kubectl("apply", "-n", ns, "-f", "-", input=csa)
    assert "deployment.apps/csa configured" in r.stdout, r
    assert stored("csa") == (pinned(image, new), 2), "client-side apply of the unchanged manifest rolls out"

    for name in ("ssa", "csa"):
        uid = get("deployment", name, ns)["metadata"]["uid"]
        wait_for(f"the new ReplicaSet of {name}", lambda: len(owned_by("replicasets", ns, uid)) == 2)
        kubectl("rollout", "undo", f"deployment/{name}", "-n", ns)
        assert stored(name) == (pinned(image, old), 3), "rollout undo returns to the old digest"

    # docs/pinning.md: "`kubectl rollout restart` sends the pinned digests back" (the tag has moved).
    kubectl("rollout", "restart", "deployment/ssa", "-n", ns)
    assert stored("ssa") == (pinned(image, old), 4), "rollout restart keeps the pinned digest"


# --- 8 ------------------------------------------------------------------------------------------


def test_08_server_dry_run_returns_the_pinned_object_and_stores_nothing(app):
    image, digest = app
    ns = namespace("pin-dry-run", {"tagpin.io/mode": "enabled"})
    r = kubectl("apply", "--dry-run=server", "-n", ns, "-f", "-", "-o", "json", input=pod_manifest("dry", image))
    assert images(json.loads(r.stdout)) == [pinned(image, digest)]
    assert not exists("pod", "dry", ns)


# --- 9 ------------------------------------------------------------------------------------------


def test_09_kubectl_debug_ephemeral_container_is_stored_pinned(app):
    image, digest = app
    ns = namespace("pin-debug", {"tagpin.io/mode": "enabled"})
    kubectl("run", "web", "-n", ns, f"--image={image}")
    kubectl("debug", "pod/web", "-n", ns, f"--image={image}", "--container=debugger")
    pod = get("pod", "web", ns)
    assert [c["image"] for c in pod["spec"]["ephemeralContainers"]] == [pinned(image, digest)]
    assert images(pod) == [pinned(image, digest)]


# --- 10 -----------------------------------------------------------------------------------------


class SidecarInjector(http.server.BaseHTTPRequestHandler):
    """A second mutating webhook: adds container 'sidecar' (a tag) to every pod without one."""

    image = ""

    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        pod = review["request"]["object"]
        patch = []
        if not any(c["name"] == "sidecar" for c in pod["spec"]["containers"]):
            patch = [{"op": "add", "path": "/spec/containers/-", "value": {"name": "sidecar", "image": self.image}}]
        response = {"uid": review["request"]["uid"], "allowed": True}
        if patch:
            response |= {"patchType": "JSONPatch", "patch": base64.b64encode(json.dumps(patch).encode()).decode()}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_10_reinvocation_pins_a_sidecar_added_by_a_later_webhook(env, registry, app, tmp_path):
    image, digest = app
    sidecar = f"{registry.addr}/e2e/sidecar:1"
    sidecar_digest = registry.push("e2e/sidecar", "1")
    ns = namespace("pin-sidecar", {"tagpin.io/mode": "enabled", "e2e.tagpin.io/sidecar": "on"})

    # Its serving certificate, from the webhook CA of scripts/e2e.
    key, csr, crt, ext = (tmp_path / n for n in ("s.key", "s.csr", "s.crt", "s.ext"))
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for cmd in (
        ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
        ["openssl", "req", "-new", "-key", key, "-subj", "/CN=sidecar", "-out", csr],
        ["openssl", "x509", "-req", "-in", csr, "-CA", env["webhook_ca"], "-CAkey", env["webhook_ca_key"],
         "-CAcreateserial", "-CAserial", tmp_path / "ca.srl", "-days", "1", "-extfile", ext, "-out", crt],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    SidecarInjector.image = sidecar
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SidecarInjector)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    # Configurations are called in name order: "zz-..." after "tagpin".
    config = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "zz-e2e-sidecar-injector"},
        "webhooks": [
            {
                "name": "sidecar.e2e.tagpin.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 5,
                "clientConfig": {
                    "url": f"https://127.0.0.1:{server.server_address[1]}/inject",
                    "caBundle": base64.b64encode(Path(env["webhook_ca"]).read_bytes()).decode(),
                },
                "namespaceSelector": {"matchLabels": {"e2e.tagpin.io/sidecar": "on"}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}],
            }
        ],
    }
    kubectl("apply", "-f", "-", input=json.dumps(config))
    try:
        # The API server picks up a new configuration asynchronously: wait until a dry run shows it.
        wait_for(
            "the sidecar injector to be called",
            lambda: len(json.loads(kubectl("run", "probe", "-n", ns, f"--image={image}", "--dry-run=server", "-o", "json").stdout)["spec"]["containers"]) == 2,
        )
        kubectl("run", "web", "-n", ns, f"--image={image}")
        pod = get("pod", "web", ns)
        assert images(pod) == [pinned(image, digest), pinned(sidecar, sidecar_digest)]
        assert json.loads(pod["metadata"]["annotations"][PINNED]) == {"web": image, "sidecar": sidecar}
    finally:
        kubectl("delete", "mutatingwebhookconfiguration", "zz-e2e-sidecar-injector")
        server.shutdown()


# --- 11 -----------------------------------------------------------------------------------------


def test_11_tagpin_stopped_mutate_admits_as_written_enforce_refuses(tagpin, app):
    image, digest = app
    enabled = namespace("down-enabled", {"tagpin.io/mode": "enabled"})
    enforce = namespace("down-enforce", {"tagpin.io/mode": "enforce"})
    timeout = webhook_timeout()
    tagpin.stop()
    try:
        r = kubectl("run", "web", "-n", enabled, f"--image={image}")
        assert r.seconds < timeout, f"took {r.seconds:.1f} s"
        assert images(get("pod", "web", enabled)) == [image], "admitted as written (failurePolicy Ignore)"
        assert "tagpin" not in r.stderr, "no warning: the API server only logs it"

        r = kubectl("run", "web", "-n", enforce, f"--image={image}", check=False)
        assert r.returncode != 0 and 'failed calling webhook "enforce.pods.tagpin.io"' in r.stderr, r
        assert "connection refused" in r.stderr, r
        assert not exists("pod", "web", enforce)
    finally:
        tagpin.start()
    kubectl("run", "after", "-n", enabled, f"--image={image}")
    assert images(get("pod", "after", enabled)) == [pinned(image, digest)]


def test_11_tagpin_hung_mutate_admits_as_written_enforce_refuses_after_timeout(tagpin, app):
    image, digest = app
    enabled = namespace("hung-enabled", {"tagpin.io/mode": "enabled"})
    enforce = namespace("hung-enforce", {"tagpin.io/mode": "enforce"})
    timeout = webhook_timeout()
    tagpin.hang()
    try:
        r = kubectl("run", "web", "-n", enabled, f"--image={image}")
        margin = 5
        assert r.seconds < timeout + margin, f"took {r.seconds:.1f} s"
        assert images(get("pod", "web", enabled)) == [image], "admitted as written (failurePolicy Ignore)"
        assert "tagpin" not in r.stderr, "no warning: the API server only logs it"

        r = kubectl("run", "web", "-n", enforce, f"--image={image}", check=False)
        assert r.seconds < timeout + margin, f"took {r.seconds:.1f} s"
        assert r.returncode != 0 and 'failed calling webhook "enforce.pods.tagpin.io"' in r.stderr, r
        assert not exists("pod", "web", enforce)
    finally:
        tagpin.resume()
    kubectl("run", "after", "-n", enforce, f"--image={image}")
    assert images(get("pod", "after", enforce)) == [pinned(image, digest)]


# --- 12 -----------------------------------------------------------------------------------------


def readme_commands(root: Path, section: str) -> list[list[str]]:
    """The commands of the first ```sh block under '## SECTION' in manifests/README.md, comments
    dropped, each split like a shell would."""
    text = (root / "manifests" / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    block = body.split("```sh\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line, comments=True) for line in block.splitlines() if shlex.split(line, comments=True)]


def run_readme(commands: list[list[str]], install: Path) -> list:
    """Runs README commands with kubectl, the path manifests/ replaced by the e2e overlay INSTALL."""
    results = []
    for argv in commands:
        assert argv[0] == "kubectl", argv
        args = [str(install) if a.rstrip("/") in ("manifests", "manifests/overlays/plain") else a for a in argv[1:]]
        results.append(kubectl(*args, timeout=180))
    return results


def test_12_upgrade_and_uninstall_as_manifests_readme_writes_them(env, app, tmp_path):
    """manifests/README.md, "Upgrade" and "Uninstall", run from the README's own command blocks on
    the plain-openssl path (cert-manager cannot run here) with the e2e overlay on top.
    `rollout status` is left out: without a kubelet no pod becomes ready."""
    image, digest = app
    root = Path(env["root"])
    work = tmp_path / "manifests"
    shutil.copytree(root / "manifests", work)
    for f in ("ca.crt", "ca.key", "tls.crt", "tls.key"):
        (work / "overlays" / "plain" / f).unlink(missing_ok=True)
    subprocess.run([str(work / "overlays" / "plain" / "make-certs")], check=True, capture_output=True)
    install = write_overlay(work / "overlays" / "plain", tmp_path / "e2e-plain", env["tagpin_url"], env["webhook_ca"])
    kubectl("apply", "-k", str(install))
    before = get("deployment", "tagpin", "tagpin-system")

    # Upgrade: "edit newTag ... in manifests/base/kustomization.yaml", then the README's commands.
    upgrade = readme_commands(root, "Upgrade")
    assert upgrade == [
        ["kubectl", "apply", "-k", "manifests/"],
        ["kubectl", "-n", "tagpin-system", "rollout", "status", "deploy/tagpin"],
    ], "manifests/README.md changed its upgrade commands: update this case"
    k = work / "base" / "kustomization.yaml"
    text = k.read_text()
    assert "newTag: 0.1.0" in text
    k.write_text(text.replace("newTag: 0.1.0", "newTag: 0.1.1"))
    run_readme(upgrade[:1], install)
    after = get("deployment", "tagpin", "tagpin-system")
    assert images(after, "spec.template.spec") == ["ghcr.io/tagpin/tagpin:0.1.1"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
    wait_for("the new ReplicaSet of the upgrade", lambda: len(owned_by("replicasets", "tagpin-system", after["metadata"]["uid"])) == 2)
    assert get("mutatingwebhookconfiguration", "tagpin")["webhooks"][0]["clientConfig"]["url"] == env["tagpin_url"] + "/mutate"
    ns = namespace("after-upgrade", {"tagpin.io/mode": "enabled", "tagpin.io/workloads": "enabled"})
    kubectl("run", "web", "-n", ns, f"--image={image}")
    assert images(get("pod", "web", ns)) == [pinned(image, digest)], "the webhook is served after the upgrade"

    # Uninstall: the README's three commands, in order; each must succeed.
    uninstall = readme_commands(root, "Uninstall")
    assert len(uninstall) == 3 and uninstall[0][:3] == ["kubectl", "delete", "mutatingwebhookconfiguration"]
    r = run_readme(uninstall, install)
    for obj in kustomize(install):
        meta = obj["metadata"]
        kind = api_kind(obj)
        assert not exists(kind, meta["name"], meta.get("namespace")), f"{kind} {meta['name']} left behind"
    labelled = kubectl("get", "namespaces", "-l", "tagpin.io/mode", "-o", "name").stdout
    labelled += kubectl("get", "namespaces", "-l", "tagpin.io/workloads", "-o", "name").stdout
    assert labelled.strip() == "", f"still labelled: {labelled}\n{r[-1]}"

    # The cluster works after: pods are created as written, the ones pinned keep their digests.
    kubectl("run", "plain", "-n", ns, f"--image={image}")
    assert images(get("pod", "plain", ns)) == [image]
    assert images(get("pod", "web", "pin-enabled")) == [pinned(image, digest)]


def test_13_helm_install_upgrade_and_uninstall_of_the_chart(env):
    """charts/tagpin through the real helm against the real API server: every object accepted,
    the generated certificate kept across `helm upgrade` (the chart's `lookup`), and nothing left
    after `helm uninstall`. The webhooks point at a Service the API server cannot reach here
    (no kube-proxy); the case checks the install, not admission."""
    root = Path(env["root"])
    helm = subprocess.run([str(root / "scripts" / "helm"), "--path"], check=True, capture_output=True, text=True).stdout.strip()
    release, ns = "tagpin-h", "tagpin-helm"

    def run(*args: str) -> str:
        p = subprocess.run([helm, *args], capture_output=True, text=True, timeout=180)
        assert p.returncode == 0, f"helm {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}"
        return p.stdout

    def certs() -> tuple[str, str]:
        secret = get("secret", f"{release}-tls", ns)["data"]["tls.crt"]
        ca = get("mutatingwebhookconfiguration", release)["webhooks"][0]["clientConfig"]["caBundle"]
        return secret, ca

    chart = str(root / "charts" / "tagpin")
    try:
        run("install", release, chart, "-n", ns, "--create-namespace", "--set", "certManager.enabled=false", "--wait=false")
        dep = get("deployment", release, ns)
        assert dep["spec"]["replicas"] == 2
        first = certs()
        assert all(first), "certificate and caBundle generated"
        run("upgrade", release, chart, "-n", ns, "--reuse-values", "--set", "replicas=3")
        assert get("deployment", release, ns)["spec"]["replicas"] == 3
        assert certs() == first, "the generated certificate and CA survive an upgrade (lookup)"
    finally:
        subprocess.run([helm, "uninstall", release, "-n", ns, "--wait=false"], capture_output=True, text=True, timeout=180)
    assert not exists("mutatingwebhookconfiguration", release)
    assert not exists("deployment", release, ns)
    assert not exists("clusterrole", release)
