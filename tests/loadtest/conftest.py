"""Helpers for the load-test tests: the CLI in a child process (Locust patches the
standard library with gevent, which must not leak into the pytest process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def loadtest_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kindling", "loadtest", "run", *args]


def run_loadtest(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(loadtest_command(*args), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "out"
