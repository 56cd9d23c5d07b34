"""The inputs without a Prometheus: scrape every pod's /metrics and difference the counters.

`ScrapeSource` GETs each pod's /metrics (the pods come from `endpoints`, which the loop wires
to the Knative Service's or Deployment's pods), parses the text exposition the runtime writes
(core/metrics.py, format 0.0.4) and keeps the last scrape per pod, so the next call turns
counter deltas into a rate and histogram sum/count deltas into a mean service time.

What a call returns, and when it raises InputUnavailable:
- no endpoints, or no pod answered (refused, timed out, non-200, too big, garbled): raises;
- the first call for a model, or one where no answering pod was scraped before (a full
  rollout between two calls): raises, since there is no delta yet ("rate 0" would read as
  "no traffic" and let the policy scale down); that call's scrapes are the baseline;
- otherwise a sample from the pods that have a previous scrape. A pod seen for the first time
  is a baseline only, as in Prometheus' rate(): its counters may hold requests from before
  the previous call, which we cannot tell apart; unless its process started after the
  previous call (`process_start_time_seconds`), when everything it counted is new: the
  request that woke a model from zero is seen, which Prometheus' rate() cannot see and
  the idle-gap learning needs (policy.py). A new pod still counts in `pods`,
  `concurrency` and `cold_start_s`.

`pods` counts the pods that answered and report this model ready (a pod still loading answers
but cannot serve it), as the Prometheus source counts the model's `ready` series;
`cold_start_s` is the largest of their `ready` times; `concurrency` the sum of their
in-flight gauges at the scrape; rates use the caller's `now` as the clock, so the delta
spans exactly the time between two calls for that pod.

Counter resets (the runtime restarted behind the same address) are detected when any counter
goes down or the model's cold-start `ready` time changes (a new process has a new timeline);
the delta is then the whole new value, as Prometheus counts a reset.

Also here: `bounded_get`, the one HTTP GET both sources use, bounded in time and size.
"""

from __future__ import annotations

import http.client
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

from kindling.controller.inputs import InputUnavailable, ModelRef, ModelSample

# /metrics of a one-model runtime is ~6 KB (core/metrics.py: 14 latency buckets x 3 phases,
# 8 batch buckets); 1 MiB leaves room for many models per pod and refuses a runaway body.
SCRAPE_MAX_BYTES = 1 << 20
# Prometheus' own default scrape_timeout is 10 s; the controller decides every few seconds
# (Knative's KPA ticks every 2 s), so a pod that cannot answer in 2 s counts as down.
SCRAPE_TIMEOUT_S = 2.0
# Threads scraping at once: a model rarely has more warm pods; more are scraped in turns,
# all within the same deadline.
SCRAPE_PARALLEL = 16

REQUESTS = "kindling_requests_total"
DURATION = "kindling_request_duration_seconds"
IN_FLIGHT = "kindling_requests_in_flight"
COLD_START = "kindling_cold_start_phase_seconds"
PROCESS_START = "process_start_time_seconds"
# runtime/dataplane.py observes "queue", "compute" and "total"; "total" is the request's
# whole time in the pod, from arrival to response.
SERVICE_PHASE = "total"
# runtime/coldstart.py MODEL_PHASES: "ready" is stamped when this model's session is built
# and warmed up (runtime/model.py load), in seconds since the process's exec: the pod can
# serve the model from then on. The process-level phases carry model="" and are not this
# model's: a pod with several models is ready only when all are, but a request for this
# one can be served once it is.
READY_PHASE = "ready"


# -- HTTP ------------------------------------------------------------------------------


def _abort(conn: http.client.HTTPConnection, fired: threading.Event) -> None:
    """Unblock a read stuck on a silent or trickling server: shut the socket down under it
    (per-read socket timeouts alone let a server that sends one byte per timeout hold a
    request forever). The raw socket's shutdown, not SSLSocket's, which tears down its TLS
    state under the reading thread."""
    fired.set()
    sock = conn.sock
    if sock is not None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def bounded_get(
    url: str,
    *,
    deadline: float,
    max_bytes: int,
    headers: Mapping[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[int, bytes]:
    """(status, body) of GET `url`, finished by `deadline` (time.monotonic()) or raising
    InputUnavailable: on a refused or dropped connection, a silent or slow server, a body
    over `max_bytes` and any redirect (never followed: a redirect could send the request,
    and its headers, to another host). Name resolution is the one step the deadline cannot
    cut short (getaddrinfo blocks); pod and Service addresses need none or a cluster DNS."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputUnavailable(f"{url!r}: not an http(s) URL")
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise InputUnavailable(f"{url}: no time left to ask")
    try:
        port = parts.port
    except ValueError as exc:
        raise InputUnavailable(f"{url!r}: {exc}") from exc
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        context = ssl_context or ssl.create_default_context()
        conn = http.client.HTTPSConnection(parts.hostname, port, timeout=remaining, context=context)
    else:
        conn = http.client.HTTPConnection(parts.hostname, port, timeout=remaining)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    fired = threading.Event()
    timer = threading.Timer(remaining, _abort, (conn, fired))
    timer.daemon = True
    timer.start()
    try:
        conn.request("GET", target, headers={"Connection": "close", **(headers or {})})
        response = conn.getresponse()
        if 300 <= response.status < 400:
            where = response.getheader("Location", "?")
            raise InputUnavailable(f"{url}: HTTP {response.status} to {where!r}, not followed")
        length = response.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise InputUnavailable(f"{url}: body of {length} bytes, over {max_bytes}")
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed while reading the body")
            if conn.sock is not None:
                conn.sock.settimeout(left)
            chunk = response.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise InputUnavailable(f"{url}: body over {max_bytes} bytes")
            chunks.append(chunk)
        if fired.is_set():
            raise TimeoutError("deadline passed")
        return response.status, b"".join(chunks)
    except InputUnavailable:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        why = "timed out" if fired.is_set() or isinstance(exc, TimeoutError) else repr(exc)
        raise InputUnavailable(f"{url}: {why}") from exc
    finally:
        timer.cancel()
        conn.close()


# -- the text exposition format ----------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?[ \t]*")
_LABEL = re.compile(r'[ \t]*([a-zA-Z_][a-zA-Z0-9_]*)[ \t]*=[ \t]*"((?:[^"\\]|\\.)*)"[ \t]*(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
_ESCAPED = re.compile(r"\\(.)")

Labels = tuple[tuple[str, str], ...]


class ExpositionError(ValueError):
    """A /metrics body that is not the text format: the whole scrape is refused, as
    Prometheus refuses it."""


def _unescape(value: str, line: int) -> str:
    def one(m: re.Match[str]) -> str:
        found = _UNESCAPE.get(m.group(0))
        if found is None:
            raise ExpositionError(f"line {line}: bad escape {m.group(0)!r}")
        return found

    return _ESCAPED.sub(one, value)


def _labels(text: str, line: int) -> Labels:
    labels: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip(", \t")  # a trailing comma is allowed by the format
    while pos < len(text):
        m = _LABEL.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpositionError(f"line {line}: bad labels {text!r}")
        labels.append((m.group(1), _unescape(m.group(2), line)))
        pos = m.end()
    names = [n for n, _ in labels]
    if len(set(names)) != len(names):
        raise ExpositionError(f"line {line}: repeated label in {text!r}")
    return tuple(sorted(labels))


def _value(text: str, line: int) -> float:
    # The format's spellings only: Python's float() also takes "1_0" and "infinity".
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    if not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text):
        raise ExpositionError(f"line {line}: bad value {text!r}")
    return float(text)


def parse_exposition(text: str) -> Iterator[tuple[str, Labels, float]]:
    """(name, sorted labels, value) for every sample line; raises ExpositionError on any line
    that is not a comment, blank, or a well-formed sample."""
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _SAMPLE.fullmatch(line.strip())
        if m is None:
            raise ExpositionError(f"line {number}: not a sample: {line[:120]!r}")
        name, labels, value = m.group(1), m.group(2), m.group(3)
        yield name, _labels(labels or "", number), _value(value, number)


# -- one pod's figures -------------------------------------------------------------------


@dataclass(frozen=True)
class PodFigures:
    """What one scrape of one pod says about one model."""

    requests: float  # finished requests, every status
    busy_s: float  # sum of the "total" phase durations
    done: float  # count of the "total" phase durations
    in_flight: float
    ready_s: float | None  # cold start: exec to this model ready; None while loading
    started: float | None = None  # process_start_time_seconds: the pod's process, epoch s


def pod_figures(body: bytes, model: str) -> PodFigures:
    """The model's figures in one /metrics body; ExpositionError on a garbled body or a
    value no runtime writes (a negative or non-finite counter)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ExpositionError(f"not UTF-8: {exc}") from exc
    requests = busy = done = in_flight = 0.0
    ready: float | None = None
    started: float | None = None
    for name, labels, value in parse_exposition(text):
        if name == PROCESS_START and not labels and math.isfinite(value) and value > 0:
            started = value
            continue
        if name not in (REQUESTS, f"{DURATION}_sum", f"{DURATION}_count", IN_FLIGHT, COLD_START):
            continue
        found = dict(labels)
        if found.get("model") != model:
            continue
        # Every figure used here is a count, a sum of durations or a time since exec.
        if not math.isfinite(value) or value < 0:
            raise ExpositionError(f"{name}{found} = {value}: not a count or a duration")
        if name == REQUESTS:
            requests += value
        elif name == IN_FLIGHT:
            in_flight += value
        elif found.get("phase") == SERVICE_PHASE and name == f"{DURATION}_sum":
            busy += value
        elif found.get("phase") == SERVICE_PHASE and name == f"{DURATION}_count":
            done += value
        elif name == COLD_START and found.get("phase") == READY_PHASE:
            ready = value
    return PodFigures(requests, busy, done, in_flight, ready, started)


# A counter's value before its process counted anything: the base of a reset or a new pod.
_NOTHING = PodFigures(0.0, 0.0, 0.0, 0.0, None)


@dataclass(frozen=True)
class _Seen:
    t: float
    figures: PodFigures


def _reset(old: PodFigures, new: PodFigures) -> bool:
    return (
        new.requests < old.requests
        or new.done < old.done
        or new.busy_s < old.busy_s
        or (old.ready_s is not None and new.ready_s != old.ready_s)
    )


def _started_since(figures: PodFigures, asked: float | None, now: float) -> bool:
    """The pod's process started between the model's last call and now (its clock and the
    controller's are the cluster's; one set ahead would count a little too much)."""
    started = figures.started
    return started is not None and asked is not None and asked <= started <= now


# -- the source --------------------------------------------------------------------------


class ScrapeSource:
    """MetricsSource over the pods' own /metrics, for clusters without a Prometheus."""

    def __init__(
        self,
        endpoints: Callable[[ModelRef], list[str]],
        *,
        timeout_s: float = SCRAPE_TIMEOUT_S,
        max_bytes: int = SCRAPE_MAX_BYTES,
        parallel: int = SCRAPE_PARALLEL,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        if max_bytes <= 0 or parallel <= 0:
            raise ValueError("max_bytes and parallel must be positive")
        self.endpoints = endpoints
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.parallel = parallel
        self.headers = dict(headers or {})
        self.ssl_context = ssl_context
        # The last good scrape per model and pod URL: only pods `endpoints` still lists are
        # kept, so the memory is bounded by the pods that exist.
        self._seen: dict[ModelRef, dict[str, _Seen]] = {}
        # When each model was last asked for, whatever the answer (new pods started after
        # it count whole: see sample).
        self._asked: dict[ModelRef, float] = {}

    @staticmethod
    def metrics_url(endpoint: str) -> str:
        """A pod URL with no path gets /metrics; one with a path is scraped as given."""
        parts = urllib.parse.urlsplit(endpoint)
        if parts.path in ("", "/"):
            return urllib.parse.urlunsplit(parts._replace(path="/metrics"))
        return endpoint

    def forget(self, ref: ModelRef) -> None:
        """Drop a model no longer managed (its baselines would otherwise stay)."""
        self._seen.pop(ref, None)
        self._asked.pop(ref, None)

    def _scrape(self, url: str, model: str, deadline: float) -> PodFigures:
        status, body = bounded_get(
            self.metrics_url(url),
            deadline=deadline,
            max_bytes=self.max_bytes,
            headers={"Accept": "text/plain", **self.headers},
            ssl_context=self.ssl_context,
        )
        if status != 200:
            raise InputUnavailable(f"{url}: HTTP {status}")
        try:
            return pod_figures(body, model)
        except ExpositionError as exc:
            raise InputUnavailable(f"{url}: {exc}") from exc

    def _scrape_all(self, urls: list[str], model: str) -> tuple[dict[str, PodFigures], list[str]]:
        deadline = time.monotonic() + self.timeout_s
        pool = ThreadPoolExecutor(min(self.parallel, len(urls)), thread_name_prefix="scrape")
        try:
            futures = {url: pool.submit(self._scrape, url, model, deadline) for url in urls}
            # Every fetch ends by `deadline` on its own; the margin covers thread start-up.
            wait(futures.values(), timeout=self.timeout_s + 1.0)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        answered: dict[str, PodFigures] = {}
        errors: list[str] = []
        for url, future in futures.items():
            if not future.done():
                errors.append(f"{url}: timed out")
                continue
            exc = future.exception()
            if exc is None:
                answered[url] = future.result()
            else:
                errors.append(str(exc))
        return answered, errors

    def sample(self, ref: ModelRef, now: float) -> ModelSample:
        asked, self._asked[ref] = self._asked.get(ref), now
        urls = list(dict.fromkeys(self.endpoints(ref)))
        if not urls:
            raise InputUnavailable(f"{ref.namespace}/{ref.workload}: no pods to scrape")
        answered, errors = self._scrape_all(urls, ref.model)
        previous = self._seen.get(ref, {})
        # Pods no longer listed are forgotten; listed pods that did not answer keep their
        # last scrape, so their next delta spans the gap.
        kept = {u: previous[u] for u in urls if u in previous}
        kept.update({u: _Seen(now, f) for u, f in answered.items()})
        self._seen[ref] = kept
        if not answered:
            raise InputUnavailable(
                f"{ref.namespace}/{ref.workload}: no pod answered: {'; '.join(errors)[:500]}"
            )

        rate = busy = done = 0.0
        deltas = 0
        for url, figures in answered.items():
            old = previous.get(url)
            if old is None and _started_since(figures, asked, now):
                # A pod whose process started after the last call: everything it counted
                # is new (the request that woke a model from zero is seen, not a baseline).
                assert asked is not None
                old = _Seen(asked, _NOTHING)
            if old is None or now <= old.t:
                continue  # a new pod (or a clock that did not move): a baseline only
            base = _NOTHING if _reset(old.figures, figures) else old.figures
            rate += (figures.requests - base.requests) / (now - old.t)
            busy += figures.busy_s - base.busy_s
            done += figures.done - base.done
            deltas += 1
        if not deltas:
            raise InputUnavailable(
                f"{ref.namespace}/{ref.workload}: first scrape of these pods, a baseline only"
            )
        ready = [f.ready_s for f in answered.values() if f.ready_s is not None]
        return ModelSample(
            t=now,
            rate_rps=rate,
            service_time_s=busy / done if done > 0 else None,
            # The gauge at the scrape, every pod together: an instant, not a mean.
            concurrency=sum(f.in_flight for f in answered.values()),
            # The slowest of the pods up now: the lead must cover the cold start a new pod
            # will most likely take, and under-estimating costs cold requests.
            cold_start_s=max(ready) if ready else None,
            pods=len(ready),
        )
