"""Runtime configuration: environment and flags -> `ServerSettings`; config.yaml -> `ModelConfig`.

Both are read once at start-up and passed down; no component reads `os.environ` itself.
Plain dataclasses rather than pydantic: pydantic's import alone costs more than the
whole cold-start budget allows (see README, "Cold start").
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from kindling.env import env_number
from kindling.errors import KindlingError

DEFAULT_PORT = 8080  # Knative's default containerPort, and OpenWhisk's action port


class ConfigError(KindlingError):
    """A settings value or a config.yaml is invalid; raised at start-up, never per request."""


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


# A bad number stops start-up with the variable's name; ranges are checked in from_env.
_number = partial(env_number, error=ConfigError, non_negative=False)


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class ServerSettings:
    """How one runtime process serves; see `from_env` for the variable of each field."""

    model_repository: Path
    """Folder with one sub-folder per model (model.onnx + config.yaml)."""
    host: str = "0.0.0.0"
    port: int = DEFAULT_PORT
    """--port, then $PORT (Knative's runtime contract), then 8080."""
    models: tuple[str, ...] = ()
    """KINDLING_MODELS: serve only these (comma-separated); empty serves all."""
    threads: int | None = None
    """KINDLING_THREADS: onnxruntime intra-op threads; None follows the cgroup CPU limit."""
    max_body_bytes: int = 64 * 1024 * 1024
    """KINDLING_MAX_BODY_BYTES: larger requests get 413 (64 MiB fits a batch of 100 images)."""
    uri_schemes: tuple[str, ...] = ("file", "http", "https", "s3")
    """KINDLING_MODEL_URI_SCHEMES: model_uri schemes allowed; any other is refused."""
    cache_dir: Path | None = None
    """KINDLING_CACHE_DIR: downloads and optimized models when the repository is read-only."""
    download_timeout_s: float = 30.0
    """KINDLING_DOWNLOAD_TIMEOUT_S: per attempt; three attempts with backoff."""
    optimized_cache: bool = True
    """KINDLING_OPTIMIZED_CACHE: keep the optimized graph so the next cold start skips it."""
    optimized_cache_delay_s: float = 5.0
    """KINDLING_OPTIMIZED_CACHE_DELAY_S: wait after ready before writing that cache, so the
    burst that woke the pod is served first; well inside Knative's minimum pod lifetime
    (stable window 60 s + scale-to-zero grace period 30 s)."""
    providers: tuple[str, ...] = ()
    """KINDLING_PROVIDERS: onnxruntime execution providers, in order; empty = CUDA, then CPU."""
    graceful_timeout_s: float = 30.0
    """KINDLING_GRACEFUL_TIMEOUT_S: on SIGTERM, longest wait for in-flight requests
    (Knative's default terminationGracePeriodSeconds is 300 s; 30 s suits models this size)."""
    inline_max_ms: float = 20.0
    """KINDLING_INLINE_MAX_MS: a request that finds its model idle runs on the event-loop
    thread, sparing the hand-off to the inference thread and back (~0.2 ms of a 5 ms
    MobileNetV2 request, README "Latency"), if the model's last lone request (at first, its
    warm-up run) took at most this long per row; other connections wait that long to be
    read. 0: always hand off."""
    log_level: str = "info"
    """KINDLING_LOG_LEVEL: the runtime's log level; there are no access logs (hot path;
    /metrics counts requests). "warning" in OpenWhisk mode, where stdout and stderr are
    the activations' logs."""
    openwhisk: bool = False
    """--openwhisk or KINDLING_OPENWHISK: serve OpenWhisk's action protocol (/init, /run) on
    8080 or --port instead of OIP; $PORT is ignored, as by OpenWhisk's own runtimes, except
    on Knative (README, "OpenWhisk")."""
    openwhisk_platform: str = "openwhisk"
    """__OW_RUNTIME_PLATFORM: "openwhisk", or "knative" for OpenWhisk on Knative's single
    entrypoint (POST / with init, activation and value)."""
    openwhisk_concurrent: bool = False
    """__OW_ALLOW_CONCURRENT: let /run calls overlap; OpenWhisk's runtimes serialize them
    unless the invoker's container set this variable."""
    openwhisk_max_unzip_bytes: int = 1024 * 1024 * 1024
    """KINDLING_OPENWHISK_MAX_UNZIP_BYTES: the most an action zip may expand to (its code
    is at most 48 MB in OpenWhisk; a model in it expands little, a zip bomb a lot)."""

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ServerSettings:
        """Read the environment; flags given as `overrides` win over it (None means unset)."""
        env = os.environ if env is None else env
        openwhisk = bool(overrides.get("openwhisk")) or _truthy(
            env.get("KINDLING_OPENWHISK"), False
        )
        platform = env.get("__OW_RUNTIME_PLATFORM", "").strip().lower() or "openwhisk"
        values: dict[str, Any] = {
            "model_repository": Path(env.get("KINDLING_MODEL_REPOSITORY", "models")),
            "models": _csv(env.get("KINDLING_MODELS")),
            "max_body_bytes": _number(env, "KINDLING_MAX_BODY_BYTES", int, 64 * 1024 * 1024),
            "download_timeout_s": _number(env, "KINDLING_DOWNLOAD_TIMEOUT_S", float, 30.0),
            "optimized_cache": _truthy(env.get("KINDLING_OPTIMIZED_CACHE"), True),
            "optimized_cache_delay_s": _number(env, "KINDLING_OPTIMIZED_CACHE_DELAY_S", float, 5.0),
            "providers": _csv(env.get("KINDLING_PROVIDERS")),
            "graceful_timeout_s": _number(env, "KINDLING_GRACEFUL_TIMEOUT_S", float, 30.0),
            "inline_max_ms": _number(env, "KINDLING_INLINE_MAX_MS", float, 20.0),
            "log_level": env.get("KINDLING_LOG_LEVEL", "warning" if openwhisk else "info"),
            "openwhisk": openwhisk,
            "openwhisk_platform": platform,
            "openwhisk_concurrent": _truthy(env.get("__OW_ALLOW_CONCURRENT"), False),
            "openwhisk_max_unzip_bytes": _number(
                env, "KINDLING_OPENWHISK_MAX_UNZIP_BYTES", int, 1024 * 1024 * 1024
            ),
        }
        # An OpenWhisk invoker always talks to 8080 (docs/actions-new.md, "Action
        # interface"); only Knative's runtime contract hands the port over in $PORT.
        if env.get("PORT") and (not openwhisk or platform == "knative"):
            values["port"] = _number(env, "PORT", int, DEFAULT_PORT)
        if env.get("KINDLING_THREADS"):
            values["threads"] = _number(env, "KINDLING_THREADS", int, 1)
        if env.get("KINDLING_MODEL_URI_SCHEMES"):
            values["uri_schemes"] = _csv(env["KINDLING_MODEL_URI_SCHEMES"])
        if env.get("KINDLING_CACHE_DIR"):
            values["cache_dir"] = Path(env["KINDLING_CACHE_DIR"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.threads is not None and settings.threads < 1:
            raise ConfigError(f"KINDLING_THREADS must be >= 1, got {settings.threads}")
        if settings.openwhisk_platform not in ("openwhisk", "knative"):
            raise ConfigError(
                f"__OW_RUNTIME_PLATFORM must be openwhisk or knative, got {platform!r}"
            )
        if not 0 < settings.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {settings.port}")
        return settings


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as served: OIP datatype and shape, -1 for a dynamic dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    pad_value: float | None = None
    """If set, dynamic non-batch dimensions are padded with it to batch requests together."""

    def to_metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelConfig:
    """A model's config.yaml (format: modelzoo/README.md)."""

    name: str
    path: Path
    """The model's folder."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = "onnxruntime_onnx"
    max_batch_size: int = 0
    """Largest batch the adaptive batcher forms; 0 turns batching off."""
    max_queue_delay_ms: float = 0.0
    """How long a forming batch may wait for requests that are already arriving."""
    model_file: str = "model.onnx"
    model_uri: str | None = None
    warmup: bool = True
    preprocess: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    version: str = "1"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: Path) -> ModelConfig:
        where = path / "config.yaml"
        try:
            name = str(data.get("name") or path.name)
            batching = data.get("batching") or {}
            return cls(
                name=name,
                path=path,
                inputs=tuple(_tensor(t) for t in data["inputs"]),
                outputs=tuple(_tensor(t) for t in data["outputs"]),
                platform=str(data.get("platform", "onnxruntime_onnx")),
                max_batch_size=int(data.get("max_batch_size", 0)),
                max_queue_delay_ms=float(batching.get("max_queue_delay_ms", 0.0)),
                model_file=str(data.get("model_file", "model.onnx")),
                model_uri=data.get("model_uri"),
                warmup=bool(data.get("warmup", True)),
                preprocess=dict(data.get("preprocess") or {}),
                description=str(data.get("description", "")),
                version=str(data.get("version", "1")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"{where}: invalid config ({exc!r})") from exc

    @property
    def batch_dynamic(self) -> bool:
        """True when every input's first dimension is the batch (-1)."""
        return all(t.shape and t.shape[0] == -1 for t in self.inputs)


# The OIP datatypes (KServe Open Inference Protocol, "Tensor Data Types"), less BF16,
# which numpy cannot hold.
DATATYPES = frozenset(
    "BOOL UINT8 UINT16 UINT32 UINT64 INT8 INT16 INT32 INT64 FP16 FP32 FP64 BYTES".split()
)


def _tensor(data: Mapping[str, Any]) -> TensorSpec:
    pad = data.get("pad_value")
    datatype = str(data["datatype"]).upper()
    if datatype not in DATATYPES:
        raise ValueError(f"tensor {data['name']!r}: unknown datatype {datatype!r}")
    return TensorSpec(
        name=str(data["name"]),
        datatype=datatype,
        shape=tuple(int(d) for d in data["shape"]),
        pad_value=None if pad is None else float(pad),
    )
