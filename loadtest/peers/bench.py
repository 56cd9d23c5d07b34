"""Measures each peer, and raw onnxruntime in-process, with the same model, load and client.

Per peer: cold start (exec to the first 200, median over runs), p50 and p99 latency at
concurrency 1, throughput at concurrency 16, peak resident memory of its process tree.
Raw onnxruntime: the same session options in this process (latency at batch 1, the best
throughput over batch sizes) and the cold-start floor, a bare `python -c` that imports
numpy and onnxruntime, creates the session and runs it once (as bench_runtime.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kindling.cluster.processes import free_port
from kindling.loadtest import benchclient as client
from kindling.loadtest.peers.catalog import Peer
from kindling.loadtest.peers.process import PeakRss, Server
from kindling.loadtest.peers.venvs import PeerUnavailable, ensure_venv
from kindling.loadtest.requests import Tensor, encode_binary, encode_json

SERVERS = Path(__file__).resolve().parent / "servers"
MIB = 1024 * 1024
START_TIMEOUT_S = 180.0


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q) * 1e3)


@dataclass
class Settings:
    model_dir: Path
    """A model repository folder: model.onnx and config.yaml."""
    threads: int
    requests: int = 300
    seconds: float = 8.0
    cold_starts: int = 3
    concurrency: int = 16
    workdir: Path = field(default_factory=lambda: Path("."))

    @property
    def model(self) -> str:
        return self.model_dir.name


@dataclass
class Result:
    name: str
    title: str
    version: str = ""
    encoding: str = ""
    batching: str = ""
    note: str = ""
    reason: str = ""
    """Why the peer did not run (empty when it did)."""
    cold_start_s: float | None = None
    cold_starts_s: list[float] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    throughput: float | None = None
    peak_rss_mib: float | None = None
    extra: dict[str, object] = field(default_factory=dict)


class Bench:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        import onnxruntime as ort

        self.ort_version = ort.__version__
        probe = ort.InferenceSession(str(settings.model_dir / "model.onnx"))
        inp, out = probe.get_inputs()[0], probe.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        shape = (1, *(int(d) for d in inp.shape[1:]))
        self.x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)

    # -- requests ------------------------------------------------------------------------

    def request(self, peer: Peer) -> bytes:
        tensors = [Tensor(self.input_name, "FP32", self.x)]
        if peer.encoding == "bentoml":
            body = json.dumps({"input": self.x.tolist()}).encode()
            headers = {"Content-Type": "application/json"}
        elif peer.encoding == "json":
            body, headers = encode_json(tensors, [self.output_name])
        else:
            body, headers = encode_binary(tensors, [self.output_name])
        return client.raw_request(peer.path.format(model=self.s.model), body, headers)

    # -- servers -------------------------------------------------------------------------

    def start(self, peer: Peer, python: Path, port: int, run: str) -> Server:
        work = self.s.workdir / peer.name / run
        work.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["OMP_NUM_THREADS"] = str(self.s.threads)
        if not peer.packages:  # Kindling, from this interpreter
            repo = self.kindling_repository()
            env.update(
                PORT=str(port),
                KINDLING_THREADS=str(self.s.threads),
                KINDLING_MODELS=self.s.model,
                KINDLING_CACHE_DIR=str(self.s.workdir / "kindling-cache"),
            )
            argv = [str(python), "-m", "kindling", "serve", "--model-repository", str(repo)]
        else:
            spare = f"{free_port()},{free_port()}"
            argv = [
                str(python), str(SERVERS / peer.script),
                "--model", str((self.s.model_dir / "model.onnx").resolve()),
                "--name", self.s.model, "--port", str(port), "--threads", str(self.s.threads),
                "--workdir", str(work), "--free-ports", spare,
            ]  # fmt: skip
        return Server(argv, env, work / "server.log", SERVERS)

    def kindling_repository(self) -> Path:
        repo = self.s.workdir / "kindling-repository"
        target = repo / self.s.model
        if not target.is_dir():
            target.mkdir(parents=True)
            for name in ("model.onnx", "config.yaml"):
                shutil.copy(self.s.model_dir / name, target / name)
        return repo

    # -- measurements --------------------------------------------------------------------

    def measure(self, peer: Peer, packages: list[str]) -> Result:
        result = Result(
            peer.name,
            peer.title,
            version=peer.packages[0] if peer.packages else self.kindling_version(),
            encoding=peer.encoding,
            batching=peer.batching,
            note=peer.note,
        )
        try:
            python = ensure_venv(peer, packages)
        except (PeerUnavailable, OSError, subprocess.SubprocessError) as exc:
            result.reason = str(exc)
            return result
        request = self.request(peer)
        try:
            self.steady_state(peer, python, request, result)
            for i in range(self.s.cold_starts):
                port = free_port()
                server = self.start(peer, python, port, f"cold-{i}")
                try:
                    result.cold_starts_s.append(
                        server.wait_first_200(port, request, START_TIMEOUT_S)
                    )
                finally:
                    server.stop()
        except (RuntimeError, TimeoutError, OSError) as exc:
            result.reason = f"{type(exc).__name__}: {exc}"
            return result
        if result.cold_starts_s:
            result.cold_start_s = statistics.median(result.cold_starts_s)
        return result

    def steady_state(self, peer: Peer, python: Path, request: bytes, result: Result) -> None:
        """Latency at concurrency 1 and throughput at 16 on one server, watching its RSS.
        Run before the timed cold starts, it also primes the OS page cache for them."""
        port = free_port()
        server = self.start(peer, python, port, "steady")
        rss = PeakRss(server.process.pid)
        rss.start()
        try:
            server.wait_first_200(port, request, START_TIMEOUT_S)
            times = client.latencies(port, request, self.s.requests)
            result.p50_ms, result.p99_ms = percentile_ms(times, 50), percentile_ms(times, 99)
            result.throughput = client.closed_loop(
                port, [request], self.s.concurrency, self.s.seconds
            )[1]
        finally:
            result.peak_rss_mib = rss.stop() / MIB
            server.stop()

    def kindling_version(self) -> str:
        try:
            return f"kindling=={importlib.metadata.version('kindling')}"
        except importlib.metadata.PackageNotFoundError:
            return "kindling"

    # -- raw onnxruntime -----------------------------------------------------------------

    def raw(self) -> Result:
        import onnxruntime as ort

        from kindling.runtime.session import session_options

        session = ort.InferenceSession(
            str(self.s.model_dir / "model.onnx"),
            session_options(self.s.threads),
            providers=["CPUExecutionProvider"],
        )
        feed = {self.input_name: self.x}
        for _ in range(10):
            session.run(None, feed)
        times = []
        for _ in range(self.s.requests):
            start = time.perf_counter()
            session.run(None, feed)
            times.append(time.perf_counter() - start)
        best, best_batch = 0.0, 1
        for batch in (1, 2, 4, 8, 16, 32):
            x = np.repeat(self.x, batch, axis=0)
            session.run(None, {self.input_name: x})
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < self.s.seconds / 6:
                session.run(None, {self.input_name: x})
                done += batch
            rate = done / (time.perf_counter() - start)
            if rate > best:
                best, best_batch = rate, batch
        floors = [self.floor() for _ in range(max(1, self.s.cold_starts))]
        return Result(
            "onnxruntime",
            "raw onnxruntime, in-process (the floor)",
            version=f"onnxruntime=={self.ort_version}",
            encoding="in-process",
            batching=f"best batch size {best_batch}",
            cold_start_s=statistics.median(t for t, _ in floors),
            cold_starts_s=[t for t, _ in floors],
            p50_ms=percentile_ms(times, 50),
            p99_ms=percentile_ms(times, 99),
            throughput=best,
            peak_rss_mib=max(rss for _, rss in floors),
        )

    def floor(self) -> tuple[float, float]:
        """A bare process's exec-to-first-result time and peak RSS (MiB)."""
        script = (
            "import resource, numpy as np, onnxruntime as ort\n"
            f"s = ort.InferenceSession({str(self.s.model_dir / 'model.onnx')!r}, "
            "providers=['CPUExecutionProvider'])\n"
            f"s.run(None, {{{self.input_name!r}: np.zeros({self.x.shape!r}, np.float32)}})\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        )
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        )
        return time.perf_counter() - start, int(out.stdout.split()[-1]) / 1024
