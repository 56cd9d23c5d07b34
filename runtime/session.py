"""onnxruntime sessions tuned for serverless pods, with the optimized graph cached on disk.

Graph optimization is the largest part of session creation for conv nets; ORT can save
the optimized graph (`optimized_model_filepath`) and a later process loads it with
optimization off (ORT docs, "Graph optimizations: online/offline mode").
"""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import onnxruntime as ort

from kindling.errors import ModelLoadError

# CUDA first for the GPU pool; CPU is always there (ORT docs, "Execution providers").
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: tuple[str, ...] = ()) -> list[str]:
    available = ort.get_available_providers()
    wanted = requested or PREFERRED_PROVIDERS
    chosen = [p for p in wanted if p in available]
    if requested and not chosen:
        raise ModelLoadError(
            f"none of the execution providers {list(requested)} is available (have {available})"
        )
    return chosen or ["CPUExecutionProvider"]


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn the pod's CPU quota between requests and get throttled by
    # CFS exactly when the next request arrives (ORT perf tuning docs: allow_spinning).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    return options


def _cpu_fingerprint() -> str:
    """The optimized graph may use layouts tied to the CPU's vector width (NCHWc), so the
    cache key carries the CPU's flags: an image baked on an AVX-512 host must not feed an
    AVX2 node a graph laid out for it."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()}|{flags}".encode()).hexdigest()[:12]


def optimized_path(model_path: Path, providers: list[str], cache_dir: Path | None) -> Path:
    """Where the optimized copy of `model_path` lives: beside it if writable, else in cache_dir."""
    stat = model_path.stat()
    key = hashlib.sha256(
        f"{ort.__version__}|{providers[0]}|{stat.st_size}|{stat.st_mtime_ns}|{_cpu_fingerprint()}".encode()
    ).hexdigest()[:16]
    name = f"{model_path.stem}.{key}.ort.onnx"
    beside = model_path.parent / ".kindling-cache"
    try:
        beside.mkdir(exist_ok=True)
        probe = beside / ".write-test"
        probe.touch()
        probe.unlink()
        return beside / name
    except OSError:
        if cache_dir is None:
            raise
        target = cache_dir / "optimized" / hashlib.sha256(str(model_path).encode()).hexdigest()[:16]
        target.mkdir(parents=True, exist_ok=True)
        return target / name


def create_session(
    model_path: Path,
    threads: int,
    providers: list[str],
    cache_dir: Path | None = None,
    use_cache: bool = True,
) -> tuple[ort.InferenceSession, bool]:
    """Create the session; returns it and whether the optimized cache was used."""
    options = session_options(threads)
    source, cached = model_path, False
    target: Path | None = None
    if use_cache:
        try:
            target = optimized_path(model_path, providers, cache_dir)
        except OSError:
            target = None  # read-only everywhere: optimize in memory every time
    if target is not None and target.is_file():
        source, cached = target, True
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if target is not None:
            # Written under a unique name and renamed, so a concurrent replica never
            # loads half a file.
            partial = target.with_name(f"{target.name}.{id(options)}.tmp.onnx")
            options.optimized_model_filepath = str(partial)
    try:
        session = ort.InferenceSession(str(source), sess_options=options, providers=providers)
    except Exception as exc:  # ORT raises its own exception types, all fatal for this model
        if cached:
            # A corrupt or incompatible cache entry must never take the model down.
            target.unlink(missing_ok=True)  # type: ignore[union-attr]
            return create_session(model_path, threads, providers, cache_dir, use_cache=False)
        raise ModelLoadError(f"onnxruntime cannot load {model_path}: {exc}") from exc
    if not cached and target is not None:
        partial = Path(options.optimized_model_filepath)
        if partial.is_file():
            partial.replace(target)
    return session, cached
