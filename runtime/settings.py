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
    grpc_port: int | None = None
    """KINDLING_GRPC_PORT: also serve OIP over gRPC (inference.GRPCInferenceService) on this
    port; unset, gRPC is off and not imported. Needs the `grpc` extra; OIP mode only."""
    models: tuple[str, ...] = ()
    """KINDLING_MODELS: serve only these (comma-separated); empty serves all."""
    threads: int | None = None
    """KINDLING_THREADS: onnxruntime intra-op threads; None follows the cgroup CPU limit."""
    spin: bool | None = None
    """KINDLING_SPIN: auto, on or off: whether onnxruntime's idle threads busy-wait for
    work; auto (None) spins only under a CFS quota of at least one CPU per intra-op
    thread (cpu.spinning_by_default, README "Latency")."""
    max_body_bytes: int = 64 * 1024 * 1024
    """KINDLING_MAX_BODY_BYTES: larger requests get 413 (64 MiB fits a batch of 100 images)."""
    max_json_bytes: int = 10 * 1024 * 1024
    """KINDLING_MAX_JSON_BYTES: the most JSON an inference request may carry, decompressed
    (a JSON body, or a binary request's JSON header), each array in it counting 8 bytes
    more, each object 128, each binary BYTES element 8 (codec.py: what they cost to
    decode); past it, 413. orjson and numpy decode it holding the event loop and the GIL,
    ~30 ms per MiB at worst (45 on a loaded machine): 10 MiB lets through 3 FP32 224x224x3
    images as tritonclient writes them (8.9 MiB, ~50 ms) and holds the loop 0.3-0.45 s at
    worst (README "Request limits"). Big tensors belong in the binary extension, decoded
    without a copy."""
    max_body_memory_bytes: int = 256 * 1024 * 1024
    """KINDLING_MAX_BODY_MEMORY_BYTES: the most memory request bodies may hold at once, all
    connections together; a request that would need more gets 503 with Retry-After. A body
    buffer grows as its bytes arrive, so this counts what clients sent, not what they
    declared. Four bodies of KINDLING_MAX_BODY_BYTES; it may not be less than that."""
    header_timeout_s: float = 10.0
    """KINDLING_HEADER_TIMEOUT_S: the longest from a request's first byte to the end of its
    head (request line and headers); then 408 and close (Go's ReadHeaderTimeout; a head is
    a few hundred bytes, well under a second on any link)."""
    body_timeout_s: float = 30.0
    """KINDLING_BODY_TIMEOUT_S: the longest a request body may go without a byte arriving
    (nginx's client_body_timeout), or a response without the client reading it; then 408,
    or for a response a reset, and close. A body must also average 500 bytes/s beyond this
    (Apache mod_reqtimeout's MinRate), so that a byte every few seconds holds no connection
    for ever; a gap, not a total, so a large upload over a slow link is never cut off."""
    max_connections: int = 1000
    """KINDLING_MAX_CONNECTIONS: open client connections at most; one more gets 503 with
    Retry-After and is closed, so file descriptors and per-connection memory stay bounded
    whatever clients do (as gunicorn's worker_connections, also 1000)."""
    uri_schemes: tuple[str, ...] = ("file", "http", "https", "s3")
    """KINDLING_MODEL_URI_SCHEMES: model_uri schemes allowed; any other is refused."""
    cache_dir: Path | None = None
    """KINDLING_CACHE_DIR: downloads and optimized models when the repository is read-only."""
    download_timeout_s: float = 300.0
    """KINDLING_DOWNLOAD_TIMEOUT_S: the longest one model's fetch may take in all (every
    attempt, the backoff between them, and waiting for another process's download of the
    same file), after which the model is FAILED. A total, not a per-read timeout: an origin
    trickling a byte a second would never trip one of those. 300 s: a 1 GB model at 5 MB/s
    takes 200 s, and the model fails, with the reason, before Knative's progress deadline
    (config-deployment progress-deadline, 600 s by default) gives up on the revision."""
    model_uri_root: Path | None = None
    """KINDLING_MODEL_URI_ROOT: when set, a file:// or plain-path model_uri must resolve,
    symlinks followed, inside this folder. Unset, it may name any file the process can read:
    model_uri is operator-controlled (config.yaml is part of the deployment)."""
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
            "max_json_bytes": _number(
                env, "KINDLING_MAX_JSON_BYTES", int, 10 * 1024 * 1024, non_negative=True
            ),
            "download_timeout_s": _number(env, "KINDLING_DOWNLOAD_TIMEOUT_S", float, 300.0),
            "optimized_cache": _truthy(env.get("KINDLING_OPTIMIZED_CACHE"), True),
            "optimized_cache_delay_s": _number(env, "KINDLING_OPTIMIZED_CACHE_DELAY_S", float, 5.0),
            "providers": _csv(env.get("KINDLING_PROVIDERS")),
            "graceful_timeout_s": _number(env, "KINDLING_GRACEFUL_TIMEOUT_S", float, 30.0),
            "max_body_memory_bytes": _number(
                env, "KINDLING_MAX_BODY_MEMORY_BYTES", int, 256 * 1024 * 1024
            ),
            "header_timeout_s": _number(env, "KINDLING_HEADER_TIMEOUT_S", float, 10.0),
            "body_timeout_s": _number(env, "KINDLING_BODY_TIMEOUT_S", float, 30.0),
            "max_connections": _number(env, "KINDLING_MAX_CONNECTIONS", int, 1000),
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
        if env.get("KINDLING_GRPC_PORT"):
            values["grpc_port"] = _number(env, "KINDLING_GRPC_PORT", int, 0)
        if env.get("KINDLING_THREADS"):
            values["threads"] = _number(env, "KINDLING_THREADS", int, 1)
        spin = env.get("KINDLING_SPIN", "").strip().lower() or "auto"
        if spin not in ("auto", "on", "off"):
            raise ConfigError(f"KINDLING_SPIN must be auto, on or off, got {spin!r}")
        values["spin"] = {"auto": None, "on": True, "off": False}[spin]
        if env.get("KINDLING_MODEL_URI_SCHEMES"):
            values["uri_schemes"] = _csv(env["KINDLING_MODEL_URI_SCHEMES"])
        if env.get("KINDLING_CACHE_DIR"):
            values["cache_dir"] = Path(env["KINDLING_CACHE_DIR"])
        if env.get("KINDLING_MODEL_URI_ROOT"):
            values["model_uri_root"] = Path(env["KINDLING_MODEL_URI_ROOT"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.threads is not None and settings.threads < 1:
            raise ConfigError(f"KINDLING_THREADS must be >= 1, got {settings.threads}")
        if settings.openwhisk_platform not in ("openwhisk", "knative"):
            raise ConfigError(
                f"__OW_RUNTIME_PLATFORM must be openwhisk or knative, got {platform!r}"
            )
        if not settings.download_timeout_s > 0:
            raise ConfigError(
                f"KINDLING_DOWNLOAD_TIMEOUT_S must be > 0, got {settings.download_timeout_s}"
            )
        for name, value in (
            ("KINDLING_HEADER_TIMEOUT_S", settings.header_timeout_s),
            ("KINDLING_BODY_TIMEOUT_S", settings.body_timeout_s),
            ("KINDLING_MAX_CONNECTIONS", settings.max_connections),
        ):
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if settings.max_body_memory_bytes < settings.max_body_bytes:
            raise ConfigError(
                "KINDLING_MAX_BODY_MEMORY_BYTES must be at least KINDLING_MAX_BODY_BYTES "
                f"({settings.max_body_bytes}), got {settings.max_body_memory_bytes}"
            )
        if not 0 < settings.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {settings.port}")
        if settings.grpc_port is not None and not 0 < settings.grpc_port < 65536:
            raise ConfigError(f"KINDLING_GRPC_PORT must be in 1..65535, got {settings.grpc_port}")
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
    model_sha256: str | None = None
    """SHA-256 of the file at model_uri (64 hex digits): a download that differs is refused,
    never cached."""
    warmup: bool = True
    preprocess: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    """What a pod serving the model should request, in Kubernetes quantities (`memory`:
    peak RSS at max_batch_size, measured by loadtest/bench_memory.py); informational,
    shown in the model's metadata."""
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
                model_sha256=_sha256(data.get("model_sha256")),
                warmup=bool(data.get("warmup", True)),
                preprocess=dict(data.get("preprocess") or {}),
                resources=dict(data.get("resources") or {}),
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


def _sha256(value: Any) -> str | None:
    if value is None:
        return None
    digest = str(value).strip().lower()
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"model_sha256 must be 64 hex digits, got {value!r}")
    return digest


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
