"""Measuring a model: the plan, the requests, and real runtimes (started here, or at a URL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kindling.advisor.measure import (
    MeasurePlan,
    config_setting,
    measure_started,
    measure_url,
    model_config,
    plan_settings,
    reported_cold_start,
    served_setting,
    url_setting,
    worst_case_request,
)
from kindling.advisor.measurements import MeasurementError, RuntimeSetting
from kindling.advisor.results import read_results
from kindling.advisor.runtime_client import Target, infer_request
from tests.conftest import reply_json, serving

# A small plan: one thread, two callers at most, few requests (the tests check what is
# recorded, never how fast).
SMALL = {"threads": (1,), "concurrency": (1, 2), "requests": 20, "cold_starts": 2}


def split_binary(body: bytes, headers: dict[str, str]) -> tuple[dict, bytes]:
    if "Inference-Header-Content-Length" not in headers:
        return json.loads(body), b""
    size = int(headers["Inference-Header-Content-Length"])
    return json.loads(body[:size]), body[size:]


# -- the plan -------------------------------------------------------------------------------


def labels(settings: tuple[RuntimeSetting, ...]) -> list[str]:
    return [s.label() for s in settings]


def test_default_plan_on_two_cpus_is_threads_by_batch_plus_the_other_delay():
    settings = plan_settings(MeasurePlan(), config_batch=32, config_delay_ms=2.0, cpus=2)
    assert labels(settings) == ["t1-b1-d0", "t1-b32-d2", "t2-b1-d0", "t2-b32-d2", "t2-b32-d0"]


def test_default_threads_follow_the_cpus():
    many = plan_settings(MeasurePlan(), 32, 2.0, cpus=8)
    assert sorted({s.threads for s in many}) == [1, 2, 4]
    assert len(many) == 3 * 2 + 1  # not the 3 x 2 x 2 cross product
    assert {s.threads for s in plan_settings(MeasurePlan(), 32, 2.0, cpus=1)} == {1}


def test_a_model_that_does_not_batch_gets_batch_one_only():
    settings = plan_settings(MeasurePlan(), config_batch=0, config_delay_ms=5.0, cpus=2)
    assert labels(settings) == ["t1-b1-d0", "t2-b1-d0"]


def test_an_explicit_plan_is_kept_and_a_batch_above_the_config_refused():
    plan = MeasurePlan(threads=(2,), batch_sizes=(8,), queue_delays_ms=(1.0, 4.0))
    assert labels(plan_settings(plan, 32, 2.0, cpus=2)) == ["t2-b8-d4", "t2-b8-d1"]
    with pytest.raises(MeasurementError, match="only lowers"):
        plan_settings(MeasurePlan(batch_sizes=(64,)), 32, 2.0, cpus=2)


@pytest.mark.parametrize(
    "fields",
    [
        {"concurrency": ()},
        {"threads": (0,)},
        {"queue_delays_ms": (-1.0,)},
        {"cold_starts": 0},
        {"stop_p99_ms": 0},
    ],
)
def test_a_bad_plan_is_refused(fields):
    with pytest.raises(MeasurementError, match="plan"):
        MeasurePlan(**fields)


# -- settings and requests --------------------------------------------------------------


def test_the_setting_is_read_from_a_triton_config():
    config = {"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 3500}}
    assert served_setting(config) == RuntimeSetting(None, 8, 3.5)
    assert served_setting({"max_batch_size": 0}) == RuntimeSetting(None, 1, 0.0)
    exposed = {**config, "parameters": {"intra_op_thread_count": {"string_value": "2"}}}
    assert served_setting(exposed).threads == 2
    with pytest.raises(MeasurementError):
        served_setting({"max_batch_size": "many"})


def test_config_setting_of_a_sample_model(model_repository):
    setting, config_batch = config_setting(model_repository / "mobilenet_v2")
    assert setting == RuntimeSetting(None, 32, 2.0) and config_batch == 32


def test_a_missing_model_is_a_measurement_error(tmp_path, model_repository):
    with pytest.raises(MeasurementError, match=r"config\.yaml"):
        model_config(tmp_path / "nothing")
    with pytest.raises(MeasurementError, match=r"config\.yaml"):
        measure_started(model_repository, "no_such_model", MeasurePlan(**SMALL), print)


def test_worst_case_requests_honour_the_capped_batch_size(model_repository):
    image = model_config(model_repository / "squeezenet1_1")
    header, data = split_binary(*worst_case_request(image, 8))
    assert header["inputs"][0]["shape"] == [8, 3, 224, 224]
    assert len(data) == 8 * 3 * 224 * 224 * 4

    text = model_config(model_repository / "kim_cnn")
    doc, _ = split_binary(*worst_case_request(text, 4))
    rows = doc["inputs"][0]["data"]
    # Four rows at the preprocessor's max_length: words from the corpus, not empty.
    assert len(rows) == 4 and all(len(r.split()) >= 64 for r in rows)


def test_a_request_from_metadata_for_a_model_the_profiles_do_not_know():
    metadata = {
        "inputs": [
            {"name": "tokens", "datatype": "INT64", "shape": [-1, -1]},
            {"name": "features", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "score"}],
    }
    header, data = split_binary(*infer_request(metadata))
    tokens, features, text = header["inputs"]
    assert tokens["shape"] == [1, 16] and features["shape"] == [1, 4]
    assert len(data) == 16 * 8 + 4 * 4
    assert text["shape"] == [1] and isinstance(text["data"][0], str)
    assert header["outputs"] == [{"name": "score", "parameters": {"binary_data": True}}]
    with pytest.raises(MeasurementError, match="BF16"):
        infer_request({"inputs": [{"name": "x", "datatype": "BF16", "shape": [-1]}]})


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "http://", "http://127.0.0.1:1/?a=b"])
def test_only_plain_base_urls_are_taken(url):
    with pytest.raises(MeasurementError):
        Target.parse(url)


def test_reported_cold_start_keys():
    assert reported_cold_start({"parameters": {"cold_start_model_ready_s": 0.4}}) == 0.4
    assert reported_cold_start({"parameters": {"cold_start_ready_s": 0.3}}) == 0.3
    assert reported_cold_start({"parameters": {"state": "ready"}}) is None


# -- real runtimes ----------------------------------------------------------------------------


@pytest.mark.integration
def test_measure_started_squeezenet(model_repository, tmp_path):
    plan = MeasurePlan(**SMALL, batch_sizes=(1, 32), queue_delays_ms=(2.0,))
    lines: list[str] = []
    measured = measure_started(model_repository, "squeezenet1_1", plan, lines.append)

    assert measured.model == "squeezenet1_1" and measured.config_max_batch_size == 32
    assert [s.setting for s in measured.settings] == [
        RuntimeSetting(1, 1, 0.0),
        RuntimeSetting(1, 32, 2.0),
    ]
    for result in measured.settings:
        assert [p.concurrency for p in result.points] == [1, 2]
        assert all(len(p.latencies_ms) == 20 and p.throughput_rps > 0 for p in result.points)
        assert all(v > 0 for p in result.points for v in p.latencies_ms)
    one, many = (s.peak_rss_mib for s in measured.settings)
    assert one is not None and many is not None and one > 0
    # 32 images of 3x224x224 and their activations: far above any difference between
    # two processes' load.
    assert many > one
    assert len(measured.cold_start_s) == 2 and all(c > 0 for c in measured.cold_start_s)
    assert any("t1-b32-d2: C=2 p99" in line for line in lines)

    measured.save(tmp_path)
    assert read_results(tmp_path) == measured


@pytest.mark.integration
def test_measure_started_a_text_model(model_repository):
    plan = MeasurePlan(
        threads=(1,),
        batch_sizes=(4,),
        queue_delays_ms=(2.0,),
        concurrency=(1,),
        requests=10,
        cold_starts=1,
    )
    measured = measure_started(model_repository, "kim_cnn", plan, lambda line: None)
    (result,) = measured.settings
    assert result.setting == RuntimeSetting(1, 4, 2.0)
    assert result.peak_rss_mib is not None and result.peak_rss_mib > 0
    assert len(result.points[0].latencies_ms) == 10


@pytest.mark.integration
def test_measure_url_reads_the_setting_from_config(model_repository, start_runtime):
    env = {
        "KINDLING_MAX_BATCH_SIZE": "4",
        "KINDLING_MAX_QUEUE_DELAY_MS": "3",
        "KINDLING_THREADS": "1",
    }
    runtime = start_runtime(model_repository, models=("kim_cnn",), env=env)
    url = f"http://{runtime.url}"
    plan = MeasurePlan(concurrency=(1, 2), requests=20, cold_starts=1)

    measured = measure_url(url, "kim_cnn", plan, lambda line: None)

    (result,) = measured.settings
    # The threads from /config's intra_op_thread_count, as Triton's onnxruntime backend.
    assert result.setting == RuntimeSetting(1, 4, 3.0) == url_setting(url, "kim_cnn")
    assert result.peak_rss_mib is None
    assert [p.concurrency for p in result.points] == [1, 2]
    assert len(measured.cold_start_s) == 1 and measured.cold_start_s[0] > 0
    assert measured.source == url
    with pytest.raises(MeasurementError, match="HTTP 404"):
        measure_url(url, "no_such_model", plan, lambda line: None)


class _Handler(BaseHTTPRequestHandler):
    """A runtime that reports no cold start, and one path that redirects."""

    def do_GET(self) -> None:
        if self.path.startswith("/moved"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.endswith("/config"):
            doc: dict = {"name": "m", "max_batch_size": 0}
        else:
            doc = {"name": "m", "inputs": [], "parameters": {"state": "ready"}}
        reply_json(self, doc)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def plain_server() -> Iterator[str]:
    with serving(ThreadingHTTPServer(("127.0.0.1", 0), _Handler)) as url:
        yield url


@pytest.mark.integration
def test_measure_url_without_a_reported_cold_start_says_what_to_do(plain_server):
    with pytest.raises(MeasurementError, match="--from"):
        measure_url(plain_server, "m", MeasurePlan(), lambda line: None)


@pytest.mark.integration
def test_redirects_are_refused(plain_server):
    with pytest.raises(MeasurementError, match="redirects"):
        measure_url(plain_server + "/moved", "m", MeasurePlan(), lambda line: None)
