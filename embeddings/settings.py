"""Typed settings for the embeddings store, read from the environment once.

Components take an `EmbeddingSettings` (or plain arguments); nothing below this module
reads os.environ, so the runtime, the CLI and tests build one and pass it down.

Store URL (KINDLING_REDIS_URL):
    unset or ""                      embedded file store in KINDLING_EMBEDDINGS_DIR
    file:///abs/dir, file://rel/dir  embedded file store in that directory
    redis://[user:pass@]host:port/db one Redis server (rediss:// for TLS, unix:// too)
    redis+cluster://h1:p1,h2:p2      Redis Cluster, seeded from any of the listed nodes
    rediss+cluster://...             the same over TLS
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from kindling.env import env_number
from kindling.errors import InvalidInput

OOVPolicy = Literal["zeros", "unk", "random"]
OOV_POLICIES: tuple[OOVPolicy, ...] = ("zeros", "unk", "random")
StoreKind = Literal["file", "redis", "cluster"]

DEFAULT_DIR = Path(".kindling-cache/embeddings")


@dataclass(frozen=True, slots=True)
class StoreLocation:
    kind: StoreKind
    url: str = ""  # redis/rediss/unix URL for kind "redis"
    path: Path = DEFAULT_DIR  # for kind "file"
    seeds: tuple[tuple[str, int], ...] = ()  # for kind "cluster"
    tls: bool = False
    username: str | None = None
    password: str | None = None


def parse_store_url(url: str, default_dir: Path = DEFAULT_DIR) -> StoreLocation:
    if not url:
        return StoreLocation("file", path=default_dir)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        raw = unquote(parts.netloc + parts.path)
        if not raw:
            raise InvalidInput(f"store URL {url!r} names no directory")
        return StoreLocation("file", path=Path(raw))
    if scheme in ("redis", "rediss", "unix"):
        return StoreLocation("redis", url=url)
    if scheme in ("redis+cluster", "rediss+cluster"):
        seeds: list[tuple[str, int]] = []
        hosts = parts.netloc.rsplit("@", 1)[-1]
        for seed in filter(None, hosts.split(",")):
            host, _, port = seed.rpartition(":")
            if not host or not port.isdigit():
                raise InvalidInput(f"bad cluster seed {seed!r} in {url!r}: want host:port")
            seeds.append((host.strip("[]"), int(port)))
        if not seeds:
            raise InvalidInput(f"store URL {url!r} names no cluster seed")
        user, password = None, None
        if "@" in parts.netloc:
            creds = parts.netloc.rsplit("@", 1)[0]
            user_raw, _, pass_raw = creds.partition(":")
            user, password = unquote(user_raw) or None, unquote(pass_raw) or None
        return StoreLocation(
            "cluster",
            seeds=tuple(seeds),
            tls=scheme.startswith("rediss"),
            username=user,
            password=password,
        )
    raise InvalidInput(
        f"unsupported store URL {url!r}: use redis://, rediss://, unix://, "
        "redis+cluster://host:port[,host:port...] or file://DIR"
    )


def _env(name: str, default: object, doc: str) -> Any:
    """A field read from variable `name`; `doc` is its README line (tests check it)."""
    return dataclasses.field(default=default, metadata={"env": name, "doc": doc})


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    """Each field declares its variable, default and README line once (`_env`); `from_env`
    walks them and `markdown_table` writes the README's table ("## Word vectors")."""

    url: str = _env(
        "KINDLING_REDIS_URL",
        "",
        "the store: `redis://`, `rediss://`, `unix://`, `redis+cluster://h:p,...` or "
        "`file://DIR`; empty: the embedded file store in `KINDLING_EMBEDDINGS_DIR`",
    )
    store_dir: Path = _env(  # noqa: RUF009 - _env returns a dataclasses.field
        "KINDLING_EMBEDDINGS_DIR",
        DEFAULT_DIR,
        "the embedded file store's folder (`kindling serve`: `<repository>/.embeddings`)",
    )
    # 10k 300-d float32 rows are ~15 MB and, on a Zipf(1.1) word distribution, answer
    # most lookups (tests/embeddings/test_cache.py computes the expected hit rate).
    cache_size: int = _env(
        "KINDLING_EMBEDDINGS_CACHE_SIZE", 10_000, "vectors kept in-process; 0 disables the cache"
    )
    # A healthy MGET on a LAN takes well under 1 ms; paper 000's DynamoDB fetch took 60-70%
    # of a 0.7 s request, so anything near 250 ms means Redis is sick: give up and say 503.
    connect_timeout: float = _env(
        "KINDLING_REDIS_CONNECT_TIMEOUT", 0.25, "seconds to connect to Redis; then 503"
    )
    socket_timeout: float = _env(
        "KINDLING_REDIS_SOCKET_TIMEOUT", 0.25, "seconds for one Redis reply; then 503"
    )
    retries: int = _env(
        "KINDLING_REDIS_RETRIES",
        1,
        "retries after the first attempt, with exponential backoff (capped at 4x)",
    )
    backoff: float = _env("KINDLING_REDIS_BACKOFF", 0.02, "the first retry's backoff, seconds")
    # So requests fail at once instead of each waiting out the timeout.
    cooldown: float = _env(
        "KINDLING_REDIS_COOLDOWN",
        0.5,
        "after Redis fails, seconds during which lookups that need it fail at once (cache "
        "hits still succeed)",
    )
    oov: OOVPolicy = _env(  # noqa: RUF009 - _env returns a dataclasses.field
        "KINDLING_EMBEDDINGS_OOV",
        "zeros",
        "out-of-vocabulary words: `zeros`, `unk` or `random` (stable, hash-seeded per word)",
    )
    unk_token: str = _env(
        "KINDLING_EMBEDDINGS_UNK_TOKEN", "<unk>", "the table's word whose vector `unk` uses"
    )
    # Saves one round trip per lookup; loaders wait longer than this (their --grace) before
    # deleting the old version.
    alias_ttl: float = _env(
        "KINDLING_EMBEDDINGS_ALIAS_TTL",
        1.0,
        "seconds a reader trusts the live table version it last read; 0 re-reads it on "
        "every lookup",
    )
    max_words: int = _env(
        "KINDLING_EMBEDDINGS_MAX_WORDS", 4096, "words per lookup request; more is a 400"
    )
    # 100 with cache_size 0 reproduces paper 000's design (DynamoDB BatchGetItem takes 100
    # keys) as the benchmarks' baseline.
    round_trip_keys: int = _env(
        "KINDLING_EMBEDDINGS_ROUND_TRIP_KEYS",
        0,
        "split a fetch into round trips of at most this many keys; 0 sends one MGET",
    )
    # The runtime's variable and default (runtime/settings.py): one limit for Kindling's
    # servers; refused by Content-Length before reading, or once a chunked body passes it.
    # A lookup of max_words words needs far less.
    max_body_bytes: int = _env(
        "KINDLING_MAX_BODY_BYTES",
        64 * 1024 * 1024,
        "the HTTP lookup service refuses larger request bodies with 413 (the runtime's too)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> EmbeddingSettings:
        """Read the environment; flags given as `overrides` win over it (None means unset)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata["env"]
            if not env.get(name, "").strip():
                continue  # unset or blank: the field's default
            if isinstance(f.default, bool | int | float):
                values[f.name] = env_number(env, name, type(f.default), f.default, InvalidInput)
            else:
                values[f.name] = type(f.default)(env[name])  # str or Path
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.oov not in OOV_POLICIES:
            raise InvalidInput(
                f"KINDLING_EMBEDDINGS_OOV={settings.oov!r}: want one of {OOV_POLICIES}"
            )
        settings.location  # noqa: B018 - reject a bad URL now, not on the first request
        return settings

    def replace(self, **changes: object) -> EmbeddingSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def for_loading(self) -> EmbeddingSettings:
        """These settings with a table loader's timeouts. Serving fails fast (250 ms); a
        loader streams MSETs of 8,192 rows (10 MB at 300-d), which a busy server or a
        loaded machine may take seconds to read, and a load that gives up is lost work."""
        return self.replace(connect_timeout=5.0, socket_timeout=30.0)

    @property
    def location(self) -> StoreLocation:
        return parse_store_url(self.url, self.store_dir)

    @property
    def fail_fast_bound(self) -> float:
        """Longest a lookup may wait on a dead or hung Redis before it raises."""
        attempts = self.retries + 1
        backoffs = sum(min(self.backoff * 2**i, self.backoff * 4) for i in range(self.retries))
        return attempts * (self.connect_timeout + self.socket_timeout) + backoffs


def markdown_table() -> str:
    """The README's table of these variables ("## Word vectors"):
    `python -m kindling.embeddings.settings` prints it, tests/test_readme_settings.py checks
    the README has it."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(EmbeddingSettings):
        default = f.default
        mib = isinstance(default, int) and default >= 2**20 and default % 2**20 == 0
        shown = "(empty)" if default == "" else f"{default >> 20} MiB" if mib else f"`{default}`"
        lines.append(f"| `{f.metadata['env']}` | {shown} | {f.metadata['doc']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
