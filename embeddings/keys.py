"""The Redis key scheme.

    kdl:emb:tables                       set of table names (for `list`)
    kdl:emb:<table>:alias                string: the live version id; ONE SET switches it
    kdl:emb:<table>:seq                  counter for version ids
    kdl:emb:<table>:lock                 the running loader's token (SET NX PX)
    kdl:emb:<table>:versions             set of versions a loader has started (for GC)
    kdl:emb:<table>:<version>:meta       JSON TableMeta; written last, deleted first
    kdl:emb:<table>:<version>:w:<word>   raw little-endian float32/float16 vector

No key carries a hash tag, so on Redis Cluster every key hashes on its full name and a
table's words spread over all 16384 slots (a `{table}` tag would pin the whole table to
one slot, one node, and make the cluster pointless). Table names cannot contain braces
(tables.check_table_name); a word that does contains its own tag, which only changes
which slot that one word lands in — client and server compute the same slot.

The meta key doubles as the version's sentinel: readers fetch it in the same MGET as the
words, so a reply without it means the version was deleted under them (see store.py).
"""

from __future__ import annotations

ROOT = b"kdl:emb:"
TABLES = ROOT + b"tables"


def _table(table: str) -> bytes:
    return ROOT + table.encode()


def alias(table: str) -> bytes:
    return _table(table) + b":alias"


def sequence(table: str) -> bytes:
    return _table(table) + b":seq"


def lock(table: str) -> bytes:
    return _table(table) + b":lock"


def versions(table: str) -> bytes:
    return _table(table) + b":versions"


def meta(table: str, version: str) -> bytes:
    return _table(table) + b":" + version.encode() + b":meta"


def word_prefix(table: str, version: str) -> bytes:
    return _table(table) + b":" + version.encode() + b":w:"


def word_pattern(table: str, version: str) -> bytes:
    """SCAN MATCH pattern for a version's words; safe because names have no glob chars."""
    return word_prefix(table, version) + b"*"
