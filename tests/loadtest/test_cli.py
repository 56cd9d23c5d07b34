"""`kindling loadtest` usage errors and listings (in-process: nothing here imports Locust)."""

from __future__ import annotations

import json

import pytest

from kindling.loadtest.cli import main
from kindling.loadtest.config import RunConfig


def test_bad_workload_parameters_exit_2_before_starting_locust(tmp_path, capsys):
    code = main(
        [
            "run",
            "--target",
            "http://x",
            "--model",
            "m",
            "--workload",
            "step",
            "--set",
            "nope=1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "no parameter 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "plan.json").exists()


def test_unknown_command_and_help(capsys):
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
    assert "kindling loadtest run" in capsys.readouterr().out


def test_workloads_lists_every_shape_and_its_table(capsys):
    assert main(["workloads"]) == 0
    out = capsys.readouterr().out
    for name in ("mmpp-40", "mmpp-120", "mmpp-200", "step", "concurrency", "cold-warm", "constant"):
        assert name in out
    assert '"levels": [5, 10, 20, 30]' in out


def test_run_argument_errors_exit_2():
    with pytest.raises(SystemExit) as exc:
        main(["run", "--model", "m"])  # no --target
    assert exc.value.code == 2


def test_config_round_trips_through_json():
    import argparse

    from kindling.loadtest.config import add_arguments, from_namespace

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            "--target",
            "http://h:1/",
            "--model",
            "kim_cnn",
            "--workload",
            "concurrency",
            "--concurrency",
            "1,16",
            "--header",
            "Host: kim.example.com",
            "--pricing",
            "lambda-2018",
            "--slo-p99-ms",
            "250",
            "--slo-error-ratio",
            "-1",
        ]
    )
    config = from_namespace(args, args.target)
    assert config.target == "http://h:1"
    assert config.params == {"levels": [1, 16]}
    assert config.headers == {"Host": "kim.example.com"}
    assert config.slo.error_ratio is None and config.slo.p99_ms == 250
    back = RunConfig.from_json(config.to_json())
    assert back == config
    assert json.loads(config.to_json())["cost"]["pay_per_request"]["granularity_ms"] == 100
