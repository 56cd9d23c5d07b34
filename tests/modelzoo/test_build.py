"""The model-repository writer (kindling.modelzoo.build) and `kindling models`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from kindling import cli as kindling_cli
from kindling.modelzoo import build as zoo
from kindling.modelzoo.build import REGISTRY, SampleModel, build_all, graph_io, validate
from kindling.modelzoo.cli import main

FAST = ["kim_cnn", "sm_cnn"]
OURS = ["kim_cnn", "sm_cnn", "mobilenet_v2", "squeezenet1_1", "resnet18"]


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _statuses(results: list[zoo.Result]) -> dict[str, str]:
    return {r.name: r.status for r in results}


def test_registry_names():
    assert list(REGISTRY) == [*OURS, "minilm"]


def test_writes_layout_and_config(tmp_path):
    results = build_all(tmp_path, FAST)
    assert _statuses(results) == dict.fromkeys(FAST, "built")
    # no temp folders left (.embeddings holds the demo word vectors, when loaded)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".embeddings") == sorted(FAST)
    for name in FAST:
        folder = tmp_path / name
        assert sorted(p.name for p in folder.iterdir()) == [
            ".build-stamp",
            "config.yaml",
            "model.onnx",
        ]
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["name"] == name
        assert config["platform"] == "onnxruntime_onnx"
        assert config["max_batch_size"] > 0 and "max_queue_delay_ms" in config["batching"]
        model = onnx.load(str(folder / "model.onnx"))
        inputs, outputs = graph_io(model)
        # Served as text: each BYTES input feeds one graph input of word vectors.
        assert all(e == {**e, "datatype": "BYTES", "shape": [-1]} for e in config["inputs"])
        mapping = config["preprocess"]["inputs"]
        assert sorted(mapping) == sorted(e["name"] for e in config["inputs"])
        assert sorted(mapping.values()) == sorted(i["name"] for i in inputs)
        assert config["outputs"] == outputs
        session = ort.InferenceSession(
            str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        feeds = {i["name"]: np.zeros([2, 6, i["shape"][2]], np.float32) for i in inputs}
        (probs,) = session.run(None, feeds)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_configs_carry_the_measured_memory_request(tmp_path):
    """Each sample's config.yaml says what a pod serving it should request, ahead of the
    description; the figures are loadtest/bench_memory.py's."""
    assert set(zoo.MEMORY_REQUESTS) == set(REGISTRY)
    build_all(tmp_path, FAST)
    for name in FAST:
        config = yaml.safe_load((tmp_path / name / "config.yaml").read_text())
        assert config["resources"] == {"memory": zoo.MEMORY_REQUESTS[name]}
        assert list(config)[-2:] == ["resources", "description"]
        assert zoo.cheap_config(name) == config


def test_only_builds_the_subset(tmp_path):
    assert _statuses(build_all(tmp_path, ["sm_cnn"])) == {"sm_cnn": "built"}
    assert [p.name for p in tmp_path.iterdir()] == ["sm_cnn"]


def test_unknown_name_is_rejected(tmp_path):
    with pytest.raises(KeyError, match="no_such_model"):
        build_all(tmp_path, ["no_such_model"])


def test_deterministic_bytes(tmp_path):
    build_all(tmp_path / "a", [*FAST, "squeezenet1_1"])
    build_all(tmp_path / "b", [*FAST, "squeezenet1_1"])
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


@pytest.mark.slow
def test_deterministic_bytes_all_models(tmp_path):
    build_all(tmp_path / "a", OURS)
    build_all(tmp_path / "b", OURS)
    first, second = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert len(first) == 3 * len(OURS)
    assert first == second


def test_second_build_skips_up_to_date(tmp_path):
    build_all(tmp_path, FAST)
    before = {n: (tmp_path / n / "model.onnx").stat().st_mtime_ns for n in FAST}
    assert _statuses(build_all(tmp_path, FAST)) == dict.fromkeys(FAST, "current")
    assert {n: (tmp_path / n / "model.onnx").stat().st_mtime_ns for n in FAST} == before


def test_rebuilds_when_stamp_differs(tmp_path, monkeypatch):
    build_all(tmp_path, ["kim_cnn"])
    stamp_path = tmp_path / "kim_cnn" / ".build-stamp"
    stamp = json.loads(stamp_path.read_text())
    stamp["config_sha256"] = "0" * 64
    stamp_path.write_text(json.dumps(stamp))
    assert _statuses(build_all(tmp_path, ["kim_cnn"])) == {"kim_cnn": "built"}
    assert _statuses(build_all(tmp_path, ["kim_cnn"])) == {"kim_cnn": "current"}
    monkeypatch.setattr(zoo, "BUILDER_VERSION", "kindling-modelzoo-test")
    assert _statuses(build_all(tmp_path, ["kim_cnn"])) == {"kim_cnn": "built"}
    assert json.loads(stamp_path.read_text())["builder"].startswith("kindling-modelzoo-test/")


def test_rebuilds_when_a_file_is_damaged_or_missing(tmp_path):
    build_all(tmp_path, FAST)
    (tmp_path / "kim_cnn" / "model.onnx").write_bytes(b"truncated")
    (tmp_path / "sm_cnn" / "config.yaml").unlink()
    assert _statuses(build_all(tmp_path, FAST)) == dict.fromkeys(FAST, "built")
    assert onnx.load(str(tmp_path / "kim_cnn" / "model.onnx")).graph.input[0].name == "embeddings"


def test_force_rebuilds(tmp_path):
    build_all(tmp_path, ["kim_cnn"])
    assert _statuses(build_all(tmp_path, ["kim_cnn"], force=True)) == {"kim_cnn": "built"}


def test_cache_is_filled_and_reused(tmp_path):
    cache = tmp_path / "cache"
    assert _statuses(build_all(tmp_path / "one", FAST, cache=cache)) == dict.fromkeys(FAST, "built")
    assert _statuses(build_all(tmp_path / "two", FAST, cache=cache)) == dict.fromkeys(
        FAST, "cached"
    )
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")
    # Keyed by builder version and config: one entry per model.
    assert [len(list((cache / n).iterdir())) for n in FAST] == [1, 1]


def test_damaged_cache_entry_is_rebuilt(tmp_path):
    cache = tmp_path / "cache"
    build_all(tmp_path / "one", ["kim_cnn"], cache=cache)
    (entry,) = (cache / "kim_cnn").iterdir()
    model = entry / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the hash notices
    model.unlink()  # break the hard link so that out "one" keeps the good copy
    model.write_bytes(bytes(data))
    assert _statuses(build_all(tmp_path / "two", ["kim_cnn"], cache=cache)) == {"kim_cnn": "built"}
    assert _digests(tmp_path / "one") == _digests(tmp_path / "two")


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("KINDLING_CACHE_DIR", str(tmp_path))
    assert zoo.default_cache() == tmp_path / "models"
    monkeypatch.delenv("KINDLING_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert zoo.default_cache() == tmp_path / "home" / ".cache" / "kindling" / "models"


def test_failed_write_leaves_no_partial_folder(tmp_path, monkeypatch):
    build_all(tmp_path, ["sm_cnn"])
    good = _digests(tmp_path / "sm_cnn")

    def broken(sample, folder, ident):
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(zoo, "write_model", broken)
    results = build_all(tmp_path, ["kim_cnn", "sm_cnn"], force=True)
    assert _statuses(results) == {"kim_cnn": "failed", "sm_cnn": "failed"}
    assert "disk full" in results[0].detail
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm_cnn"]  # no kim_cnn, no .tmp
    assert _digests(tmp_path / "sm_cnn") == good  # the old folder survived its failed rebuild


def test_leftovers_of_dead_builds_are_swept(tmp_path):
    dead_pid = 2**22 + 12345  # above Linux's pid_max default, so never a live process
    stale = [tmp_path / f".kim_cnn.tmp.{dead_pid}", tmp_path / f".kim_cnn.old.{dead_pid}"]
    for folder in stale:
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"half")
    build_all(tmp_path, ["kim_cnn"])
    assert [p.name for p in tmp_path.iterdir()] == ["kim_cnn"]


def test_unavailable_model_is_reported_and_others_built(tmp_path, monkeypatch, capsys):
    # As when modelzoo/minilm.py (or its weights package) is missing.
    registry = {
        "kim_cnn": REGISTRY["kim_cnn"],
        "minilm": zoo.Entry("minilm", "kindling.modelzoo.no_such_module", "missing"),
    }
    monkeypatch.setattr(zoo, "REGISTRY", registry)
    results = build_all(tmp_path, cache=None)
    assert _statuses(results) == {"kim_cnn": "built", "minilm": "unavailable"}
    assert "no_such_module" in results[1].detail
    assert zoo.availability()["minilm"] is not None

    assert main(["build", "--out", str(tmp_path / "cli"), "--no-cache"]) == 1
    captured = capsys.readouterr()
    assert "minilm" in captured.err and "unavailable" in captured.err
    assert "kim_cnn" in captured.out
    # --only of an available model still succeeds.
    assert main(["build", "--out", str(tmp_path / "cli"), "--no-cache", "--only", "kim_cnn"]) == 0


def test_validate_rejects_config_that_disagrees_with_graph():
    sample = zoo.build("kim_cnn")
    validate(sample)
    wrong_name = SampleModel("kim_cnn", sample.model, {**sample.config, "name": "other"})
    with pytest.raises(ValueError, match="folder name"):
        validate(wrong_name)
    preprocess = {**sample.config["preprocess"], "inputs": {"text": "vectors"}}
    with pytest.raises(ValueError, match="inputs"):
        validate(SampleModel("kim_cnn", sample.model, {**sample.config, "preprocess": preprocess}))
    outputs = [{**sample.config["outputs"][0], "name": "logits"}]
    with pytest.raises(ValueError, match="outputs"):
        validate(SampleModel("kim_cnn", sample.model, {**sample.config, "outputs": outputs}))


def test_extra_files_are_copied(tmp_path, monkeypatch):
    extra = tmp_path / "vocab.txt"
    extra.write_text("hello\n")
    original = zoo.builder

    def with_extra(name):
        def build() -> SampleModel:
            sample = original(name)()
            return SampleModel(sample.name, sample.model, sample.config, {"vocab.txt": extra})

        return build

    monkeypatch.setattr(zoo, "builder", with_extra)
    build_all(tmp_path / "out", ["kim_cnn"])
    assert (tmp_path / "out" / "kim_cnn" / "vocab.txt").read_text() == "hello\n"
    stamp = json.loads((tmp_path / "out" / "kim_cnn" / ".build-stamp").read_text())
    assert set(stamp["files"]) == {"config.yaml", "model.onnx", "vocab.txt"}


def test_cli_build_list_and_usage(tmp_path, capsys):
    out = tmp_path / "models"
    cache = tmp_path / "cache"
    args = [
        "build",
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--only",
        "kim_cnn",
        "--only",
        "sm_cnn",
    ]
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == FAST
    assert main(args) == 0
    assert "current" in capsys.readouterr().out
    assert main([*args, "--force"]) == 0
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in REGISTRY)
    assert main(["build", "--out", str(out), "--only", "nope"]) == 2
    assert main(["build"]) == 2
    assert main([]) == 2
    # The top-level `kindling` command dispatches "models" here.
    assert kindling_cli.main(["models", "list"]) == 0
