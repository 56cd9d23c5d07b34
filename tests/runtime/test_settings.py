"""Settings from the environment and flags, config.yaml parsing, and the cgroup CPU quota."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kindling.errors import KindlingError
from kindling.runtime import cpu
from kindling.runtime.cpu import available_cpus, cgroup_cpu_limit
from kindling.runtime.settings import (
    DEFAULT_PORT,
    ConfigError,
    ModelConfig,
    ServerSettings,
    TensorSpec,
)

# -- ServerSettings.from_env ------------------------------------------------------------------


def test_defaults_from_an_empty_environment():
    settings = ServerSettings.from_env(env={})
    assert settings == ServerSettings(model_repository=Path("models"))
    assert settings.port == DEFAULT_PORT == 8080
    assert settings.host == "0.0.0.0"
    assert settings.models == ()
    assert settings.threads is None
    assert settings.uri_schemes == ("file", "http", "https", "s3")
    assert settings.cache_dir is None
    assert settings.optimized_cache is True
    assert settings.providers == ()
    assert settings.max_body_bytes == 64 * 1024 * 1024


def test_every_variable_is_read():
    env = {
        "KINDLING_MODEL_REPOSITORY": "/srv/models",
        "KINDLING_MODELS": " a, b ,,c ",
        "KINDLING_MAX_BODY_BYTES": "1024",
        "KINDLING_DOWNLOAD_TIMEOUT_S": "2.5",
        "KINDLING_OPTIMIZED_CACHE": "no",
        "KINDLING_OPTIMIZED_CACHE_DELAY_S": "0.5",
        "KINDLING_PROVIDERS": "CUDAExecutionProvider,CPUExecutionProvider",
        "KINDLING_GRACEFUL_TIMEOUT_S": "7",
        "KINDLING_LOG_LEVEL": "debug",
        "PORT": "9000",
        "KINDLING_THREADS": "3",
        "KINDLING_MODEL_URI_SCHEMES": "file",
        "KINDLING_CACHE_DIR": "/var/cache/k",
    }
    settings = ServerSettings.from_env(env=env)
    assert settings.model_repository == Path("/srv/models")
    assert settings.models == ("a", "b", "c")
    assert settings.max_body_bytes == 1024
    assert settings.download_timeout_s == 2.5
    assert settings.optimized_cache is False
    assert settings.optimized_cache_delay_s == 0.5
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.graceful_timeout_s == 7.0
    assert settings.log_level == "debug"
    assert settings.port == 9000
    assert settings.threads == 3
    assert settings.uri_schemes == ("file",)
    assert settings.cache_dir == Path("/var/cache/k")


@pytest.mark.parametrize(
    ("value", "spin"),
    [(None, None), ("", None), ("auto", None), (" AUTO ", None), ("on", True), ("Off", False)],
)
def test_spin_setting(value, spin):
    env = {} if value is None else {"KINDLING_SPIN": value}
    assert ServerSettings.from_env(env=env).spin is spin


@pytest.mark.parametrize("value", ["1", "yes", "spin", "true"])
def test_spin_setting_refuses_other_values(value):
    with pytest.raises(ConfigError, match="KINDLING_SPIN must be auto, on or off"):
        ServerSettings.from_env(env={"KINDLING_SPIN": value})


def test_from_env_does_not_read_os_environ_when_env_given(monkeypatch):
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("KINDLING_THREADS", "5")
    settings = ServerSettings.from_env(env={})
    assert settings.port == 8080
    assert settings.threads is None


def test_from_env_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("PORT", "1234")
    monkeypatch.setenv("KINDLING_THREADS", "5")
    settings = ServerSettings.from_env()
    assert settings.port == 1234
    assert settings.threads == 5


@pytest.mark.parametrize(
    ("env", "flag", "port"),
    [
        ({}, None, 8080),
        ({"PORT": "9000"}, None, 9000),
        ({"PORT": "9000"}, 7000, 7000),
        ({}, 7000, 7000),
        ({"PORT": ""}, None, 8080),  # set but empty: unset
    ],
)
def test_port_precedence_flag_then_env_then_default(env, flag, port):
    assert ServerSettings.from_env(env=env, port=flag).port == port


def test_none_overrides_mean_unset():
    env = {"KINDLING_MODEL_REPOSITORY": "/m"}
    settings = ServerSettings.from_env(env=env, model_repository=None, host=None, port=None)
    assert settings.model_repository == Path("/m")
    assert settings.host == "0.0.0.0"


def test_overrides_win_over_env():
    settings = ServerSettings.from_env(
        env={"KINDLING_MODEL_REPOSITORY": "/m"}, model_repository=Path("/flag"), host="127.0.0.1"
    )
    assert settings.model_repository == Path("/flag")
    assert settings.host == "127.0.0.1"


@pytest.mark.parametrize(("value", "threads"), [("1", 1), ("16", 16), ("", None)])
def test_threads_override(value, threads):
    assert ServerSettings.from_env(env={"KINDLING_THREADS": value}).threads == threads


@pytest.mark.parametrize("value", ["0", "-2"])
def test_threads_must_be_positive(value):
    with pytest.raises(ConfigError, match="KINDLING_THREADS must be >= 1"):
        ServerSettings.from_env(env={"KINDLING_THREADS": value})


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(port):
    with pytest.raises(ConfigError, match=r"port must be in 1\.\.65535"):
        ServerSettings.from_env(env={}, port=port)
    with pytest.raises(ConfigError, match=r"port must be in 1\.\.65535"):
        ServerSettings.from_env(env={"PORT": str(port)})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        (" YES ", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("off", False),
        ("", True),  # empty: the default
    ],
)
def test_optimized_cache_truthiness(value, expected):
    settings = ServerSettings.from_env(env={"KINDLING_OPTIMIZED_CACHE": value})
    assert settings.optimized_cache is expected


@pytest.mark.parametrize(
    "env",
    [
        {"KINDLING_THREADS": "two"},
        {"PORT": "http"},
        {"KINDLING_MAX_BODY_BYTES": "64MiB"},
        {"KINDLING_DOWNLOAD_TIMEOUT_S": "30s"},
        {"KINDLING_OPTIMIZED_CACHE_DELAY_S": "soon"},
    ],
)
def test_non_numeric_values_are_config_errors(env):
    with pytest.raises(ConfigError):
        ServerSettings.from_env(env=env)


def test_config_error_is_a_kindling_error():
    assert issubclass(ConfigError, KindlingError)


def test_settings_are_frozen():
    settings = ServerSettings.from_env(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_openwhisk_makes_paths_absolute():
    # Action code may chdir (zip actions): the settings hold absolute paths from the start.
    env = {"KINDLING_CACHE_DIR": "cache", "KINDLING_MODEL_URI_ROOT": "root"}
    settings = ServerSettings.from_env(env=env, openwhisk=True)
    assert settings.model_repository == Path("models").absolute()
    assert settings.cache_dir == Path("cache").absolute()
    assert settings.model_uri_root == Path("root").absolute()
    assert ServerSettings.from_env(env=env).cache_dir == Path("cache")


def test_cache_root_defaults_in_one_place(tmp_path):
    from kindling.env import default_cache_root

    assert ServerSettings.from_env(env={}).cache_root == default_cache_root()
    env = {"KINDLING_CACHE_DIR": str(tmp_path)}
    assert ServerSettings.from_env(env=env).cache_root == tmp_path


def test_embedding_settings_follow_the_repository_and_the_redis_flag(tmp_path):
    settings = ServerSettings.from_env(env={}, model_repository=tmp_path)
    assert settings.embedding_settings(env={}).store_dir == tmp_path / ".embeddings"
    assert settings.embedding_settings(env={"KINDLING_EMBEDDINGS_DIR": "e"}).store_dir == Path("e")
    env = {"KINDLING_REDIS_URL": "redis://env:6379/0"}
    assert settings.embedding_settings(env=env).url == "redis://env:6379/0"
    flagged = ServerSettings.from_env(env={}, redis_url="redis://flag:6379/0")
    assert flagged.embedding_settings(env=env).url == "redis://flag:6379/0"


def test_every_declared_variable_is_read():
    """Each field with a variable is read by from_env: set them all, none stays default."""
    from dataclasses import fields

    values = {
        "PORT": "9000",
        "KINDLING_THREADS": "3",
        "KINDLING_SPIN": "on",
        "KINDLING_OPENWHISK": "false",
        "KINDLING_LOG_LEVEL": "debug",
        "KINDLING_OPTIMIZED_CACHE": "false",
    }
    env = {}
    for f in fields(ServerSettings):
        name = f.metadata.get("env")
        if name:
            parse = f.metadata["parse"]
            default = {"csv": "x", "path": "/x", "str": "x", "size": "7"}.get(parse, "2000")
            env[name] = values.get(name, default)
    settings = ServerSettings.from_env(env=env)
    for f in fields(ServerSettings):
        if f.metadata.get("env") and f.name != "openwhisk":
            assert getattr(settings, f.name) != f.default, f.name


# -- ModelConfig.from_dict --------------------------------------------------------------------

MINIMAL = {
    "inputs": [{"name": "x", "datatype": "fp32", "shape": [-1, 3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
}


def test_model_config_minimal(tmp_path):
    folder = tmp_path / "mymodel"
    config = ModelConfig.from_dict(MINIMAL, folder)
    assert config.name == "mymodel"  # defaults to the folder name
    assert config.path == folder
    assert config.inputs == (TensorSpec("x", "FP32", (-1, 3)),)  # datatype upper-cased
    assert config.outputs == (TensorSpec("y", "FP32", (-1, 2)),)
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 0
    assert config.max_queue_delay_ms == 0.0
    assert config.model_file == "model.onnx"
    assert config.model_uri is None
    assert config.warmup is True
    assert config.preprocess == {}
    assert config.version == "1"
    assert config.batch_dynamic is True


def test_model_config_full(tmp_path):
    data = {
        **MINIMAL,
        "name": "m",
        "inputs": [{"name": "tokens", "datatype": "INT64", "shape": [-1, -1], "pad_value": 0}],
        "max_batch_size": 16,
        "batching": {"max_queue_delay_ms": 2.5},
        "model_file": "graph.onnx",
        "model_uri": "http://example/m.onnx",
        "warmup": False,
        "preprocess": {"kind": "hf_tokenizer"},
        "description": "d",
        "version": 3,
    }
    config = ModelConfig.from_dict(data, tmp_path / "m")
    assert config.inputs[0].pad_value == 0.0
    assert isinstance(config.inputs[0].pad_value, float)
    assert config.max_batch_size == 16
    assert config.max_queue_delay_ms == 2.5
    assert config.model_file == "graph.onnx"
    assert config.model_uri == "http://example/m.onnx"
    assert config.warmup is False
    assert config.preprocess == {"kind": "hf_tokenizer"}
    assert config.version == "3"


def test_batch_dynamic_needs_every_input_batch_major(tmp_path):
    data = {
        **MINIMAL,
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "b", "datatype": "FP32", "shape": [1, 3]},
        ],
    }
    assert ModelConfig.from_dict(data, tmp_path).batch_dynamic is False


def test_tensor_spec_metadata():
    spec = TensorSpec("x", "FP32", (-1, 3), pad_value=0.0)
    assert spec.to_metadata() == {"name": "x", "datatype": "FP32", "shape": [-1, 3]}


@pytest.mark.parametrize(
    "change",
    [
        {"inputs": None},
        {"outputs": None},
        {"inputs": [{"datatype": "FP32", "shape": [1]}]},
        {"inputs": [{"name": "x", "shape": [1]}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": ["a"]}]},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": 3}]},
        {"max_batch_size": "lots"},
        {"batching": {"max_queue_delay_ms": "soon"}},
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "pad_value": "zero"}]},
    ],
)
def test_model_config_invalid(tmp_path, change):
    data = {**MINIMAL, **change}
    with pytest.raises(ConfigError, match=r"config\.yaml: invalid config"):
        ModelConfig.from_dict(data, tmp_path / "m")


def test_model_config_missing_inputs(tmp_path):
    with pytest.raises(ConfigError, match="'inputs'"):
        ModelConfig.from_dict({"outputs": MINIMAL["outputs"]}, tmp_path / "m")


@pytest.mark.parametrize("change", [{"inputs": ["x"]}, {"batching": 5}])
def test_model_config_non_mapping_entries(tmp_path, change):
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({**MINIMAL, **change}, tmp_path / "m")


def test_model_config_unknown_datatype(tmp_path):
    data = {**MINIMAL, "inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}
    with pytest.raises(ConfigError, match="FLOAT"):
        ModelConfig.from_dict(data, tmp_path / "m")


# -- cgroup CPU quota -------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [
        ("150000 100000\n", 1.5),
        ("100000 100000", 1.0),
        ("50000 100000\n", 0.5),
        ("400000 100000\n", 4.0),
        ("max 100000\n", None),
    ],
)
def test_cgroup_v2_cpu_max(tmp_path, cpu_max, limit):
    write(tmp_path / "cpu.max", cpu_max)
    assert cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize(
    ("quota", "period", "limit"),
    [
        ("200000\n", "100000\n", 2.0),
        ("150000", "100000", 1.5),
        ("-1\n", "100000\n", None),  # v1's "unlimited"
        ("0", "100000", None),
        ("100000", "0", None),
    ],
)
def test_cgroup_v1_cfs(tmp_path, quota, period, limit):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", quota)
    write(tmp_path / "cpu" / "cpu.cfs_period_us", period)
    assert cgroup_cpu_limit(tmp_path) == limit


def test_cgroup_v2_wins_over_v1(tmp_path):
    write(tmp_path / "cpu.max", "300000 100000")
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "100000")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path) == 3.0


def test_cgroup_malformed_v2_falls_back_to_v1(tmp_path):
    write(tmp_path / "cpu.max", "garbage")
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "100000")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "50000")
    assert cgroup_cpu_limit(tmp_path) == 2.0


@pytest.mark.parametrize("quota", ["", "lots"])
def test_cgroup_malformed_v1(tmp_path, quota):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", quota)
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(tmp_path / "missing") is None


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda _pid: set(range(8)), raising=False)


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("150000 100000", 2),  # 1.5 CPUs round up
        ("100000 100000", 1),
        ("50000 100000", 1),  # never below 1
        ("1000 100000", 1),
        ("max 100000", 8),  # unlimited: the affinity mask
        ("1600000 100000", 8),  # quota above the cores present
    ],
)
def test_available_cpus_follows_the_quota(tmp_path, eight_cores, cpu_max, cores):
    write(tmp_path / "cpu.max", cpu_max)
    assert available_cpus(tmp_path) == cores


def test_available_cpus_v1(tmp_path, eight_cores):
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", "250000")
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert available_cpus(tmp_path) == 3


def test_available_cpus_without_cgroup_uses_affinity(tmp_path, eight_cores):
    assert available_cpus(tmp_path) == 8


def test_available_cpus_without_sched_getaffinity(tmp_path, monkeypatch):
    monkeypatch.delattr(cpu.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(cpu.os, "cpu_count", lambda: 4)
    write(tmp_path / "cpu.max", "200000 100000")
    assert available_cpus(tmp_path) == 2


def test_available_cpus_on_this_machine():
    assert available_cpus() >= 1


def test_threads_setting_overrides_the_quota(tmp_path, eight_cores):
    # What `kindling serve` does: KINDLING_THREADS if set, else the cgroup quota.
    write(tmp_path / "cpu.max", "150000 100000")
    explicit = ServerSettings.from_env(env={"KINDLING_THREADS": "6"})
    default = ServerSettings.from_env(env={})
    assert (explicit.threads or available_cpus(tmp_path)) == 6
    assert (default.threads or available_cpus(tmp_path)) == 2
