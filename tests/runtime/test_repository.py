"""Reading the model repository (kindling.runtime.repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kindling.runtime.repository import read_config, read_repository
from kindling.runtime.settings import ConfigError, ServerSettings
from tests.conftest import SAMPLE_MODELS

CONFIG = """\
name: {name}
max_batch_size: 8
batching:
  max_queue_delay_ms: 2
inputs:
  - name: input
    datatype: FP32
    shape: [-1, 3, 224, 224]
outputs:
  - name: logits
    datatype: FP32
    shape: [-1, 1000]
"""


def add_model(root: Path, folder: str, text: str | None = None) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(CONFIG.format(name=folder) if text is None else text)
    return path


@pytest.fixture
def repo(tmp_path) -> Path:
    root = tmp_path / "models"
    for name in ("resnet", "bert", "cnn"):
        add_model(root, name)
    (root / "not-a-model").mkdir()  # a folder without config.yaml is ignored
    (root / "README.md").write_text("stray file")
    return root


def settings(root: Path, models: str = "") -> ServerSettings:
    env = {"KINDLING_MODEL_REPOSITORY": str(root)}
    if models:
        env["KINDLING_MODELS"] = models
    return ServerSettings.from_env(env=env)


def test_all_models_sorted_by_name(repo):
    configs = read_repository(settings(repo))
    assert [c.name for c in configs] == ["bert", "cnn", "resnet"]
    assert configs[0].path == repo / "bert"
    assert configs[0].max_batch_size == 8
    assert configs[0].max_queue_delay_ms == 2.0
    assert configs[0].inputs[0].shape == (-1, 3, 224, 224)


def test_kindling_models_subset_in_the_given_order(repo):
    configs = read_repository(settings(repo, "resnet, bert"))
    assert [c.name for c in configs] == ["resnet", "bert"]


def test_kindling_models_unknown_name_lists_available(repo):
    with pytest.raises(ConfigError) as info:
        read_repository(settings(repo, "bert,gpt5"))
    message = info.value.message
    assert "KINDLING_MODELS" in message
    assert "['gpt5']" in message
    assert "['bert', 'cnn', 'resnet']" in message  # what is there
    assert "not-a-model" not in message


def test_folder_without_config_is_not_a_model(repo):
    with pytest.raises(ConfigError, match="not-a-model"):
        read_repository(settings(repo, "not-a-model"))


def test_missing_repository(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        read_repository(settings(tmp_path / "nowhere"))


def test_repository_is_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not a directory"):
        read_repository(settings(tmp_path / "file"))


def test_empty_repository(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / "empty-folder").mkdir()
    with pytest.raises(ConfigError, match=r"has no model folders with config\.yaml"):
        read_repository(settings(root))


def test_name_must_match_the_folder(tmp_path):
    add_model(tmp_path, "folder", CONFIG.format(name="other"))
    with pytest.raises(ConfigError, match="name 'other' must match its folder 'folder'"):
        read_config(tmp_path / "folder")


def test_name_defaults_to_the_folder(tmp_path):
    text = "\n".join(line for line in CONFIG.splitlines() if not line.startswith("name:"))
    add_model(tmp_path, "unnamed", text)
    assert read_config(tmp_path / "unnamed").name == "unnamed"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("inputs: [\n  - oops", "cannot read"),  # YAML syntax error
        ("key: value\n\tbad: tab", "cannot read"),
        ("- a\n- b\n", "expected a mapping at the top level"),
        ("", "expected a mapping at the top level"),
        ("just a string", "expected a mapping at the top level"),
        ("name: m\noutputs: []\n", "invalid config"),  # no inputs
    ],
    ids=["unclosed", "tab", "list", "empty", "scalar", "no-inputs"],
)
def test_bad_config_yaml(tmp_path, text, match):
    folder = add_model(tmp_path, "m", text)
    with pytest.raises(ConfigError, match=match) as info:
        read_config(folder)
    assert str(folder / "config.yaml") in info.value.message


def test_config_not_utf8(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(folder)


def test_yaml_is_read_safely(tmp_path):
    folder = add_model(tmp_path, "m", "!!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="cannot read"):
        read_config(folder)


def test_one_bad_config_fails_the_repository(repo):
    (repo / "cnn" / "config.yaml").write_text("inputs: [")
    with pytest.raises(ConfigError, match="cnn"):
        read_repository(settings(repo))
    # ...but serving only the good ones works
    assert [c.name for c in read_repository(settings(repo, "bert"))] == ["bert"]


def test_sample_repository(model_repository):
    configs = {c.name: c for c in read_repository(settings(model_repository))}
    assert sorted(configs) == sorted(SAMPLE_MODELS)
    squeezenet = configs["squeezenet1_1"]
    assert squeezenet.inputs[0].datatype == "FP32"
    assert squeezenet.batch_dynamic
