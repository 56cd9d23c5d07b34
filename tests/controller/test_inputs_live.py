"""The forecast inputs from real parts: two `kindling serve` processes under a short load of
real inference requests, a real Prometheus server scraping them, and both metrics sources
reading what was sent.

Nothing waits on time: each step waits until Prometheus (or the runtime) shows the event,
with a safety-net timeout only.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from kindling.controller.inputs import InputUnavailable, ModelRef
from kindling.controller.prometheus import PrometheusSource
from kindling.controller.scrape import ScrapeSource
from kindling.loadtest.bench_runtime import binary_request
from tests.conftest import RuntimeProcess, StartRuntime
from tests.controller.live_fixtures import PrometheusServer, Target, prometheus, version, wait_until

pytestmark = pytest.mark.integration
__all__ = ["prometheus"]  # the fixture, imported for pytest

MODEL = "squeezenet1_1"  # a small image model: ~10 ms a request on one CPU core
NAMESPACE = "kindling-live"
WORKLOAD = "squeezenet"
# Pod names as Knative gives them: <revision>-deployment-<hash>-<id>, the revision being
# <service>-<generation>; the default selector's `pod=~"<workload>-.+"` must match them.
PODS = (
    "squeezenet-00001-deployment-7d9f8c6b5-x2x7k",
    "squeezenet-00001-deployment-7d9f8c6b5-q9m4p",
)
REQUESTS_PER_POD = 30
CLIENTS_PER_POD = 3
WINDOW_S = 600.0  # covers the whole test, so rate() sees the load between two samples


def runtime_metrics(runtime: RuntimeProcess) -> str:
    status, body = runtime.get("/metrics")
    assert status == 200
    return body.decode()


def figure(text: str, name: str, **labels: str) -> float | None:
    """One sample of the runtime's own /metrics, read with a regex: the test's own reading,
    independent of the parser under test."""
    for line in text.splitlines():
        m = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if m and dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))) == labels:
            return float(m.group(2))
    return None


def totals(text: str) -> tuple[float, float, float]:
    """(requests, duration sum, duration count) of the model's total phase."""
    requests = figure(text, "kindling_requests_total", model=MODEL, status="200") or 0.0
    busy = figure(text, "kindling_request_duration_seconds_sum", model=MODEL, phase="total")
    done = figure(text, "kindling_request_duration_seconds_count", model=MODEL, phase="total")
    return requests, busy or 0.0, done or 0.0


def buckets(text: str) -> dict[float, float]:
    found: dict[float, float] = {}
    for line in text.splitlines():
        m = re.fullmatch(
            rf'kindling_request_duration_seconds_bucket\{{model="{MODEL}",phase="total",'
            r'le="([^"]+)"\} (\S+)',
            line,
        )
        if m:
            found[float(m.group(1))] = float(m.group(2))
    return found


def span(before: list[str], after: list[str]) -> tuple[float, float]:
    """The narrowest [low, high] holding every request observed between the two readings of
    each runtime: from the bounds of the lowest and highest histogram buckets that grew."""
    grew: list[tuple[float, float]] = []
    for old_text, new_text in zip(before, after, strict=True):
        old, new = buckets(old_text), buckets(new_text)
        bounds = sorted(new)
        previous_cumulative = 0.0
        lower = 0.0
        for le in bounds:
            added = (new[le] - old.get(le, 0.0)) - previous_cumulative
            previous_cumulative = new[le] - old.get(le, 0.0)
            if added > 0:
                grew.append((lower, le))
            lower = le
    return min(low for low, _ in grew), max(high for _, high in grew)


def infer(runtime: RuntimeProcess, body: bytes, headers: dict[str, str]) -> int:
    status, _, _ = runtime.post(f"/v2/models/{MODEL}/infer", body, headers)
    return status


def load(runtimes: list[RuntimeProcess], per_pod: int) -> None:
    """`per_pod` real inference requests to each runtime, a few clients each at once."""
    batch = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    body, headers = binary_request(batch)
    with ThreadPoolExecutor(CLIENTS_PER_POD * len(runtimes)) as pool:
        futures = [pool.submit(infer, r, body, headers) for r in runtimes for _ in range(per_pod)]
        assert [f.result() for f in futures] == [200] * len(futures)


def seen_by_prometheus(server: PrometheusServer, count: int) -> Callable[[], bool | None]:
    """True once Prometheus has scraped `count` finished requests per pod from every pod."""

    def probe() -> bool | None:
        result = server.query(f'kindling_requests_total{{model="{MODEL}"}}')
        values = [float(r["value"][1]) for r in result]
        return True if len(values) == len(PODS) and all(v == count for v in values) else None

    return probe


def test_sources_read_what_the_runtimes_served(
    model_repository: Path,
    start_runtime: StartRuntime,
    prometheus: Callable[[list[Target]], PrometheusServer],
) -> None:
    runtimes = [start_runtime(model_repository, models=(MODEL,)) for _ in PODS]
    server = prometheus(
        [Target(r.url, NAMESPACE, pod) for r, pod in zip(runtimes, PODS, strict=True)]
    )
    ref = ModelRef(NAMESPACE, WORKLOAD, MODEL)
    from_prometheus = PrometheusSource(server.url, window_s=WINDOW_S, timeout_s=10)
    from_pods = ScrapeSource(lambda r: [f"http://{rt.url}" for rt in runtimes], timeout_s=10)

    # One request each creates the runtimes' request series (they appear on a model's first
    # request); once Prometheus has scraped them, they are rate()'s starting samples.
    load(runtimes, 1)
    wait_until(seen_by_prometheus(server, 1), "Prometheus to scrape the first request")
    t0 = time.time()
    with pytest.raises(InputUnavailable, match="baseline"):
        from_pods.sample(ref, t0)  # the first scrape has no delta
    before = [runtime_metrics(r) for r in runtimes]

    load(runtimes, REQUESTS_PER_POD)
    after = [runtime_metrics(r) for r in runtimes]
    sent = REQUESTS_PER_POD * len(runtimes)
    # What the runtimes themselves report for the load.
    served = [np.subtract(totals(a), totals(b)) for a, b in zip(after, before, strict=True)]
    assert sum(s[0] for s in served) == sent
    runtime_mean = sum(s[1] for s in served) / sum(s[2] for s in served)
    low, high = span(before, after)
    cold_starts = [
        figure(a, "kindling_cold_start_phase_seconds", model=MODEL, phase="ready") for a in after
    ]
    assert all(c is not None and c > 0 for c in cold_starts)

    # -- straight from the pods ---------------------------------------------------------
    t1 = time.time()
    direct = from_pods.sample(ref, t1)
    assert direct.pods == len(PODS)
    assert math.isclose(direct.rate_rps * (t1 - t0), sent, rel_tol=1e-9)
    assert direct.service_time_s is not None
    assert math.isclose(direct.service_time_s, runtime_mean, rel_tol=1e-9)
    assert direct.concurrency == 0  # nothing in flight once the load has finished
    assert direct.cold_start_s == max(cold_starts)

    # -- through Prometheus --------------------------------------------------------------
    wait_until(seen_by_prometheus(server, 1 + REQUESTS_PER_POD), "Prometheus to scrape the load")
    through = from_prometheus.sample(ref, time.time())
    assert through.pods == len(PODS)
    # rate() extrapolates the delta between its first and last samples, which hold the
    # whole load, to the window's edges, never below it: rate x window >= requests sent.
    assert through.rate_rps > 0
    assert through.rate_rps * WINDOW_S >= sent * (1 - 1e-9)
    assert through.service_time_s is not None
    assert low <= through.service_time_s <= high
    assert through.concurrency is not None and 0 <= through.concurrency <= CLIENTS_PER_POD * 2
    assert through.cold_start_s == max(cold_starts)

    # A model name built to break out of the selector's string finds nothing: the query is
    # still well-formed (not HTTP 400) and matches no series.
    hostile = ModelRef(NAMESPACE, WORKLOAD, f'{MODEL}"}} or vector(1) or {{x="')
    with pytest.raises(InputUnavailable, match="no series match"):
        from_prometheus.sample(hostile, time.time())
    wider = ModelRef(NAMESPACE, "squeezenet.00001", MODEL)  # "." must not match "-"
    with pytest.raises(InputUnavailable, match="no series match"):
        from_prometheus.sample(wider, time.time())

    # -- one pod goes ----------------------------------------------------------------------
    runtimes[1].stop()
    one_left = from_pods.sample(ref, time.time())
    assert one_left.pods == 1
    assert one_left.rate_rps == 0.0 and one_left.service_time_s is None
    # Prometheus marks the stopped target's series stale at its next failed scrape.
    ready = f'count(kindling_cold_start_phase_seconds{{model="{MODEL}",phase="ready"}})'
    wait_until(lambda: True if server.value(ready) == 1 else None, "Prometheus to see a pod go")
    assert from_prometheus.sample(ref, time.time()).pods == 1

    print(
        f"\n{version()}; {sent} requests over {len(PODS)} runtimes\n"
        f"runtime: mean {runtime_mean * 1000:.2f} ms (buckets {low * 1000:g}-{high * 1000:g} ms),"
        f" cold start {[round(c, 3) for c in cold_starts]} s\n"
        f"scrape: rate {direct.rate_rps:.2f}/s over {t1 - t0:.2f} s, service"
        f" {direct.service_time_s * 1000:.2f} ms, concurrency {direct.concurrency},"
        f" cold start {direct.cold_start_s:.3f} s, pods {direct.pods}\n"
        f"prometheus: rate {through.rate_rps:.4f}/s over {WINDOW_S:g} s, service"
        f" {through.service_time_s * 1000:.2f} ms, concurrency {through.concurrency:.4f},"
        f" cold start {through.cold_start_s:.3f} s, pods {through.pods}"
    )
