"""`make push` is the steps the cluster tier runs (tests/cluster/fixtures.py builds the
images with build_images.py and pushes them with publish.py; tests/charts/test_cluster.py
pushes the chart with publish.py and installs it back): the recipe, read with `make -n`,
runs those very commands, with the registry and TLS choice it is given."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def recipe(*args: str) -> list[str]:
    out = subprocess.run(
        ["make", "-n", "push", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if "docker/" in line]


def test_make_push_builds_then_publishes_the_images_and_the_chart() -> None:
    version = yaml.safe_load((REPO / "charts/kindling/Chart.yaml").read_text())["appVersion"]
    steps = recipe("REGISTRY=registry.example.com/ml")
    assert [s.split(" ", 1)[1] for s in steps] == [
        f"docker/build_images.py --models all --tag {version}",
        "docker/publish.py images --registry registry.example.com/ml --tls-verify true",
        "docker/publish.py chart --registry registry.example.com/ml",
    ]
    plain = recipe("REGISTRY=127.0.0.1:5000/ml", "TLS_VERIFY=false")
    assert plain[1].endswith("--tls-verify false") and plain[2].endswith("--plain-http")


def test_make_push_without_a_registry_says_what_to_give() -> None:
    proc = subprocess.run(["make", "push"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode != 0 and "make push REGISTRY=host[:port][/path]" in proc.stdout
