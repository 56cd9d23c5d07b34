"""The model repository on disk: one folder per model with a config.yaml."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import yaml

from kindling.runtime.settings import ConfigError, ModelConfig, ServerSettings

CONFIG_FILE = "config.yaml"


def read_config(folder: Path) -> ModelConfig:
    path = folder / CONFIG_FILE
    try:
        # The C loader when libyaml is there: parsing is on the cold-start path.
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=loader)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    config = ModelConfig.from_dict(data, folder)
    if config.name != folder.name:
        raise ConfigError(f"{path}: name {config.name!r} must match its folder {folder.name!r}")
    return config


def read_repository(settings: ServerSettings) -> list[ModelConfig]:
    """Configs of the models to serve: all in the repository, or those in KINDLING_MODELS."""
    root = settings.model_repository
    if not root.is_dir():
        raise ConfigError(f"model repository {root} is not a directory")
    # Dot-folders are half-built models (the builder renames them into place when done).
    folders = sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / CONFIG_FILE).is_file()
    )
    available = {p.name: p for p in folders}
    if settings.models:
        unknown = [m for m in settings.models if m not in available]
        if unknown:
            raise ConfigError(
                f"KINDLING_MODELS names models not in {root}: {unknown} (have {sorted(available)})"
            )
        folders = [available[m] for m in settings.models]
    if not folders:
        raise ConfigError(f"model repository {root} has no model folders with {CONFIG_FILE}")
    return [sized(read_config(p), settings) for p in folders]


def sized(config: ModelConfig, settings: ServerSettings) -> ModelConfig:
    """The config with the pod's batching overrides (KINDLING_MAX_BATCH_SIZE only lowers)."""
    batch, delay = settings.max_batch_size, settings.max_queue_delay_ms
    if batch is not None and config.max_batch_size > batch:
        config = replace(config, max_batch_size=batch)
    if delay is not None:
        config = replace(config, max_queue_delay_ms=delay)
    return config
