"""EmbeddingSettings: each field's variable, read by from_env; flags as overrides."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from kindling.embeddings.settings import DEFAULT_DIR, EmbeddingSettings
from kindling.errors import InvalidInput


def test_an_empty_environment_gives_the_defaults():
    assert EmbeddingSettings.from_env({}) == EmbeddingSettings()
    assert EmbeddingSettings.from_env({"KINDLING_EMBEDDINGS_DIR": " "}).store_dir == DEFAULT_DIR


def test_every_declared_variable_is_read():
    values = {
        "KINDLING_REDIS_URL": "redis://h:6379/0",
        "KINDLING_EMBEDDINGS_DIR": "/srv/e",
        "KINDLING_EMBEDDINGS_OOV": "random",
        "KINDLING_EMBEDDINGS_UNK_TOKEN": "UNK",
    }
    env = {f.metadata["env"]: values.get(f.metadata["env"], "3") for f in fields(EmbeddingSettings)}
    settings = EmbeddingSettings.from_env(env)
    for f in fields(EmbeddingSettings):
        assert getattr(settings, f.name) != f.default, f.name
    assert settings.store_dir == Path("/srv/e")
    assert settings.retries == 3 and settings.backoff == 3.0


def test_overrides_win_and_none_means_unset():
    env = {"KINDLING_REDIS_URL": "redis://env:6379/0"}
    assert EmbeddingSettings.from_env(env, url=None).url == "redis://env:6379/0"
    assert EmbeddingSettings.from_env(env, url="redis://flag:1/0").url == "redis://flag:1/0"


@pytest.mark.parametrize(
    "env",
    [
        {"KINDLING_EMBEDDINGS_OOV": "nan"},
        {"KINDLING_REDIS_RETRIES": "two"},
        {"KINDLING_REDIS_BACKOFF": "-1"},
        {"KINDLING_REDIS_URL": "ftp://x"},
    ],
)
def test_bad_values_name_the_problem(env):
    with pytest.raises(InvalidInput):
        EmbeddingSettings.from_env(env)
