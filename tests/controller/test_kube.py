"""Retry classification and backoff (controller/kube.py), against a real loopback HTTP server
that answers 409/429/503 before 200, with the kubernetes client pointed at it. The sleep
is injected and records the waits: nothing here waits on a clock."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kindling.cluster.processes import free_port
from kindling.controller import kube
from tests.controller.faults import Fault, FaultServer, fault_server

LEASE = b'{"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"}}'


def _client(url: str) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = url
    return kube.own_retries(client.ApiClient(configuration))


class Recorder:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleep() -> Recorder:
    return Recorder()


def _retry(sleep: Recorder, **kwargs: Any) -> kube.Retry:
    return kube.Retry(sleep=sleep, rng=random.Random(7), **kwargs)


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with fault_server(
        [Fault(409), Fault(429, {"Retry-After": "3"}), Fault(503)], ok_body=LEASE
    ) as s:
        yield s


def test_409_429_503_are_retried_until_the_answer_comes(
    server: FaultServer, sleep: Recorder
) -> None:
    retry = _retry(sleep)
    with _client(server.url) as api:
        lease = retry.call(
            lambda: client.CoordinationV1Api(api).read_namespaced_lease(
                "x", "ns", **kube.request_kwargs()
            )
        )
    assert lease.metadata.name == "x"
    assert [s for _, _, s in server.seen] == [409, 429, 503, 200]
    assert len(sleep.waits) == 3
    # Retry-After honoured: at least the 3 s the server asked for after the 429.
    assert sleep.waits[1] >= 3.0
    # Full jitter below the exponential cap of each attempt.
    assert 0 <= sleep.waits[0] <= retry.base_s
    assert 0 <= sleep.waits[2] <= retry.base_s * 4


def test_attempts_are_bounded_then_it_raises(sleep: Recorder) -> None:
    seen: list[tuple[int, kube.KubeError]] = []
    with fault_server([Fault(503)] * 10) as server, _client(server.url) as api:
        retry = _retry(sleep, attempts=4, on_retry=lambda n, e, _: seen.append((n, e)))
        with pytest.raises(kube.RetriesExhausted) as raised:
            retry.call(lambda: client.CoreV1Api(api).read_namespace("x", **kube.request_kwargs()))
    assert len(server.seen) == 4 and len(sleep.waits) == 3
    assert [n for n, _ in seen] == [0, 1, 2]
    assert isinstance(raised.value.__cause__, kube.Retryable)
    assert raised.value.status == 503


@pytest.mark.parametrize(
    ("status", "kind"), [(403, kube.Forbidden), (404, kube.NotFound), (422, kube.Permanent)]
)
def test_permanent_errors_are_raised_at_once(
    status: int, kind: type[kube.KubeError], sleep: Recorder
) -> None:
    with fault_server([Fault(status)]) as server, _client(server.url) as api:
        with pytest.raises(kind) as raised:
            _retry(sleep).call(lambda: client.CoreV1Api(api).read_namespace("x"))
    assert raised.value.status == status
    assert sleep.waits == [] and len(server.seen) == 1


def test_a_refused_connection_is_retried(sleep: Recorder) -> None:
    # A port nothing listens on: the API server is down.
    with _client(f"http://127.0.0.1:{free_port()}") as api:
        with pytest.raises(kube.RetriesExhausted) as raised:
            _retry(sleep, attempts=3).call(lambda: client.CoreV1Api(api).read_namespace("x"))
    assert isinstance(raised.value.__cause__, kube.Retryable)
    assert len(sleep.waits) == 2


def test_backoff_is_exponential_with_full_jitter_and_a_cap() -> None:
    retry = kube.Retry(base_s=1.0, cap_s=8.0, rng=random.Random(1))
    error = kube.Retryable("503", 503)
    for attempt in range(8):
        bound = min(8.0, 2.0**attempt)
        waits = [retry.delay(attempt, error) for _ in range(200)]
        assert all(0 <= w <= bound for w in waits)
        assert max(waits) > bound / 2  # spread over the whole range, not a fixed step
    # A Retry-After beyond what the loop can wait is capped.
    late = kube.Retryable("429", 429, retry_after_s=600)
    assert retry.delay(0, late) <= retry.max_retry_after_s + 1.0


def test_classify() -> None:
    assert isinstance(kube.classify(ApiException(status=409)), kube.Conflict)
    assert isinstance(kube.classify(ApiException(status=500)), kube.Retryable)
    assert isinstance(kube.classify(ApiException(status=403)), kube.Forbidden)
    assert isinstance(kube.classify(ApiException(status=400)), kube.Permanent)
    assert isinstance(kube.classify(TimeoutError()), kube.Retryable)
    assert kube.classify(ValueError()) is None  # a bug of ours is not an API failure


def test_a_bug_is_not_retried(sleep: Recorder) -> None:
    calls = []

    def broken() -> None:
        calls.append(1)
        raise KeyError("x")

    with pytest.raises(KeyError):
        _retry(sleep).call(broken)
    assert calls == [1] and sleep.waits == []


def test_a_json_patch_that_no_longer_applies_is_a_conflict(sleep: Recorder) -> None:
    """kube-apiserver answers a failed `test` op with a bare 422 (no causes); a 422 naming
    its causes is a real validation error: permanent."""
    body = [{"op": "test", "path": "/metadata/annotations/a", "value": "1"}]
    invalid = {"details": {"causes": [{"field": "metadata.annotations", "message": "bad"}]}}
    with fault_server([Fault(422)]) as bare, _client(bare.url) as api:
        with pytest.raises(kube.Conflict):
            kube.json_patch(api, "g", "v1", "ns", "things", "x", body)
        assert kube.json_patch(api, "g", "v1", "ns", "things", "x", body) == {}
    with fault_server([Fault(422, body=invalid)]) as causes, _client(causes.url) as api:
        with pytest.raises(kube.Permanent) as raised:
            kube.json_patch(api, "g", "v1", "ns", "things", "x", body)
        assert not isinstance(raised.value, kube.Conflict)
    assert kube.escape_pointer("autoscaling.knative.dev/min-scale") == (
        "autoscaling.knative.dev~1min-scale"
    )
