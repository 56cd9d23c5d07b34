"""kindling.env: the cache root, also for a user with no home directory; and what importing
kindling sets for the libraries it loads."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kindling.env import cache_root, default_cache_root


def test_kindling_cache_dir_wins(tmp_path: Path) -> None:
    assert cache_root({"KINDLING_CACHE_DIR": str(tmp_path)}) == tmp_path


def test_the_default_is_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root({}) == tmp_path / ".cache" / "kindling"


def test_a_user_with_no_home_gets_a_temp_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    # An image run as a bare numeric UID: no $HOME and no passwd entry, so Path.home()
    # raises RuntimeError; the runtime must still start.
    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert default_cache_root() == Path(tempfile.gettempdir()) / "kindling-cache"


@pytest.mark.parametrize(("given", "seen"), [(None, "1"), ("0", "0")])
def test_importing_kindling_turns_onnxruntimes_telemetry_off(given: str | None, seen: str) -> None:
    """Unless the user says otherwise (core/__init__.py: onnxruntime >= 1.29 sends
    telemetry from Linux by default)."""
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    code = "import kindling, os; print(os.environ['ORT_DISABLE_TELEMETRY'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == seen, done.stderr
