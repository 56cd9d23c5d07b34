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
from typing import Literal
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


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return env_number(env, name, float, default, InvalidInput)


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    return env_number(env, name, int, default, InvalidInput)


@dataclass(frozen=True, slots=True)
class EmbeddingSettings:
    # KINDLING_REDIS_URL; "" selects the embedded file store in `store_dir`.
    url: str = ""
    # KINDLING_EMBEDDINGS_DIR
    store_dir: Path = DEFAULT_DIR
    # KINDLING_EMBEDDINGS_CACHE_SIZE: vectors kept in-process; 0 disables the cache.
    # 10k 300-d float32 rows are ~15 MB and, on a Zipf(1.1) word distribution, answer
    # most lookups (tests/embeddings/test_cache.py computes the expected hit rate).
    cache_size: int = 10_000
    # KINDLING_REDIS_CONNECT_TIMEOUT / KINDLING_REDIS_SOCKET_TIMEOUT, seconds. A healthy
    # MGET on a LAN takes well under 1 ms; paper 000's DynamoDB fetch took 60-70% of a
    # 0.7 s request, so anything near 250 ms means Redis is sick: give up and say 503.
    connect_timeout: float = 0.25
    socket_timeout: float = 0.25
    # KINDLING_REDIS_RETRIES: retries after the first attempt, with exponential
    # backoff from KINDLING_REDIS_BACKOFF seconds (capped at 4x).
    retries: int = 1
    backoff: float = 0.02
    # KINDLING_REDIS_COOLDOWN: after Redis fails, requests that need it fail at once for
    # this long instead of each waiting out the timeout (cache hits still succeed).
    cooldown: float = 0.5
    # KINDLING_EMBEDDINGS_OOV: zeros | unk | random (stable, hash-seeded per word).
    oov: OOVPolicy = "zeros"
    # KINDLING_EMBEDDINGS_UNK_TOKEN: the table's word whose vector "unk" uses.
    unk_token: str = "<unk>"
    # KINDLING_EMBEDDINGS_ALIAS_TTL: seconds a reader trusts the live version it last
    # read, saving one round trip per lookup. Loaders wait longer than this (their
    # --grace) before deleting the old version; 0 re-reads the alias on every lookup.
    alias_ttl: float = 1.0
    # KINDLING_EMBEDDINGS_MAX_WORDS: words per lookup request; more is a 400.
    max_words: int = 4096
    # KINDLING_EMBEDDINGS_ROUND_TRIP_KEYS: split a fetch into round trips of at most this
    # many keys; 0 sends one MGET. 100 with cache_size 0 reproduces paper 000's design
    # (DynamoDB BatchGetItem takes 100 keys) as the benchmarks' baseline.
    round_trip_keys: int = 0
    # KINDLING_MAX_BODY_BYTES: the HTTP service refuses larger request bodies with 413,
    # by Content-Length before reading any of it, or once a chunked body passes it. The
    # runtime's variable and default (runtime/settings.py): one limit for Kindling's
    # servers. A lookup of max_words words needs far less.
    max_body_bytes: int = 64 * 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EmbeddingSettings:
        env = os.environ if env is None else env
        # With slots=True the class attributes are slot descriptors, not the defaults.
        defaults = cls()
        oov = env.get("KINDLING_EMBEDDINGS_OOV", "") or defaults.oov
        if oov not in OOV_POLICIES:
            raise InvalidInput(f"KINDLING_EMBEDDINGS_OOV={oov!r}: want one of {OOV_POLICIES}")
        settings = cls(
            url=env.get("KINDLING_REDIS_URL", ""),
            store_dir=Path(env.get("KINDLING_EMBEDDINGS_DIR", "") or DEFAULT_DIR),
            cache_size=_int(env, "KINDLING_EMBEDDINGS_CACHE_SIZE", defaults.cache_size),
            connect_timeout=_float(env, "KINDLING_REDIS_CONNECT_TIMEOUT", defaults.connect_timeout),
            socket_timeout=_float(env, "KINDLING_REDIS_SOCKET_TIMEOUT", defaults.socket_timeout),
            retries=_int(env, "KINDLING_REDIS_RETRIES", defaults.retries),
            backoff=_float(env, "KINDLING_REDIS_BACKOFF", defaults.backoff),
            cooldown=_float(env, "KINDLING_REDIS_COOLDOWN", defaults.cooldown),
            oov=oov,  # type: ignore[arg-type]
            unk_token=env.get("KINDLING_EMBEDDINGS_UNK_TOKEN", "") or defaults.unk_token,
            alias_ttl=_float(env, "KINDLING_EMBEDDINGS_ALIAS_TTL", defaults.alias_ttl),
            max_words=_int(env, "KINDLING_EMBEDDINGS_MAX_WORDS", defaults.max_words),
            round_trip_keys=_int(
                env, "KINDLING_EMBEDDINGS_ROUND_TRIP_KEYS", defaults.round_trip_keys
            ),
            max_body_bytes=_int(env, "KINDLING_MAX_BODY_BYTES", defaults.max_body_bytes),
        )
        settings.location  # noqa: B018 - reject a bad URL now, not on the first request
        return settings

    def replace(self, **changes: object) -> EmbeddingSettings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def location(self) -> StoreLocation:
        return parse_store_url(self.url, self.store_dir)

    @property
    def fail_fast_bound(self) -> float:
        """Longest a lookup may wait on a dead or hung Redis before it raises."""
        attempts = self.retries + 1
        backoffs = sum(min(self.backoff * 2**i, self.backoff * 4) for i in range(self.retries))
        return attempts * (self.connect_timeout + self.socket_timeout) + backoffs
