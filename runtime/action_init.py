"""OpenWhisk's /init for action code: the request, the environment, the zip and `main`.

What the code may call once loaded is action.py's API. Behaviour follows the Python
runtime (apache/openwhisk-runtime-python) and the Go action proxy it runs on
(apache/openwhisk-runtime-go). Nothing here unpickles anything.
"""

from __future__ import annotations

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import orjson

from kindling.errors import InvalidInput, KindlingError, PayloadTooLarge

if TYPE_CHECKING:
    from kindling.embeddings.store import EmbeddingStore
    from kindling.runtime.coldstart import ColdStartTimeline
    from kindling.runtime.model import LoadOptions, Model

MAIN_FILE = "__main__.py"  # what a zip action must hold (openwhisk-runtime-python)
MODULE_NAME = "main__"  # the name the Python runtime's launcher.py imports it under
MAX_ZIP_ENTRIES = 10_000


class ActionInitError(KindlingError):
    """The action's code or models cannot start. 502, the status OpenWhisk's runtimes
    answer a failed /init with (openwhisk-runtime-go, initHandler.go)."""

    status_code = 502


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
    options: LoadOptions,
    timeline: ColdStartTimeline,
    store: Callable[[], EmbeddingStore],
) -> list[Model]:
    """Fetch, open and warm up the zip's models, as the loader thread does the image's."""
    from kindling.runtime.model import Model, ModelState
    from kindling.runtime.repository import read_config
    from kindling.runtime.settings import ConfigError

    # The zip's folder lives as long as this container: an optimized graph cached beside
    # the model would never be read again.
    options = replace(options, optimized_cache=False)
    try:
        loaded = [Model(read_config(folder)) for folder in folders]
    except ConfigError as exc:
        raise ActionInitError(f"Cannot start action: {exc.message}") from None
    for model in loaded:
        model.fetch(options, timeline)
        model.load(options, timeline, store)
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
