"""Fetching model files (kindling.runtime.fetch) from paths, file:// and a real HTTP server."""

from __future__ import annotations

import gc
import hashlib
import socket
import warnings
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from kindling.errors import ModelLoadError
from kindling.runtime import fetch
from kindling.runtime.fetch import fetch_model
from tests.runtime.origin import LoopbackOrigin, serving

ALL = ("file", "http", "https", "s3")


def framed(graph: bytes) -> bytes:
    """`graph` in ONNX's framing: ir_version 7 (field 1, varint), then field 7 (graph,
    length-delimited), as fetch checks before caching; onnxruntime would refuse it."""
    length, n = bytearray(), len(graph)
    while n > 0x7F:
        length.append(n & 0x7F | 0x80)
        n >>= 7
    length.append(n)
    return b"\x08\x07\x3a" + bytes(length) + graph


MODEL = framed(b"onnx-bytes" * 6500)  # ~65 KB: more than one socket read


class Server(LoopbackOrigin):
    """A loopback HTTP server whose answers per path are scripted: a list of statuses
    consumed one per request (the last repeats); 200 serves MODEL."""

    def __init__(self) -> None:
        super().__init__()
        self.script: dict[str, list[int | str]] = {}

    def answer(self, handler: BaseHTTPRequestHandler, seen: int) -> None:
        steps = self.script.get(handler.path, [404])
        step = steps[min(seen, len(steps) - 1)]
        if step == "truncated":
            # Promise the whole model, send a tenth of it, hang up.
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(MODEL)))
            handler.end_headers()
            handler.wfile.write(MODEL[: len(MODEL) // 10])
            handler.wfile.flush()
            handler.close_connection = True
            return
        if step == 200:
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(MODEL)))
            handler.end_headers()
            handler.wfile.write(MODEL)
            return
        handler.send_error(int(step))


@pytest.fixture
def server(monkeypatch):
    srv = Server()
    # fetch leaves urllib's HTTPError responses open (see test_http_error_response_is_closed);
    # reap them here so their ResourceWarnings do not fail whichever test runs next.
    with serving(srv, monkeypatch), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "unclosed", ResourceWarning)
        yield srv
        gc.collect()


def leftovers(cache: Path) -> list[Path]:
    """Files in the download cache other than finished models and their lock files."""
    downloads = cache / "downloads"
    if not downloads.exists():
        return []
    keep = ("model.onnx", fetch.LOCK_NAME)
    return [p for p in downloads.rglob("*") if p.is_file() and p.name not in keep]


# -- local files ------------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "src" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(MODEL)
    return path


def test_file_uri(model_file, tmp_path):
    got = fetch_model(model_file.as_uri(), ALL, tmp_path / "cache", 1.0)
    assert got == model_file
    assert not (tmp_path / "cache").exists()  # local files are used in place, never copied


def test_file_uri_percent_encoded(tmp_path):
    path = tmp_path / "with space.onnx"
    path.write_bytes(b"x")
    uri = path.as_uri()
    assert "%20" in uri
    assert fetch_model(uri, ALL, tmp_path, 1.0) == path


def test_plain_path(model_file, tmp_path):
    assert fetch_model(str(model_file), ALL, tmp_path, 1.0) == model_file


def test_plain_relative_path(model_file, tmp_path, monkeypatch):
    monkeypatch.chdir(model_file.parent)
    assert fetch_model("model.onnx", ("file",), tmp_path, 1.0) == Path("model.onnx")


@pytest.mark.parametrize("as_uri", [True, False], ids=["file-uri", "plain-path"])
def test_missing_file(tmp_path, as_uri):
    path = tmp_path / "nope.onnx"
    uri = path.as_uri() if as_uri else str(path)
    with pytest.raises(ModelLoadError, match="no such file") as info:
        fetch_model(uri, ALL, tmp_path, 1.0)
    assert uri in info.value.message
    assert info.value.status_code == 503


def test_directory_is_not_a_model_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        fetch_model(tmp_path.as_uri(), ALL, tmp_path, 1.0)


def test_plain_path_with_uri_special_characters(tmp_path):
    path = tmp_path / "net#2.onnx"
    path.write_bytes(b"x")
    assert fetch_model(str(path), ALL, tmp_path, 1.0) == path


# -- schemes ----------------------------------------------------------------------------------


def test_disallowed_scheme(tmp_path):
    with pytest.raises(ModelLoadError, match="scheme 'ftp' is not allowed") as info:
        fetch_model("ftp://host/m.onnx", ALL, tmp_path, 1.0)
    assert "file, http, https, s3" in info.value.message


def test_scheme_is_case_insensitive(tmp_path):
    with pytest.raises(ModelLoadError, match="scheme 'ftp' is not allowed"):
        fetch_model("FTP://host/m.onnx", ALL, tmp_path, 1.0)


def test_http_refused_when_only_file_is_allowed(server, tmp_path):
    server.script["/m.onnx"] = [200]
    with pytest.raises(ModelLoadError, match="scheme 'http' is not allowed"):
        fetch_model(f"{server.url}/m.onnx", ("file",), tmp_path, 1.0)
    assert server.count("/m.onnx") == 0
    assert not (tmp_path / "downloads").exists()


def test_file_refused_when_not_allowed(model_file, tmp_path):
    with pytest.raises(ModelLoadError, match="scheme 'file' is not allowed"):
        fetch_model(str(model_file), ("https",), tmp_path, 1.0)


def test_allowed_scheme_without_downloader(tmp_path):
    with pytest.raises(ModelLoadError, match="scheme 'ftp' has no downloader"):
        fetch_model("ftp://host/m.onnx", ("ftp",), tmp_path, 1.0)


# -- HTTP -------------------------------------------------------------------------------------


def test_http_download_and_cache(server, tmp_path):
    server.script["/m.onnx"] = [200]
    uri = f"{server.url}/m.onnx"

    first = fetch_model(uri, ALL, tmp_path, 5.0)

    assert first.read_bytes() == MODEL
    assert first == tmp_path / "downloads" / hashlib.sha256(uri.encode()).hexdigest() / "model.onnx"
    assert server.count("/m.onnx") == 1
    assert leftovers(tmp_path) == []

    second = fetch_model(uri, ALL, tmp_path, 5.0)

    assert second == first
    assert second.read_bytes() == MODEL
    assert server.count("/m.onnx") == 1  # served from the cache, no second request


def test_http_different_uris_cache_separately(server, tmp_path):
    server.script["/a.onnx"] = [200]
    server.script["/b.onnx"] = [200]
    a = fetch_model(f"{server.url}/a.onnx", ALL, tmp_path, 5.0)
    b = fetch_model(f"{server.url}/b.onnx", ALL, tmp_path, 5.0)
    assert a != b
    assert server.count("/a.onnx") == server.count("/b.onnx") == 1


@pytest.mark.parametrize("status", [404, 403, 401, 410])
def test_http_client_error_is_not_retried(server, tmp_path, status):
    server.script["/m.onnx"] = [status]
    with pytest.raises(ModelLoadError, match=f"HTTP {status}") as info:
        fetch_model(f"{server.url}/m.onnx", ALL, tmp_path, 5.0)
    assert "/m.onnx" in info.value.message
    assert server.count("/m.onnx") == 1
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_http_transient_error_then_success_is_retried(server, tmp_path, status):
    server.script["/m.onnx"] = [status, 200]
    path = fetch_model(f"{server.url}/m.onnx", ALL, tmp_path, 5.0)
    assert path.read_bytes() == MODEL
    assert server.count("/m.onnx") == 2
    assert leftovers(tmp_path) == []


def test_http_error_on_every_attempt(server, tmp_path):
    server.script["/m.onnx"] = [500]
    with pytest.raises(ModelLoadError, match="failed after 3 attempts") as info:
        fetch_model(f"{server.url}/m.onnx", ALL, tmp_path, 5.0)
    assert "500" in info.value.message
    assert server.count("/m.onnx") == fetch.ATTEMPTS == 3
    assert leftovers(tmp_path) == []
    assert not list((tmp_path / "downloads").rglob("model.onnx"))


def test_http_connection_refused(server, tmp_path, monkeypatch):
    sleeps = []
    monkeypatch.setattr(fetch.time, "sleep", sleeps.append)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on `port` now.
    with pytest.raises(ModelLoadError, match="failed after 3 attempts") as info:
        fetch_model(f"http://127.0.0.1:{port}/m.onnx", ALL, tmp_path, 5.0)
    assert "refused" in info.value.message.lower()
    assert sleeps == [0.01, 0.02]  # exponential backoff between the three attempts
    assert leftovers(tmp_path) == []


def test_http_truncated_download_is_not_cached(server, tmp_path):
    server.script["/m.onnx"] = ["truncated", 200]
    try:
        path = fetch_model(f"{server.url}/m.onnx", ALL, tmp_path, 5.0)
    except ModelLoadError:
        path = None
    cached = list((tmp_path / "downloads").rglob("model.onnx"))
    assert all(p.read_bytes() == MODEL for p in cached)
    assert path is None or path.read_bytes() == MODEL


def test_http_error_response_is_closed(server, tmp_path):
    server.script["/m.onnx"] = [500]
    with pytest.raises(ModelLoadError) as info:
        fetch_model(f"{server.url}/m.onnx", ALL, tmp_path, 5.0)
    del info
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []


def test_s3_without_boto3(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_boto(name, *args, **kwargs):
        if name == "boto3" or name.startswith("botocore"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_boto)
    with pytest.raises(ModelLoadError, match=r"kindling\[s3\]"):
        fetch_model("s3://bucket/key/m.onnx", ALL, tmp_path, 1.0)
    assert leftovers(tmp_path) == []
