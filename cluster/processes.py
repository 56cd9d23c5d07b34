"""Child processes of the control plane: started with their output in a log file, waited
on by what they do (a health endpoint answering, an object appearing), and always reaped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# Safety net for a wait that should end in seconds: a hung start fails the run with the
# log's tail instead of hanging it. Never a measure of speed.
SAFETY_S = 120.0
STOP_GRACE_S = 30.0

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL when the process that started it dies, so a test run
    # killed with SIGKILL leaves no etcd or kube-apiserver behind.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class Process:
    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # Ctrl-C in `make cluster` reaches us, not them
                preexec_fn=_die_with_parent,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            proc.wait()


class StartFailed(RuntimeError):
    pass


def wait_until(
    ready: Callable[[], bool], what: str, watched: Sequence[Process], timeout: float = SAFETY_S
) -> None:
    """Poll `ready` until it holds. A watched process that exits fails the wait at once,
    with its log's tail; so does the safety net."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        for process in watched:
            if not process.alive():
                raise StartFailed(
                    f"{process.name} exited while waiting for {what}; its log "
                    f"({process.log}) ends:\n{process.tail()}"
                )
        try:
            if ready():
                return
        except Exception:  # not up yet: connection refused, 503, object not there
            pass
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {p.name} ({p.log}):\n{p.tail(10)}" for p in watched)
            raise StartFailed(f"no {what} after {timeout:.0f} s\n{logs}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
