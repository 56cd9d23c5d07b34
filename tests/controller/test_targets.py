"""The model's own pre-warm margin as both actuators read it (controller/targets.py): a
number >= 0 is the model's, anything else is logged once and the global margin applies."""

from __future__ import annotations

import logging

import pytest

from kindling.controller.targets import PREWARM_MARGIN_K, margin_k_of


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0", 0.0), ("0.5", 0.5), ("1e1", 10.0), (" 3 ", 3.0), ("", None)],
)
def test_a_number_at_or_above_zero_is_the_models_margin(value: str, expected: float | None) -> None:
    assert margin_k_of({PREWARM_MARGIN_K: value}, "revisions/r", set()) == expected


def test_absent_is_none_the_global_margin() -> None:
    assert margin_k_of({}, "revisions/r", set()) is None


@pytest.mark.parametrize("value", ["-1", "two", "nan", "inf", "-inf", "1,5"])
def test_a_malformed_margin_is_ignored_and_logged_once(
    value: str, caplog: pytest.LogCaptureFixture
) -> None:
    warned: set[str] = set()
    with caplog.at_level(logging.WARNING, logger="kindling.controller.targets"):
        for _ in range(3):  # three ticks
            assert margin_k_of({PREWARM_MARGIN_K: value}, "revisions/r", warned) is None
        # Another object with the same value is another warning.
        assert margin_k_of({PREWARM_MARGIN_K: value}, "deployments/d", warned) is None
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert "revisions/r" in messages[0] and repr(value) in messages[0]
    assert "KINDLING_MARGIN_K applies" in messages[0]
