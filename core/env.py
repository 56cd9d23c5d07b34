"""Typed values from an environment mapping, for the components' settings modules."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

N = TypeVar("N", int, float)


def env_number(
    env: Mapping[str, str],
    name: str,
    kind: type[N],
    default: N,
    error: type[Exception] = ValueError,
    non_negative: bool = True,
) -> N:
    """`env[name]` as a `kind`, `default` when unset or empty; a bad value raises `error`
    naming the variable, at start-up rather than on first use."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise error(
            f"{name}={raw!r} is not {'an integer' if kind is int else 'a number'}"
        ) from None
    if non_negative and value < 0:
        raise error(f"{name}={raw!r} must not be negative")
    return value


def cache_root(env: Mapping[str, str]) -> Path:
    """KINDLING_CACHE_DIR, or ~/.cache/kindling: slow builds (models, cluster tools) live
    here, outside the repository and keyed by version, so fresh clones reuse them."""
    root = env.get("KINDLING_CACHE_DIR", "").strip()
    return Path(root) if root else default_cache_root()


def default_cache_root() -> Path:
    """~/.cache/kindling, or a folder under the temp dir for a user with no home: an image
    run as a bare numeric UID has no passwd entry, and then Path.home() raises."""
    try:
        return Path.home() / ".cache" / "kindling"
    except RuntimeError:
        import tempfile  # not at the top: the runtime imports this module on cold start

        return Path(tempfile.gettempdir()) / "kindling-cache"
