"""onnxruntime's thread spinning, off against on, with and without a CFS quota, one run.

    sudo .venv/bin/python -m kindling.loadtest.bench_spinning --model-repository models

For MobileNetV2 with 2 intra-op threads, each way (KINDLING_SPIN=off / on):
- latency at concurrency 1, p50: served (binary OIP over the real HTTP server) and raw
  onnxruntime in-process, with onnxruntime's default options (its own thread count,
  spinning on) as the limit; all interleaved in short rounds (benchclient.interleaved);
- throughput at concurrency 16, served (16 callers sending batch-1 requests);
- the server process's CPU seconds per request (/proc/<pid>/stat utime + stime);
- under a quota, CFS throttling of the server's cgroup (cpu.stat nr_throttled and
  throttled time);
- last, with no quota beside `--busy` busy-looping processes: a pod without a quota
  shares its node's cores with neighbours.

Each served side gets a cgroup of its own with the same quota (cgroup v2 `cpu.max`, or
v1 `cpu.cfs_quota_us` where the cpu controller is bound to v1), so one side's spinning
cannot spend the other's quota. Making cgroups needs root; without it, or where the
kernel refuses, the quota conditions are reported as not run, never faked.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from kindling.loadtest.bench_runtime import MODEL, SHAPE, binary_request, round_deltas
from kindling.loadtest.benchclient import (
    BlockingConnection,
    closed_loop,
    free_port,
    interleaved,
    raw_request,
    wait_ready,
)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000  # the kernel's default CFS period (Documentation/scheduler/sched-bwc.rst)

# `kindling serve` with spinning forced: patched in the child so that the served side
# follows the flag whether or not the model loader passes ServerSettings.spin down.
LAUNCHER = """
import sys
import kindling.runtime.session as session
options = session.session_options
session.session_options = lambda threads, spin=None: options(threads, {spin})
sys.argv = ["kindling", "serve", "--model-repository", {repository!r}]
from kindling.cli import main
sys.exit(main())
"""


class Cgroup:
    """A cgroup with a CPU quota, v2 if the cpu controller can be enabled there, else v1."""

    def __init__(self, name: str, cpus: float) -> None:
        quota = f"{round(cpus * PERIOD_US)}"
        unified = CGROUP_ROOT / "cgroup.controllers"
        if unified.is_file() and "cpu" in unified.read_text().split():
            (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
            self.path, self.v2 = CGROUP_ROOT / name, True
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            self.path, self.v2 = CGROUP_ROOT / "cpu" / name, False
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(quota)

    def enter(self) -> None:
        """Move the calling process into the cgroup (run in the child, before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def throttling(self) -> tuple[int, float]:
        """Periods throttled so far, and seconds throttled."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines())
        if self.v2:
            return int(stat["nr_throttled"]), int(stat["throttled_usec"]) / 1e6
        return int(stat["nr_throttled"]), int(stat["throttled_time"]) / 1e9

    def remove(self) -> None:
        self.path.rmdir()


def cpu_seconds(pid: int) -> float:
    """utime + stime of process `pid`, all its threads (proc(5), fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    spin: bool
    process: subprocess.Popen[bytes]
    port: int
    cgroup: Cgroup | None
    requests: int = 0

    @property
    def name(self) -> str:
        return f"served spin {'on' if self.spin else 'off'}"


def start(repository: Path, spin: bool, threads: int, cgroup: Cgroup | None) -> Served:
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "KINDLING_MODELS": MODEL,
        "KINDLING_THREADS": str(threads),
        "KINDLING_SPIN": "on" if spin else "off",
        "KINDLING_CACHE_DIR": str(repository / ".cache"),
    }
    script = LAUNCHER.format(spin=spin, repository=str(repository))
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(repository / f"server-{port}.log").open("wb"),  # shown if it never gets ready
        preexec_fn=cgroup.enter if cgroup else None,  # the bench is single-threaded
    )
    return Served(spin, process, port, cgroup)


def raw_sessions(model: Path, threads: int) -> dict[str, object]:
    import onnxruntime as ort

    from kindling.runtime.session import session_options

    cpu = ["CPUExecutionProvider"]
    return {
        "raw spin off": ort.InferenceSession(str(model), session_options(threads, False), cpu),
        "raw spin on": ort.InferenceSession(str(model), session_options(threads, True), cpu),
        # The limit: onnxruntime as a user first meets it, no options at all.
        "raw ORT defaults": ort.InferenceSession(str(model), providers=cpu),
    }


def condition(
    repository: Path, threads: int, cpus: float | None, rounds: int, seconds: float, raw: bool
) -> dict[str, dict[str, float]]:
    """One quota condition (None: no quota): every figure for each side."""
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    body, headers = binary_request(x)
    request = raw_request(f"/v2/models/{MODEL}/infer", body, headers)
    tag = "none" if cpus is None else f"{cpus:g}".replace(".", "_")
    cgroups = [
        None if cpus is None else Cgroup(f"kindling-spin-{tag}-{int(spin)}", cpus)
        for spin in (False, True)
    ]
    sides = [start(repository, spin, threads, cgroups[spin]) for spin in (False, True)]
    result: dict[str, dict[str, float]] = {}  # filled below, in the samplers' order
    try:
        for side in sides:
            try:
                wait_ready(side.port)
            except TimeoutError:
                log = (repository / f"server-{side.port}.log").read_text()[-2000:]
                raise RuntimeError(f"{side.name} never became ready:\n{log}") from None
        conns = {side.name: BlockingConnection(side.port) for side in sides}
        samplers: dict[str, object] = {}
        if raw:
            for name, session in raw_sessions(repository / MODEL / "model.onnx", threads).items():
                samplers[name] = partial(session.run, None, {"input": x})  # type: ignore[attr-defined]
        for side in sides:
            samplers[side.name] = partial(conns[side.name].ok, request)
        result.update({name: {} for name in samplers})
        before = {s.name: (cpu_seconds(s.process.pid), throttled(s)) for s in sides}
        latency = interleaved(samplers, rounds)  # type: ignore[arg-type]
        for side in sides:
            cpu0, (n0, t0) = before[side.name]
            n1, t1 = throttled(side)
            count = rounds * 25 + 5  # interleaved: 5 warm-up calls, then 25 a round
            result[side.name].update(
                {
                    "cpu_ms_c1": (cpu_seconds(side.process.pid) - cpu0) / count * 1e3,
                    "throttled_c1": n1 - n0,
                    "throttled_s_c1": t1 - t0,
                }
            )
        for conn in conns.values():
            conn.close()
        # On a shared machine the median of per-round differences is steadier than the
        # difference of medians (bench_runtime.round_deltas).
        for on, off in (("served spin on", "served spin off"), ("raw spin on", "raw spin off")):
            if on in latency:
                result[on]["delta_ms"] = round_deltas(latency, on, off)
        for name, per_round in latency.items():
            samples = [t for r in per_round for t in r]
            result[name]["p50_ms"] = statistics.median(samples) * 1e3
            result[name]["p99_ms"] = float(np.percentile(samples, 99)) * 1e3
        # Throughput at C=16, in the order off, on, on, off, twice, to share the drift.
        totals = {s.name: [0, 0.0, 0.0, 0, 0.0] for s in sides}
        for side in (*sides, *reversed(sides)) * 2:
            closed_loop(side.port, [request], 16, 0.5, warmup_s=0)
            cpu0, (n0, t0) = cpu_seconds(side.process.pid), throttled(side)
            done, rate = closed_loop(side.port, [request], 16, seconds / 4, warmup_s=0)
            n1, t1 = throttled(side)
            total = totals[side.name]
            total[0] += len(done)
            total[1] += len(done) / rate
            total[2] += cpu_seconds(side.process.pid) - cpu0
            total[3] += n1 - n0
            total[4] += t1 - t0
        for name, (count, elapsed, cpu, n, t) in totals.items():
            result[name].update(
                {
                    "img_s_c16": count / elapsed,
                    "cpu_ms_c16": cpu / count * 1e3,
                    "throttled_c16": n,
                    "throttled_s_c16": t,
                }
            )
    finally:
        for side in sides:
            side.process.terminate()
            side.process.wait()
            if side.cgroup is not None:
                side.cgroup.remove()
    return result


def throttled(side: Served) -> tuple[int, float]:
    return side.cgroup.throttling() if side.cgroup is not None else (0, 0.0)


def report(label: str, threads: int, figures: dict[str, dict[str, float]]) -> None:
    print(f"\n## quota: {label}; {threads} intra-op threads")
    print(
        f"{'':20}{'p50 c=1 ms':>11}{'p99 ms':>8}{'img/s c=16':>11}{'CPU ms/req c=1':>15}"
        f"{'c=16':>6}{'throttled c=1':>15}{'c=16':>14}"
    )
    for name, f in figures.items():
        line = f"{name:20}{f['p50_ms']:11.2f}{f['p99_ms']:8.2f}"
        if "img_s_c16" in f:
            line += (
                f"{f['img_s_c16']:11.1f}{f['cpu_ms_c1']:15.2f}{f['cpu_ms_c16']:6.2f}"
                f"{f['throttled_c1']:>7} {f['throttled_s_c1']:6.2f}s"
                f"{f['throttled_c16']:>6} {f['throttled_s_c16']:6.2f}s"
            )
        if "delta_ms" in f:
            line += f"  (on - off, median of per-round deltas: {f['delta_ms']:+.2f} ms)"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--threads", type=int, default=0, help="0: as the runtime picks")
    parser.add_argument("--rounds", type=int, default=20, help="latency rounds of 25 requests")
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput side")
    parser.add_argument(
        "--quota", type=float, action="append", help="CPUs of a CFS quota (repeatable)"
    )
    parser.add_argument(
        "--busy", type=int, default=1, help="then no quota beside this many busy loops"
    )
    args = parser.parse_args(argv)
    from kindling.runtime.cpu import available_cpus

    threads = args.threads or available_cpus()
    quotas = [None, *(args.quota if args.quota is not None else [2.0, 1.5, 1.0])]
    print(f"thread spinning benchmark: {MODEL}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        repository = Path(tmp)
        (repository / MODEL).mkdir()
        for name in ("model.onnx", "config.yaml"):
            (repository / MODEL / name).write_bytes(
                (args.model_repository / MODEL / name).read_bytes()
            )
        for cpus in quotas:
            label = (
                "none"
                if cpus is None
                else f"{cpus:g} CPUs (cpu.max {cpus * PERIOD_US:.0f} {PERIOD_US})"
            )
            try:
                figures = condition(
                    repository, threads, cpus, args.rounds, args.seconds, raw=cpus is None
                )
            except OSError as exc:  # no root, or the kernel refuses the controller
                print(f"\n## quota: {label}: not measured, cgroup refused: {exc!r}")
                continue
            report(label, threads, figures)
        if args.busy:
            # A neighbour on the same cores, as a pod without a quota has on a busy node.
            hogs = [
                subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)
            ]
            try:
                figures = condition(repository, threads, None, args.rounds, args.seconds, True)
            finally:
                for hog in hogs:
                    hog.kill()
                    hog.wait()
            report(f"none, {args.busy} busy-looping neighbour process(es)", threads, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
