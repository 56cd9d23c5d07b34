"""GPU pool check: the runtime on CUDA against the same runtime on CPU, one run.

    python -m kindling.loadtest.bench_gpu --model-repository models

Needs onnxruntime-gpu and a GPU (the chart's optional GPU node pool). For each vision
model it starts the runtime twice, once with the default providers (CUDA first) and
once pinned to CPU, checks that the served metadata names the provider actually used
and that the two answer the same (allclose), and prints exec-to-first-200, p50/p99
latency at concurrency 1 and throughput at concurrency 16 side by side.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
from pathlib import Path

import numpy as np

from kindling.loadtest.bench_runtime import binary_request
from kindling.loadtest.benchclient import (
    closed_loop,
    free_port,
    get,
    percentile,
    raw_request,
    start_runtime,
)

PROVIDERS = {"cuda": "CUDAExecutionProvider,CPUExecutionProvider", "cpu": "CPUExecutionProvider"}


def infer(port: int, model: str, body: bytes, headers: dict[str, str]) -> tuple[int, np.ndarray]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        return response.status, np.empty(0)
    header_length = int(response.getheader("Inference-Header-Content-Length"))
    return 200, np.frombuffer(data[header_length:], dtype="<f4")


def run_one(repository: Path, model: str, providers: str, seconds: float) -> dict[str, object]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    body, headers = binary_request(x)
    port = free_port()
    started = time.perf_counter()
    server = start_runtime(
        repository,
        port,
        # Buckets warm right after ready (CUDA only): the measurement is of a warm server.
        {
            "KINDLING_MODELS": model,
            "KINDLING_PROVIDERS": providers,
            "KINDLING_OPTIMIZED_CACHE_DELAY_S": "0",
        },
    )
    try:
        while True:
            try:
                status, output = infer(port, model, body, headers)
                if status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None:
                raise RuntimeError(f"runtime exited ({server.returncode})")
            time.sleep(0.005)
        cold = time.perf_counter() - started
        provider = json.loads(get(port, f"/v2/models/{model}"))["parameters"]["execution_provider"]
        request = raw_request(f"/v2/models/{model}/infer", body, headers)
        latencies, _ = closed_loop(port, [request], 1, seconds)
        _, qps = closed_loop(port, [request], 16, seconds, warmup_s=3.0)
        return {
            "provider": provider,
            "output": output,
            "cold_s": cold,
            "p50_ms": percentile(latencies, 50) * 1e3,
            "p99_ms": percentile(latencies, 99) * 1e3,
            "qps": qps,
        }
    finally:
        server.terminate()
        server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2", "resnet18"])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    available = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}, providers: {available}")
    if "CUDAExecutionProvider" not in available:
        print("no CUDAExecutionProvider: install onnxruntime-gpu on a GPU node")
        return 2
    columns = f"{'EP':>6}{'served by':>24}{'cold s':>8}{'p50 ms':>8}{'p99 ms':>8}"
    print(f"\n{'model':14}{columns}{'img/s c=16':>12}")
    failed = False
    for model in args.models:
        results = {
            k: run_one(args.model_repository, model, v, args.seconds) for k, v in PROVIDERS.items()
        }
        for kind, r in results.items():
            print(
                f"{model:14}{kind:>6}{r['provider']:>24}{r['cold_s']:8.2f}{r['p50_ms']:8.2f}"
                f"{r['p99_ms']:8.2f}{r['qps']:12.1f}"
            )
        gpu, cpu = results["cuda"], results["cpu"]
        close = np.allclose(gpu["output"], cpu["output"], rtol=1e-3, atol=1e-3)
        right_ep = (
            gpu["provider"] == "CUDAExecutionProvider" and cpu["provider"] == "CPUExecutionProvider"
        )
        diff = float(np.max(np.abs(gpu["output"] - cpu["output"])))
        verdict = "ok" if close and right_ep else "MISMATCH"
        print(f"{'':14}CUDA vs CPU max |diff| {diff:.2e}: {verdict}")
        failed |= not (close and right_ep)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
