"""The docker/ scripts, imported by path: docker/ is a folder of scripts, not a package."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def load(name: str) -> ModuleType:
    """docker/<name>.py as a module (registered, so dataclasses and pickling resolve it)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
