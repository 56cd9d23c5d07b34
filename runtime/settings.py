"""Runtime configuration: environment and flags -> `ServerSettings`; config.yaml -> `ModelConfig`.

Both are read once at start-up and passed down; no component reads `os.environ` itself.
Plain dataclasses rather than pydantic: pydantic's import alone costs more than the
whole cold-start budget allows (see README, "Cold start").
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kindling.env import default_cache_root, env_number
from kindling.errors import KindlingError

if TYPE_CHECKING:
    from kindling.embeddings.settings import EmbeddingSettings

DEFAULT_PORT = 8080  # Knative's default containerPort, and OpenWhisk's action port


class ConfigError(KindlingError):
    """A settings value or a config.yaml is invalid; raised at start-up, never per request."""


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


# A bad number stops start-up with the variable's name; ranges are checked by each
# field's `check`, and across fields in from_env.
_number = partial(env_number, error=ConfigError, non_negative=False)


def _truthy(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


# Parsers, (env, variable) -> value, called only when the variable is set and not blank.
Parse = Callable[[Mapping[str, str], str], Any]


def _int(env: Mapping[str, str], name: str) -> int:
    return _number(env, name, int, 0)


def _float(env: Mapping[str, str], name: str) -> float:
    return _number(env, name, float, 0.0)


def _spin(env: Mapping[str, str], name: str) -> bool | None:
    spin = env[name].strip().lower()
    if spin not in ("auto", "on", "off"):
        raise ConfigError(f"{name} must be auto, on or off, got {spin!r}")
    return {"auto": None, "on": True, "off": False}[spin]


_PARSERS: dict[str, Parse] = {
    "int": _int,
    # A negative size is refused as it is read, naming the variable.
    "size": lambda env, name: env_number(env, name, int, 0, ConfigError),
    "float": _float,
    "bool": lambda env, name: _truthy(env[name], True),
    "csv": lambda env, name: _csv(env[name]),
    "path": lambda env, name: Path(env[name]),
    "str": lambda env, name: env[name],
    "spin": _spin,
}


def _positive(value: float | None) -> bool:
    return value is None or value > 0


def _env(
    name: str,
    default: Any,
    doc: str,
    parse: str,
    *,
    shown: str | None = None,
    check: Callable[[Any], bool] | None = None,
    rule: str = "",
    explicit: bool = False,
) -> Any:
    """A field read from variable `name`; `doc` and `shown` (the default as the README
    shows it) make its README row; `check` is its range, `rule` says it in the error.
    `explicit`: from_env reads it by hand (a special case, commented there)."""
    metadata = {"env": name, "doc": doc, "parse": parse, "shown": shown, "check": check}
    metadata.update(rule=rule, explicit=explicit)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class ServerSettings:
    """How one runtime process serves. Each field declares its variable, default and README
    line once (`_env`); `from_env` walks them and `markdown_table` writes the README's."""

    model_repository: Path = _env(  # noqa: RUF009 - _env returns a dataclasses.field
        "KINDLING_MODEL_REPOSITORY",
        Path("models"),
        "folder with one sub-folder per model (model.onnx + config.yaml); below "
        "`--model-repository`",
        "path",
        shown="`models`",
    )
    host: str = "0.0.0.0"
    """--host only."""
    port: int = _env(
        "PORT",
        DEFAULT_PORT,
        "listening port (below `--port`)",
        "int",
        explicit=True,
    )
    """Knative's runtime contract hands the port over in $PORT."""
    grpc_port: int | None = _env(
        "KINDLING_GRPC_PORT",
        None,
        'also serve the OIP over gRPC on this port (see "gRPC"); needs the `grpc` extra',
        "int",
        shown="unset (off)",
    )
    """Unset, gRPC is off and not imported (inference.GRPCInferenceService; OIP mode only)."""
    models: tuple[str, ...] = _env(
        "KINDLING_MODELS", (), "comma-separated subset to serve", "csv", shown="all"
    )
    threads: int | None = _env(
        "KINDLING_THREADS",
        None,
        "onnxruntime intra-op threads",
        "int",
        shown="cgroup CPU limit",
        check=lambda v: v is None or v >= 1,
        rule=">= 1",
    )
    """None follows the cgroup CPU limit (cpu.available_cpus)."""
    spin: bool | None = _env(
        "KINDLING_SPIN",
        None,
        "onnxruntime's intra-op threads spin while waiting (`on`), or sleep (`off`); `auto` "
        'spins only under a CFS quota of at least one CPU per thread (see "Latency")',
        "spin",
        shown="auto",
    )
    """auto (None) spins only under a CFS quota of at least one CPU per intra-op thread
    (cpu.spinning_by_default, README "Latency")."""
    providers: tuple[str, ...] = _env(
        "KINDLING_PROVIDERS", (), "execution providers, in order", "csv", shown="CUDA, then CPU"
    )
    max_body_bytes: int = _env(
        "KINDLING_MAX_BODY_BYTES",
        64 * 1024 * 1024,
        "larger requests get 413",
        "int",
        shown="64 MiB",
    )
    """64 MiB fits a batch of 100 images."""
    max_json_bytes: int = _env(
        "KINDLING_MAX_JSON_BYTES",
        10 * 1024 * 1024,
        "the most JSON (decompressed) an inference request may carry; past it 413 (see "
        '"Request limits")',
        "size",
        shown="10 MiB",
    )
    """A JSON body, or a binary request's JSON header, each array in it counting 8 bytes
    more, each object 128, each binary BYTES element 8 (codec.py: what they cost to
    decode). orjson and numpy decode it holding the event loop and the GIL, ~30 ms per MiB
    at worst (45 on a loaded machine): 10 MiB lets through 3 FP32 224x224x3 images as
    tritonclient writes them (8.9 MiB, ~50 ms) and holds the loop 0.3-0.45 s at worst
    (README "Request limits"). Big tensors belong in the binary extension, decoded without
    a copy."""
    max_body_memory_bytes: int = _env(
        "KINDLING_MAX_BODY_MEMORY_BYTES",
        256 * 1024 * 1024,
        "memory all request bodies may hold at once (counted as bytes arrive); past it 503 "
        "with `Retry-After`; at least `KINDLING_MAX_BODY_BYTES`",
        "int",
        shown="256 MiB",
    )
    """A body buffer grows as its bytes arrive, so this counts what clients sent, not what
    they declared. Four bodies of KINDLING_MAX_BODY_BYTES."""
    max_connections: int = _env(
        "KINDLING_MAX_CONNECTIONS",
        1000,
        "open connections; one more gets 503 with `Retry-After` and is closed",
        "int",
        check=_positive,
        rule="> 0",
    )
    """File descriptors and per-connection memory stay bounded whatever clients do (as
    gunicorn's worker_connections, also 1000)."""
    header_timeout_s: float = _env(
        "KINDLING_HEADER_TIMEOUT_S",
        10.0,
        "longest from a request's first byte to the end of its head; then 408 and close",
        "float",
        check=_positive,
        rule="> 0",
    )
    """Go's ReadHeaderTimeout; a head is a few hundred bytes, well under a second on any
    link."""
    body_timeout_s: float = _env(
        "KINDLING_BODY_TIMEOUT_S",
        30.0,
        "longest a request body may go without a byte (and it must average 500 B/s after "
        "that), or a response without the client reading; then 408 (a reset for a response) "
        "and close",
        "float",
        check=_positive,
        rule="> 0",
    )
    """nginx's client_body_timeout; the 500 bytes/s is Apache mod_reqtimeout's MinRate, so
    that a byte every few seconds holds no connection for ever; a gap, not a total, so a
    large upload over a slow link is never cut off."""
    uri_schemes: tuple[str, ...] = _env(
        "KINDLING_MODEL_URI_SCHEMES",
        ("file", "http", "https", "s3"),
        "the `model_uri` allowlist; any other scheme is refused",
        "csv",
        shown="`file,http,https,s3`",
    )
    cache_dir: Path | None = _env(  # noqa: RUF009 - _env returns a dataclasses.field
        "KINDLING_CACHE_DIR",
        None,
        "downloads, and optimized graphs when the repository is read-only",
        "path",
        shown="`~/.cache/kindling`",
    )
    """None: kindling.env.default_cache_root(); read it as `cache_root`."""
    download_timeout_s: float = _env(
        "KINDLING_DOWNLOAD_TIMEOUT_S",
        300.0,
        "the longest one model's fetch may take in all (every attempt, backoff, waiting for "
        "another process's download); then the model is FAILED",
        "float",
        check=_positive,
        rule="> 0",
    )
    """A total, not a per-read timeout: an origin trickling a byte a second would never trip
    one of those. 300 s: a 1 GB model at 5 MB/s takes 200 s, and the model fails, with the
    reason, before Knative's progress deadline (config-deployment progress-deadline, 600 s
    by default) gives up on the revision."""
    model_uri_root: Path | None = _env(  # noqa: RUF009 - _env returns a dataclasses.field
        "KINDLING_MODEL_URI_ROOT",
        None,
        "when set, `file://` and plain-path `model_uri`s must resolve (symlinks followed) "
        "inside this folder",
        "path",
    )
    """Unset, it may name any file the process can read: model_uri is operator-controlled
    (config.yaml is part of the deployment)."""
    optimized_cache: bool = _env(
        "KINDLING_OPTIMIZED_CACHE",
        True,
        "keep the optimized graph for the next cold start",
        "bool",
    )
    optimized_cache_delay_s: float = _env(
        "KINDLING_OPTIMIZED_CACHE_DELAY_S", 5.0, "wait after ready before writing it", "float"
    )
    """So the burst that woke the pod is served first; well inside Knative's minimum pod
    lifetime (stable window 60 s + scale-to-zero grace period 30 s)."""
    graceful_timeout_s: float = _env(
        "KINDLING_GRACEFUL_TIMEOUT_S",
        30.0,
        "on SIGTERM, the longest wait for in-flight requests; the process exits (0) at most "
        "this long after SIGTERM, even mid-download; a SIGTERM during start-up exits 0 at "
        "once",
        "float",
    )
    """Knative's default terminationGracePeriodSeconds is 300 s; 30 s suits models this
    size."""
    inline_max_ms: float = _env(
        "KINDLING_INLINE_MAX_MS",
        20.0,
        "run a lone request on the event-loop thread if the model's last one took at most "
        'this per row (see "Latency"); 0: never',
        "float",
    )
    """Spares the hand-off to the inference thread and back (~0.2 ms of a 5 ms MobileNetV2
    request, README "Latency"); the model's first "last lone request" is its warm-up run;
    other connections wait that long to be read."""
    max_batch_size: int | None = _env(
        "KINDLING_MAX_BATCH_SIZE",
        None,
        "caps every model's `max_batch_size` (1: no batching); a sizing knob (`kindling "
        'advise`, "Sizing a model")',
        "int",
        shown="config.yaml's",
        check=lambda v: v is None or v >= 1,
        rule=">= 1",
    )
    """Per pod, so a chart value can size a model without rebuilding its image; only lowers:
    the buckets and arena were built for config.yaml's size (buckets.py)."""
    max_queue_delay_ms: float | None = _env(
        "KINDLING_MAX_QUEUE_DELAY_MS",
        None,
        "replaces every model's `batching.max_queue_delay_ms`",
        "float",
        shown="config.yaml's",
        check=lambda v: v is None or v >= 0,
        rule=">= 0",
    )
    log_level: str = _env(
        "KINDLING_LOG_LEVEL",
        "info",
        "the runtime's log level; there are no access logs",
        "str",
        shown="info (warning under OpenWhisk)",
        explicit=True,
    )
    """No access logs: hot path; /metrics counts requests. "warning" in OpenWhisk mode,
    where stdout and stderr are the activations' logs."""
    openwhisk: bool = _env(
        "KINDLING_OPENWHISK",
        False,
        'serve OpenWhisk\'s action protocol instead (see "OpenWhisk"); or `--openwhisk`',
        "bool",
        explicit=True,
    )
    """On 8080 or --port instead of OIP; $PORT is ignored, as by OpenWhisk's own runtimes,
    except on Knative (README, "OpenWhisk")."""
    openwhisk_platform: str = "openwhisk"
    """__OW_RUNTIME_PLATFORM (read by hand in from_env: OpenWhisk's variable, not ours):
    "openwhisk", or "knative" for OpenWhisk on Knative's single entrypoint (POST / with
    init, activation and value)."""
    openwhisk_concurrent: bool = False
    """__OW_ALLOW_CONCURRENT (read by hand, as above): let /run calls overlap; OpenWhisk's
    runtimes serialize them unless the invoker's container set this variable."""
    openwhisk_max_unzip_bytes: int = _env(
        "KINDLING_OPENWHISK_MAX_UNZIP_BYTES",
        1024 * 1024 * 1024,
        "the most an action zip may expand to",
        "int",
        shown="1 GiB",
    )
    """An action's code is at most 48 MB in OpenWhisk; a model in it expands little, a zip
    bomb a lot."""
    redis_url: str | None = None
    """--redis only: overrides KINDLING_REDIS_URL for the word-vector store (see
    `embedding_settings`); the variable itself is EmbeddingSettings'."""

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> ServerSettings:
        """Read the environment; flags given as `overrides` win over it (None means unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata.get("env")
            if name and not f.metadata["explicit"] and env.get(name, "").strip():
                values[f.name] = _PARSERS[f.metadata["parse"]](env, name)
        # The special cases. --openwhisk or KINDLING_OPENWHISK; either turns it on.
        openwhisk = bool(overrides.get("openwhisk")) or _truthy(
            env.get("KINDLING_OPENWHISK"), False
        )
        platform = env.get("__OW_RUNTIME_PLATFORM", "").strip().lower() or "openwhisk"
        values.update(
            openwhisk=openwhisk,
            openwhisk_platform=platform,
            openwhisk_concurrent=_truthy(env.get("__OW_ALLOW_CONCURRENT"), False),
            log_level=env.get("KINDLING_LOG_LEVEL", "warning" if openwhisk else "info"),
        )
        # An OpenWhisk invoker always talks to 8080 (docs/actions-new.md, "Action
        # interface"); only Knative's runtime contract hands the port over in $PORT.
        if env.get("PORT") and (not openwhisk or platform == "knative"):
            values["port"] = _number(env, "PORT", int, DEFAULT_PORT)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.openwhisk:
            # Action code may chdir, as OpenWhisk's Python runtime does for zip actions;
            # the models' paths must not move with it.
            settings = replace(
                settings,
                model_repository=settings.model_repository.absolute(),
                cache_dir=settings.cache_dir and settings.cache_dir.absolute(),
                model_uri_root=settings.model_uri_root and settings.model_uri_root.absolute(),
            )
        settings.check()
        return settings

    def check(self) -> None:
        """Each field's range, then the rules across fields: refused at start-up."""
        for f in fields(self):
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None and not check(value):
                raise ConfigError(f"{f.metadata['env']} must be {f.metadata['rule']}, got {value}")
        if self.openwhisk_platform not in ("openwhisk", "knative"):
            raise ConfigError(
                "__OW_RUNTIME_PLATFORM must be openwhisk or knative, "
                f"got {self.openwhisk_platform!r}"
            )
        if self.max_body_memory_bytes < self.max_body_bytes:
            raise ConfigError(
                "KINDLING_MAX_BODY_MEMORY_BYTES must be at least KINDLING_MAX_BODY_BYTES "
                f"({self.max_body_bytes}), got {self.max_body_memory_bytes}"
            )
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be in 1..65535, got {self.port}")
        if self.grpc_port is not None and not 0 < self.grpc_port < 65536:
            raise ConfigError(f"KINDLING_GRPC_PORT must be in 1..65535, got {self.grpc_port}")

    @property
    def cache_root(self) -> Path:
        """Where downloads and optimized graphs go: KINDLING_CACHE_DIR, or the default."""
        return self.cache_dir or default_cache_root()

    def embedding_settings(self, env: Mapping[str, str] | None = None) -> EmbeddingSettings:
        """The word-vector store's settings: the environment's, --redis over
        KINDLING_REDIS_URL, and with no store named the one `kindling models build` fills
        beside the models. Imported here, not at the top: only text models need it."""
        from kindling.embeddings.settings import DEFAULT_DIR, EmbeddingSettings

        settings = EmbeddingSettings.from_env(env, url=self.redis_url)
        if settings.store_dir == DEFAULT_DIR:
            settings = settings.replace(store_dir=self.model_repository / ".embeddings")
        if self.openwhisk:  # absolute, for the reason in from_env
            settings = settings.replace(store_dir=settings.store_dir.absolute())
        return settings


def documented() -> list[tuple[str, str, str]]:
    """(variable, default as shown, doc) of every runtime variable, in field order."""
    rows = []
    for f in fields(ServerSettings):
        if "env" in f.metadata:
            shown = f.metadata["shown"] or _shown(f.default)
            rows.append((f.metadata["env"], shown, f.metadata["doc"]))
    return rows


def _shown(default: Any) -> str:
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def markdown_table(rows: list[tuple[str, str, str]] | None = None) -> str:
    """The README's table ("### Configuration"), written from the fields:
    `python -m kindling.runtime.settings` prints it, tests/test_readme_settings.py checks
    the README has it."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| `{n}` | {s} | {d} |" for n, s, d in (documented() if rows is None else rows)]
    return "\n".join(lines)


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
OIP_DATATYPES = frozenset(
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
    if datatype not in OIP_DATATYPES:
        raise ValueError(f"tensor {data['name']!r}: unknown datatype {datatype!r}")
    return TensorSpec(
        name=str(data["name"]),
        datatype=datatype,
        shape=tuple(int(d) for d in data["shape"]),
        pad_value=None if pad is None else float(pad),
    )


if __name__ == "__main__":
    print(markdown_table())
