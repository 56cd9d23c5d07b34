"""Rendering the chart with the test cluster's helm, and checking what comes out.

Kubernetes objects are validated with kubernetes-validate's strict schemas for 1.35 (it
ships 1.35.0 exactly; the test control plane runs 1.35.4): an unknown field is an error,
as `kubectl apply --validate=strict` makes it. Knative objects are validated against the
openAPIV3Schema of Knative 1.23's own CRDs (the cluster tools' `crds/`), made strict the
way the API server applies them: a field a schema does not list is pruned by the server,
so here it is an error, unless the schema preserves unknown fields.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kindling"
VALUES = Path(__file__).parent / "values"
NAMESPACE = "models"
RELEASE = "kindling"
KUBERNETES = "1.35"

WORKLOADS = ("Deployment", "StatefulSet", "Job")


@dataclass(frozen=True)
class Helm:
    binary: Path
    home: Path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "HELM_CACHE_HOME": str(self.home / "cache"),
            "HELM_CONFIG_HOME": str(self.home / "config"),
            "HELM_DATA_HOME": str(self.home / "data"),
        }
        proc = subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, env=env, timeout=120
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    def template(
        self, *values: str, sets: Sequence[str] = (), extra: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """The chart rendered with values files (names in tests/charts/values) and --set."""
        args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
        for name in values:
            args += ["--values", str(VALUES / name)]
        for item in sets:
            args += ["--set", item]
        out = self.run(*args, *extra).stdout
        return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    return found


def pod_template(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The pod template of a workload or a Knative Service, else None."""
    if obj["kind"] in WORKLOADS or (
        obj["kind"] == "Service" and obj["apiVersion"].startswith("serving.knative.dev/")
    ):
        return obj["spec"]["template"]
    return None


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    template = pod_template(obj)
    if template:
        spec = template["spec"]
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def env(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (a string) or valueFrom (a dict)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def is_knative(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].split("/")[0].endswith("knative.dev")


def validate(obj: dict[str, Any], crds: Path) -> None:
    """Raise if `obj` is not valid for Kubernetes 1.35 or Knative's CRDs."""
    if is_knative(obj):
        group, version = obj["apiVersion"].split("/")
        schema = knative_schemas(crds)[(group, version, obj["kind"])]
        jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
    else:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)


@functools.cache
def knative_schemas(crds: Path) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(group, version, kind) -> JSON Schema, from every CRD file in `crds`."""
    schemas = {}
    for path in sorted(crds.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                # apiVersion, kind and metadata are the API server's, as in every object.
                schema.setdefault("properties", {}).update(
                    apiVersion={"const": f"{spec['group']}/{version['name']}"},
                    kind={"const": spec["names"]["kind"]},
                )
                schemas[(spec["group"], version["name"], spec["names"]["kind"])] = schema
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A structural schema as the API server applies it, in plain JSON Schema: objects with
    `properties` take no other field unless x-kubernetes-preserve-unknown-fields says so;
    `nullable` admits null; x-kubernetes-int-or-string admits both."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if schema.get("x-kubernetes-int-or-string"):
        out["type"] = ["integer", "string"]
    if schema.get("nullable") and "type" in out:
        out["type"] = [*_types(out["type"]), "null"]
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(s) for s in out[key]]
    return out


def _types(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True
