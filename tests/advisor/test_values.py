"""The advised values file: YAML with a comment on every value, the chart's schema met, and
`helm template` renders it into the Knative Service the advice describes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kindling.advisor.pick import Advice, pick
from kindling.advisor.search import Space, search
from kindling.advisor.values import values_yaml, write_values
from kindling.cluster.tools import Tools
from kindling.controller import workloads
from tests.advisor.test_search import GRID, half_mmpp, measurement
from tests.charts.render import CHART, NAMESPACE, RELEASE, Helm, by_kind, env, validate

COMMAND = "kindling advise --model {model} --slo-p99-ms 60 --workload mmpp-120"


def advise(model: str = "mobilenet_v2", policy: str = "kindling") -> Advice:
    """An advice to write out: any search gives one (the small one of test_search.py)."""
    return pick(
        search(measurement(model), half_mmpp(), Space(slo_p99_ms=60, policy=policy, **GRID))
    )


@pytest.fixture(scope="module")
def advice() -> Advice:
    return advise()


@pytest.fixture(scope="module")
def kpa_advice() -> Advice:
    return advise(policy="knative-kpa")


def merged(values: dict[str, Any]) -> dict[str, Any]:
    """The chart's values with the file's over them, as helm merges them (maps key by
    key, lists replaced)."""
    out = yaml.safe_load((CHART / "values.yaml").read_text())

    def merge(dst: dict[str, Any], src: dict[str, Any]) -> None:
        for key, value in src.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            else:
                dst[key] = copy.deepcopy(value)

    merge(out, values)
    return out


def test_every_value_says_which_measurement_chose_it(advice: Advice) -> None:
    text = values_yaml(advice, COMMAND.format(model="mobilenet_v2"))
    doc = yaml.safe_load(text)
    (entry,) = doc["models"]
    c = advice.pick.candidate
    assert entry == {
        "name": "mobilenet_v2",
        "threads": c.setting.threads,
        "containerConcurrency": c.container_concurrency,
        "autoscaling": {"minScale": c.min_scale, "target": c.target, "maxScale": 10},
        "resources": {
            side: {"cpu": str(c.setting.threads), "memory": f"{c.resources.memory_mib}Mi"}
            for side in ("requests", "limits")
        },
        "settings": {
            "maxBatchSize": c.setting.max_batch_size,
            "maxQueueDelayMs": c.setting.max_queue_delay_ms,
        },
        "prewarm": {"marginK": c.margin_k},
    }
    body = text[text.index("models:") :].splitlines()[1:]
    values = [line for line in body if re.match(r"^\s*-?\s*\w+: \S", line)]
    assert len(values) == 13
    for line in values:
        assert "  # " in line, line
    memory = next(line for line in body if "memory:" in line)
    assert f"at max_batch_size {c.setting.max_batch_size} ({c.setting.label()}) + 10%" in memory
    assert COMMAND.format(model="mobilenet_v2") in text


def test_the_values_meet_the_charts_schema(advice: Advice, kpa_advice: Advice) -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    doc = yaml.safe_load(values_yaml(advice))
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    jsonschema.validate(merged(doc), schema, cls=jsonschema.Draft7Validator)
    kpa = yaml.safe_load(values_yaml(kpa_advice))
    jsonschema.validate(merged(kpa), schema, cls=jsonschema.Draft7Validator)


def test_a_text_model_keeps_its_embedding_table() -> None:
    (entry,) = yaml.safe_load(values_yaml(advise("kim_cnn")))["models"]
    assert entry["embeddingTable"] == "demo300"  # charts/kindling/values.yaml's kim_cnn


def test_without_the_controller_the_file_turns_it_off(kpa_advice: Advice) -> None:
    doc = yaml.safe_load(values_yaml(kpa_advice))
    assert doc["controller"] == {"enabled": False}
    assert "prewarm" not in doc["models"][0]


@pytest.fixture(scope="module")
def helm(cluster_tools: Tools, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(cluster_tools.bin("helm"), tmp_path_factory.mktemp("helm"))


@pytest.mark.integration  # helm runs as a real process
def test_helm_template_renders_the_advice(
    advice: Advice, helm: Helm, cluster_tools: Tools, tmp_path: Path
) -> None:
    path = write_values(advice, tmp_path / "values-mobilenet_v2.yaml")
    out = helm.run(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--values", str(path)
    ).stdout
    objects = [o for o in yaml.safe_load_all(out) if o]
    for obj in objects:
        validate(obj, cluster_tools.crds)
    (service,) = [o for o in by_kind(objects, "Service") if o["apiVersion"].startswith("serving")]
    assert service["metadata"]["name"] == f"{RELEASE}-mobilenet-v2"
    template = service["spec"]["template"]
    c = advice.pick.candidate
    annotations = template["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == str(c.min_scale)
    assert annotations["autoscaling.knative.dev/max-scale"] == "10"
    assert float(annotations["autoscaling.knative.dev/target"]) == c.target
    assert float(annotations["kindling.dev/prewarm-margin-k"]) == c.margin_k
    assert template["spec"]["containerConcurrency"] == c.container_concurrency
    (container,) = template["spec"]["containers"]
    memory = f"{c.resources.memory_mib}Mi"
    assert container["resources"] == {
        "requests": {"cpu": str(c.setting.threads), "memory": memory},
        "limits": {"cpu": str(c.setting.threads), "memory": memory},
    }
    variables = env(container)
    assert variables["KINDLING_THREADS"] == str(c.setting.threads)
    assert variables["KINDLING_MAX_BATCH_SIZE"] == str(c.setting.max_batch_size)
    assert float(variables["KINDLING_MAX_QUEUE_DELAY_MS"]) == c.setting.max_queue_delay_ms


def test_a_url_measurement_says_where_cpu_and_memory_came_from() -> None:
    m = measurement(threads=(None,), batches=((1, 0.0),), peak=False)
    advice = pick(search(m, workloads.make("mmpp-120", seed=0), Space(slo_p99_ms=60)))
    text = values_yaml(advice)
    (entry,) = yaml.safe_load(text)["models"]
    assert entry["threads"] is None
    assert entry["resources"]["limits"] == {"cpu": "2", "memory": "608Mi"}
    assert "the chart's mobilenet_v2 entry (resources.limits.memory 608Mi)" in text
    assert "the chart's modelDefaults (resources.limits.cpu 2)" in text
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(merged(yaml.safe_load(text)), schema, cls=jsonschema.Draft7Validator)
