"""Bad values are refused before anything is rendered: values.schema.json names the path
and what is wrong with it, and kindling.validateValues lists every cross-value problem in
one failure. Also: every documented value (`## @param`) has its place in the schema."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from tests.charts.render import CHART, VALUES, Helm

BAD = VALUES / "bad"


@pytest.mark.integration  # helm runs as a real process
@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("mode.yaml", "at '/serving/mode': value must be one of 'knative', 'raw'"),
        ("model-name.yaml", "at '/models/0/name': 'Kim CNN' does not match pattern"),
        ("gpu-type.yaml", "at '/models/0/gpu': got string, want boolean"),
        (
            "sizing-range.yaml",
            "at '/models/0/prewarm/marginK': minimum: got -0.5, want 0",
        ),
        (
            "setting-typo.yaml",
            "at '/runtime/settings': additional properties 'maxBodyByte' not allowed",
        ),
    ],
)
def test_the_schema_refuses_bad_values_with_their_path(
    helm: Helm, values: str, message: str
) -> None:
    proc = helm.run("template", "kindling", str(CHART), "--values", str(BAD / values), check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.integration  # helm runs as a real process
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("runtime.settings.maxBatchSize=0",),
            "at '/runtime/settings/maxBatchSize': minimum: got 0, want 1",
        ),
        (
            ("models[0].name=kim_cnn", "models[0].settings.maxBatchSize=-2"),
            "at '/models/0/settings/maxBatchSize': minimum: got -2, want 1",
        ),
        (
            ("runtime.settings.maxQueueDelayMs=-1",),
            "at '/runtime/settings/maxQueueDelayMs': minimum: got -1, want 0",
        ),
        (
            # --set leaves a decimal a string: the pattern refuses its sign.
            ("models[0].name=kim_cnn", "models[0].settings.maxQueueDelayMs=-0.5"),
            "at '/models/0/settings/maxQueueDelayMs': '-0.5' does not match pattern",
        ),
        (
            ("modelDefaults.prewarm.marginK=-1",),
            "at '/modelDefaults/prewarm/marginK': minimum: got -1, want 0",
        ),
        (
            ("models[0].name=kim_cnn", "models[0].prewarm.marginK=abc"),
            "at '/models/0/prewarm/marginK': 'abc' does not match pattern",
        ),
    ],
)
def test_the_schema_refuses_sizing_values_out_of_range(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    args = [a for s in sets for a in ("--set", s)]
    proc = helm.run("template", "kindling", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.integration  # helm runs as a real process
def test_validate_values_reports_every_problem_at_once(helm: Helm) -> None:
    proc = helm.run(
        "template", "kindling", str(CHART), "--values", str(BAD / "several.yaml"), check=False
    )
    assert proc.returncode != 0
    assert "VALUES VALIDATION:" in proc.stderr
    messages = re.findall(r"^  - (.+)$", proc.stderr, re.MULTILINE)
    assert messages == [
        "models[mnist]: a modelUri model needs config.inputs and config.outputs (its config.yaml, modelzoo/README.md)",
        "models[mnist]: autoscaling.minScale 5 is above maxScale 2",
        "redis.enabled and externalRedis.url are both set: choose the built-in Redis or an external one",
        "embeddings.loader.tables[word2vec]: give exactly one source, url or pvc",
    ]


@pytest.mark.integration  # helm runs as a real process
@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("serving.mode=raw", "modelDefaults.autoscaling.hpa.enabled=true"),
            "the controller and the model's HPA would both set its replicas",
        ),
        (
            ("externalRedis.url=redis://user:pw@redis:6379/0",),
            "externalRedis.url: no credentials in the URL",
        ),
        (
            ("modelCache.enabled=true", "modelCache.type=pvc"),
            "modelCache: type pvc needs modelCache.existingClaim",
        ),
        (
            ("models[0].name=kim-cnn", "models[1].name=kim_cnn"),
            "object name kindling-kim-cnn is taken by model kim-cnn",
        ),
        (
            (
                "embeddings.loader.tables[0].name=t",
                "embeddings.loader.tables[0].format=glove",
                "embeddings.loader.tables[0].url=https://x/v.txt",
            ),
            "the loader writes to Redis",
        ),
        (
            ("models[0].name=mobilenet_v2", "models[0].gpu=true"),
            "models[mobilenet_v2]: a gpu model runs the GPU pool's image, which holds no model",
        ),
        (
            ("redis.enabled=true",),
            "models[kim_cnn]: reads table demo300 from the built-in Redis, which nothing loads",
        ),
        (
            ("controller.knativeVersion=1.20",),
            "controller.knativeVersion 1.20: before 1.21 the controller patches PodAutoscalers",
        ),
    ],
)
def test_validate_values_refuses_combinations(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    args = [a for s in sets for a in ("--set", s)]
    proc = helm.run("template", "kindling", str(CHART), *args, check=False)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.integration  # helm runs as a real process
def test_tables_loaded_outside_the_chart_are_named_not_guessed(helm: Helm) -> None:
    """With the built-in Redis, every table a model reads is either the loader's or one
    the user says they load themselves; then the default text models render."""
    sets = ("redis.enabled=true", "embeddings.externalTables={demo300}")
    args = [a for s in sets for a in ("--set", s)]
    proc = helm.run("template", "kindling", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "models[sm_cnn]: reads table demo50" in proc.stderr
    assert "models[kim_cnn]" not in proc.stderr
    sets = ("redis.enabled=true", "embeddings.externalTables={demo300,demo50}")
    args = [a for s in sets for a in ("--set", s)]
    assert helm.run("template", "kindling", str(CHART), *args).returncode == 0


def _documented() -> list[str]:
    text = (CHART / "values.yaml").read_text()
    return re.findall(r"^\s*## @param ([\w.\[\]]+)", text, re.MULTILINE)


def test_the_parameter_table_never_shows_an_empty_default_for_a_set_one() -> None:
    """readme-generator prints [] or {} for a value marked [array] or [object], whatever it
    holds: such a mark is only for empty defaults, or for nested ones whose description
    gives the default itself (the generator cannot print them)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    marked = re.findall(
        r"^\s*## @param ([\w.]+) \[(?:array|object)\] (.*)$",
        (CHART / "values.yaml").read_text(),
        re.MULTILINE,
    )
    assert marked
    for path, description in marked:
        node: Any = values
        for key in path.split("."):
            node = node[key]
        assert not node or "(default" in description, path


def test_every_documented_value_has_a_schema_entry() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        return node

    for path in _documented():
        node = schema
        for key in path.split("."):
            node = resolve(node)
            if key in node.get("properties", {}):
                node = node["properties"][key]
            else:  # a map whose every value has one schema (resources.requests, ...)
                assert isinstance(node.get("additionalProperties"), dict), (
                    f"{path}: no schema for {key!r}"
                )
                node = node["additionalProperties"]
        assert "description" in resolve(node) or "type" in resolve(node), path


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = set(_documented())

    def leaves(node: object, path: str) -> list[str]:
        if path in documented:
            return []
        if isinstance(node, dict) and node:
            return [
                leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}" if path else k)
            ]
        return [path]

    assert leaves(values, "") == []
