"""Runtime benchmark: served against raw onnxruntime in-process, side by side, one run.

    python -m kindling.loadtest.bench_runtime --model-repository models

Prints, for MobileNetV2 (paper 001's image model):
- latency at concurrency 1: p50 of raw onnxruntime vs p50 served over binary OIP;
- throughput at concurrency 16: raw onnxruntime at its best batch size vs served with
  adaptive batching (16 callers sending batch-1 requests);
- cold start: process exec to the first 200 response vs the floor, a bare `python -c`
  that imports numpy and onnxruntime, creates the session and runs it once.

The client is a lean keep-alive HTTP/1.1 client (raw sockets, body prebuilt) so that
what is measured is the server, not tritonclient's own encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from kindling.loadtest.benchclient import (
    BlockingConnection,
    closed_loop,
    first_answer_s,
    free_port,
    interleaved,
    percentile,
    raw_request,
    start_echo,
    start_runtime,
    wait_ready,
)

MODEL = "mobilenet_v2"
# A start that has not answered by then has hung: fail the run rather than wait for ever.
COLD_START_SAFETY_S = 120.0
SHAPE = (1, 3, 224, 224)


def binary_request(batch: np.ndarray, binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """An OIP request for MobileNetV2's `input` in the binary extension; logits come back
    binary, or as JSON with `binary_output` False."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": list(batch.shape),
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": binary_output}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + batch.tobytes(), headers


# -- raw onnxruntime ------------------------------------------------------------------


def raw_session(model_path: Path, threads: int):  # noqa: ANN201 (onnxruntime type)
    import onnxruntime as ort

    from kindling.runtime.session import session_options

    options = session_options(threads)
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])


def describe_options(threads: int) -> str:
    """What the raw baseline runs with: Kindling's session options, read back from them."""
    from kindling.runtime.session import session_options

    options = session_options(threads)
    spin = options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    return (
        f"session_options({threads}): {options.intra_op_num_threads} intra-op threads, "
        f"{options.inter_op_num_threads} inter-op, sequential, spinning "
        f"{'on' if spin else 'off'} (KINDLING_SPIN=auto, as served; "
        "loadtest/bench_spinning.py compares both ways and onnxruntime's defaults)"
    )


def raw_throughput(session, batch_sizes: list[int], seconds: float) -> dict[int, float]:  # noqa: ANN001
    rng = np.random.default_rng(0)
    result = {}
    for b in batch_sizes:
        x = rng.standard_normal((b, *SHAPE[1:])).astype(np.float32)
        session.run(None, {"input": x})
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"input": x})
            done += b
        result[b] = done / (time.perf_counter() - start)
    return result


# -- served -----------------------------------------------------------------------------


def start_server(
    repository: Path, port: int, env: dict[str, str], model: str = MODEL
) -> subprocess.Popen[bytes]:
    return start_runtime(repository, port, {**env, "KINDLING_MODELS": model})


def served_throughput(
    port: int, body: bytes, headers: dict[str, str], concurrency: int, seconds: float
) -> float:
    request = raw_request(f"/v2/models/{MODEL}/infer", body, headers)
    return closed_loop(port, [request], concurrency, seconds)[1]


def wait_echo(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError("echo server never started")


SENTENCE = "A man is eating a piece of bread."


def raw_text_call(folder: Path, threads: int) -> Callable[[], None]:
    """Tokenize and run one sentence in-process: what the served request does, minus HTTP."""
    import onnxruntime as ort
    from tokenizers import Tokenizer

    from kindling.runtime.session import session_options

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    session = ort.InferenceSession(str(folder / "model.onnx"), session_options(threads))

    def call() -> None:
        (e,) = tokenizer.encode_batch([SENTENCE])
        feed = {
            "input_ids": np.array([e.ids], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids], dtype=np.int64),
        }
        session.run(None, feed)

    return call


def small_payload_latency(repository: Path, threads: int, rounds: int) -> dict[str, list[float]]:
    """MiniLM on one sentence: a small body, so the HTTP transfer all but vanishes and what
    remains is the runtime's own overhead. Raw = tokenize + run in-process."""
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [SENTENCE]}]}
    ).encode()
    port = free_port()
    env = {"KINDLING_MODELS": "minilm", "KINDLING_THREADS": str(threads)}
    server = start_runtime(repository, port, env)
    try:
        wait_ready(port)
        conn = BlockingConnection(port)
        request = raw_request("/v2/models/minilm/infer", body)
        samplers = {
            "raw": raw_text_call(repository / "minilm", threads),
            "served": partial(conn.ok, request),
        }
        result = flat(interleaved(samplers, rounds))
        conn.close()
    finally:
        server.terminate()
        server.wait()
    return result


def flat(rounds: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    return {name: [t for times in per_round for t in times] for name, per_round in rounds.items()}


def round_deltas(rounds: dict[str, list[list[float]]], a: str, b: str) -> float:
    """Median over rounds of (median of `a` - median of `b`) in that round, in ms."""
    deltas = [
        statistics.median(x) - statistics.median(y)
        for x, y in zip(rounds[a], rounds[b], strict=True)
    ]
    return statistics.median(deltas) * 1e3


# -- cold start -------------------------------------------------------------------------

FLOOR_SCRIPT = """
import numpy as np, onnxruntime as ort
s = ort.InferenceSession({path!r}, providers=["CPUExecutionProvider"])
s.run(None, {{"input": np.zeros({shape!r}, np.float32)}})
"""


def floor_cold_start(model_path: Path) -> float:
    script = FLOOR_SCRIPT.format(path=str(model_path), shape=SHAPE)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", script], check=True)
    return time.perf_counter() - start


def wait_for_cache(cache: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not list(cache.glob("*.ort.onnx")):
        if time.monotonic() > deadline:
            raise TimeoutError("the optimized graph was never cached")
        time.sleep(0.05)


def served_cold_start(
    repository: Path, body: bytes, headers: dict[str, str], env: dict[str, str], model: str = MODEL
) -> float:
    """Seconds from spawning `kindling serve` to the first 200 of `model`'s infer."""
    port = free_port()
    start = time.perf_counter()
    process = start_server(repository, port, env, model)
    try:
        path = f"/v2/models/{model}/infer"
        return first_answer_s(process, port, path, body, headers, start, COLD_START_SAFETY_S)
    finally:
        process.terminate()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument(
        "--rounds", type=int, default=40, help="latency rounds of 25 requests per side"
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput measurement")
    parser.add_argument("--cold-starts", type=int, default=7, help="cold starts per side")
    args = parser.parse_args(argv)

    from kindling.runtime.cpu import available_cpus

    threads = available_cpus()
    source = args.model_repository / MODEL
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    body, headers = binary_request(x)

    with tempfile.TemporaryDirectory() as tmp:
        # A private copy, so the optimized-graph cache starts empty and we can time both.
        repo = Path(tmp) / "repo"
        (repo / MODEL).mkdir(parents=True)
        for name in ("model.onnx", "config.yaml"):
            (repo / MODEL / name).write_bytes((source / name).read_bytes())
        env = {
            "KINDLING_CACHE_DIR": str(Path(tmp) / "cache"),
            "KINDLING_THREADS": str(threads),
            # As an image runs it: with bytecode (the images compile every .pyc at build),
            # written under the temp folder by the first served start (the latency
            # server's), so that a shell's PYTHONDONTWRITEBYTECODE does not turn every
            # timed start into a compile of the package's sources (~45-50 ms here).
            "PYTHONDONTWRITEBYTECODE": "",
            "PYTHONPYCACHEPREFIX": str(Path(tmp) / "pycache"),
        }

        session = raw_session(repo / MODEL / "model.onnx", threads)
        raw_tp = raw_throughput(session, [1, 2, 4, 8, 16, 32], args.seconds / 2)

        # Latency at concurrency 1: raw, served and the HTTP floor (the same exchange
        # with a server that only reads the body) in alternating rounds.
        port, echo_port = free_port(), free_port()
        server, echo = start_server(repo, port, env), start_echo(echo_port)
        try:
            wait_ready(port)
            wait_echo(echo_port)
            conn, echo_conn = BlockingConnection(port), BlockingConnection(echo_port)
            feed, run = {"input": x}, session.run
            request = raw_request(f"/v2/models/{MODEL}/infer", body, headers)
            latency_rounds = interleaved(
                {
                    "raw": lambda: run(None, feed),
                    "served": partial(conn.ok, request),
                    "floor": partial(echo_conn.ok, raw_request("/", body, headers)),
                },
                args.rounds,
            )
            conn.close()
            echo_conn.close()
            served_tp = served_throughput(port, body, headers, 16, args.seconds)
        finally:
            for process in (server, echo):
                process.terminate()
                process.wait()
        del session

        text = small_payload_latency(args.model_repository, threads, args.rounds)

        floor = [floor_cold_start(repo / MODEL / "model.onnx") for _ in range(args.cold_starts)]
        cache = repo / MODEL / ".kindling-cache"
        cold_first = []
        for _ in range(3):  # without the optimized-graph cache: a model never seen on this node
            for f in cache.glob("*"):
                f.unlink()
            cold_first.append(served_cold_start(repo, body, headers, env))
        prime = start_server(repo, free_port(), {**env, "KINDLING_OPTIMIZED_CACHE_DELAY_S": "0"})
        try:
            wait_for_cache(cache)
        finally:
            prime.terminate()
            prime.wait()
        cold = [served_cold_start(repo, body, headers, env) for _ in range(args.cold_starts)]

    best_batch = max(raw_tp, key=lambda b: raw_tp[b])
    lat = flat(latency_rounds)
    raw_lat, served_lat, echo_lat = lat["raw"], lat["served"], lat["floor"]
    r50, s50 = percentile(raw_lat, 50) * 1e3, percentile(served_lat, 50) * 1e3
    f50, c50, c1 = (statistics.median(v) for v in (floor, cold, cold_first))
    print(
        f"kindling runtime benchmark: {MODEL}, {threads} intra-op threads, {os.cpu_count()} cores"
    )
    print(f"raw onnxruntime: {describe_options(threads)}\n")
    print(f"{'':34}{'raw onnxruntime':>18}{'served (OIP binary)':>22}{'delta / ratio':>16}")
    print(f"{'latency c=1 p50 (ms)':34}{r50:18.2f}{s50:22.2f}{s50 - r50:+15.2f}ms")
    per_round = round_deltas(latency_rounds, "served", "raw")
    print(f"{'  median of per-round deltas':34}{'':40}{per_round:+15.2f}ms")
    r99, s99 = percentile(raw_lat, 99) * 1e3, percentile(served_lat, 99) * 1e3
    print(f"{'latency c=1 p99 (ms)':34}{r99:18.2f}{s99:22.2f}")
    print(
        f"{'throughput c=16 (img/s)':34}{raw_tp[best_batch]:18.1f}{served_tp:22.1f}"
        f"{served_tp / raw_tp[best_batch]:15.2f}x"
    )
    e50 = percentile(echo_lat, 50) * 1e3
    print(f"{'  HTTP floor: same body, echo app':34}{'':18}{e50:22.2f}")
    print(f"{'  served - raw - HTTP floor':34}{'':18}{s50 - r50 - e50:+22.2f}")
    t_raw, t_served = (percentile(v, 50) * 1e3 for v in (text["raw"], text["served"]))
    print(
        f"{'minilm, 1 sentence, c=1 p50 (ms)':34}{t_raw:18.2f}{t_served:22.2f}"
        f"{t_served - t_raw:+15.2f}ms"
    )
    print(f"{'  raw best batch size':34}{best_batch:18d}")
    print(f"{'  raw img/s by batch':34}" + ", ".join(f"{b}: {v:.0f}" for b, v in raw_tp.items()))
    print(f"\n{'cold start, exec to first 200 (s)':34}{'floor':>18}{'served':>22}{'ratio':>16}")
    print(f"{'  optimized graph cached':34}{f50:18.3f}{c50:22.3f}{c50 / f50:15.2f}x")
    print(f"{'  first start on this node':34}{f50:18.3f}{c1:22.3f}{c1 / f50:15.2f}x")
    print(
        "\ntargets: served p50 - raw p50 <= 0.5 ms; throughput >= 0.8x raw; "
        "cold start <= 0.5 s and <= 1.25x floor"
    )
    ok = (
        s50 - r50 <= 0.5
        and served_tp >= 0.8 * raw_tp[best_batch]
        and c50 <= 0.5
        and c50 <= 1.25 * f50
    )
    print("all targets met" if ok else "some targets missed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
