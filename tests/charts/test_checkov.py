"""checkov on every rendering of the chart: no failed check. Each accepted finding is
skipped with its reason in tests/charts/checkov.yaml: chart-wide, or on the one object it
concerns (applied here as checkov.io/skip annotations on the rendered object, so that no
checker's annotation ships in a user's live objects); nothing else is skipped.

checkov has no checks for Knative Services, so each one's pod template (the runtime pods,
the most important ones) is also handed to it as a Deployment's. checkov without a Prisma
Cloud key reports no severities, so "no HIGH finding" is checked as the stricter "no
finding".
"""

from __future__ import annotations

import copy
import fnmatch
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts import tools
from tests.charts.render import VALUES, Helm

# helm and checkov run as real processes.
pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parent / "checkov.yaml"
# The raw-mode pod spec with everything a runtime can have: Redis, the model cache.
EVERYTHING_RAW = (
    "serving.mode=raw", "controller.enabled=false", "redis.enabled=true",
    "modelCache.enabled=true", "models[0].name=kim_cnn", "models[0].embeddingTable=demo300",
    "embeddings.loader.tables[0].name=demo300", "embeddings.loader.tables[0].format=word2vec-bin",
    "embeddings.loader.tables[0].url=https://vectors.example.com/demo300.bin",
)  # fmt: skip


def settings() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def skipped_on(skips: dict[str, dict[str, str]], kind: str, name: str) -> dict[str, str]:
    """The checks skipped on one object: its entries in skip-objects (KIND/NAME, NAME may
    be a shell pattern)."""
    found: dict[str, str] = {}
    for pattern, checks in skips.items():
        if fnmatch.fnmatchcase(f"{kind}/{name}", pattern):
            found |= checks
    return found


def checkable(objects: list[dict[str, Any]], skips: dict[str, dict[str, str]]) -> list[Any]:
    """The objects as checkov should see them: each Knative Service's pod template also as
    a Deployment's (named ksvc-NAME), and the per-object skips as checkov.io/skip
    annotations on their objects."""
    out = []
    for obj in map(copy.deepcopy, objects):
        out.append(obj)
        if obj["kind"] == "Service" and obj["apiVersion"].startswith("serving.knative.dev/"):
            template = copy.deepcopy(obj["spec"]["template"])
            labels = template["metadata"].setdefault("labels", {"app": obj["metadata"]["name"]})
            out.append({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": f"ksvc-{obj['metadata']['name']}",
                             "namespace": obj["metadata"]["namespace"]},
                "spec": {"selector": {"matchLabels": labels}, "template": template},
            })  # fmt: skip
    for obj in out:
        found = skipped_on(skips, obj["kind"], obj["metadata"]["name"])
        for i, (check, reason) in enumerate(sorted(found.items()), start=1):
            obj["metadata"].setdefault("annotations", {})[f"checkov.io/skip{i}"] = (
                f"{check}={reason}"
            )
    return out


def test_checkov_finds_nothing(helm: Helm, tmp_path: Path) -> None:
    try:
        checkov = tools.checkov()
    except tools.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    skips = settings()["skip-objects"]
    monitoring = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    renders = tmp_path / "renders"
    renders.mkdir()
    for values in sorted(VALUES.glob("*.yaml")):
        objects = checkable(helm.template(values.name, extra=monitoring), skips)
        (renders / values.name).write_text(yaml.safe_dump_all(objects))
    objects = checkable(helm.template(sets=EVERYTHING_RAW), skips)
    (renders / "everything-raw.yaml").write_text(yaml.safe_dump_all(objects))
    # checkov's own settings, without the per-object list it does not know.
    config = tmp_path / "checkov.yaml"
    config.write_text(yaml.safe_dump({k: v for k, v in settings().items() if k != "skip-objects"}))

    proc = subprocess.run(
        [str(checkov), "--directory", str(renders), "--config-file", str(config), "--output", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    summary = report["summary"]
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({Path(c['file_path']).name})"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == [] and proc.returncode == 0, "\n".join(failed)
    assert summary["parsing_errors"] == 0
    assert summary["resource_count"] > 100 and summary["passed"] > 1000
    # The Knative runtime pods were checked, as Deployments.
    checked = {c["resource"] for c in report["results"]["passed_checks"]}
    assert any(".ksvc-kindling-" in r for r in checked), sorted(checked)[:20]
    configured = set(settings()["skip-check"])
    for c in report["results"]["skipped_checks"]:
        kind, _, name = c["resource"].split(".")[:3]
        assert c["check_id"] in configured or c["check_id"] in skipped_on(skips, kind, name)
