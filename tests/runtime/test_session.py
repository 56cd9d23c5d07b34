"""onnxruntime sessions and the on-disk cache of optimized graphs (kindling.runtime.session)."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from kindling.errors import ModelLoadError
from kindling.runtime import cpu, session
from kindling.runtime.session import (
    PREFERRED_PROVIDERS,
    choose_providers,
    create_session,
    optimized_path,
    save_optimized,
    session_options,
)

CPU = ["CPUExecutionProvider"]


@pytest.fixture
def model(tmp_path: Path, model_repository: Path) -> Path:
    """A copy of the sample SqueezeNet in a folder of its own (the cache goes beside it)."""
    folder = tmp_path / "squeezenet1_1"
    folder.mkdir()
    path = folder / "model.onnx"
    shutil.copyfile(model_repository / "squeezenet1_1" / "model.onnx", path)
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((2, 3, 224, 224), dtype=np.float32)


@pytest.fixture(scope="module")
def expected(model_repository: Path, image: np.ndarray) -> np.ndarray:
    """The logits of a plain onnxruntime session of the sample model: the ground truth."""
    session = ort.InferenceSession(
        str(model_repository / "squeezenet1_1" / "model.onnx"), providers=CPU
    )
    logits = run(session, image)
    assert logits.shape == (2, 1000)
    return logits


def run(session: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: image})[0]


def same_logits(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and "tmp" in p.name)


# -- providers and options --------------------------------------------------------------------


def test_choose_cpu():
    assert choose_providers(("CPUExecutionProvider",)) == CPU


def test_choose_default_prefers_cuda_then_cpu():
    chosen = choose_providers()
    assert "CPUExecutionProvider" in chosen
    assert chosen == [p for p in PREFERRED_PROVIDERS if p in ort.get_available_providers()]


SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")


def spinning(options: ort.SessionOptions) -> list[str]:
    return [options.get_session_config_entry(key) for key in SPIN_KEYS]


@pytest.mark.parametrize(("spin", "flag"), [(True, "1"), (False, "0")])
def test_spin_setting_sets_both_pools(spin, flag):
    assert spinning(session_options(2, spin)) == [flag, flag]


@pytest.mark.parametrize(
    ("cpu_max", "flag"),
    [("max 100000\n", "0"), ("150000 100000\n", "0"), ("200000 100000\n", "1")],
)
def test_spin_auto_follows_the_cfs_quota(tmp_path, monkeypatch, cpu_max, flag):
    (tmp_path / "cpu.max").write_text(cpu_max)
    fake = partial(cpu.spinning_by_default, root=tmp_path)
    monkeypatch.setattr(session, "spinning_by_default", fake)
    assert spinning(session_options(2)) == [flag, flag]
    assert spinning(session_options(2, None)) == [flag, flag]


@pytest.mark.parametrize(("spin", "flag"), [(True, "1"), (False, "0")])
def test_created_sessions_carry_the_spin_setting(model, tmp_path, spin, flag):
    fresh, _ = create_session(model, 1, CPU, tmp_path / "absent.onnx", spin=spin)
    assert spinning(fresh.get_session_options()) == [flag, flag]
    cached = tmp_path / "cached.onnx"
    save_optimized(model, cached, 1, CPU)
    from_cache, hit = create_session(model, 1, CPU, cached, spin=spin)
    assert hit
    assert spinning(from_cache.get_session_options()) == [flag, flag]


def test_choose_skips_unavailable_ones():
    assert choose_providers(("NoSuchExecutionProvider", "CPUExecutionProvider")) == CPU


def test_choose_only_unavailable_providers():
    with pytest.raises(ModelLoadError, match="NoSuchExecutionProvider") as info:
        choose_providers(("NoSuchExecutionProvider",))
    assert "CPUExecutionProvider" in info.value.message  # says what is available


def test_session_options():
    options = session_options(3, spin=False)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_session_has_spinning_off_and_the_thread_count(model):
    session, _ = create_session(model, 2, CPU, spin=False)
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2
    assert session.get_providers() == CPU


# -- where the optimized copy lives ------------------------------------------------------------


def test_optimized_path_beside_the_model(model):
    path = optimized_path(model, CPU, None)
    assert path is not None
    assert path.parent == model.parent / ".kindling-cache"
    assert path.parent.is_dir()
    assert path.name.startswith("model.")
    assert path.name.endswith(".ort.onnx")
    assert not path.exists()  # only the location: nothing is written yet
    assert list(path.parent.iterdir()) == []  # the write probe is gone


def test_optimized_path_is_stable(model):
    assert optimized_path(model, CPU, None) == optimized_path(model, CPU, None)


def test_optimized_path_changes_with_the_model_and_provider(model):
    before = optimized_path(model, CPU, None)
    assert optimized_path(model, ["CUDAExecutionProvider", *CPU], None) != before
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert optimized_path(model, CPU, None) != before


def make_unwritable(folder: Path) -> None:
    """Block `.kindling-cache` from being created (a file in its place): chmod is no use
    when the tests run as root."""
    (folder / ".kindling-cache").write_bytes(b"")


def test_optimized_path_falls_back_to_cache_dir(model, tmp_path):
    make_unwritable(model.parent)
    path = optimized_path(model, CPU, tmp_path / "cache")
    assert path is not None
    assert path.is_relative_to(tmp_path / "cache" / "optimized")
    assert path.parent.is_dir()
    assert path.name.endswith(".ort.onnx")


def test_optimized_path_in_cache_dir_is_per_model_path(model, tmp_path):
    other = tmp_path / "other" / "model.onnx"
    other.parent.mkdir()
    shutil.copy2(model, other)
    make_unwritable(model.parent)
    make_unwritable(other.parent)
    a = optimized_path(model, CPU, tmp_path / "cache")
    b = optimized_path(other, CPU, tmp_path / "cache")
    assert a is not None and b is not None
    assert a.parent != b.parent


def test_optimized_path_nowhere_writable(model, tmp_path):
    make_unwritable(model.parent)
    assert optimized_path(model, CPU, None) is None
    blocked = tmp_path / "blocked"
    blocked.write_bytes(b"")  # cache_dir is a file: cannot hold a folder
    assert optimized_path(model, CPU, blocked) is None


# -- create_session and save_optimized ---------------------------------------------------------


def test_optimized_cache_round_trip(model, image, expected):
    cache_path = optimized_path(model, CPU, None)
    assert cache_path is not None

    first, cached = create_session(model, 1, CPU, cache_path)
    assert cached is False
    assert not cache_path.exists()  # create_session never writes: save_optimized does

    save_optimized(model, cache_path, 1, CPU)
    assert cache_path.is_file()
    assert cache_path.parent == model.parent / ".kindling-cache"
    assert list(model.parent.glob(".kindling-cache/*.ort.onnx")) == [cache_path]
    assert leftovers(model.parent) == []

    second, cached = create_session(model, 1, CPU, cache_path)
    assert cached is True
    assert second.get_session_options().graph_optimization_level == (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    same_logits(run(first, image), expected)
    same_logits(run(second, image), expected)


def test_optimized_cache_in_cache_dir(model, tmp_path, image, expected):
    make_unwritable(model.parent)
    cache_path = optimized_path(model, CPU, tmp_path / "cache")
    assert cache_path is not None
    save_optimized(model, cache_path, 1, CPU)
    session, cached = create_session(model, 1, CPU, cache_path)
    assert cached is True
    same_logits(run(session, image), expected)


def test_no_cache_path(model, image, expected):
    session, cached = create_session(model, 1, CPU, None)
    assert cached is False
    assert session.get_session_options().graph_optimization_level == (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    same_logits(run(session, image), expected)
    assert not (model.parent / ".kindling-cache").exists()


@pytest.mark.parametrize(
    "content",
    [b"", b"definitely not an onnx protobuf", b"\x08\x07" + b"\xff" * 100],
    ids=["empty", "text", "garbage"],
)
def test_corrupt_cache_falls_back_to_the_source(model, image, expected, content):
    cache_path = optimized_path(model, CPU, None)
    assert cache_path is not None
    cache_path.write_bytes(content)

    session, cached = create_session(model, 1, CPU, cache_path)

    assert cached is False
    assert not cache_path.exists()  # removed, so the next save writes a good one
    same_logits(run(session, image), expected)


def test_truncated_cache_falls_back_to_the_source(model, image, expected):
    cache_path = optimized_path(model, CPU, None)
    assert cache_path is not None
    save_optimized(model, cache_path, 1, CPU)
    data = cache_path.read_bytes()
    cache_path.write_bytes(data[: len(data) // 2])

    session, cached = create_session(model, 1, CPU, cache_path)

    assert cached is False
    same_logits(run(session, image), expected)


def test_invalid_model(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load") as info:
        create_session(bad, 1, CPU)
    assert str(bad) in info.value.message


def test_missing_model(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot load"):
        create_session(tmp_path / "missing.onnx", 1, CPU)


def test_save_optimized_of_invalid_model_leaves_nothing(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    target = tmp_path / "cache" / "model.x.ort.onnx"
    target.parent.mkdir()
    with pytest.raises(Exception):  # noqa: B017 - ORT's own exception types
        save_optimized(bad, target, 1, CPU)
    assert list(target.parent.iterdir()) == []


def test_save_optimized_replaces_an_old_copy(model):
    cache_path = optimized_path(model, CPU, None)
    assert cache_path is not None
    cache_path.write_bytes(b"stale")
    save_optimized(model, cache_path, 1, CPU)
    assert cache_path.stat().st_size > 1000
    assert leftovers(model.parent) == []
