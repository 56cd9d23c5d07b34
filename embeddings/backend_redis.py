"""Word vectors in Redis or Redis Cluster: one key per word (key scheme in keys.py).

Reads: one MGET holding the version's meta key (its sentinel) and every missing word. On
a cluster an MGET may only name keys of one slot, so the keys are grouped per slot with
redis-py's key_slot and the per-slot MGETs go out in one cluster pipeline, which sends
each node its share at once.

Writes bypass redis-py's command packing: at ~1 µs per argument it caps a pipeline at
~60k vectors/s, while the RESP for a whole MSET built with one bytes.join per batch
reaches several times that (bench_loader.py). The next batch is sent before the reply
to the previous one is read, so Redis parses while Python packs. How a load is verified
is told at RedisVersionWriter.

Retries live here, not in redis-py: redis-py retries connects inside its own command
retries, so its worst case is the square of the retry count. One loop with a known bound
(EmbeddingSettings.fail_fast_bound) is what a 503 with Retry-After needs.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    TryAgainError,
)
from redis.retry import Retry

from kindling.embeddings import keys
from kindling.embeddings.backend import Fetched, LoadError, rows_as_float32
from kindling.embeddings.formats import Buffer
from kindling.embeddings.settings import StoreLocation
from kindling.embeddings.tables import TableMeta, new_version
from kindling.errors import DependencyUnavailable, KindlingError
from kindling.metrics import Registry

T = TypeVar("T")
Client = redis.Redis | RedisCluster

# Errors that mean "Redis is not answering", as opposed to a bug or bad data.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)

_SCAN_COUNT = 10_000
_UNLINK_BATCH = 1_000

# Compare-and-act on the load lock, so a loader whose lock expired cannot release or
# extend a lock that another loader now holds.
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_REFRESH = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)


def group_by_slot(keys_: Sequence[bytes]) -> dict[int, list[int]]:
    """Indices of keys per cluster slot, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys_):
        groups.setdefault(key_slot(key), []).append(i)
    return groups


def pack_mset(keys_: Sequence[bytes], rows: Sequence[Buffer]) -> bytes:
    """The RESP bytes of `MSET k1 r1 k2 r2 ...`; all rows have the same length."""
    head = b"\r\n$%d\r\n" % len(rows[0])
    parts: list[Buffer] = [b"*%d\r\n$4\r\nMSET\r\n" % (2 * len(keys_) + 1)]
    append = parts.append
    for key, row in zip(keys_, rows, strict=True):
        append(b"$%d\r\n%s%s" % (len(key), key, head))
        append(row)
        append(b"\r\n")
    return b"".join(parts)


def pack_command(command: bytes, args: Sequence[bytes]) -> bytes:
    """The RESP bytes of `COMMAND arg1 arg2 ...`."""
    parts = [b"*%d\r\n$%d\r\n%s\r\n" % (len(args) + 1, len(command), command)]
    parts += [b"$%d\r\n%s\r\n" % (len(arg), arg) for arg in args]
    return b"".join(parts)


def unavailable(exc: Exception) -> DependencyUnavailable:
    return DependencyUnavailable(f"redis unavailable: {exc}")


def refused(exc: redis.RedisError) -> LoadError:
    """A write Redis answered with an error; a full one says what to raise. With
    `maxmemory` and `noeviction` (the chart's Redis) a full Redis refuses writes rather
    than being killed mid-load, and the aborted version leaves the live one serving."""
    hint = ""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        hint = (
            " (Redis is at its maxmemory: give it more memory, e.g. the chart's "
            "redis.resources.limits.memory, or load fewer words with --vocab)"
        )
    return LoadError(f"redis refused a write: {exc}{hint}")


class RedisBackend:
    def __init__(
        self,
        location: StoreLocation,
        *,
        connect_timeout: float = 0.25,
        socket_timeout: float = 0.25,
        retries: int = 1,
        backoff: float = 0.02,
        registry: Registry | None = None,
    ) -> None:
        self.location = location
        self.cluster = location.kind == "cluster"
        self.connect_timeout = connect_timeout
        self.socket_timeout = socket_timeout
        self.retries = retries
        self.backoff = backoff
        self._client_obj: Client | None = None
        self._client_lock = threading.Lock()
        self._metas: dict[bytes, TableMeta] = {}
        # One connection per reader thread for MGET; see _standalone_mget.
        self._local = threading.local()
        self._thread_conns: list[Any] = []
        registry = registry or Registry()
        self.mget_commands = registry.counter(
            "kindling_embeddings_redis_mget_total",
            "MGET commands sent (one per lookup; one per slot on Redis Cluster).",
        )
        self.errors = registry.counter(
            "kindling_embeddings_redis_errors_total", "Redis calls that failed after retries."
        )

    # -- connection ------------------------------------------------------------------

    def _connect(self) -> Client:
        common: dict[str, Any] = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            # No retries inside redis-py: see the module docstring.
            "retry": Retry(NoBackoff(), 0),
        }
        if not self.cluster:
            return redis.Redis.from_url(self.location.url, **common)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.location.seeds],
            ssl=self.location.tls,
            username=self.location.username,
            password=self.location.password,
            **common,
        )

    def client(self) -> Client:
        """The redis-py client, created on first use (a cluster client connects at once,
        so creating it eagerly would make a store built while Redis is down unusable)."""
        client = self._client_obj
        if client is None:
            with self._client_lock:
                if self._client_obj is None:
                    self._client_obj = self._connect()
                client = self._client_obj
        return client

    def call(self, operation: Callable[[Client], T]) -> T:
        """Run operation with bounded retries; DependencyUnavailable when Redis is gone."""
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), self.backoff * 4))
            try:
                return operation(self.client())
            except UNAVAILABLE as exc:
                last = exc
                if self.cluster and isinstance(exc, RedisClusterException):
                    self._reset()
            except redis.RedisError as exc:
                raise KindlingError(f"redis error: {exc}") from exc
        self.errors.inc()
        assert last is not None
        raise unavailable(last) from last

    def _reset(self) -> None:
        with self._client_lock:
            client, self._client_obj = self._client_obj, None
            conns, self._thread_conns = self._thread_conns, []
            self._local = threading.local()
        for conn in conns:
            conn.disconnect()
        if client is not None:
            client.close()

    def close(self) -> None:
        self._reset()

    def ping(self) -> None:
        self.call(lambda c: c.ping())

    # -- reading ---------------------------------------------------------------------

    def resolve(self, table: str) -> str | None:
        raw = self.call(lambda c: c.get(keys.alias(table)))
        return raw.decode() if raw else None

    def meta(self, table: str, version: str) -> TableMeta | None:
        raw = self.call(lambda c: c.get(keys.meta(table, version)))
        return self._meta(raw) if raw else None

    def _meta(self, raw: bytes) -> TableMeta:
        meta = self._metas.get(raw)
        if meta is None:
            if len(self._metas) > 256:
                self._metas.clear()
            meta = self._metas[raw] = TableMeta.from_json(raw)
        return meta

    def _standalone_mget(self, client: Client, keys_: list[bytes]) -> list[bytes | None]:
        """MGET on this thread's own connection, packed here.

        redis-py's client.mget costs ~140 µs of CPU for 21 keys (command packing, pool
        checkout, parser, hooks) against ~40 µs for the round trip itself; a held
        connection and pre-packed bytes halve that. The connection still comes from
        redis-py, so TLS, AUTH, SELECT and timeouts are its, and it reconnects by itself
        on the next send after an error.
        """
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = client.connection_pool.make_connection()
            with self._client_lock:
                self._thread_conns.append(conn)
        try:
            conn.send_packed_command([pack_command(b"MGET", keys_)], check_health=False)
            return conn.read_response()
        except BaseException:
            conn.disconnect()  # a half-read reply must not be read by the next lookup
            raise

    def mget(self, keys_: list[bytes]) -> list[bytes | None]:
        if not self.cluster:
            self.mget_commands.inc()
            return self.call(lambda c: self._standalone_mget(c, keys_))
        groups = group_by_slot(keys_)
        self.mget_commands.inc(amount=len(groups))

        def run(client: Client) -> list[Any]:
            pipe = client.pipeline()
            for indices in groups.values():
                pipe.execute_command("MGET", *[keys_[i] for i in indices])
            return pipe.execute()

        values: list[bytes | None] = [None] * len(keys_)
        for indices, reply in zip(groups.values(), self.call(run), strict=True):
            for i, value in zip(indices, reply, strict=True):
                values[i] = value
        return values

    def fetch(self, table: str, version: str, words: Sequence[bytes]) -> Fetched:
        prefix = keys.word_prefix(table, version)
        values = self.mget([keys.meta(table, version), *[prefix + w for w in words]])
        raw_meta, rows = values[0], values[1:]
        if raw_meta is None:
            return Fetched(None, [])
        meta = self._meta(raw_meta)
        size = meta.row_bytes
        if any(v is not None and len(v) != size for v in rows):
            raise KindlingError(f"corrupt vector in table {table!r} version {version}")
        if meta.dtype != "float32":
            present = [i for i, v in enumerate(rows) if v is not None]
            if present:
                data = b"".join([rows[i] for i in present])  # type: ignore[misc]
                matrix = np.frombuffer(data, meta.numpy_dtype).reshape(len(present), meta.dim)
                for i, row in zip(present, rows_as_float32(matrix), strict=True):
                    rows[i] = row
        return Fetched(meta, rows)

    def tables(self) -> list[str]:
        names = self.call(lambda c: c.smembers(keys.TABLES))
        return sorted(n.decode() for n in names)

    # -- loading ---------------------------------------------------------------------

    def begin_load(self, table: str, lock_ttl: float = 30.0) -> RedisVersionWriter:
        token = secrets.token_hex(8)
        ttl_ms = max(int(lock_ttl * 1000), 1)
        if not self.call(lambda c: c.set(keys.lock(table), token, nx=True, px=ttl_ms)):
            raise LoadError(f"another load of table {table!r} is running ({keys.lock(table)!r})")
        try:
            sequence = self.call(lambda c: c.incr(keys.sequence(table)))
            version = new_version(int(sequence))
            # Recorded before the first word so a crashed load is found and collected.
            self.call(lambda c: c.sadd(keys.versions(table), version))
        except BaseException:
            self.call(lambda c: c.eval(_RELEASE, 1, keys.lock(table), token))
            raise
        return RedisVersionWriter(self, table, version, token, ttl_ms, self.evictions())

    def _primaries(self) -> list[redis.Redis]:
        client = self.client()
        if isinstance(client, RedisCluster):
            return [node.redis_connection for node in client.get_primaries()]
        return [client]

    def scan_keys(self, pattern: bytes) -> Iterator[list[bytes]]:
        """Batches of keys matching pattern, from every primary (one per node on a cluster)."""
        for node in self._primaries():
            cursor = 0
            while True:
                cursor, batch = node.scan(cursor, match=pattern, count=_SCAN_COUNT)
                if batch:
                    yield batch
                if not cursor:
                    break

    def evictions(self) -> int:
        """Keys Redis has evicted for maxmemory since it started, over all primaries."""
        try:
            return sum(int(node.info("stats")["evicted_keys"]) for node in self._primaries())
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc

    def unlink(self, keys_: Sequence[bytes]) -> None:
        if not keys_:
            return
        client = self.client()
        pipe = client.pipeline(transaction=False) if not self.cluster else client.pipeline()
        groups = group_by_slot(keys_) if self.cluster else {0: list(range(len(keys_)))}
        for indices in groups.values():
            for start in range(0, len(indices), _UNLINK_BATCH):
                pipe.unlink(*[keys_[i] for i in indices[start : start + _UNLINK_BATCH]])
        pipe.execute()

    def delete_version(self, table: str, version: str) -> None:
        # Sentinel first: from then on a reader that raced the alias switch sees the
        # version as gone (and re-reads the alias) instead of half a table.
        self.call(lambda c: c.delete(keys.meta(table, version)))
        try:
            for batch in self.scan_keys(keys.word_pattern(table, version)):
                self.unlink(batch)
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc
        self.call(lambda c: c.srem(keys.versions(table), version))

    def snapshot(self) -> None:
        """BGSAVE on every primary. One already running (an automatic save) is as good."""

        def bgsave(client: Client) -> object:
            if self.cluster:
                return client.bgsave(target_nodes=RedisCluster.PRIMARIES)  # type: ignore[call-arg]
            return client.bgsave()

        try:
            self.call(bgsave)
        except KindlingError as exc:
            if "already in progress" not in str(exc):
                raise

    def drop_versions(self, table: str) -> list[str]:
        live = self.resolve(table)
        members = self.call(lambda c: c.smembers(keys.versions(table)))
        dropped = sorted(v.decode() for v in members if v.decode() != live)
        for version in dropped:
            self.delete_version(table, version)
        return dropped


class RedisVersionWriter:
    """Writes one version with raw pipelined MSETs; see the module docstring.

    Verification costs O(words loaded), not O(keys in Redis) as a SCAN would: each MSET
    is followed on the same connection by an EXISTS of the same keys, whose reply must
    count them all, and at commit Redis must not have evicted anything meanwhile (an
    eviction policy could otherwise drop vectors written earlier in the load).
    """

    def __init__(
        self,
        backend: RedisBackend,
        table: str,
        version: str,
        token: str,
        lock_ttl_ms: int,
        evictions: int,
    ) -> None:
        self.backend = backend
        self.table = table
        self.version = version
        self._token = token
        self._lock_ttl_ms = lock_ttl_ms
        self._evictions = evictions
        self._refreshed = time.monotonic()
        self._prefix = keys.word_prefix(table, version)
        # Raw connections checked out per node, and the replies each still owes: None
        # for an MSET's OK, n for an EXISTS that must count n keys.
        self._conns: dict[int, Any] = {}  # id(node client) -> connection
        self._pending: list[tuple[Any, list[int | None]]] = []
        self._slot_node: dict[int, Any] = {}
        self.written = 0  # vectors written, duplicates included
        self.confirmed = 0  # of those, how many EXISTS found

    def _connection(self, node: Any) -> Any:
        # Made, not checked out of the pool: nothing else may interleave commands on a
        # connection with replies outstanding, and it is closed when the load ends.
        conn = self._conns.get(id(node))
        if conn is None:
            conn = self._conns[id(node)] = node.connection_pool.make_connection()
        return conn

    def _node_for(self, slot: int, key: bytes) -> Any:
        node = self._slot_node.get(slot)
        if node is None:
            client = self.backend.client()
            node = client.get_node_from_key(key).redis_connection  # type: ignore[union-attr]
            self._slot_node[slot] = node
        return node

    def write(self, words: Sequence[bytes], rows: Sequence[Buffer]) -> None:
        if not len(words):
            return
        prefix = self._prefix
        key_list = [prefix + w for w in words]
        # per connection: (connection, payloads, expected replies)
        sends: dict[int, tuple[Any, list[bytes], list[int | None]]] = {}
        try:
            if not self.backend.cluster:
                conn = self._connection(self.backend.client())
                payloads = [pack_mset(key_list, rows), pack_command(b"EXISTS", key_list)]
                sends[id(conn)] = (conn, payloads, [None, len(key_list)])
            else:
                for slot, indices in group_by_slot(key_list).items():
                    conn = self._connection(self._node_for(slot, key_list[indices[0]]))
                    slot_keys = [key_list[i] for i in indices]
                    slot_rows = [rows[i] for i in indices]
                    _, payloads, expected = sends.setdefault(id(conn), (conn, [], []))
                    payloads += (
                        pack_mset(slot_keys, slot_rows),
                        pack_command(b"EXISTS", slot_keys),
                    )
                    expected += (None, len(slot_keys))
            for conn, payloads, _ in sends.values():
                conn.send_packed_command(payloads, check_health=False)
            # Only now read the previous batch's replies, so that Redis works on them
            # while this batch was being packed and sent.
            self._drain()
            self._pending = [(conn, expected) for conn, _, expected in sends.values()]
        except UNAVAILABLE as exc:
            self.backend.errors.inc()
            raise unavailable(exc) from exc
        except redis.RedisError as exc:
            raise refused(exc) from exc
        self.written += len(words)
        self._refresh_lock()

    def _drain(self) -> None:
        pending, self._pending = self._pending, []
        for conn, expected in pending:
            for count in expected:
                reply = conn.read_response()
                if count is None:
                    continue
                self.confirmed += reply
                if reply != count:
                    raise LoadError(
                        f"table {self.table!r}: Redis holds {reply} of {count} keys just written"
                    )

    def _refresh_lock(self) -> None:
        now = time.monotonic()
        if now - self._refreshed < self._lock_ttl_ms / 3000:
            return
        self._refreshed = now
        lock = keys.lock(self.table)
        ttl = self._lock_ttl_ms
        if not self.backend.call(lambda c: c.eval(_REFRESH, 1, lock, self._token, ttl)):
            raise LoadError(f"lost the load lock of table {self.table!r} (expired?)")

    def _release_connections(self) -> None:
        for conn in self._conns.values():
            conn.disconnect()
        self._conns.clear()

    def commit(self, meta: TableMeta) -> None:
        backend = self.backend
        try:
            self._drain()
        except UNAVAILABLE as exc:
            raise unavailable(exc) from exc
        except redis.RedisError as exc:
            raise refused(exc) from exc
        self._release_connections()
        if self.confirmed != self.written or meta.count > self.written:
            raise LoadError(
                f"table {self.table!r} version {self.version}: Redis confirmed "
                f"{self.confirmed} of {self.written} vectors ({meta.count} distinct words)"
            )
        evicted = backend.evictions() - self._evictions
        if evicted:
            raise LoadError(
                f"Redis evicted {evicted} keys during the load of table {self.table!r}: "
                "give it more memory or set maxmemory-policy noeviction"
            )
        backend.call(lambda c: c.set(keys.meta(self.table, self.version), meta.to_json()))
        # The switch: one SET of one key, atomic on a single server and on a cluster.
        backend.call(lambda c: c.set(keys.alias(self.table), self.version))
        backend.call(lambda c: c.sadd(keys.TABLES, self.table))

    def abort(self) -> None:
        self._pending = []
        self._release_connections()
        try:
            self.backend.delete_version(self.table, self.version)
        except KindlingError:
            pass  # Redis is down: the versions set still lists it for the next load's GC

    def close(self) -> None:
        self._release_connections()
        lock = keys.lock(self.table)
        try:
            self.backend.call(lambda c: c.eval(_RELEASE, 1, lock, self._token))
        except KindlingError:
            pass  # the lock expires on its own
