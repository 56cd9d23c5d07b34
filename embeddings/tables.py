"""Table names, version ids and per-version metadata, shared by both stores.

A table is a named set of word vectors. Every load writes a new, immutable *version*;
an alias names the live one. Readers never see a version before it is complete because
the alias moves only after the loader has verified the version's count.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import asdict, dataclass

import orjson

from kindling.errors import InvalidInput, KindlingError

# Names go verbatim into Redis keys, SCAN patterns and directory names: no braces (they
# would become Redis Cluster hash tags), no glob characters, no path separators.
_TABLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_VERSION = re.compile(r"[0-9]{6,}-[0-9a-f]{6}")

DTYPES = ("float32", "float16")


class TableNotFound(KindlingError):
    """No live version of the table: never loaded, or removed."""

    status_code = 404

    def __init__(self, table: str) -> None:
        super().__init__(f"embedding table {table!r} not found")


def check_table_name(name: str) -> str:
    if not _TABLE_NAME.fullmatch(name):
        raise InvalidInput(
            f"bad table name {name!r}: use letters, digits, '_', '.', '-' (at most 128)"
        )
    return name


def is_version(name: str) -> bool:
    return _VERSION.fullmatch(name) is not None


def new_version(sequence: int) -> str:
    """A version id: a sequence number for humans, a random suffix for uniqueness.

    The suffix matters when a Redis without persistence restarts and the sequence starts
    again at 1: readers cache vectors per (table, version), so a reused id would serve
    the old table's vectors from their caches.
    """
    return f"{sequence:06d}-{secrets.token_hex(3)}"


def version_sequence(version: str) -> int:
    return int(version.split("-", 1)[0])


@dataclass(frozen=True, slots=True)
class TableMeta:
    """What a reader needs to decode a version's values, plus provenance."""

    table: str
    version: str
    dim: int
    dtype: str  # storage dtype of the values, little-endian: "float32" or "float16"
    count: int  # distinct words
    source: str = ""

    @property
    def row_bytes(self) -> int:
        return self.dim * (4 if self.dtype == "float32" else 2)

    @property
    def numpy_dtype(self) -> str:
        return "<f4" if self.dtype == "float32" else "<f2"

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> TableMeta:
        try:
            fields = orjson.loads(raw)
            meta = cls(**fields)
        except (orjson.JSONDecodeError, TypeError) as exc:
            raise KindlingError(f"corrupt embedding table metadata: {exc}") from exc
        if meta.dtype not in DTYPES or meta.dim <= 0:
            raise KindlingError(f"corrupt embedding table metadata: {fields!r}")
        return meta
