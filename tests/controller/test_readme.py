"""controller/README.md's settings table is the one the settings write."""

from __future__ import annotations

from pathlib import Path

from kindling.controller.settings import markdown_table

README = Path(__file__).resolve().parents[2] / "controller" / "README.md"


def test_the_settings_table_is_current() -> None:
    text = README.read_text()
    start = text.index("<!-- settings:start -->\n") + len("<!-- settings:start -->\n")
    end = text.index("\n<!-- settings:end -->")
    assert text[start:end] == markdown_table(), (
        "regenerate it: .venv/bin/python -m kindling.controller.settings"
    )
