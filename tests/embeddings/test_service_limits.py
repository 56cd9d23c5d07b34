"""The embeddings service's body limit, over a real `kindling embeddings serve` process:
413 by Content-Length before reading the body, and while a chunked body streams in.

Every exchange is a raw socket, so the test controls what is sent and when: a server
that waits for the rest of a body instead of refusing it leaves the read to time out.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kindling.embeddings.redis_server import free_port
from kindling.embeddings.settings import EmbeddingSettings
from tests.conftest import stop_process
from tests.embeddings.helpers import WORDS, load_file, make_vectors, write_gensim

pytestmark = pytest.mark.integration

LIMIT = 4096
PATH = "/v1/tables/words/lookup"
SAFETY_S = 60.0
"""Socket timeout: only a server that never answers takes this long."""


@pytest.fixture
def service(tmp_path: Path) -> Iterator[int]:
    """A service process with KINDLING_MAX_BODY_BYTES=LIMIT; yields its port."""
    store = tmp_path / "store"
    vectors = write_gensim(tmp_path / "v.bin", WORDS, make_vectors(WORDS, 5), binary=True)
    load_file(EmbeddingSettings(url=f"file://{store}"), "words", vectors)
    port = free_port()
    command = [sys.executable, "-m", "kindling", "embeddings", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--store", str(store)]
    env = {**os.environ, "KINDLING_MAX_BODY_BYTES": str(LIMIT)}
    log = (tmp_path / "service.log").open("wb")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SAFETY_S
        while exchange(port, b"GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n", probe=True) != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the service did not start:\n{(tmp_path / 'service.log').read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        stop_process(process, timeout=10)
        log.close()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response with Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in lines if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return int(lines[0].split()[1]), body


def exchange(port: int, request: bytes, probe: bool = False) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=SAFETY_S) as sock:
            sock.sendall(request)
            return read_response(sock)[0]
    except OSError:
        if probe:
            return None
        raise


def lookup_head(extra: str) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}\r\n".encode()
    )


def test_declared_length_over_the_limit_is_refused_before_the_body_is_sent(service: int):
    """Only the head goes out: a server that read the body first would wait for it."""
    with socket.create_connection(("127.0.0.1", service), timeout=SAFETY_S) as sock:
        sock.sendall(lookup_head("Content-Length: 195000000\r\n"))
        status, body = read_response(sock)
    assert status == 413
    assert json.loads(body) == {
        "error": f"request body of 195000000 bytes exceeds the limit of {LIMIT}"
    }


def test_chunked_body_is_refused_once_it_passes_the_limit(service: int):
    """The body's chunks pass the limit but never end (no last chunk): the 413 must come
    while it is still streaming."""
    chunk = b"[" + b'"aaaaaaa",' * 100
    with socket.create_connection(("127.0.0.1", service), timeout=SAFETY_S) as sock:
        sock.sendall(lookup_head("Transfer-Encoding: chunked\r\n"))
        sock.sendall(b'%x\r\n{"words": \r\n' % len(b'{"words": '))
        for _ in range(3 * LIMIT // len(chunk)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, body = read_response(sock)
    assert status == 413
    assert json.loads(body) == {"error": f"request body exceeds the limit of {LIMIT} bytes"}


def test_bodies_within_the_limit_are_served(service: int):
    body = json.dumps({"words": ["cat", "mat"]}).encode()
    assert len(body) < LIMIT
    assert exchange(service, lookup_head(f"Content-Length: {len(body)}\r\n") + body) == 200
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    assert exchange(service, lookup_head("Transfer-Encoding: chunked\r\n") + chunked) == 200


def test_the_limit_is_a_setting():
    assert EmbeddingSettings().max_body_bytes == 64 * 1024 * 1024  # the runtime's default
    settings = EmbeddingSettings.from_env({"KINDLING_MAX_BODY_BYTES": "1000"})
    assert settings.max_body_bytes == 1000
