"""A throwaway redis-server on a free loopback port, for bench_loader.py and the tests.

Not used in production: there Redis is a managed service named by KINDLING_REDIS_URL.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from kindling.cluster.processes import free_port as any_free_port
from kindling.errors import DependencyUnavailable


def free_port(with_bus: bool = False) -> int:
    """A port nobody listens on; with_bus also needs port + 10000 (Redis Cluster's bus)."""
    for _ in range(100):
        port = any_free_port()
        if not with_bus:
            return port
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise OSError("no free port pair for a cluster node")


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def ping(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; stop() it (or use `with`) to clean up."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        options: Sequence[str] = (),
        persistent: bool = False,
        config_file: Path | None = None,
    ) -> None:
        executable = redis_server_path()
        if executable is None:
            raise DependencyUnavailable("redis-server is not installed")
        self.executable = executable
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port(with_bus="--cluster-enabled" in options)
        # Persistence only where a test restarts the server and expects its data back;
        # AOF with fsync per write survives SIGKILL.
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if persistent
            else ["--appendonly", "no"]
        )
        # A config file comes first (redis-server's rule); the flags after it win.
        self.args = [
            executable,
            *([str(config_file)] if config_file else []),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
            *durability,
            *options,
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.directory / "redis.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise DependencyUnavailable(
                    f"redis-server on port {self.port} did not start\n{tail}"
                )
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL: what a crash or an OOM kill looks like to clients."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> RedisServer:
        return self.start() if self.process is None else self

    def __exit__(self, *_: object) -> None:
        self.stop()
