"""charts/kindling/README.md's parameter table is what @bitnami/readme-generator-for-helm
writes from values.yaml now: regenerated into a copy, the copy must equal the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.charts import tools

# It runs the npm generator: a real process.
pytestmark = pytest.mark.integration


def test_the_parameter_table_is_current(tmp_path: Path) -> None:
    try:
        tools.readme_generator()
    except tools.ToolMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    readme = tmp_path / "README.md"
    shutil.copyfile(tools.CHART / "README.md", readme)
    tools.generate_readme(readme)
    assert readme.read_text() == (tools.CHART / "README.md").read_text(), (
        "charts/kindling/README.md is out of date: run `make chart-readme`"
    )
