"""A loopback HTTP server that answers a scripted list of failures to the requests it
matches, then either answers 200 itself (no upstream) or forwards them to an upstream over
TLS (a reverse proxy in front of the test API server). The kubernetes client is pointed at
it like at any API server: real HTTP, real status codes and headers, no mocks."""

from __future__ import annotations

import http.client
import http.server
import json
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Headers not to pass on (RFC 9110 §7.6.1 hop-by-hop, plus what http.client sets itself).
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length"}  # fmt: skip


@dataclass(frozen=True)
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    # Merged into the metav1.Status answered.
    body: dict[str, object] = field(default_factory=dict)


def status_body(code: int, extra: dict[str, object]) -> bytes:
    """A metav1.Status as the API server writes one."""
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Injected",
         "message": f"injected {code}", "code": code, **extra}
    ).encode()  # fmt: skip


class FaultServer:
    def __init__(
        self,
        faults: list[Fault],
        matches: Callable[[str, str], bool] = lambda method, path: True,
        upstream: str | None = None,
        ca_file: str | None = None,
        ok_body: bytes = b"{}",
    ) -> None:
        self.faults = list(faults)
        self.matches = matches
        self.upstream = urllib.parse.urlsplit(upstream) if upstream else None
        self.context = ssl.create_default_context(cafile=ca_file) if ca_file else None
        self.ok_body = ok_body
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status answered)
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                fault = None
                with outer.lock:
                    if outer.faults and outer.matches(self.command, self.path):
                        fault = outer.faults.pop(0)
                if fault is not None:
                    self._answer(fault.status, fault.headers, status_body(fault.status, fault.body))
                    with outer.lock:
                        outer.seen.append((self.command, self.path, fault.status))
                    return
                if outer.upstream is None:
                    status, headers, data = 200, {"Content-Type": "application/json"}, outer.ok_body
                else:
                    status, headers, data = outer._forward(self, body)
                with outer.lock:
                    outer.seen.append((self.command, self.path, status))
                self._answer(status, headers, data)

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                headers = {"Content-Type": "application/json", **headers}
                for key, value in headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PATCH = do_PUT = do_POST = do_DELETE = _any

        return Handler

    def _forward(
        self, handler: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        assert self.upstream is not None
        conn = http.client.HTTPSConnection(
            self.upstream.hostname or "", self.upstream.port, context=self.context, timeout=30
        )
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(handler.command, handler.path, body=body or None, headers=headers)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def start(self) -> FaultServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@contextmanager
def fault_server(*args: object, **kwargs: object) -> Iterator[FaultServer]:
    server = FaultServer(*args, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
