"""Prometheus text exposition (kindling.metrics), checked line by line against format 0.0.4."""

from __future__ import annotations

import math
import re

import pytest

from kindling.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    Counter,
    Gauge,
    Histogram,
    Registry,
)

# One sample line: name, optional {labels}, value (format 0.0.4, no timestamps here).
SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\\n]|\\["\\n])*",?)*\})? '
    r"(-?[0-9.e+-]+|[+-]Inf|NaN)$"
)


def lines(text: str) -> list[str]:
    assert text.endswith("\n")
    return text[:-1].split("\n")


def assert_valid_exposition(text: str) -> None:
    for line in lines(text):
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
        else:
            assert SAMPLE.match(line), line


def test_content_type():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


# -- counter ----------------------------------------------------------------------------------


def test_counter_without_labels():
    registry = Registry()
    c = registry.counter("jobs_total", "Jobs done.")
    c.inc()
    c.inc(amount=2.5)
    assert c.get() == 3.5
    assert registry.render() == (
        "# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\njobs_total 3.5\n"
    )


def test_counter_with_labels_sorted():
    registry = Registry()
    c = registry.counter("requests_total", "Requests.", ("model", "status"))
    c.inc("resnet", "200")
    c.inc("bert", "200")
    c.inc("resnet", "200")
    c.inc("resnet", "400")
    assert c.get("resnet", "200") == 2
    assert c.get("missing", "500") == 0
    text = registry.render()
    assert lines(text) == [
        "# HELP requests_total Requests.",
        "# TYPE requests_total counter",
        'requests_total{model="bert",status="200"} 1',
        'requests_total{model="resnet",status="200"} 2',
        'requests_total{model="resnet",status="400"} 1',
    ]
    assert_valid_exposition(text)


def test_counter_without_observations_has_only_header():
    registry = Registry()
    registry.counter("idle_total", "Nothing yet.", ("model",))
    assert registry.render() == "# HELP idle_total Nothing yet.\n# TYPE idle_total counter\n"


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("plain", "plain"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("two\nlines", "two\\nlines"),
        ('all\\"\n', 'all\\\\\\"\\n'),
        ("ünïcode", "ünïcode"),
        ("", ""),
    ],
)
def test_label_value_escaping(value, text):
    c = Counter("x_total", "X.", ("label",))
    c.inc(value)
    (line,) = c.samples()
    assert line == f'x_total{{label="{text}"}} 1'
    assert SAMPLE.match(line)


# -- gauge ------------------------------------------------------------------------------------


def test_gauge_set_inc_dec():
    registry = Registry()
    g = registry.gauge("in_flight", "In flight.", ("model",))
    g.inc("m")
    g.inc("m")
    g.dec("m")
    g.set("n", value=0.25)
    g.dec("o", amount=3)
    assert g.get("m") == 1
    assert lines(registry.render()) == [
        "# HELP in_flight In flight.",
        "# TYPE in_flight gauge",
        'in_flight{model="m"} 1',
        'in_flight{model="n"} 0.25',
        'in_flight{model="o"} -3',
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1.0, "1"),
        (-2.0, "-2"),
        (0.1, "0.1"),
        (1e-05, "1e-05"),
        (123456789.0, "123456789"),
        (math.inf, "+Inf"),
        (-math.inf, "-Inf"),
    ],
)
def test_number_format(value, text):
    g = Gauge("g", "G.")
    g.set(value=value)
    (line,) = g.samples()
    assert line == f"g {text}"
    assert float(line.split()[1]) == value


def test_gauge_nan_is_a_valid_sample():
    g = Gauge("g", "G.")
    g.set(value=math.nan)
    (line,) = g.samples()
    assert math.isnan(float(line.split()[1]))


# -- histogram --------------------------------------------------------------------------------


def test_histogram_cumulative_buckets_sum_count():
    registry = Registry()
    h = registry.histogram("latency_seconds", "Latency.", ("model",), buckets=(0.1, 1.0, 0.5))
    for value in (0.05, 0.1, 0.3, 0.7, 2.0, 3.0):
        h.observe(value, "m")
    assert h.count("m") == 6
    assert h.count("other") == 0
    text = registry.render()
    assert lines(text) == [
        "# HELP latency_seconds Latency.",
        "# TYPE latency_seconds histogram",
        # buckets are sorted and cumulative; a value equal to a bound counts in it (le)
        'latency_seconds_bucket{model="m",le="0.1"} 2',
        'latency_seconds_bucket{model="m",le="0.5"} 3',
        'latency_seconds_bucket{model="m",le="1"} 4',
        'latency_seconds_bucket{model="m",le="+Inf"} 6',
        'latency_seconds_sum{model="m"} 6.15',
        'latency_seconds_count{model="m"} 6',
    ]
    assert_valid_exposition(text)


def test_histogram_without_labels():
    h = Histogram("h", "H.", buckets=(1, 2))
    h.observe(1.5)
    assert list(h.samples()) == [
        'h_bucket{le="1"} 0',
        'h_bucket{le="2"} 1',
        'h_bucket{le="+Inf"} 1',
        "h_sum 1.5",
        "h_count 1",
    ]


def test_histogram_series_per_label_set():
    h = Histogram("h", "H.", ("model", "phase"), buckets=(1,))
    h.observe(0.5, "b", "total")
    h.observe(2, "a", "queue")
    h.observe(3, "a", "queue")
    assert list(h.samples()) == [
        'h_bucket{model="a",phase="queue",le="1"} 0',
        'h_bucket{model="a",phase="queue",le="+Inf"} 2',
        'h_sum{model="a",phase="queue"} 5',
        'h_count{model="a",phase="queue"} 2',
        'h_bucket{model="b",phase="total",le="1"} 1',
        'h_bucket{model="b",phase="total",le="+Inf"} 1',
        'h_sum{model="b",phase="total"} 0.5',
        'h_count{model="b",phase="total"} 1',
    ]


def test_histogram_default_latency_buckets():
    h = Histogram("h", "H.")
    h.observe(0.003)
    h.observe(20.0)  # above the last bucket: only +Inf
    samples = list(h.samples())
    assert len(samples) == len(LATENCY_BUCKETS) + 1 + 2
    counts = [int(s.rsplit(" ", 1)[1]) for s in samples[: len(LATENCY_BUCKETS) + 1]]
    assert counts == sorted(counts)  # cumulative: never decreasing
    assert samples[LATENCY_BUCKETS.index(0.0025)] == 'h_bucket{le="0.0025"} 0'
    assert samples[LATENCY_BUCKETS.index(0.005)] == 'h_bucket{le="0.005"} 1'
    assert samples[len(LATENCY_BUCKETS) - 1] == 'h_bucket{le="10"} 1'
    assert samples[len(LATENCY_BUCKETS)] == 'h_bucket{le="+Inf"} 2'
    assert samples[-1] == "h_count 2"
    assert LATENCY_BUCKETS == tuple(sorted(LATENCY_BUCKETS))


def test_histogram_label_escaping():
    h = Histogram("h", "H.", ("model",), buckets=(1,))
    h.observe(1, 'we"ird\\')
    assert next(h.samples()) == 'h_bucket{model="we\\"ird\\\\",le="1"} 1'


# -- registry ---------------------------------------------------------------------------------


def test_registry_renders_in_registration_order():
    registry = Registry()
    g = registry.gauge("b_gauge", "B.")
    c = registry.counter("a_total", "A.")
    h = registry.histogram("c_seconds", "C.", buckets=(1,))
    g.set(value=2)
    c.inc()
    h.observe(0.5)
    text = registry.render()
    assert [line for line in lines(text) if line.startswith("# TYPE")] == [
        "# TYPE b_gauge gauge",
        "# TYPE a_total counter",
        "# TYPE c_seconds histogram",
    ]
    assert_valid_exposition(text)


def test_register_returns_the_metric():
    registry = Registry()
    c = Counter("c_total", "C.")
    assert registry.register(c) is c
    assert registry.metrics == [c]


def test_empty_registry():
    assert Registry().render() == "\n"


def test_help_text_is_escaped():
    c = Counter("c_total", "first line\nsecond \\ line")
    assert c.header()[0] == "# HELP c_total first line\\nsecond \\\\ line"
