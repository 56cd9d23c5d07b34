"""The inputs from a Prometheus server: one instant query per sample on /api/v1/query.

All six quantities come from one query, each tagged with a `q` label by label_replace and
joined with `or`, so they are evaluated at the same instant over the same window and one
timeout bounds the whole sample (W = window_s, S = the selector):

    rate        sum(rate(kindling_requests_total{S}[W]))                       every status
    busy, done  sum(rate(kindling_request_duration_seconds_{sum,count}{S,phase="total"}[W]))
                service time = busy / done, the mean request time in the pod
    in_flight   sum(avg_over_time(kindling_requests_in_flight{S}[W]))          mean, all pods
    cold_start  max(kindling_cold_start_phase_seconds{S,phase="ready"})        exec to ready
    pods        count(kindling_cold_start_phase_seconds{S,phase="ready"})

The selector comes from a template of label matchers with {namespace}, {workload} and
{model} placeholders. The default, `DEFAULT_SELECTOR`, fits the `kubernetes-pods` job of
Prometheus' example Kubernetes config and of the prometheus-community chart (pods annotated
`prometheus.io/scrape: "true"`, as the Kindling chart annotates its runtime pods), which
copies the pod's namespace and name into the `namespace` and `pod` labels; `model` is the
runtime's own label. A Knative pod's name starts with its Revision's, which starts with the
Service's name (`<service>-00001-deployment-...`, and Knative requires a chosen Revision name
to start with `<service>-` too); a Deployment's pods are `<deployment>-<hash>-<id>`, so the
one prefix match covers both modes. Values are escaped for a PromQL string, and in a regex
matcher (`=~`, `!~`) also for RE2, so no name can end the string or widen the match. A
template must name {model} or {workload}, or every model's series would be summed together.

Empty answers: a quantity whose series exist but saw no request in the window is 0 (rate,
in flight) or None (service time). If nothing matches at all (no pod reports the model ready
and no request series in the window) the call raises InputUnavailable: Prometheus cannot tell
"scaled to zero" from a wrong selector or a target it does not scrape, and the loop must not
scale to zero on missing data. NaN, infinite or negative values, a `status: error` answer, a
non-JSON or mis-shaped body, any redirect, a body over `max_bytes` and a server that does not
answer in `timeout_s` all raise InputUnavailable.
"""

from __future__ import annotations

import json
import math
import re
import ssl
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from kindling.controller.inputs import InputUnavailable, ModelRef, ModelSample
from kindling.controller.scrape import (
    COLD_START,
    DURATION,
    IN_FLIGHT,
    READY_PHASE,
    REQUESTS,
    SERVICE_PHASE,
    bounded_get,
)

DEFAULT_SELECTOR = 'namespace="{namespace}",pod=~"{workload}-.+",model="{model}"'
# Knative's KPA averages over a 60 s stable window (config-autoscaler stable-window): the
# same window makes the forecaster's input as smooth as what the reactive autoscaler sees.
# It must span at least two scrapes for rate() to answer.
WINDOW_S = 60.0
# The loop decides every few seconds; a Prometheus slower than this is down for this round.
QUERY_TIMEOUT_S = 5.0
# The answer is six one-element vectors, well under 2 KB; anything near this cap is not it.
QUERY_MAX_BYTES = 256 << 10

QUANTITIES = ("rate", "busy", "done", "in_flight", "cold_start", "pods")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')
_PLACEHOLDERS = ("namespace", "workload", "model")


def promql_string(value: str) -> str:
    """`value` as the inside of a double-quoted PromQL string. PromQL unquotes strings with
    Go's rules (promql/parser/lex.go, strconv.Unquote), which read every JSON escape; with
    ensure_ascii off, non-ASCII text goes through as UTF-8 rather than as surrogate pairs,
    which Go refuses."""
    return json.dumps(value, ensure_ascii=False)[1:-1]


def re2_literal(value: str) -> str:
    """`value` matched literally by RE2: a backslash before every character that is not a
    letter, digit or non-ASCII (Go's regexp/syntax reads backslash + ASCII punctuation as
    that character)."""
    return "".join(c if c.isalnum() or ord(c) > 127 or c == "_" else "\\" + c for c in value)


class Selector:
    """A label-matcher template, checked once; `render` fills in one model's values."""

    def __init__(self, template: str) -> None:
        self.template = template
        self.matchers: list[tuple[str, str, str]] = []
        pos = 0
        text = template.strip()
        while pos < len(text):
            m = _MATCHER.match(text, pos)
            if m is None or m.end() == pos:
                raise ValueError(
                    f'selector template {template!r}: expected name op "value" at {pos}'
                )
            name, op, value = m.groups()
            try:  # every placeholder must be a known one
                value.format(**dict.fromkeys(_PLACEHOLDERS, ""))
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"selector template {template!r}: {exc!r}") from exc
            self.matchers.append((name, op, value))
            pos = m.end()
        if not any("{model}" in v or "{workload}" in v for _, _, v in self.matchers):
            # Without either, every model's series would be summed into each one's sample.
            raise ValueError(
                f"selector template {template!r}: names neither {{model}} nor {{workload}}"
            )

    def render(self, ref: ModelRef) -> str:
        values = {"namespace": ref.namespace, "workload": ref.workload, "model": ref.model}
        plain = {k: promql_string(v) for k, v in values.items()}
        regex = {k: promql_string(re2_literal(v)) for k, v in values.items()}
        return ",".join(
            f'{name}{op}"{value.format(**(regex if op in ("=~", "!~") else plain))}"'
            for name, op, value in self.matchers
        )


def build_query(selector: str, window_s: float) -> str:
    """The one instant query of a sample; see the module's docstring."""
    window = f"{max(1, round(window_s * 1000))}ms"
    s = f"{selector}," if selector else ""
    parts = {
        "rate": f"sum(rate({REQUESTS}{{{selector}}}[{window}]))",
        "busy": f'sum(rate({DURATION}_sum{{{s}phase="{SERVICE_PHASE}"}}[{window}]))',
        "done": f'sum(rate({DURATION}_count{{{s}phase="{SERVICE_PHASE}"}}[{window}]))',
        "in_flight": f"sum(avg_over_time({IN_FLIGHT}{{{selector}}}[{window}]))",
        "cold_start": f'max({COLD_START}{{{s}phase="{READY_PHASE}"}})',
        "pods": f'count({COLD_START}{{{s}phase="{READY_PHASE}"}})',
    }
    return " or ".join(f'label_replace({e}, "q", "{q}", "", "")' for q, e in parts.items())


def _value(element: Any) -> tuple[str, float]:
    """(q, value) of one result element; ValueError when it is not the expected shape."""
    metric, pair = element["metric"], element["value"]
    q = metric["q"]
    if not isinstance(q, str) or not isinstance(pair, list) or len(pair) != 2:
        raise ValueError(f"unexpected element {element!r:.200}")
    if not isinstance(pair[1], str):
        raise ValueError(f"value {pair[1]!r:.50} is not a string")
    value = float(pair[1])
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{q} = {pair[1]!r:.50}: not a finite count, rate or duration")
    return q, value


def parse_answer(body: bytes) -> dict[str, float]:
    """{q: value} from /api/v1/query's JSON; InputUnavailable on anything else."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InputUnavailable(f"Prometheus answered non-JSON: {body[:100]!r}") from exc
    if not isinstance(answer, dict):
        raise InputUnavailable(f"Prometheus answered {type(answer).__name__}, not an object")
    if answer.get("status") != "success":
        error = f"{answer.get('errorType', '?')}: {answer.get('error', '?')}"
        raise InputUnavailable(f"Prometheus answered status {answer.get('status')!r}: {error:.300}")
    try:
        data = answer["data"]
        if data["resultType"] != "vector" or not isinstance(data["result"], list):
            raise ValueError(f"result type {data['resultType']!r}, not a vector")
        found: dict[str, float] = {}
        for element in data["result"]:
            q, value = _value(element)
            if q not in QUANTITIES or q in found:
                raise ValueError(f"unexpected or repeated quantity {q!r:.50}")
            found[q] = value
    except (KeyError, TypeError, ValueError) as exc:
        raise InputUnavailable(f"Prometheus answered an unexpected shape: {exc}") from exc
    return found


class PrometheusSource:
    """MetricsSource over a Prometheus server's HTTP API."""

    def __init__(
        self,
        url: str,
        *,
        window_s: float = WINDOW_S,
        timeout_s: float = QUERY_TIMEOUT_S,
        selector_template: str = DEFAULT_SELECTOR,
        max_bytes: int = QUERY_MAX_BYTES,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        for name, value in (("window_s", window_s), ("timeout_s", timeout_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Prometheus URL {url!r} is not http(s)://host[:port][/prefix]")
        # A path prefix (Prometheus' --web.route-prefix, or a proxy's) is kept.
        self.endpoint = url.rstrip("/") + "/api/v1/query"
        self.window_s = window_s
        self.timeout_s = timeout_s
        self.selector = Selector(selector_template)
        self.max_bytes = max_bytes
        self.headers = dict(headers or {})
        self.ssl_context = ssl_context

    def forget(self, ref: ModelRef) -> None:
        """Nothing to drop: Prometheus keeps the history, this source keeps none."""

    def query(self, ref: ModelRef) -> str:
        return build_query(self.selector.render(ref), self.window_s)

    def sample(self, ref: ModelRef, now: float) -> ModelSample:
        params = {
            "query": self.query(ref),
            "time": f"{now:.3f}",
            # Prometheus' own limit on the evaluation, so it gives up when we do.
            "timeout": f"{max(1, round(self.timeout_s * 1000))}ms",
        }
        status, body = bounded_get(
            f"{self.endpoint}?{urllib.parse.urlencode(params)}",
            deadline=time.monotonic() + self.timeout_s,
            max_bytes=self.max_bytes,
            headers={"Accept": "application/json", **self.headers},
            ssl_context=self.ssl_context,
        )
        if status != 200:
            # Prometheus answers errors (400 bad_data, 422 execution, 503 unavailable) in
            # its JSON envelope: its reason, when there is one, goes into ours.
            try:
                parse_answer(body)
            except InputUnavailable as exc:
                raise InputUnavailable(f"Prometheus answered HTTP {status}: {exc}") from exc
            raise InputUnavailable(f"Prometheus answered HTTP {status}")
        found = parse_answer(body)
        if not found:
            raise InputUnavailable(
                f"no series match {{{self.selector.render(ref)}}} in the last {self.window_s:g} s"
                " (wrong selector, not scraped, or no pod up)"
            )
        done = found.get("done", 0.0)
        pods = found.get("pods", 0.0)
        if not pods.is_integer():
            raise InputUnavailable(f"Prometheus counted {pods} series")
        return ModelSample(
            t=now,
            rate_rps=found.get("rate", 0.0),
            service_time_s=found["busy"] / done if done > 0 and "busy" in found else None,
            # The runtime creates its in-flight series on a model's first request: a pod up
            # with none has had nothing in flight.
            concurrency=found.get("in_flight", 0.0),
            cold_start_s=found.get("cold_start"),
            pods=int(pods),
        )
