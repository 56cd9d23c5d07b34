"""README.md's settings tables are the ones the settings classes write."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest

from kindling.embeddings import settings as embeddings_settings
from kindling.runtime import settings as runtime_settings

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize(
    ("marker", "table", "module"),
    [
        ("runtime-settings", runtime_settings.markdown_table, "kindling.runtime.settings"),
        ("embeddings-settings", embeddings_settings.markdown_table, "kindling.embeddings.settings"),
    ],
)
def test_the_settings_table_is_current(marker: str, table: Callable[[], str], module: str) -> None:
    text = README.read_text()
    start = text.index(f"<!-- {marker}:start -->\n") + len(f"<!-- {marker}:start -->\n")
    end = text.index(f"\n<!-- {marker}:end -->")
    assert text[start:end] == table(), f"regenerate it: .venv/bin/python -m {module}"


def test_every_variable_is_documented() -> None:
    """Each variable from_env reads has a row: the README names all of them."""
    text = README.read_text()
    names = [n for n, _, _ in runtime_settings.documented()]
    names += [f.metadata["env"] for f in fields(embeddings_settings.EmbeddingSettings)]
    assert len(names) == len(set(names)) + 1  # KINDLING_MAX_BODY_BYTES is shared, on purpose
    assert all(f"| `{n}` |" in text for n in names)
