"""Turning served inputs (text as OIP BYTES) into the tensors the ONNX graph takes.

A preprocessor has two steps: `validate` runs per request before batching, so one
caller's bad text fails only that caller; `__call__` runs on a whole batch in the
inference thread.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from kindling.errors import InvalidInput
from kindling.runtime.settings import ConfigError, ModelConfig


class Preprocessor(Protocol):
    def validate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def decode_text(name: str, array: np.ndarray) -> np.ndarray:
    """UTF-8 bytes -> str, element-wise; 400 (not 500) on bytes that are not UTF-8."""
    out = np.empty(array.shape, dtype=object)
    flat, dest = array.reshape(-1), out.reshape(-1)
    for i, item in enumerate(flat):
        try:
            dest[i] = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input {name!r} element {i} is not valid UTF-8: {exc}") from None
    return out


class HFTokenizer:
    """A HuggingFace `tokenizers` JSON tokenizer (WordPiece for BERT), padded per batch."""

    def __init__(self, config: ModelConfig, onnx_inputs: list[str]) -> None:
        from tokenizers import Tokenizer

        spec = config.preprocess
        path = config.path / spec.get("tokenizer", "tokenizer.json")
        if not path.is_file():
            raise ConfigError(f"{config.name}: tokenizer file {path} is missing")
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(int(spec.get("max_length", 256)))
        # Pad to the longest sentence of each batch, not to max_length: attention cost
        # grows with the square of the padded length.
        self.tokenizer.enable_padding()
        self.text_input = config.inputs[0].name
        self.onnx_inputs = onnx_inputs

    def validate(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: decode_text(k, v) for k, v in inputs.items()}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(list(batch[self.text_input].reshape(-1)))
        tensors = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: tensors[name] for name in self.onnx_inputs}


PREPROCESSORS: dict[str, Any] = {"hf_tokenizer": HFTokenizer}


def make_preprocessor(config: ModelConfig, onnx_inputs: list[str]) -> Preprocessor | None:
    if not config.preprocess:
        return None
    kind = config.preprocess.get("kind")
    factory = PREPROCESSORS.get(str(kind))
    if factory is None:
        raise ConfigError(f"{config.name}: unknown preprocess kind {kind!r}")
    return factory(config, onnx_inputs)
