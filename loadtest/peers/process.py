"""Peer server processes: started in their own session, timed from exec to the first 200,
watched for resident memory, and stopped with their whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from kindling.loadtest.benchclient import try_once


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants (workers, tritonserver...)."""
    tree, total, todo = _children(), 0, [pid]
    while todo:
        current = todo.pop()
        todo += tree.get(current, [])
        try:
            with open(f"/proc/{current}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


class PeakRss(threading.Thread):
    """Samples a process tree's RSS every 50 ms; `peak` is the largest sum seen."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, tree_rss_bytes(self.pid))

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.peak


class Server:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log_path = log
        with log.open("ab") as out:
            self.started = time.perf_counter()
            self.process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True
            )

    def wait_first_200(self, port: int, request: bytes, timeout: float) -> float:
        """Seconds from exec to the first 200 on an inference request."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.tail()}")
            if try_once(port, request, timeout=max(1.0, deadline - time.perf_counter())) == 200:
                return time.perf_counter() - self.started
            time.sleep(0.005)
        raise TimeoutError(f"no 200 within {timeout:.0f} s: {self.tail()}")

    def tail(self, lines: int = 3) -> str:
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])[-400:]

    def stop(self) -> None:
        """SIGTERM to the server's process group (it started it), SIGKILL after 15 s."""
        if self.process.poll() is not None:
            return
        pgid = self.process.pid  # start_new_session: the group is the server's own
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait()
        try:
            os.killpg(pgid, signal.SIGKILL)  # workers that outlived their parent
        except ProcessLookupError:
            pass
