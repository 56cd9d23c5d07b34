"""The control plane's child processes on their own (no cluster): a process started with
`restart` comes back when it dies, as a pod's container does, and nothing restarts once
it is stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from kindling.cluster.processes import Process, StartFailed, wait_until

pytestmark = pytest.mark.integration


def _sleeper(tmp_path: Path, restart: bool) -> Process:
    return Process("sleeper", ["sleep", "3600"], tmp_path / "sleeper.log", {}, restart)


def test_a_restarted_process_comes_back_after_it_is_killed(tmp_path: Path) -> None:
    process = _sleeper(tmp_path, restart=True)
    process.start()
    try:
        assert process.proc is not None
        first = process.proc.pid
        os.kill(first, signal.SIGKILL)  # as a panic ends a Go process
        wait_until(lambda: process.restarts == 1 and process.alive(), "the restart", [process])
        assert process.proc is not None and process.proc.pid != first
        assert "exited with -9; restart 1" in process.log.read_text()
    finally:
        process.stop()
    assert not process.alive()
    assert process.restarts == 1  # stop() joined the supervisor: nothing came back after


def test_a_process_without_restart_that_dies_fails_the_wait_at_once(tmp_path: Path) -> None:
    process = _sleeper(tmp_path, restart=False)
    process.start()
    try:
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGKILL)
        process.proc.wait()
        with pytest.raises(StartFailed, match="sleeper exited"):
            wait_until(lambda: False, "something", [process])
    finally:
        process.stop()
    assert process.restarts == 0
