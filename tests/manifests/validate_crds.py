#!/usr/bin/env python3
"""Strict schema validation of the custom resources in rendered manifests, which
kubernetes-validate has no schemas for: cert-manager's Certificate and Issuer, the Prometheus
Operator's ServiceMonitor and PrometheusRule.

The schemas come from the cloudcoil model packages, generated from those projects' CRDs (versions
pinned in requirements.txt). Every object schema is closed (additionalProperties: false), as
kubernetes-validate --strict does for built-in kinds, so a misspelt field fails, as does a wrong
type, a missing required field or a value outside an enum.

    python validate_crds.py FILE...    # one line per custom resource; exit 1 on any error
"""

import sys

import jsonschema
import yaml
from cloudcoil.models.cert_manager import v1 as cert_manager
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

MODELS = {
    ("cert-manager.io/v1", "Certificate"): cert_manager.Certificate,
    ("cert-manager.io/v1", "Issuer"): cert_manager.Issuer,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): prometheus_operator.PrometheusRule,
}


def closed(node):
    """The schema with every object that lists its properties refusing any other property."""
    if isinstance(node, dict):
        node = {k: closed(v) for k, v in node.items()}
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [closed(v) for v in node]
    return node


def leaves(error):
    """The errors that say what is wrong: optional fields are `anyOf [schema, null]`, whose own
    error only says "not valid under any of the given schemas"."""
    if not error.context:
        yield error
        return
    for sub in error.context:
        if sub.validator == "type" and sub.validator_value == "null":
            continue
        yield from leaves(sub)


def main(paths):
    validators = {
        key: jsonschema.Draft202012Validator(closed(model.model_json_schema(by_alias=True)))
        for key, model in MODELS.items()
    }
    failed = 0
    for path in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key not in validators:
                continue
            name = f"{path}: {doc['kind']} {doc.get('metadata', {}).get('name')}"
            errors = [leaf for e in validators[key].iter_errors(doc) for leaf in leaves(e)]
            for e in errors:
                where = ".".join(str(p) for p in e.absolute_path) or "(top)"
                print(f"ERROR {name}: {where}: {e.message}")
            failed += bool(errors)
            if not errors:
                print(f"ok {name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
