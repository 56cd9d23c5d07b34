"""Text-model benchmark: paper 000's Kim CNN and SM CNN served end to end over Redis.

    python -m kindling.loadtest.bench_text --model-repository models

One run starts a real redis-server, loads the demo word-vector tables into it, and for
three runtimes in turn (cache on; cache off; the DynamoDB-style baseline: no cache and
one round trip per 100 keys, BatchGetItem's limit) drives each text model closed-loop at
concurrency 5, 10, 20 and 30, as paper 000's Tables 1 (Kim CNN) and 2 (SM CNN) do. It
prints throughput, mean, p50 and p99 latency, and the share of server time spent
fetching word vectors (paper 000: 60-70 % of a 0.7 s request), read from the runtime's
own /metrics. Sentences come from the shipped corpus (Zipf-like word frequencies).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path

from kindling.embeddings.backend import open_backend
from kindling.embeddings.redis_server import RedisServer
from kindling.embeddings.settings import EmbeddingSettings
from kindling.embeddings.table_loader import load_table
from kindling.loadtest import corpus
from kindling.loadtest.benchclient import (
    closed_loop,
    free_port,
    get,
    percentile,
    raw_request,
    start_runtime,
    wait_ready,
)
from kindling.modelzoo.build import default_cache
from kindling.modelzoo.word_vectors import write_demo_vectors

CONCURRENCY = (5, 10, 20, 30)  # paper 000, Tables 1 and 2
STORES = {
    "cache on": {},
    "cache off": {"KINDLING_EMBEDDINGS_CACHE_SIZE": "0"},
    "dynamodb-style": {
        "KINDLING_EMBEDDINGS_CACHE_SIZE": "0",
        "KINDLING_EMBEDDINGS_ROUND_TRIP_KEYS": "100",
    },
}
# Paper 000's figures the issue quotes for Kim CNN on Lambda + DynamoDB.
PAPER = {("kim_cnn", 5): "p50 678 ms", ("kim_cnn", 30): "32.3 QPS"}


def oip_text(inputs: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {"name": name, "datatype": "BYTES", "shape": [1], "data": [text]}
                for name, text in inputs.items()
            ]
        }
    ).encode()


def requests_for(model: str) -> list[bytes]:
    path = f"/v2/models/{model}/infer"
    if model == "kim_cnn":
        bodies = [oip_text({"text": s}) for s in corpus.sentences()]
    else:
        bodies = [oip_text({"question": q, "answer": a}) for q, a in corpus.pairs()]
    return [raw_request(path, b, {"Content-Type": "application/json"}) for b in bodies]


def metric_sum(text: str, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{re.escape(name)}_sum{re.escape(labels)} (\S+)$", re.M)
    return sum(float(m) for m in pattern.findall(text))


def fetch_share(before: str, after: str, model: str) -> float:
    """Lookup seconds over total server seconds for the requests between two scrapes."""
    total = "kindling_request_duration_seconds", f'{{model="{model}",phase="total"}}'
    served = metric_sum(after, *total) - metric_sum(before, *total)
    lookup = metric_sum(after, "kindling_embeddings_lookup_seconds") - metric_sum(
        before, "kindling_embeddings_lookup_seconds"
    )
    return lookup / served if served else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--seconds", type=float, default=5.0, help="per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args(argv)

    vectors = write_demo_vectors(default_cache() / "vectors")
    print("kindling text benchmark: closed loop, one sentence (pair) per request\n")
    header = (
        f"{'model':8} {'store':15} {'C':>3} {'QPS':>8} {'mean ms':>8} {'p50 ms':>8} {'p99 ms':>8}"
    )
    print(f"{header} {'fetch share':>12}  paper 000")
    with tempfile.TemporaryDirectory() as tmp, RedisServer(Path(tmp) / "redis") as redis:
        backend = open_backend(EmbeddingSettings(url=redis.url).for_loading())
        for table, path in vectors.items():
            load_table(backend, table, path, "word2vec-bin", grace=0.0)
        backend.close()
        for store, env in STORES.items():
            port = free_port()
            server = start_runtime(
                args.model_repository,
                port,
                {"KINDLING_MODELS": "kim_cnn,sm_cnn", "KINDLING_REDIS_URL": redis.url, **env},
            )
            try:
                wait_ready(port)
                for model in ("kim_cnn", "sm_cnn"):
                    requests = requests_for(model)
                    for c in args.concurrency:
                        before = get(port, "/metrics")
                        latencies, qps = closed_loop(port, requests, c, args.seconds)
                        share = fetch_share(before, get(port, "/metrics"), model)
                        ms = [x * 1e3 for x in latencies]
                        print(
                            f"{model:8} {store:15} {c:3d} {qps:8.1f} {statistics.mean(ms):8.2f} "
                            f"{percentile(ms, 50):8.2f} {percentile(ms, 99):8.2f} "
                            f"{share:11.1%}  {PAPER.get((model, c), '')}"
                        )
            finally:
                server.terminate()
                server.wait()
    print(
        "\ntargets (Kim CNN, cache on): p50 <= 5 ms at C=5, >= 650 QPS at C=30, fetch share <= 25 %"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
