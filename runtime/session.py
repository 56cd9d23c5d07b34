"""onnxruntime sessions tuned for serverless pods, with the optimized graph cached on disk.

Graph optimization is the largest part of session creation for conv nets; ORT can save
the optimized graph (`optimized_model_filepath`) and a later process loads it with
optimization off (ORT docs, "Graph optimizations: online/offline mode").
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import onnxruntime as ort

from kindling.errors import ModelLoadError
from kindling.runtime.cpu import spinning_by_default

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


# CUDA provider options (ORT docs, "CUDA Execution Provider: configuration options"):
# - cudnn_conv_algo_search HEURISTIC: the default, EXHAUSTIVE, benchmarks every conv
#   algorithm for each new input shape, and adaptive batching makes a new batch size
#   often: measured on an H100, MobileNetV2 at concurrency 16 fell to 5 img/s with it.
# - use_tf32 0: TF32 convolutions put ResNet-18's logits 1e-2 away from the CPU's; a
#   model must answer the same on both pools.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}


def with_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """The providers as InferenceSession takes them, each with Kindling's options."""
    return [(p, CUDA_OPTIONS) if p == "CUDAExecutionProvider" else p for p in providers]


def session_options(threads: int, spin: bool | None = None) -> ort.SessionOptions:
    """Kindling's options: `threads` intra-op threads, run in order; `spin` whether idle
    pool threads busy-wait for work (None: as `cpu.spinning_by_default` decides)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # ORT's thread pool spins by default (ORT docs, "Thread management": allow_spinning):
    # it saves the wake-up of each parallel section and spends a core while it spins;
    # auto spins only under a quota that covers every thread (cpu.spinning_by_default has
    # the measurements).
    flag = "1" if (spinning_by_default(threads) if spin is None else spin) else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", flag)
    options.add_session_config_entry("session.inter_op.allow_spinning", flag)
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


def optimized_path(model_path: Path, providers: list[str], cache_dir: Path | None) -> Path | None:
    """Where the optimized copy of `model_path` lives: beside it if writable, else in
    `cache_dir`; None when neither is writable (the graph is then optimized every start)."""
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
        pass
    if cache_dir is None:
        return None
    target = cache_dir / "optimized" / hashlib.sha256(str(model_path).encode()).hexdigest()[:16]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return target / name


def create_session(
    model_path: Path,
    threads: int,
    providers: list[str],
    cache_path: Path | None = None,
    spin: bool | None = None,
) -> tuple[ort.InferenceSession, bool]:
    """Create the session, from the optimized copy at `cache_path` when there is one.

    Returns the session and whether the optimized copy was used. Writing that copy is
    left to `save_optimized`, after the server is ready: saving costs as much again as
    optimizing, and a cold start must not pay for the next one. `spin`: ServerSettings.spin.
    """
    options = session_options(threads, spin)
    if cache_path is not None and cache_path.is_file():
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            session = ort.InferenceSession(
                str(cache_path), options, providers=with_options(providers)
            )
            return session, True
        except Exception:  # ORT's own exception types
            # A corrupt or incompatible cache entry must never take the model down.
            cache_path.unlink(missing_ok=True)
            options = session_options(threads, spin)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(model_path), options, providers=with_options(providers))
        return session, False
    except Exception as exc:  # ORT raises its own exception types, all fatal for this model
        raise ModelLoadError(f"onnxruntime cannot load {model_path}: {exc}") from exc


def save_optimized(model_path: Path, cache_path: Path, threads: int, providers: list[str]) -> None:
    """Write the optimized graph of `model_path` to `cache_path`, atomically."""
    options = session_options(threads)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # A unique name, renamed into place: a replica starting now never loads half a file.
    partial = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp.onnx")
    options.optimized_model_filepath = str(partial)
    try:
        ort.InferenceSession(str(model_path), options, providers=with_options(providers))
        partial.replace(cache_path)
    finally:
        partial.unlink(missing_ok=True)
