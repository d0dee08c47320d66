"""Rebuilds kubernetes-v1.30-strict.json, the JSON Schema `make lint-kubernetes` checks the manifests against,
from the Kubernetes schemas the PyPI package kubernetes-validate ships (Apache-2.0; generated from the
Kubernetes OpenAPI document in yannh/kubernetes-json-schema's layout, "-local-strict": no property the API
does not define is allowed, as `kubectl apply --validate=strict` refuses them).

The package holds every kind of every version since 1.25 (22 MB); this keeps the kinds the manifests use, with
just the definitions they reach, in one self-contained file: a manifest's `apiVersion` and `kind` pick its
schema, and any other kind is refused. Run it after changing KINDS or the Kubernetes version:

    python -m venv /tmp/k8s-schemas && /tmp/k8s-schemas/bin/pip install kubernetes-validate==1.37.0
    /tmp/k8s-schemas/bin/python deploy/kubernetes/schemas/vendor_schemas.py
"""

import hashlib
import json
import re
import sys
from importlib.util import find_spec
from pathlib import Path

KUBERNETES_VERSION = "v1.30.0"
SOURCE_PACKAGE = "kubernetes-validate==1.37.0"
# (apiVersion, kind) of every object under deploy/kubernetes/.
KINDS = [
    ("v1", "Namespace"),
    ("v1", "ServiceAccount"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io/v1", "Ingress"),
]
OUTPUT = Path(__file__).resolve().parent / "kubernetes-v1.30-strict.json"
EXTERNAL_REF = "/api/_definitions.json#/$defs/"


def kind_file(api_version: str, kind: str) -> str:
    group, _, version = api_version.rpartition("/")
    parts = [kind.lower(), *([group.split(".")[0]] if group else []), version]
    return "-".join(parts) + ".json"


def reachable(definitions: dict, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(re.findall(r'"#/\$defs/([^"]+)"', json.dumps(definitions[name])))
    return seen


def build(source: Path) -> dict:
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    kinds, roots, branches = {}, [], []
    for api_version, kind in KINDS:
        text = (source / kind_file(api_version, kind)).read_text()
        roots += re.findall(re.escape(EXTERNAL_REF) + r'([^"]+)"', text)
        schema = json.loads(text.replace(EXTERNAL_REF, "#/$defs/"))
        for key in ("$schema", "$id"):
            schema.pop(key, None)
        name = f"{api_version}/{kind}"
        kinds[name] = schema
        branches.append(
            {
                "if": {
                    "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}},
                    "required": ["apiVersion", "kind"],
                },
                "then": {"$ref": f"#/$defs/{name.replace('/', '~1')}"},
            }
        )
    known = [
        {"properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}}} for api_version, kind in KINDS
    ]
    used = reachable(definitions, roots)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$comment": (
            f"Kubernetes {KUBERNETES_VERSION}, strict, from {SOURCE_PACKAGE} (Apache-2.0); sha256 of its "
            f"_definitions.json: {hashlib.sha256((source / '_definitions.json').read_bytes()).hexdigest()}. "
            "Rebuilt by deploy/kubernetes/schemas/vendor_schemas.py."
        ),
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "anyOf": known,
        "allOf": branches,
        "$defs": {**kinds, **{name: definitions[name] for name in sorted(used)}},
    }


def main() -> int:
    # The package's data only: importing it would need its own dependencies.
    package = find_spec("kubernetes_validate")
    if package is None or not package.submodule_search_locations:
        print(f"install {SOURCE_PACKAGE} first (see this file's docstring)", file=sys.stderr)
        return 1
    source = (
        Path(package.submodule_search_locations[0]) / "kubernetes-json-schema" / f"{KUBERNETES_VERSION}-local-strict"
    )
    OUTPUT.write_text(json.dumps(build(source), indent=1, sort_keys=True) + "\n")
    print(f"{OUTPUT}: {len(KINDS)} kinds, {OUTPUT.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
