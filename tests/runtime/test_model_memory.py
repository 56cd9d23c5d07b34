"""What a model needs in memory: MiniLM's tokens-per-run cap keeps a batch of long
sentences from taking the process's RSS up with it (onnxruntime's arena keeps its peak),
and the config's `resources` reach the model metadata.

Real runtime processes serve copies of the sample model that differ only in config.yaml.
The figures themselves come from `python -m kindling.loadtest.bench_memory`; this only
checks that the cap makes the difference it is there for, which is several times any
noise in a process's peak RSS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from kindling.loadtest.bench_memory import long_text, proc_memory
from tests.conftest import RuntimeProcess, StartRuntime

pytestmark = pytest.mark.integration

ROWS = 16  # 16 x 256 word pieces: ~250 MB of activations in one run
CAP = 512  # two rows per run


def minilm_copy(source: Path, repository: Path, **preprocess: object) -> Path:
    """The sample MiniLM as repository/minilm, its files hard-linked, config edited."""
    folder = repository / "minilm"
    folder.mkdir(parents=True)
    for name in ("model.onnx", "tokenizer.json"):
        os.link(source / name, folder / name)
    config = yaml.safe_load((source / "config.yaml").read_text())
    config["preprocess"] = {**config["preprocess"], **preprocess}
    config["preprocess"] = {k: v for k, v in config["preprocess"].items() if v is not None}
    config["resources"] = {"memory": "448Mi"}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return repository


def serve(start_runtime: StartRuntime, repository: Path) -> RuntimeProcess:
    # No optimized-graph cache: writing it would add its own peak to the process's.
    return start_runtime(repository, env={"KINDLING_OPTIMIZED_CACHE": "false"})


def embed_long_sentences(runtime: RuntimeProcess) -> tuple[np.ndarray, float]:
    """The embeddings of ROWS sentences of at least 256 word pieces, and how far the
    process's peak RSS rose (MiB) while serving them."""
    texts = [long_text(300, row) for row in range(ROWS)]
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [ROWS], "data": texts}]}
    ).encode()
    before = proc_memory(runtime.process.pid)["VmHWM"]
    status, _, answer = runtime.post("/v2/models/minilm/infer", body)
    assert status == 200, answer
    after = proc_memory(runtime.process.pid)["VmHWM"]
    (output,) = json.loads(answer)["outputs"]
    return np.array(output["data"], np.float32).reshape(output["shape"]), after - before


def test_minilm_runs_a_batch_in_slices_of_max_batch_tokens(
    tmp_path: Path, model_repository: Path, start_runtime: StartRuntime
):
    source = model_repository / "minilm"
    capped = serve(start_runtime, minilm_copy(source, tmp_path / "capped", max_batch_tokens=CAP))
    whole = serve(start_runtime, minilm_copy(source, tmp_path / "whole", max_batch_tokens=None))

    sliced, capped_rise = embed_long_sentences(capped)
    expected, whole_rise = embed_long_sentences(whole)

    # Each row's embedding is the same whichever rows share its run.
    np.testing.assert_allclose(sliced, expected, rtol=1e-4, atol=1e-5)
    assert whole_rise > 50, f"the uncapped batch raised the peak by only {whole_rise:.0f} MiB"
    assert capped_rise * 3 < whole_rise, (capped_rise, whole_rise)


def test_resources_are_in_the_model_metadata(
    tmp_path: Path, model_repository: Path, start_runtime: StartRuntime
):
    runtime = serve(start_runtime, minilm_copy(model_repository / "minilm", tmp_path / "r"))
    status, body = runtime.get("/v2/models/minilm")
    assert status == 200
    assert json.loads(body)["parameters"]["resources_memory"] == "448Mi"
