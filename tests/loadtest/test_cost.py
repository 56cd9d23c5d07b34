"""The cost models, against figures worked out by hand."""

from __future__ import annotations

import pytest

from kindling.loadtest.cost import (
    AlwaysOn,
    PayPerRequest,
    SelfHosted,
    cost_model,
    per_million,
)

LAMBDA = PayPerRequest(0.0000166667, 0.20 / 1e6, granularity_ms=1, memory_mb=1024)


def test_one_ms_billing_rounds_up_to_the_next_ms():
    assert LAMBDA.billed_ms(1.2) == 2
    assert LAMBDA.billed_ms(100.0) == 100
    # 100 ms at 1 GB = 0.1 GB-s: 0.1 * 0.0000166667 + 0.0000002 = 0.00000186667
    assert LAMBDA.request_cost(100.0) == pytest.approx(1.86667e-6)


def test_paper_002_billed_in_100_ms_increments():
    lambda_2018 = cost_model("lambda-2018", memory_mb=512).pay_per_request
    assert lambda_2018.granularity_ms == 100
    assert lambda_2018.billed_ms(101) == 200
    assert lambda_2018.billed_ms(100.0) == 100
    assert lambda_2018.billed_ms(0.5) == 100
    # 200 ms at 0.5 GB = 0.1 GB-s -> same $ as 100 ms at 1 GB
    assert lambda_2018.request_cost(101) == pytest.approx(1.86667e-6)


def test_cost_per_million_requests():
    total = LAMBDA.cost([100.0] * 1000)
    assert per_million(total, 1000) == pytest.approx(1.86667)
    assert per_million(1.0, 0) is None


def test_self_hosted_charges_pod_seconds_at_a_share_of_the_node():
    hosted = SelfHosted(node_price_per_hour=0.096, pods_per_node=2)
    assert hosted.cost(3600) == pytest.approx(0.048)
    assert hosted.cost(0) == 0  # scaled to zero: nothing to pay


def test_always_on_charges_the_wall_clock():
    assert AlwaysOn(node_price_per_hour=0.096, nodes=2).cost(1800) == pytest.approx(0.096)


def test_defaults_are_the_published_lambda_prices():
    model = cost_model()
    assert model.pay_per_request.price_per_gb_s == 0.0000166667
    assert model.pay_per_request.per_request_fee * 1e6 == pytest.approx(0.20)
    assert model.pay_per_request.granularity_ms == 1
    assert "2020-12-01" in model.pay_per_request.source
    assert model.self_hosted.node_price_per_hour == 0.096


def test_overrides_and_unknown_pricing():
    model = cost_model(granularity_ms=100, memory_mb=3008, per_request_fee=0.0)
    assert model.pay_per_request.request_cost(1) == pytest.approx(0.1 * 3008 / 1024 * 0.0000166667)
    assert "overrides" in model.pay_per_request.source
    with pytest.raises(ValueError):
        cost_model("gcf")
