"""The peers comparison's light parts: venv keys, the client's parsing, the report.
(The comparison itself is not a CI test: `kindling loadtest peers --smoke` checks it.)"""

from __future__ import annotations

import asyncio
import sys

import pytest

from kindling.loadtest.benchclient import raw_request, read_response
from kindling.loadtest.peers.bench import Result
from kindling.loadtest.peers.catalog import BY_NAME, PEERS
from kindling.loadtest.peers.table import markdown
from kindling.loadtest.peers.venvs import ensure_venv, venv_dir


def test_every_peer_of_the_issue_is_there_and_pinned():
    assert [p.name for p in PEERS] == [
        "fastapi",
        "kserve",
        "mlserver",
        "bentoml",
        "pytriton",
        "kindling",
    ]
    for peer in PEERS:
        assert all("==" in package for package in peer.packages)
    assert BY_NAME["kindling"].packages == ()  # this interpreter, no venv


def test_venvs_are_keyed_by_what_they_install(tmp_path):
    peer = BY_NAME["kserve"]
    a = venv_dir(peer, ["kserve==0.21.0", "onnxruntime==1.31.1"], tmp_path)
    b = venv_dir(peer, ["kserve==0.21.0", "onnxruntime==1.30.0"], tmp_path)
    assert a != b and a.parent == tmp_path and a.name.startswith("kserve-0.21.0-py")
    assert ensure_venv(BY_NAME["kindling"], [], tmp_path) == type(a)(sys.executable)


def _parse(data: bytes) -> int:
    async def run() -> int:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        status = await read_response(reader)
        assert await reader.read() == b"NEXT"  # exactly one response consumed
        return status

    return asyncio.run(run())


def test_client_reads_sized_and_chunked_responses():
    assert _parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcNEXT") == 200
    chunked = b"HTTP/1.1 503 X\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nNEXT"
    assert _parse(chunked) == 503
    request = raw_request("/v2/models/m/infer", b"xyz", {"A": "b"})
    assert request.startswith(b"POST /v2/models/m/infer HTTP/1.1\r\n")
    assert b"Content-Length: 3\r\n" in request and request.endswith(b"\r\n\r\nxyz")


def test_report_has_ratios_and_says_why_a_peer_is_missing():
    raw = Result(
        "onnxruntime", "raw", p50_ms=5.0, throughput=200.0, cold_start_s=0.25, peak_rss_mib=100
    )
    kindling = Result(
        "kindling", "Kindling", p50_ms=6.0, throughput=180.0, cold_start_s=0.3, peak_rss_mib=200
    )
    fastapi = Result(
        "fastapi", "FastAPI", p50_ms=9.0, throughput=90.0, cold_start_s=0.9, peak_rss_mib=100
    )
    missing = Result("pytriton", "PyTriton", reason="pip install failed: no wheel")
    text = markdown([fastapi, missing, kindling], raw, {"model": "m"})
    assert "| FastAPI | 1.80x | 0.45x | 3.60x | 1.50x | 0.50x | 3.00x | 0.50x |" in text
    assert "- PyTriton: pip install failed: no wheel" in text


@pytest.mark.parametrize("peer", [p for p in PEERS if p.script])
def test_server_scripts_exist(peer):
    from kindling.loadtest.peers.bench import SERVERS

    assert (SERVERS / peer.script).is_file()
