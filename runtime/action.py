"""OpenWhisk action code: the API it gets to the runtime, and the loader that starts it.

Action code, a Python source string or a zip's `__main__.py`, defines `main(args)` and
may use the models and word vectors this runtime already holds:

    from kindling.runtime.action import embeddings, models
    from kindling.runtime.text import clean_str_sst

    def main(args):
        found = embeddings.lookup("demo300", clean_str_sst(args["sentence"]))
        scores = models.infer("kim_cnn_vectors", {"embeddings": found.vectors[None]})
        return {"probabilities": scores["probabilities"][0].tolist()}

- `models.infer(name, {input: array-like}, version=None) -> {output: numpy array}` runs
  through the same data plane as OIP requests (validation, adaptive batching, metrics);
  lists are converted to the input's datatype, str to BYTES.
- `models.names()`, `models.metadata(name)`: the models served, built in or from the zip.
- `embeddings.lookup(table, words) -> LookupResult` (`.vectors` float32 [words, dim],
  `.oov` indices of the words the table lacks); `embeddings.vectors(table, words)`.
- Failures raise `kindling.errors` types (InvalidInput, ModelNotFound, ModelNotReady,
  DependencyUnavailable); uncaught, they become the activation's {"error": ...}.

The code runs inside the runtime's own process, with the runtime's privileges, as in
OpenWhisk's Python runtime (apache/openwhisk-runtime-python): the container is the
isolation boundary, one action per container. Nothing here unpickles anything.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import os
import shutil
import stat
import sys
import traceback
import types
import zipfile
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import orjson

from kindling.errors import InvalidInput, KindlingError, PayloadTooLarge
from kindling.runtime.codec import DTYPES, InferRequest
from kindling.runtime.settings import ServerSettings, TensorSpec

if TYPE_CHECKING:
    from kindling.embeddings.lookup import EmbeddingStore, LookupResult
    from kindling.runtime.coldstart import ColdStartTimeline
    from kindling.runtime.dataplane import DataPlane
    from kindling.runtime.model import Model

T = TypeVar("T")

MAIN_FILE = "__main__.py"  # what a zip action must hold (openwhisk-runtime-python)
MODULE_NAME = "main__"  # the name the Python runtime's launcher.py imports it under
MAX_ZIP_ENTRIES = 10_000


class ActionInitError(KindlingError):
    """The action's code or models cannot start. 502, the status OpenWhisk's runtimes
    answer a failed /init with (openwhisk-runtime-go, initHandler.go)."""

    status_code = 502


# -- the API given to action code ---------------------------------------------------------


@dataclass
class _Binding:
    plane: Callable[[], DataPlane]
    loop: asyncio.AbstractEventLoop
    store: Callable[[], EmbeddingStore]

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a data-plane coroutine on the server's loop from action code (a thread)."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            coroutine.close()
            raise RuntimeError("action code must not call the runtime from its event loop")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()


_binding: _Binding | None = None


def bind(
    plane: Callable[[], DataPlane],
    loop: asyncio.AbstractEventLoop,
    store: Callable[[], EmbeddingStore],
) -> None:
    """Connect the API to a running server (the OpenWhisk transport does, at start-up)."""
    global _binding
    _binding = _Binding(plane, loop, store)


def _bound() -> _Binding:
    if _binding is None:
        raise RuntimeError("kindling.runtime.action works inside `kindling serve --openwhisk`")
    return _binding


def _tensor(value: Any, spec: TensorSpec | None) -> np.ndarray:
    """An action's input as the array the model validates: BYTES as bytes objects, numbers
    cast within their kind (float64 -> FP32), anything else left for validation to name."""
    if spec is not None and spec.datatype == "BYTES":
        items = np.asarray(value, dtype=object)
        out = np.empty(items.shape, dtype=object)
        out.reshape(-1)[:] = [v.encode() if isinstance(v, str) else v for v in items.reshape(-1)]
        return out
    array = np.asarray(value)
    if spec is not None:
        want = DTYPES[spec.datatype]
        if array.dtype != want and np.can_cast(array.dtype, want, "same_kind"):
            array = array.astype(want)
    return array


class Models:
    """The models this runtime serves, for action code."""

    def infer(
        self, name: str, inputs: Mapping[str, Any], version: str | None = None
    ) -> dict[str, np.ndarray]:
        binding = _bound()
        plane = binding.plane()
        specs = {t.name: t for t in plane.model(name, version).config.inputs}
        request = InferRequest({k: _tensor(v, specs.get(k)) for k, v in inputs.items()})

        async def read() -> InferRequest:
            return request

        result = binding.call(plane.infer(name, version, read))
        return {output: array for output, array, _ in result.outputs}

    def names(self) -> list[str]:
        return sorted(_bound().plane().models)

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        plane = _bound().plane()
        return plane.model(name, version).metadata(plane.timeline)


class Embeddings:
    """The word-vector store (KINDLING_REDIS_URL, or the embedded file store), for action
    code: one store per process, its cache shared by every activation."""

    def lookup(self, table: str, words: Iterable[str]) -> LookupResult:
        return _bound().store().lookup(table, list(words))

    def vectors(self, table: str, words: Iterable[str]) -> np.ndarray:
        return self.lookup(table, words).vectors


models = Models()
embeddings = Embeddings()


# -- /init: the action's request, environment, zip and code -------------------------------


@dataclass(frozen=True)
class InitSpec:
    """/init's `value` (docs/actions-new.md, "Initialization")."""

    main: str = "main"
    code: str = ""
    binary: bool = False
    name: str = ""
    env: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, message: Any) -> InitSpec:
        """`{"value": {...}}`; an empty body or value is an action with no code."""
        if message is None:
            return cls()
        if not isinstance(message, dict):
            raise InvalidInput("/init takes a JSON object")
        value = message.get("value") or {}
        if not isinstance(value, dict):
            raise InvalidInput("/init's 'value' must be an object")
        code, main, env = value.get("code") or "", value.get("main") or "main", value.get("env")
        if not isinstance(code, str):
            raise InvalidInput("/init's 'code' must be a string")
        if not isinstance(main, str) or not main.isidentifier():
            raise InvalidInput(f"/init's 'main' must name a Python function, got {main!r}")
        if not isinstance(env or {}, dict):
            raise InvalidInput("/init's 'env' must be an object")
        # Typed as the Go action proxy's initBodyRequest (Binary bool, Name string; null
        # leaves the zero value): "no" is not guessed true.
        binary, name = value.get("binary"), value.get("name")
        binary, name = False if binary is None else binary, "" if name is None else name
        if not isinstance(binary, bool):
            raise InvalidInput("/init's 'binary' must be true or false")
        if not isinstance(name, str):
            raise InvalidInput("/init's 'name' must be a string")
        return cls(main, code, binary, name, env or {})


def env_text(value: Any) -> str:
    """A JSON value as an environment variable: strings as they are, null as "", the rest
    as JSON (openwhisk-runtime-go's SetEnv; BasicActionRunnerTests' testEnvPartition)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


def export_env(values: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in values.items():
        name = f"{prefix}{key.upper() if prefix else key}"
        try:
            os.environ[name] = env_text(value)
        except ValueError:  # "=" in a name, NUL anywhere: the C environment cannot hold it
            raise InvalidInput(f"cannot export {name!r} to the environment") from None


def _member_path(root: Path, name: str) -> Path:
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts or ":" in parts[0]:
        raise ActionInitError(f"Cannot start action: zip entry {name!r} leaves the action folder")
    return root.joinpath(*parts)


def unpack(code: str, root: Path, max_bytes: int) -> None:
    """Extract a base64 zip into `root`, refusing entries that would land outside it,
    links, more than MAX_ZIP_ENTRIES entries and more than `max_bytes` in all."""
    try:
        data = base64.b64decode(code, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("binary code is not valid base64") from None
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ActionInitError("Cannot start action: the binary code is not a zip file") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_ZIP_ENTRIES:
            raise ActionInitError(
                f"Cannot start action: the zip has over {MAX_ZIP_ENTRIES} entries"
            )
        # file_size is what the entry inflates to: ZipExtFile never reads past it.
        total = sum(m.file_size for m in members)
        if total > max_bytes:
            raise PayloadTooLarge(f"the zip expands to {total} bytes; the limit is {max_bytes}")
        try:
            for member in members:
                target = _member_path(root, member.filename)
                if stat.S_ISLNK(member.external_attr >> 16):
                    raise ActionInitError(
                        f"Cannot start action: zip entry {member.filename!r} is a link"
                    )
                if member.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, open(target, "xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as exc:
            raise ActionInitError(f"Cannot start action: cannot extract the zip: {exc}") from None


def model_folders(root: Path) -> list[Path]:
    """The zip's model repository: its top-level folders holding a config.yaml."""
    from kindling.runtime.repository import CONFIG_FILE

    return sorted(
        p
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith((".", "__")) and (p / CONFIG_FILE).is_file()
    )


def load_models(
    folders: list[Path],
    settings: ServerSettings,
    threads: int,
    timeline: ColdStartTimeline,
    store: Callable[[], EmbeddingStore],
) -> list[Model]:
    """Fetch, open and warm up the zip's models, as the loader thread does the image's."""
    from kindling.runtime.model import Model, ModelState
    from kindling.runtime.repository import read_config
    from kindling.runtime.settings import ConfigError

    # The zip's folder lives as long as this container: an optimized graph cached beside
    # the model would never be read again.
    settings = replace(settings, optimized_cache=False)
    try:
        loaded = [Model(read_config(folder)) for folder in folders]
    except ConfigError as exc:
        raise ActionInitError(f"Cannot start action: {exc.message}") from None
    for model in loaded:
        model.fetch(settings, timeline)
        model.load(settings, threads, timeline, store)
        if model.state is not ModelState.READY:
            raise ActionInitError(f"Cannot start action: model {model.name!r}: {model.error}")
    return loaded


@dataclass
class UserAction:
    """Loaded action code: calling it runs `main(args)` for one activation."""

    function: Callable[[Any], Any]

    @classmethod
    def load(cls, source: str, filename: str, main: str) -> UserAction:
        """Execute the code as a module and find `main` in it; any failure is logged with
        its traceback, as the Python runtime logs a launcher that cannot start."""
        module = types.ModuleType(MODULE_NAME)
        module.__file__ = filename
        sys.modules[MODULE_NAME] = module  # dataclasses and pickling-free imports look here
        try:
            exec(compile(source, filename, "exec"), module.__dict__)
        except (Exception, SystemExit) as exc:
            traceback.print_exc(file=sys.stderr)
            raise ActionInitError(f"Cannot start action: {type(exc).__name__}: {exc}") from None
        function = module.__dict__.get(main)
        if not callable(function):
            message = f"Cannot start action: the code defines no function {main!r}"
            print(message, file=sys.stderr, flush=True)
            raise ActionInitError(message)
        return cls(function)

    @classmethod
    def from_folder(cls, root: Path, main: str) -> UserAction:
        """A zip action: its folder goes first on sys.path and becomes the working
        directory, so `__main__.py` imports its siblings and opens its files by relative
        path (openwhisk-runtime-python, pythonrunner.py `build`)."""
        path = root / MAIN_FILE
        sys.path.insert(0, str(root))
        os.chdir(root)
        return cls.load(path.read_text(encoding="utf-8"), str(path), main)

    def __call__(self, args: Any) -> Any:
        """`main(args)`; an exception becomes {"error": message}, with its traceback on
        stderr (the Python runtime's launcher.py)."""
        try:
            return self.function(args)
        except (Exception, SystemExit) as exc:
            traceback.print_exc(file=sys.stderr)
            return {"error": str(exc) or type(exc).__name__}
