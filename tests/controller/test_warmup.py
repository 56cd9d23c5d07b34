"""The warm-up request (controller/warmup.py) against real loopback servers: what it sends,
that a redirect is not followed, and that a server that never answers costs one timeout,
not a hang."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator

import pytest

from kindling.controller.inputs import ModelRef
from kindling.controller.targets import Target
from kindling.controller.warmup import READY_PATH, WarmUp


class Seen(http.server.ThreadingHTTPServer):
    requests: list[tuple[str, str]]
    revisions: list[tuple[str | None, str | None]]
    status: int


def _server(status: int, headers: dict[str, str]) -> Seen:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            server.requests.append((self.path, self.headers["Host"]))
            server.revisions.append(
                (
                    self.headers["Knative-Serving-Namespace"],
                    self.headers["Knative-Serving-Revision"],
                )
            )
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = Seen(("127.0.0.1", 0), Handler)
    server.requests = []
    server.revisions = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def ok() -> Iterator[Seen]:
    server = _server(200, {})
    yield server
    server.shutdown()
    server.server_close()


def _target(url: str | None, revisions: tuple[str, ...] = ("r",)) -> Target:
    ref = ModelRef("ns", "kindling-resnet18", "resnet18")
    return Target(ref, 0, None, 1.0, revisions, 0, url)


def test_one_get_of_the_readiness_path_with_the_services_host(ok: Seen) -> None:
    port = ok.server_address[1]
    warmup = WarmUp(base_url=f"http://127.0.0.1:{port}")
    thread = warmup(_target("http://kindling-resnet18.ns.svc.cluster.local"))
    assert thread is not None
    thread.join()
    assert ok.requests == [(READY_PATH, "kindling-resnet18.ns.svc.cluster.local")]
    assert ok.revisions == [("ns", "r")]  # as an ingress names it for the activator


def test_each_revision_with_traffic_is_woken_by_name(ok: Seen) -> None:
    warmup = WarmUp(base_url=f"http://127.0.0.1:{ok.server_address[1]}")
    thread = warmup(_target("http://kindling-resnet18.ns.svc.cluster.local", ("r-1", "r-2")))
    assert thread is not None
    thread.join()
    assert ok.revisions == [("ns", "r-1"), ("ns", "r-2")]
    thread = warmup(_target("http://kindling-resnet18.ns.svc.cluster.local", ()))
    assert thread is not None
    thread.join()
    assert ok.revisions[2:] == [(None, None)]  # raw mode: no Revision to name


def test_the_base_url_takes_namespace_and_workload(ok: Seen) -> None:
    port = ok.server_address[1]
    warmup = WarmUp(base_url=f"http://127.0.0.1:{port}/{{namespace}}/{{workload}}")
    assert warmup.url(_target(None)) == f"http://127.0.0.1:{port}/ns/kindling-resnet18"
    assert warmup.send(f"http://127.0.0.1:{port}") == 200
    assert WarmUp()(_target(None)) is None  # nowhere to send it


def test_a_redirect_is_not_followed() -> None:
    target = _server(200, {})
    redirect = _server(302, {"Location": f"http://127.0.0.1:{target.server_address[1]}/x"})
    try:
        status = WarmUp().send(f"http://127.0.0.1:{redirect.server_address[1]}")
        assert status == 302
        assert len(redirect.requests) == 1 and target.requests == []
    finally:
        for server in (target, redirect):
            server.shutdown()
            server.server_close()


def test_a_server_that_never_answers_costs_one_timeout() -> None:
    # A listener that accepts (the kernel's backlog does) and never reads or writes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        assert WarmUp(timeout_s=0.2).send(f"http://127.0.0.1:{port}") is None


def test_a_refused_connection_is_no_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: refused
        assert WarmUp().send(f"http://127.0.0.1:{port}") is None
