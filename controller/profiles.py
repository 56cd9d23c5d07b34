"""Measured cold-start and service-time distributions per model, for the simulator.

The simulator samples a pod's cold start and each request's service time from what real
`kindling serve` processes did on the sample models (`make models`). The figures live in
`data/profiles.json` next to this module with the command that measured them, the date
and the machine; re-measure with

    python -m kindling.controller.profiles --measure [--model-repository DIR]
        [--model mobilenet_v2 --model minilm] [--cold-starts 7] [--requests 300]

Each cold start is a fresh `kindling serve` process (loadtest.benchclient.start_runtime),
timed from spawn to the first 200 answer to an inference request, as loadtest/
bench_runtime.py's `served_cold_start` does; service time is the latency of sequential
requests at concurrency 1 on one keep-alive connection (benchclient.latencies), which is
the whole time a request holds a pod whose containerConcurrency is 1.

What it leaves out: what a cluster adds to the runtime's own cold start (the autoscaler,
scheduling, the kubelet's sandbox and its status report, the activator's routing). That is
`data/pod_start.json`, measured by `kindling cluster cold-start --profile` on the test
cluster's real node; `kindling controller simulate` and `kindling advise` add its median
to every cold start unless `--pod-overhead` says otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

DATA_FILE = "profiles.json"
POD_START_FILE = "pod_start.json"
DEFAULT_MODEL = "mobilenet_v2"


class ProfileError(ValueError):
    """No profile for the model asked for, or a malformed profiles file."""


@dataclass(frozen=True)
class Profile:
    """One model's measured samples, seconds."""

    model: str
    cold_start_s: tuple[float, ...]
    service_s: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("cold_start_s", "service_s"):
            values = getattr(self, name)
            if not values or any(not (v > 0 and np.isfinite(v)) for v in values):
                raise ProfileError(f"{self.model}: {name} needs positive samples, got {values}")

    @property
    def median_cold_start_s(self) -> float:
        return float(np.median(self.cold_start_s))

    @property
    def mean_service_s(self) -> float:
        return float(np.mean(self.service_s))

    def sample_cold_start(self, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
        """Cold starts drawn from the measured ones (the empirical distribution)."""
        return rng.choice(np.asarray(self.cold_start_s), size=n)

    def sample_service(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(np.asarray(self.service_s), size=n)


def _data_path(name: str = DATA_FILE) -> Path:
    # resolve(): the editable install links each file; the data folder is beside the source.
    here = Path(__file__).resolve().parent / "data" / name
    if here.is_file():
        return here
    return Path(str(resources.files("kindling.controller").joinpath("data", name)))


def load_all(path: Path | None = None) -> dict[str, Profile]:
    """Every profile in the file (default: the one shipped with the package)."""
    source = path or _data_path()
    try:
        doc = json.loads(source.read_text())
        return {
            name: Profile(name, tuple(entry["cold_start_s"]), tuple(entry["service_s"]))
            for name, entry in doc["models"].items()
        }
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ProfileError(f"{source}: not a profiles file ({exc})") from exc


def load(model: str = DEFAULT_MODEL, path: Path | None = None) -> Profile:
    profiles = load_all(path)
    if model not in profiles:
        raise ProfileError(f"no measured profile for {model!r} (have: {', '.join(profiles)})")
    return profiles[model]


@dataclass(frozen=True)
class PodStart:
    """Seconds a cluster added to the runtime's own cold start, per measured cold start:
    request to answer, less the runtime's exec to ready (`kindling cluster cold-start`)."""

    overhead_s: tuple[float, ...]
    source: str
    """How and where it was measured, for the simulator's report."""

    @property
    def median_s(self) -> float:
        return float(np.median(self.overhead_s))


def pod_start(path: Path | None = None) -> PodStart:
    """The measured pod start (default: the one shipped with the package)."""
    source = path or _data_path(POD_START_FILE)
    try:
        doc = json.loads(source.read_text())
        samples = tuple(float(v) for v in doc["overhead_s"])
        where = f"{doc['command']} on {doc['node']}, {doc['date']}"
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ProfileError(f"{source}: not a pod-start file ({exc})") from exc
    if not samples or any(not (v >= 0 and np.isfinite(v)) for v in samples):
        raise ProfileError(f"{source}: overhead_s needs non-negative samples")
    return PodStart(samples, where)


# -- measuring ------------------------------------------------------------------------------


def request_for(model: str) -> tuple[bytes, dict[str, str]]:
    """One inference request body for a sample model: an image tensor in OIP's binary
    extension for the vision models, one sentence (BYTES) for the text models."""
    if model in ("mobilenet_v2", "resnet18", "squeezenet1_1"):
        from kindling.loadtest.bench_runtime import binary_request

        x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
        return binary_request(x)
    from kindling.loadtest.bench_runtime import SENTENCE

    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [SENTENCE]}]}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def cold_start(repository: Path, model: str, env: dict[str, str]) -> float:
    """Spawn to first 200 of one fresh `kindling serve` process."""
    from kindling.loadtest.bench_runtime import served_cold_start

    body, headers = request_for(model)
    return served_cold_start(repository, body, headers, env, model)


def service_times(repository: Path, model: str, env: dict[str, str], count: int) -> list[float]:
    from kindling.loadtest.benchclient import (
        free_port,
        latencies,
        raw_request,
        start_runtime,
        wait_ready,
    )

    body, headers = request_for(model)
    port = free_port()
    process = start_runtime(repository, port, {**env, "KINDLING_MODELS": model})
    try:
        wait_ready(port)
        request = raw_request(f"/v2/models/{model}/infer", body, headers)
        return latencies(port, request, count)
    finally:
        process.terminate()
        process.wait()


def measure(repository: Path, models: list[str], cold_starts: int, requests: int) -> dict:
    """Measure each model; returns the profiles document (not yet written)."""
    doc: dict = {
        "command": "python -m kindling.controller.profiles --measure "
        + " ".join(f"--model {m}" for m in models)
        + f" --cold-starts {cold_starts} --requests {requests}",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "what": "cold_start_s: spawn of `kindling serve` to the first 200 inference answer "
        "(optimized graph cached in the repository, fresh KINDLING_CACHE_DIR); service_s: "
        "sequential requests at concurrency 1 on one keep-alive connection",
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        env = {"KINDLING_CACHE_DIR": tmp}
        for model in models:
            colds = [round(cold_start(repository, model, env), 4) for _ in range(cold_starts)]
            service = [round(s, 5) for s in service_times(repository, model, env, requests)]
            doc["models"][model] = {"cold_start_s": colds, "service_s": service}
            print(
                f"{model}: cold start median {np.median(colds):.3f}s, service p50 "
                f"{np.median(service) * 1e3:.2f} ms p99 {np.percentile(service, 99) * 1e3:.2f} ms",
                file=sys.stderr,
            )
    return doc


def default_repository() -> Path:
    return Path(os.environ.get("KINDLING_TEST_MODELS") or "models")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure and write the file")
    parser.add_argument("--model-repository", type=Path, default=default_repository())
    parser.add_argument("--model", action="append", dest="models")
    parser.add_argument("--cold-starts", type=int, default=7)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None, help="default: the shipped file")
    args = parser.parse_args(argv)
    if not args.measure:
        for name, p in load_all(args.out).items():
            print(
                f"{name}: cold start median {p.median_cold_start_s:.3f}s "
                f"({len(p.cold_start_s)} runs), service mean {p.mean_service_s * 1e3:.2f} ms "
                f"({len(p.service_s)} requests)"
            )
        return 0
    models = args.models or [DEFAULT_MODEL, "minilm"]
    doc = measure(args.model_repository, models, args.cold_starts, args.requests)
    out = args.out or Path(__file__).resolve().parent / "data" / DATA_FILE
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
