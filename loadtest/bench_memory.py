"""Memory benchmark: what each sample model needs, measured on a real `kindling serve`.

    python -m kindling.loadtest.bench_memory --model-repository models
    python -m kindling.loadtest.bench_memory --only minilm --compare-cap
    python -m kindling.loadtest.bench_memory --only mobilenet_v2 minilm --compare-arena

For each model, one runtime process serves it alone (KINDLING_MODELS) from a fresh copy
of its folder, so it also optimizes the graph and writes the optimized copy, as the
first pod of a deployment does; text models look their words up in a real redis-server
loaded with the demo tables, as on Kubernetes. Once that copy is written, the benchmark
sends batches one at a time, every other one the worst case: max_batch_size rows, text
at the preprocessor's max_length (MiniLM's word pieces, the text CNNs' words, each batch
new words, so the word-vector cache fills up as in a long-running pod); those between
are of random sizes, as adaptive batching makes them. It reads the process's peak
resident set (VmHWM, /proc/PID/status) after loading and after the batches, keeps the
highest of --repeat runs (3), and prints the memory request to give the model: the peak
plus 10 %, rounded up to 32 MiB. Those are the figures in modelzoo/build.py's
MEMORY_REQUESTS (config.yaml `resources.memory`).

--all-in-one loads every model in each process instead, as an OpenWhisk image holding
them all does (it cannot be told which to load): one process per model sending batches
to that model only (an action bound to it), then one sending them to all, in turn.

Not counted: request bodies waiting in the queue beyond the batch that runs (up to one
per caller), and the CUDA provider's device memory.

--compare-cap serves MiniLM with and without its `max_batch_tokens` cap side by side:
peak memory, the worst-case batch's time, and p50 latency of a one-sentence request at
concurrency 1, in alternating rounds so both see the same machine. --compare-arena
measures onnxruntime's arena options in-process (they are not runtime settings): the
arena as is, shrunk after every run (RunOptions memory.enable_memory_arena_shrinkage),
and off (enable_cpu_mem_arena=False): peak and retained RSS after worst-case batches,
and p50 of batch-1 and worst-case runs, interleaved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from kindling.loadtest.benchclient import (
    BlockingConnection,
    free_port,
    interleaved,
    percentile,
    raw_request,
    wait_ready,
)

MODELS = ("kim_cnn", "sm_cnn", "mobilenet_v2", "squeezenet1_1", "resnet18", "minilm")
MARGIN = 1.10
"""Headroom over the measured peak: allocator and thread-count differences between
machines (the runtime's intra-op threads follow the CPU limit)."""
ROUND_MIB = 32
SENTENCE = "A man is eating a piece of bread."


def memory_request(peak_mib: float) -> str:
    """The Kubernetes memory quantity to request for a measured peak."""
    return f"{math.ceil(peak_mib * MARGIN / ROUND_MIB) * ROUND_MIB}Mi"


def reset_peak(pid: int) -> bool:
    """Start VmHWM afresh from the current RSS (proc(5), clear_refs "5"); False if the
    kernel refuses, and the peak then also covers what came before."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


# -- the model repository and worst-case requests -------------------------------------------


def config_of(folder: Path) -> dict[str, Any]:
    return yaml.safe_load((folder / "config.yaml").read_text())


def copy_model(source: Path, repository: Path, edit: Callable[[dict], None] | None = None) -> Path:
    """`source` (a model folder) as repository/<name>, hard-linked, without its optimized
    graph, so the runtime optimizes and saves it as a first start does; `edit` changes
    its config.yaml."""
    dest = repository / source.name
    dest.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.name != "config.yaml":
            try:
                os.link(path, dest / path.name)
            except OSError:
                shutil.copy2(path, dest / path.name)
    config = config_of(source)
    if edit is not None:
        edit(config)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def vocabulary(path: Path) -> list[str]:
    """The words of a word2vec file that clean_str_sst leaves as they are."""
    from kindling.embeddings.formats import VectorReader

    words = []
    with VectorReader(path, "word2vec-bin") as reader:
        for batch in reader.batches():
            words += [w.decode() for w in batch.words if w.isalpha() and w.islower()]
    return words


def long_text(words: int, offset: int) -> str:
    """Shipped review sentences run together to at least `words` words."""
    from kindling.loadtest import corpus

    sentences = corpus.sentences()
    out: list[str] = []
    i = offset
    while sum(len(s.split()) for s in out) < words:
        out.append(sentences[i % len(sentences)])
        i += 1
    return " ".join(out)


def oip_json(inputs: dict[str, list[str]]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": name, "datatype": "BYTES", "shape": [len(texts)], "data": texts}
                for name, texts in inputs.items()
            ]
        }
    ).encode()


def batch_shapes(config: dict[str, Any], count: int) -> list[tuple[int, int]]:
    """(rows, text length) of `count` batches: every other one the worst case, max rows at
    max_length; those between of seeded random sizes, since batches of changing shapes
    fragment onnxruntime's arena (MobileNetV2's peak is ~10 % higher than with worst
    cases alone)."""
    rows = int(config["max_batch_size"]) or 1
    length = int((config.get("preprocess") or {}).get("max_length", 0))
    rng = np.random.default_rng(0)
    return [
        (rows, length)
        if n % 2 == 0
        else (int(rng.integers(1, rows + 1)), int(rng.integers(1, length + 1)) if length else 0)
        for n in range(count)
    ]


def batch_request(
    config: dict[str, Any], rows: int, length: int, n: int, vocab: list[str]
) -> tuple[bytes, dict[str, str]]:
    """The `n`th request: `rows` rows of `length` (text) words; the text CNNs' words are
    new vocabulary each time, so their vector cache fills up as in a long-lived pod."""
    preprocess = config.get("preprocess") or {}
    names = [t["name"] for t in config["inputs"]]
    if preprocess.get("kind") == "hf_tokenizer":
        # At least `length` word pieces, truncated to max_length.
        texts = [long_text(length, n * rows + r) for r in range(rows)]
        return oip_json({names[0]: texts}), {"Content-Type": "application/json"}
    if preprocess.get("kind") == "word_vectors":
        need = len(names) * rows * length
        start = (n * need) % max(1, len(vocab) - need)
        words = vocab[start : start + need]
        inputs = {
            name: [
                " ".join(words[(i * rows + r) * length : (i * rows + r + 1) * length])
                for r in range(rows)
            ]
            for i, name in enumerate(names)
        }
        return oip_json(inputs), {"Content-Type": "application/json"}
    shape = [rows, *(int(d) for d in config["inputs"][0]["shape"][1:])]
    batch = np.random.default_rng(n).standard_normal(shape).astype(np.float32)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": names[0],
                    "datatype": "FP32",
                    "shape": shape,
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ]
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + batch.tobytes(), headers


def worst_case_request(config: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    ((rows, length),) = batch_shapes(config, 1)
    return batch_request(config, rows, length, 0, [])


# -- one runtime ------------------------------------------------------------------------------


@dataclass
class Runtime:
    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    log: Path

    def optimized_written(self) -> bool:
        cache = self.folder / ".kindling-cache"
        return any(p.name.endswith(".ort.onnx") and ".tmp." not in p.name for p in cache.glob("*"))


@contextmanager
def runtime(
    repository: Path, model: str, workdir: Path, env: dict[str, str] | None = None
) -> Iterator[Runtime]:
    port = free_port()
    log = workdir / f"{model}-{port}.log"
    full_env = {
        **os.environ,
        "PORT": str(port),
        "KINDLING_MODELS": model,
        "KINDLING_CACHE_DIR": str(workdir / "cache"),
        "KINDLING_OPTIMIZED_CACHE_DELAY_S": "0",
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kindling", "serve", "--model-repository", str(repository)],
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready(port, timeout=300)
        yield Runtime(process, port, repository / model, log)
    finally:
        process.terminate()
        process.wait()


def wait_optimized(server: Runtime, timeout: float = 120) -> bool:
    """Until the runtime has written the optimized graph (after ready, once idle)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.optimized_written():
            # The file is renamed into place when complete; let the session that wrote
            # it be released before reading the peak.
            time.sleep(0.5)
            return True
        time.sleep(0.1)
    return False


@dataclass
class Measurement:
    model: str
    rows: int
    worst: str
    ready_mib: float
    load_peak_mib: float
    peak_mib: float
    after_mib: float
    batch_s: float
    optimized: bool


def worst_label(config: dict[str, Any]) -> str:
    rows = int(config["max_batch_size"])
    preprocess = config.get("preprocess") or {}
    if preprocess.get("kind") == "hf_tokenizer":
        return f"{rows} x {preprocess['max_length']} word pieces"
    if preprocess.get("kind") == "word_vectors":
        return f"{rows} x {preprocess['max_length']} words"
    return f"{rows} x {'x'.join(str(d) for d in config['inputs'][0]['shape'][1:])}"


def measure(server: Runtime, config: dict[str, Any], batches: int, vocab: list[str]) -> Measurement:
    pid = server.process.pid
    ready = proc_memory(pid)["VmRSS"]
    optimized = wait_optimized(server)
    load_peak = proc_memory(pid)["VmHWM"]
    reset_peak(pid)
    conn = BlockingConnection(server.port, timeout=600)
    times = []
    try:
        path = f"/v2/models/{config['name']}/infer"
        for n, (rows, length) in enumerate(batch_shapes(config, batches)):
            request = raw_request(path, *batch_request(config, rows, length, n, vocab))
            started = time.perf_counter()
            conn.ok(request)
            if n % 2 == 0:
                times.append(time.perf_counter() - started)
    finally:
        conn.close()
    memory = proc_memory(pid)
    return Measurement(
        config["name"],
        int(config["max_batch_size"]),
        worst_label(config),
        ready,
        load_peak,
        memory["VmHWM"],
        memory["VmRSS"],
        statistics.median(times),
        optimized,
    )


# -- Redis for the text models ------------------------------------------------------------------


@contextmanager
def text_store(workdir: Path) -> Iterator[tuple[dict[str, str], list[str]]]:
    """A redis-server with the demo tables: the runtime's env for it, and demo300's
    vocabulary. Without redis-server, the embedded file store (its mapped pages then
    count in the runtime's RSS)."""
    from kindling.embeddings.backend import open_backend
    from kindling.embeddings.redis_server import RedisServer, redis_server_path
    from kindling.embeddings.settings import EmbeddingSettings
    from kindling.embeddings.table_loader import load_table
    from kindling.modelzoo.build import default_cache
    from kindling.modelzoo.word_vectors import write_demo_vectors

    vectors = write_demo_vectors(default_cache() / "vectors")
    vocab = vocabulary(vectors["demo300"])
    if redis_server_path() is None:
        print("redis-server not found: text models use the embedded file store\n")
        store = workdir / "store"
        backend = open_backend(EmbeddingSettings(url=f"file://{store}"))
        env = {"KINDLING_EMBEDDINGS_DIR": str(store)}
        server = None
    else:
        server = RedisServer(workdir / "redis").start()
        backend = open_backend(EmbeddingSettings(url=server.url).for_loading())
        env = {"KINDLING_REDIS_URL": server.url}
    try:
        for table, path in vectors.items():
            load_table(backend, table, path, "word2vec-bin", grace=0.0)
        backend.close()
        yield env, vocab
    finally:
        if server is not None:
            server.stop()


# -- the sections -------------------------------------------------------------------------------


def memory_table(
    repository: Path, models: list[str], batches: int, repeat: int, workdir: Path
) -> None:
    print(
        f"peak RSS of `kindling serve` serving one model (fresh copy: optimizes and saves its "
        f"graph), then {batches} batches one at a time, every other one worst-case; "
        f"{os.cpu_count()} CPUs, threads as the runtime picks them\n"
    )
    header = (
        f"{'model':14} {'worst-case batch':26} {'ready':>7} {'load pk':>8} {'peak':>7} "
        f"{'after':>7} {'batch s':>8}  request"
    )
    print(header)
    print("-" * len(header))
    with ExitStack() as stack:
        store_env: dict[str, str] = {}
        vocab: list[str] = []
        if any(
            (config_of(repository / m).get("preprocess") or {}).get("kind") == "word_vectors"
            for m in models
        ):
            store_env, vocab = stack.enter_context(text_store(workdir))
        for model in models:
            repo = workdir / f"repo-{model}"
            config = config_of(repository / model)
            runs = []
            for _ in range(repeat):
                copy_model(repository / model, repo)
                with runtime(repo, model, workdir, store_env) as server:
                    runs.append(measure(server, config, batches, vocab))
                shutil.rmtree(repo / model)
            m = max(runs, key=lambda r: max(r.peak_mib, r.load_peak_mib))
            note = "" if all(r.optimized for r in runs) else "  (optimized graph not written)"
            print(
                f"{m.model:14} {m.worst:26} {m.ready_mib:6.0f}M {m.load_peak_mib:7.0f}M "
                f"{m.peak_mib:6.0f}M {m.after_mib:6.0f}M {m.batch_s:8.2f}  "
                f"{memory_request(max(m.peak_mib, m.load_peak_mib))}{note}  "
                f"(peaks of the {repeat} runs: "
                + ", ".join(f"{max(r.peak_mib, r.load_peak_mib):.0f}" for r in runs)
                + ")"
            )
    print(
        f"\nthe run with the highest peak of {repeat}, each a fresh process. ready: RSS once "
        "ready; load pk: peak RSS up to the optimized graph saved; peak: peak RSS while "
        "serving the batches (counted afresh after load, if the kernel allows); after: RSS "
        "after them; batch s: median time of a worst-case request; request: the higher "
        f"peak + {MARGIN - 1:.0%}, rounded up to {ROUND_MIB} MiB"
    )


def all_in_one(repository: Path, models: list[str], batches: int, workdir: Path) -> None:
    """Every model loaded in one process, as in an OpenWhisk image holding them all: per
    model, a fresh process in which only that model gets the batches (an action bound to
    it), then one in which they all do, in turn (their arenas add up)."""
    print(
        f"one `kindling serve` process loading {', '.join(models)} (fresh copies: each "
        f"optimizes and saves its graph); {batches} batches to the models named\n"
    )
    header = f"{'batches to':14} {'ready':>7} {'load pk':>8} {'peak':>7} {'after':>7}  request"
    print(header)
    print("-" * len(header))
    with ExitStack() as stack:
        store_env, vocab = stack.enter_context(text_store(workdir))
        for served in [*([m] for m in models), models]:
            repo = workdir / "repo-all"
            shutil.rmtree(repo, ignore_errors=True)
            for model in models:
                copy_model(repository / model, repo)
            with runtime(repo, ",".join(models), workdir, store_env) as server:
                pid = server.process.pid
                ready = proc_memory(pid)["VmRSS"]
                for model in models:
                    server.folder = repo / model
                    wait_optimized(server)
                load_peak = proc_memory(pid)["VmHWM"]
                reset_peak(pid)
                conn = BlockingConnection(server.port, timeout=600)
                try:
                    for model in served:
                        config = config_of(repo / model)
                        path = f"/v2/models/{model}/infer"
                        for n, (rows, length) in enumerate(batch_shapes(config, batches)):
                            request = batch_request(config, rows, length, n, vocab)
                            conn.ok(raw_request(path, *request))
                finally:
                    conn.close()
                memory = proc_memory(pid)
            name = served[0] if len(served) == 1 else "all, in turn"
            print(
                f"{name:14} {ready:6.0f}M {load_peak:7.0f}M {memory['VmHWM']:6.0f}M "
                f"{memory['VmRSS']:6.0f}M  {memory_request(max(load_peak, memory['VmHWM']))}"
            )


def once(port: int, request: bytes) -> None:
    conn = BlockingConnection(port, timeout=600)
    try:
        conn.ok(request)
    finally:
        conn.close()


def compare_cap(repository: Path, workdir: Path, rounds: int) -> None:
    """MiniLM as built (max_batch_tokens) against the same model without the cap."""
    model = "minilm"
    capped = workdir / "capped"
    uncapped = workdir / "uncapped"
    copy_model(repository / model, capped)
    cap = (config_of(capped / model).get("preprocess") or {}).get("max_batch_tokens")

    def no_cap(config: dict) -> None:
        config["preprocess"].pop("max_batch_tokens", None)

    copy_model(repository / model, uncapped, no_cap)
    config = config_of(uncapped / model)
    one = raw_request(f"/v2/models/{model}/infer", oip_json({"text": [SENTENCE]}))
    worst = raw_request(f"/v2/models/{model}/infer", *worst_case_request(config))
    print(f"MiniLM, max_batch_tokens {cap} against no cap, alternating rounds\n")
    with (
        runtime(capped, model, workdir) as a,
        runtime(uncapped, model, workdir) as b,
    ):
        wait_optimized(a)
        wait_optimized(b)
        ca, cb = BlockingConnection(a.port, 600), BlockingConnection(b.port, 600)
        try:
            small = interleaved({"cap": partial(ca.ok, one), "no cap": partial(cb.ok, one)}, rounds)
            # A connection per worst-case request: one idle while the other side's take
            # seconds would pass the runtime's keep-alive timeout.
            big = interleaved(
                {"cap": partial(once, a.port, worst), "no cap": partial(once, b.port, worst)},
                rounds=3,
                per_round=2,
                warmup=1,
            )
        finally:
            ca.close()
            cb.close()
        peaks = {"cap": proc_memory(a.process.pid), "no cap": proc_memory(b.process.pid)}
    print(f"{'':8} {'p50 1 sentence':>15} {'p50 worst batch':>16} {'peak RSS':>9} {'after':>7}")
    for name in ("no cap", "cap"):
        one_ms = percentile([t for r in small[name] for t in r], 50) * 1e3
        big_s = percentile([t for r in big[name] for t in r], 50)
        print(
            f"{name:8} {one_ms:13.2f}ms {big_s:15.2f}s {peaks[name]['VmHWM']:8.0f}M "
            f"{peaks[name]['VmRSS']:6.0f}M"
        )


ARENA_SCRIPT = """
import json, sys
import numpy as np
import onnxruntime as ort
from kindling.runtime.session import session_options
from kindling.loadtest.benchclient import interleaved
folder, mode, big_rows, rounds, threads, sentence, text = sys.argv[1:]
big_rows, rounds, threads = int(big_rows), int(rounds), int(threads)
shrink = ort.RunOptions()
shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
def session(variant):
    options = session_options(threads)
    options.enable_cpu_mem_arena = variant != "off"
    s = ort.InferenceSession(folder + "/model.onnx", options, providers=["CPUExecutionProvider"])
    run_options = shrink if variant == "shrink" else None
    return lambda feed: s.run(None, feed, run_options)
if folder.endswith("minilm"):
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(folder + "/tokenizer.json")
    tokenizer.enable_truncation(256)
    tokenizer.enable_padding()
    def feed(rows, words):
        e = tokenizer.encode_batch([words] * rows)
        return {k: np.array([getattr(x, a) for x in e], np.int64) for k, a in
                (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                 ("token_type_ids", "type_ids"))}
    small, big = feed(1, sentence), feed(big_rows, text)
else:
    rng = np.random.default_rng(0)
    small = {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    big = {"input": rng.standard_normal((big_rows, 3, 224, 224)).astype(np.float32)}
if mode == "latency":
    runs = {v: session(v) for v in ("as is", "shrink", "off")}
    one = interleaved({v: lambda r=r: r(small) for v, r in runs.items()}, rounds)
    many = interleaved({v: lambda r=r: r(big) for v, r in runs.items()}, rounds, 1, 1)
    print(json.dumps({v: [float(np.median(sum(one[v], []))) * 1e3,
                          float(np.median(sum(many[v], []))) * 1e3] for v in runs}))
else:
    run = session(mode)
    for _ in range(4):
        run(big)
        run(small)
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            out[k] = int(v.split()[0]) / 1024
    print(json.dumps(out))
"""


def compare_arena(repository: Path, models: list[str], rounds: int, threads: int) -> None:
    """onnxruntime's arena options in-process: latency with the three side by side in one
    process (a session each, alternating), memory in a process per option."""
    print(
        "onnxruntime CPU arena options, in-process: p50 of 1-row and worst-case runs, "
        "sessions alternating in one process; peak and retained RSS after 4 worst-case "
        "runs, a process per option\n"
    )
    print(f"{'model':14} {'arena':8} {'p50 1 row':>10} {'p50 worst':>10} {'peak':>7} {'after':>7}")

    def script(model: str, mode: str, rows: int) -> dict[str, Any]:
        args = [str(repository / model), mode, str(rows), str(rounds), str(threads)]
        command = [sys.executable, "-c", ARENA_SCRIPT, *args, SENTENCE, long_text(256, 0)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    for model in models:
        rows = int(config_of(repository / model)["max_batch_size"])
        latency = script(model, "latency", rows)
        for variant, (one_ms, big_ms) in latency.items():
            memory = script(model, variant, rows)
            print(
                f"{model:14} {variant:8} {one_ms:8.2f}ms {big_ms:8.0f}ms "
                f"{memory['VmHWM']:6.0f}M {memory['VmRSS']:6.0f}M"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--only", nargs="+", choices=MODELS, help="models to measure")
    parser.add_argument(
        "--batches", type=int, default=12, help="batches per model, every other one worst-case"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per model; the max counts")
    parser.add_argument("--all-in-one", action="store_true", help="all models in one process")
    parser.add_argument("--compare-cap", action="store_true", help="MiniLM with/without its cap")
    parser.add_argument("--compare-arena", action="store_true", help="onnxruntime arena options")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds (compare)")
    args = parser.parse_args(argv)
    repository = args.model_repository.resolve()
    models = list(args.only or MODELS)
    with tempfile.TemporaryDirectory(prefix="kindling-bench-memory-") as tmp:
        workdir = Path(tmp)
        if args.all_in_one:
            all_in_one(repository, models, args.batches, workdir)
        elif args.compare_cap:
            compare_cap(repository, workdir, args.rounds)
        elif args.compare_arena:
            from kindling.runtime.cpu import available_cpus

            compare_arena(repository, models, args.rounds, available_cpus())
        else:
            memory_table(repository, models, args.batches, args.repeat, workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
