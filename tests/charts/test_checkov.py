"""checkov on every rendering of the chart: no failed check. Each accepted finding is
skipped with its reason, chart-wide in tests/charts/checkov.yaml or on the one object it
concerns (checkov.io/skip annotations), and nothing else is skipped.

checkov without a Prisma Cloud key reports no severities, so "no HIGH finding" is checked
as the stricter "no finding". It has no checks for Knative Services: their pod spec is the
raw-mode Deployments' (one template, runtime/_pod.tpl), which are checked here, and
test_render.py checks the security defaults of every pod spec, Knative's included.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

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
ANNOTATED = {"CKV_K8S_38"}  # the controller's Deployment


def test_checkov_finds_nothing(helm: Helm, tmp_path: Path) -> None:
    try:
        checkov = tools.checkov()
    except tools.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    monitoring = ("--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    for values in sorted(VALUES.glob("*.yaml")):
        objects = helm.template(values.name, extra=monitoring)
        (tmp_path / values.name).write_text(yaml.safe_dump_all(objects))
    (tmp_path / "everything-raw.yaml").write_text(
        yaml.safe_dump_all(helm.template(sets=EVERYTHING_RAW))
    )

    proc = subprocess.run(
        [str(checkov), "--directory", str(tmp_path), "--config-file", str(CONFIG), "--output", "json"],
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
    skipped = {
        (c["check_id"], c["resource"].split(".")[0]) for c in report["results"]["skipped_checks"]
    }
    configured = set(yaml.safe_load(CONFIG.read_text())["skip-check"])
    for check, kind in skipped:
        assert check in configured or (check in ANNOTATED and kind == "Deployment"), check
