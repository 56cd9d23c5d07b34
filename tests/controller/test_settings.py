"""ControllerSettings: every variable read once, bad values refused with their name."""

from __future__ import annotations

import math

import pytest

from kindling.controller.settings import ControllerSettings, SettingsError, documented


def test_defaults_need_no_environment() -> None:
    s = ControllerSettings.from_env({"KINDLING_NAMESPACE": "ml", "KINDLING_POD_NAME": "c-0"})
    assert (s.namespace, s.pod_name, s.serving_mode) == ("ml", "c-0", "knative")
    assert s.interval_s == 10.0 and s.leader_elect and s.release_on_exit
    assert s.learned_idle and math.isnan(s.idle_to_zero_s)


def test_each_variable_reaches_its_field() -> None:
    env = {
        "KINDLING_NAMESPACE": "ml",
        "KINDLING_SERVING_MODE": "raw",
        "KINDLING_INTERVAL_S": "2.5",
        "KINDLING_LEADER_ELECT": "false",
        "KINDLING_PROMETHEUS_URL": "http://prometheus:9090",
        "KINDLING_IDLE_TO_ZERO_S": "300",
        "KINDLING_MARGIN_K": "1.5",
        "KINDLING_PORT": "9000",
    }
    s = ControllerSettings.from_env(env)
    assert s.serving_mode == "raw" and s.interval_s == 2.5 and not s.leader_elect
    assert s.prometheus_url == "http://prometheus:9090" and s.port == 9000
    assert s.idle_to_zero_s == 300 and not s.learned_idle and s.margin_k == 1.5


def test_flags_win_over_the_environment() -> None:
    s = ControllerSettings.from_env({"KINDLING_NAMESPACE": "a"}, namespace="b", dry_run=True)
    assert s.namespace == "b" and s.dry_run


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("KINDLING_INTERVAL_S", "ten"),
        ("KINDLING_INTERVAL_S", "0"),
        ("KINDLING_INTERVAL_S", "inf"),
        ("KINDLING_LEADER_ELECT", "maybe"),
        ("KINDLING_SERVING_MODE", "lambda"),
        ("KINDLING_FORECASTER", "arima"),
        ("KINDLING_MARGIN_K", "-1"),
        ("KINDLING_PROMETHEUS_URL", "file:///etc/passwd"),
        ("KINDLING_PORT", "80.5"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        ControllerSettings.from_env({"KINDLING_NAMESPACE": "ml", name: value})


def test_every_setting_has_a_variable_and_a_reason() -> None:
    rows = documented()
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names))
    assert all(name.startswith("KINDLING_") and doc for name, _, doc in rows)
