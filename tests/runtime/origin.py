"""A model origin for download tests: a real HTTP server on loopback, in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kindling.runtime import fetch


class LoopbackOrigin:
    """Counts the GETs of each path and has `answer` reply to each; subclasses script it."""

    def __init__(self) -> None:
        self.gets: dict[str, int] = {}
        self.lock = threading.Lock()
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with origin.lock:
                    seen = origin.gets.get(self.path, 0)
                    origin.gets[self.path] = seen + 1
                origin.answer(self, seen)

            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def answer(self, handler: BaseHTTPRequestHandler, seen: int) -> None:
        """Reply to a GET of `handler.path`, which had been asked `seen` times before."""
        raise NotImplementedError

    def count(self, path: str) -> int:
        with self.lock:
            return self.gets.get(path, 0)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@contextmanager
def serving(origin: LoopbackOrigin, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run `origin` with no proxy in the way (runtime processes inherit that too) and a
    short retry backoff; close it after."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(fetch, "BACKOFF_S", 0.01)
    origin.thread.start()
    try:
        yield
    finally:
        origin.close()
