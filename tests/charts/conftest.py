"""The chart's tests: rendering needs the cluster tools' helm and Knative CRDs; the
`cluster`-marked tests also the control plane itself (tests/cluster/fixtures.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kindling.cluster.tools import Tools
from tests.charts.render import Helm


@pytest.fixture(scope="session")
def helm(cluster_tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster_tools.bin("helm"), tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="session")
def crds(cluster_tools: Tools) -> Path:
    return cluster_tools.crds
