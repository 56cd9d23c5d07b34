"""Child processes of the control plane: started with their output in a log file, waited
on by what they do (a health endpoint answering, an object appearing), and always reaped.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

# Safety net for a wait that should end in seconds: a hung start fails the run with the
# log's tail instead of hanging it. Never a measure of speed.
SAFETY_S = 120.0
STOP_GRACE_S = 30.0
# kubelet's CrashLoopBackOff: 10 s doubling to 5 min, reset after 10 min of running
# (pkg/kubelet/kubelet.go, MaxContainerBackOff and backOffPeriod).
BACKOFF_S = 10.0
MAX_BACKOFF_S = 300.0
BACKOFF_RESET_S = 600.0

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
    """A child process with its output appended to `log`.

    `restart`: started again whenever it exits until `stop()`, as a pod's containers are
    under `restartPolicy: Always`. The first restart is at once; a process that keeps
    exiting gets kubelet's back-off. Knative's processes need it: their informers are
    meant to be restarted by the kubelet when they panic (the autoscaler's lease tracker
    does on a watch tombstone after an API server restart).
    """

    def __init__(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str], restart: bool = False
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.env = env
        self.restart = restart
        self.restarts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            self._stopped.clear()
            self._spawn()
        if self.restart:
            threading.Thread(
                target=self._supervise, name=f"supervise-{self.name}", daemon=True
            ).start()

    def _spawn(self) -> None:
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

    def _supervise(self) -> None:
        backoff = 0.0
        while True:
            proc = self.proc
            if proc is None:
                return
            started = time.monotonic()
            code = proc.wait()
            if time.monotonic() - started > BACKOFF_RESET_S:
                backoff = 0.0
            if self._stopped.wait(backoff):
                return
            with self._lock:
                if self._stopped.is_set() or self.proc is not proc:
                    return
                self.restarts += 1
                with open(self.log, "a") as out:
                    out.write(f"\n--- exited with {code}; restart {self.restarts} ---\n")
                self._spawn()
            backoff = min(max(backoff * 2, BACKOFF_S), MAX_BACKOFF_S)

    def alive(self) -> bool:
        proc = self.proc
        return proc is not None and proc.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                proc.wait()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.join()  # it sees the stop at once: nothing restarts after this


class StartFailed(RuntimeError):
    pass


def wait_until(
    ready: Callable[[], bool], what: str, watched: Sequence[Process], timeout: float = SAFETY_S
) -> None:
    """Poll `ready` until it holds. A watched process that exits for good (one that is not
    restarted) fails the wait at once, with its log's tail; so does the safety net."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        for process in watched:
            if not process.restart and not process.alive():
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


def get(url: str, context: ssl.SSLContext | None = None) -> bytes:
    """A health endpoint's body; raises unless it answers 2xx (`wait_until` reads that as
    not ready yet). No proxy from the environment: these are loopback health checks."""
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    with opener.open(url, timeout=5) as response:
        return bytes(response.read())
