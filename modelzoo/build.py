"""Build the sample model repository: DIR/<name>/{model.onnx, config.yaml, extra files}.

Builder interface: a model module exposes `build_<name>() -> SampleModel` and, optionally,
a cheap `config_<name>() -> dict` and a module-level `BUILDER_VERSION` string. With the
config function, deciding that an existing folder is up to date costs no model build.

A folder is written as DIR/.<name>.tmp.<pid> and renamed into place, so readers never see
a half-written model. Its `.build-stamp` records the builder version and a hash of the
config; a later build skips the model while both still match. Built folders are also kept
in a cache (keyed by builder version and config hash) and hard-linked from there, so a
fresh checkout need not rebuild.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import yaml

from kindling.env import cache_root

# Bump on any change to a graph, weights or config written by this package's builders.
BUILDER_VERSION = "kindling-modelzoo-2"
STAMP = ".build-stamp"
MODEL_FILE = "model.onnx"
CONFIG_FILE = "config.yaml"
CONFIG_HEADER = "# Written by `kindling models build` (kindling.modelzoo); a rebuild replaces it.\n"


@dataclass(frozen=True)
class SampleModel:
    """What a builder returns; `files` maps a file name in the model folder to its source."""

    name: str
    model: onnx.ModelProto
    config: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Entry:
    name: str
    module: str
    summary: str


# Modules are imported only when a model is built, so one missing or broken builder
# (minilm needs weights from an extra package) does not take the others down with it.
REGISTRY: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry("kim_cnn", "kindling.modelzoo.text_cnn", "Kim CNN sentence classifier (SST-1)"),
        Entry("sm_cnn", "kindling.modelzoo.text_cnn", "SM CNN answer-sentence ranker"),
        Entry("mobilenet_v2", "kindling.modelzoo.vision", "MobileNetV2 ImageNet classifier"),
        Entry("squeezenet1_1", "kindling.modelzoo.vision", "SqueezeNet 1.1 ImageNet classifier"),
        Entry("resnet18", "kindling.modelzoo.vision", "ResNet-18 ImageNet classifier"),
        Entry("minilm", "kindling.modelzoo.minilm", "all-MiniLM-L6-v2 sentence embeddings"),
    )
}


# The memory each model needs at its max_batch_size, written to its config.yaml as
# `resources.memory` (Kubernetes quantity): the peak RSS of a `kindling serve` process
# serving it alone, after saving its optimized graph and then worst-case batches (max rows,
# longest text), plus 10 %, rounded up to 32 MiB. Measured with onnxruntime 1.32 on
# x86-64, 2 intra-op threads, by `python -m kindling.loadtest.bench_memory`: rerun it
# when a model, its max_batch_size or onnxruntime changes (README, "Memory").
MEMORY_REQUESTS: dict[str, str] = {
    "kim_cnn": "160Mi",  # peak 124 MiB: 32 x 64 words, vector cache full
    "sm_cnn": "128Mi",  # peak 106 MiB
    "mobilenet_v2": "608Mi",  # peak 530 MiB: 32 images
    "squeezenet1_1": "448Mi",  # peak 387 MiB
    "resnet18": "640Mi",  # peak 553 MiB
    "minilm": "448Mi",  # peak 403 MiB saving its optimized graph; 348 MiB for 32 x 256
}


def with_resources(name: str, config: dict[str, Any]) -> dict[str, Any]:
    """`config` with the model's `resources`, ahead of its description."""
    if name not in MEMORY_REQUESTS:
        return config
    fields = {k: v for k, v in config.items() if k != "description"}
    fields["resources"] = {"memory": MEMORY_REQUESTS[name]}
    if "description" in config:
        fields["description"] = config["description"]
    return fields


class ModelUnavailable(Exception):
    """The model's builder cannot be imported here (missing module or dependency)."""


def make_config(
    name: str,
    inputs: list[dict[str, Any]],
    outputs: list[dict[str, Any]],
    *,
    description: str,
    max_batch_size: int = 32,
    max_queue_delay_ms: float = 2,
    **extra: Any,
) -> dict[str, Any]:
    """A config.yaml dict in the key order of modelzoo/README.md."""
    return {
        "name": name,
        "platform": "onnxruntime_onnx",
        "max_batch_size": max_batch_size,
        "batching": {"max_queue_delay_ms": max_queue_delay_ms},
        "inputs": inputs,
        "outputs": outputs,
        **extra,
        "warmup": True,
        "description": description,
    }


# -- the registry --------------------------------------------------------------------------


def _module(name: str) -> Any:
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}")
    try:
        return importlib.import_module(REGISTRY[name].module)
    except ImportError as e:
        raise ModelUnavailable(f"{name}: cannot import {REGISTRY[name].module}: {e}") from e


def builder(name: str) -> Callable[[], SampleModel]:
    """`build_<name>` of the model's module; raises ModelUnavailable when it cannot load."""
    fn = getattr(_module(name), f"build_{name}", None)
    if fn is None:
        raise ModelUnavailable(f"{name}: {REGISTRY[name].module} has no build_{name}()")
    return fn


def availability() -> dict[str, str | None]:
    """Each registered model -> None if its builder loads, else why not."""
    result: dict[str, str | None] = {}
    for name in REGISTRY:
        try:
            builder(name)
            result[name] = None
        except ModelUnavailable as e:
            result[name] = str(e)
    return result


def build(name: str) -> SampleModel:
    sample = builder(name)()
    sample = replace(sample, config=with_resources(name, sample.config))
    validate(sample)
    return sample


# -- checks --------------------------------------------------------------------------------

_OIP_TYPES = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
}


def graph_io(model: onnx.ModelProto) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's inputs and outputs as config.yaml entries (-1 for a dynamic dimension)."""

    def spec(v: onnx.ValueInfoProto) -> dict[str, Any]:
        t = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        return {"name": v.name, "datatype": _OIP_TYPES[t.elem_type], "shape": shape}

    initializers = {i.name for i in model.graph.initializer}
    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def validate(sample: SampleModel) -> None:
    """Raise ValueError unless the ONNX graph is valid and config.yaml describes it."""
    onnx.checker.check_model(sample.model)
    config = sample.config
    if config.get("name") != sample.name:
        raise ValueError(f"{sample.name}: config name {config.get('name')!r} != folder name")
    inputs, outputs = graph_io(sample.model)

    def strip(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: e[k] for k in ("name", "datatype", "shape")} for e in entries]

    # With a preprocessor the served inputs are text (BYTES), not the graph's tensors;
    # a word-vector preprocessor then names the graph input each one feeds.
    preprocess = config.get("preprocess")
    if preprocess is None and strip(config["inputs"]) != inputs:
        raise ValueError(f"{sample.name}: config inputs {config['inputs']} != graph {inputs}")
    if preprocess is not None and "inputs" in preprocess:
        served = [e["name"] for e in config["inputs"]]
        fed = sorted(preprocess["inputs"].values())
        if sorted(preprocess["inputs"]) != sorted(served) or fed != sorted(
            i["name"] for i in inputs
        ):
            raise ValueError(
                f"{sample.name}: preprocess inputs {preprocess['inputs']} do not map the served "
                f"inputs {served} onto the graph's {[i['name'] for i in inputs]}"
            )
    if strip(config["outputs"]) != outputs:
        raise ValueError(f"{sample.name}: config outputs {config['outputs']} != graph {outputs}")
    for extra in sample.files:
        if extra in (MODEL_FILE, CONFIG_FILE, STAMP) or Path(extra).name != extra:
            raise ValueError(f"{sample.name}: bad extra file name {extra!r}")


# -- stamps --------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def identity(name: str, config: dict[str, Any]) -> dict[str, str]:
    """What a built folder must match to be reused: builder versions and the config."""
    module_version = str(getattr(_module(name), "BUILDER_VERSION", "0"))
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return {
        "name": name,
        "builder": f"{BUILDER_VERSION}/{module_version}",
        "config_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
    }


def cheap_config(name: str) -> dict[str, Any] | None:
    fn = getattr(_module(name), f"config_{name}", None)
    return None if fn is None else with_resources(name, fn())


def read_stamp(folder: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def is_current(folder: Path, ident: dict[str, str], *, verify: bool = False) -> bool:
    """Whether `folder` holds a complete build of `ident`; `verify` also checks hashes."""
    stamp = read_stamp(folder)
    if stamp is None or {k: stamp.get(k) for k in ident} != ident:
        return False
    files = stamp.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for fname, meta in files.items():
        path = folder / fname
        # Sizes are cheap enough for every `make serve`; hashes only when copying a cache
        # entry, whose hard links could have been edited in place through another folder.
        if not path.is_file() or path.stat().st_size != meta.get("bytes"):
            return False
        if verify and _sha256(path) != meta.get("sha256"):
            return False
    return True


# -- writing -------------------------------------------------------------------------------


def write_model(sample: SampleModel, folder: Path, ident: dict[str, str]) -> None:
    """Write the model's files and, last, its stamp into the (new, private) `folder`."""
    folder.mkdir(parents=True)
    (folder / MODEL_FILE).write_bytes(sample.model.SerializeToString())
    (folder / CONFIG_FILE).write_text(
        CONFIG_HEADER
        + yaml.safe_dump(sample.config, sort_keys=False, allow_unicode=True, width=100)
    )
    for fname, src in sorted(sample.files.items()):
        shutil.copyfile(src, folder / fname)
    names = sorted([MODEL_FILE, CONFIG_FILE, *sample.files])
    files = {
        n: {"bytes": (folder / n).stat().st_size, "sha256": _sha256(folder / n)} for n in names
    }
    (folder / STAMP).write_text(json.dumps({**ident, "files": files}, indent=2) + "\n")


def _tmp_sibling(dest: Path, tag: str) -> Path:
    # Dot-prefixed so repository scanners skip it; the pid keeps concurrent builds apart.
    return dest.parent / f".{dest.name}.{tag}.{os.getpid()}"


def _sweep(dest: Path) -> None:
    """Remove temporary siblings of `dest` left by builds that died (their pid is gone)."""
    for path in dest.parent.glob(f".{dest.name}.*.*"):
        pid = path.name.rsplit(".", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(path)
        except PermissionError:  # alive, another user's
            pass


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _install(tmp: Path, dest: Path, ident: dict[str, str]) -> None:
    """Move the complete folder `tmp` to `dest`, replacing an older `dest`."""
    # rename(2) cannot replace a non-empty folder, so the old one steps aside first:
    # `dest` is briefly absent, but never half-written.
    old = _tmp_sibling(dest, "old")
    _remove(old)
    if dest.exists() or dest.is_symlink():
        dest.rename(old)
    try:
        tmp.rename(dest)
    except OSError:
        # Another build may have installed `dest` between our two renames: that is fine.
        if not is_current(dest, ident):
            if old.exists() and not dest.exists():
                old.rename(dest)
            raise
    _remove(old)


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for path in sorted(src.iterdir()):
        try:
            os.link(path, dst / path.name)
        except OSError:  # another filesystem, or links not allowed: copy instead
            shutil.copy2(path, dst / path.name)


def _atomic(dest: Path, ident: dict[str, str], fill: Callable[[Path], None]) -> None:
    _sweep(dest)
    tmp = _tmp_sibling(dest, "tmp")
    _remove(tmp)
    try:
        fill(tmp)
        _install(tmp, dest, ident)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@dataclass(frozen=True)
class Result:
    name: str
    status: str  # built | cached (linked from the cache) | current (skipped) | unavailable | failed
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("built", "cached", "current")


def default_cache() -> Path:
    return cache_root(os.environ) / "models"


def build_one(name: str, out: Path, *, cache: Path | None, force: bool = False) -> Result:
    """Make out/<name> current, from the folder itself, the cache, or a fresh build."""
    start = time.perf_counter()
    dest = out / name
    try:
        config = cheap_config(name)
        sample = None
        if config is None:  # no cheap config: the build itself tells the config
            sample = build(name)
            config = sample.config
        ident = identity(name, config)
        if not force and is_current(dest, ident):
            return Result(name, "current", time.perf_counter() - start)
        entry = None
        if cache is not None:
            key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
            entry = cache / name / key
            if not force and is_current(entry, ident, verify=True):
                _atomic(dest, ident, lambda tmp: _link_tree(entry, tmp))
                return Result(name, "cached", time.perf_counter() - start, str(entry))
        if sample is None:
            sample = build(name)
        if identity(name, sample.config) != ident:
            raise ValueError(f"{name}: config_{name}() differs from build_{name}().config")
        built = sample
        if entry is None:
            _atomic(dest, ident, lambda tmp: write_model(built, tmp, ident))
        else:
            entry.parent.mkdir(parents=True, exist_ok=True)
            _atomic(entry, ident, lambda tmp: write_model(built, tmp, ident))
            _atomic(dest, ident, lambda tmp: _link_tree(entry, tmp))
        return Result(name, "built", time.perf_counter() - start)
    except ModelUnavailable as e:
        return Result(name, "unavailable", time.perf_counter() - start, str(e))
    except Exception:  # one broken builder must not stop the others; the caller reports it
        return Result(name, "failed", time.perf_counter() - start, traceback.format_exc())


def build_all(
    out: Path,
    names: Iterable[str] | None = None,
    *,
    cache: Path | None = None,
    force: bool = False,
    report: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Build `names` (default: every registered model) into `out`, one Result each."""
    selected = list(REGISTRY) if names is None else list(dict.fromkeys(names))
    unknown = [n for n in selected if n not in REGISTRY]
    if unknown:
        raise KeyError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in selected:
        result = build_one(name, out, cache=cache, force=force)
        if report is not None:
            report(result)
        results.append(result)
    return results
