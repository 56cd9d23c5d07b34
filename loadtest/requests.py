"""Request kinds: what one request of a workload carries, encoded for its protocol.

Kinds, after the papers' models:

- `image`: one ImageNet-shaped FP32 image [1, 3, 224, 224] (paper 001's MobileNetV2,
  SqueezeNet, ResNet-18), sent as a binary OIP tensor;
- `sentence`: one sentence of the corpus (Kim CNN in paper 000, MiniLM): a BYTES tensor
  when the model's input is BYTES (the runtime tokenizes it), else the sentence's word
  vectors [1, words, dim];
- `pair`: one question/answer pair (SM CNN in paper 000), as two such inputs.

Protocols: `oip` (POST /v2/models/{m}/infer, binary tensors or JSON) and `openwhisk`
(POST /run with {"value": OIP JSON request}, as an OpenWhisk action container takes it; a
path under /api/v1/namespaces/ is OpenWhisk's controller API, which takes the parameters
themselves). Bodies are built before the run, so the client spends no time encoding.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kindling.loadtest import corpus

KINDS = ("image", "sentence", "pair")
PROTOCOLS = ("oip", "openwhisk")
ENCODINGS = ("binary", "json")

# Kim (2014) initialises the vectors of words missing from word2vec with U[-0.25, 0.25]
# (process_data.py's add_unknown_words), which gives them word2vec's variance; a vector
# seeded by the word's hash is the same draw, repeatable across runs and processes.
UNKNOWN_WORD_SCALE = 0.25


@dataclass(frozen=True)
class InputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]
    """As in the model's metadata: -1 for a dynamic dimension, the batch first."""


@dataclass(frozen=True)
class ModelSpec:
    """What the client needs of a model: its inputs and outputs (OIP model metadata)."""

    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...]

    @classmethod
    def from_metadata(cls, doc: dict[str, Any]) -> ModelSpec:
        inputs = tuple(
            InputSpec(t["name"], t["datatype"], tuple(int(d) for d in t["shape"]))
            for t in doc["inputs"]
        )
        return cls(doc["name"], inputs, tuple(t["name"] for t in doc.get("outputs", [])))


def _fp32(name: str, *shape: int) -> InputSpec:
    return InputSpec(name, "FP32", shape)


_IMAGE = (_fp32("input", -1, 3, 224, 224),)
# The sample repository's models as `kindling models build` writes them, for targets with
# no metadata endpoint (an OpenWhisk action).
KNOWN_MODELS: dict[str, ModelSpec] = {
    "kim_cnn": ModelSpec("kim_cnn", (_fp32("embeddings", -1, -1, 300),), ("probabilities",)),
    "sm_cnn": ModelSpec(
        "sm_cnn",
        (_fp32("question", -1, -1, 50), _fp32("answer", -1, -1, 50)),
        ("probabilities",),
    ),
    "mobilenet_v2": ModelSpec("mobilenet_v2", _IMAGE, ("logits",)),
    "squeezenet1_1": ModelSpec("squeezenet1_1", _IMAGE, ("logits",)),
    "resnet18": ModelSpec("resnet18", _IMAGE, ("logits",)),
    "minilm": ModelSpec("minilm", (InputSpec("text", "BYTES", (-1,)),), ("embedding",)),
}


def fetch_model_spec(url: str, headers: dict[str, str] | None = None) -> ModelSpec:
    """GET an OIP model metadata document (GET /v2/models/{m})."""
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=60) as response:
        return ModelSpec.from_metadata(json.load(response))


def detect_kind(spec: ModelSpec) -> str:
    """The request kind a model's inputs call for."""
    if len(spec.inputs) == 2:
        return "pair"
    if len(spec.inputs) != 1:
        raise ValueError(f"{spec.name}: no request kind for {len(spec.inputs)} inputs")
    only = spec.inputs[0]
    if only.datatype == "BYTES" or len(only.shape) == 3:
        return "sentence"
    if len(only.shape) == 4:
        return "image"
    raise ValueError(f"{spec.name}: no request kind for input {only}")


# -- tensors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray
    """FP32 values, or an object array of UTF-8 bytes for BYTES."""


def word_vector(word: str, dim: int) -> np.ndarray:
    """A deterministic stand-in for a word's embedding: U[-0.25, 0.25] seeded by the word."""
    seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    return rng.uniform(-UNKNOWN_WORD_SCALE, UNKNOWN_WORD_SCALE, dim).astype(np.float32)


def embed(sentence: str, dim: int) -> np.ndarray:
    """[1, words, dim] word vectors, as paper 000's client fetched them before calling."""
    tokens = corpus.words(sentence) or ["."]
    return np.stack([word_vector(w, dim) for w in tokens])[np.newaxis]


def text_tensor(spec: InputSpec, sentence: str) -> Tensor:
    if spec.datatype == "BYTES":
        return Tensor(spec.name, "BYTES", np.array([sentence.encode()], dtype=object))
    return Tensor(spec.name, "FP32", embed(sentence, spec.shape[-1]))


def image_tensor(spec: InputSpec, rng: np.random.Generator) -> Tensor:
    # Standard normal values: what an ImageNet-normalized image looks like to the model.
    shape = (1, *(d if d > 0 else 1 for d in spec.shape[1:]))
    return Tensor(spec.name, "FP32", rng.standard_normal(shape, dtype=np.float32))


def make_tensors(spec: ModelSpec, kind: str, rng: np.random.Generator) -> list[Tensor]:
    """One request's inputs, drawn from the corpus (or random images) by `rng`."""
    if kind == "image":
        return [image_tensor(spec.inputs[0], rng)]
    if kind == "sentence":
        sentences = corpus.sentences()
        return [text_tensor(spec.inputs[0], sentences[rng.integers(len(sentences))])]
    if kind == "pair":
        pairs = corpus.pairs()
        question, answer = pairs[rng.integers(len(pairs))]
        q_spec, a_spec = spec.inputs
        return [text_tensor(q_spec, question), text_tensor(a_spec, answer)]
    raise ValueError(f"unknown request kind {kind!r} (known: {', '.join(KINDS)})")


# -- encodings ----------------------------------------------------------------------------


def bytes_elements(array: np.ndarray) -> bytes:
    """The binary extension's BYTES layout: a 4-byte little-endian length, then the bytes."""
    return b"".join(len(b).to_bytes(4, "little") + b for b in array.reshape(-1))


def _raw(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return bytes_elements(tensor.array)
    return np.ascontiguousarray(tensor.array, dtype="<f4").tobytes()


def oip_json_doc(tensors: Sequence[Tensor], outputs: Sequence[str]) -> dict[str, Any]:
    inputs = []
    for t in tensors:
        data = (
            [b.decode() for b in t.array.reshape(-1)]
            if t.datatype == "BYTES"
            else t.array.reshape(-1).tolist()
        )
        inputs.append(
            {"name": t.name, "datatype": t.datatype, "shape": list(t.array.shape), "data": data}
        )
    doc: dict[str, Any] = {"inputs": inputs}
    if outputs:
        doc["outputs"] = [{"name": o} for o in outputs]
    return doc


def encode_json(tensors: Sequence[Tensor], outputs: Sequence[str]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(oip_json_doc(tensors, outputs), separators=(",", ":")).encode()
    return body, {"Content-Type": "application/json"}


def encode_binary(
    tensors: Sequence[Tensor], outputs: Sequence[str]
) -> tuple[bytes, dict[str, str]]:
    """OIP with Triton's binary_tensor_data extension, outputs asked for as binary too."""
    blobs = [_raw(t) for t in tensors]
    header = {
        "inputs": [
            {
                "name": t.name,
                "datatype": t.datatype,
                "shape": list(t.array.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
            for t, blob in zip(tensors, blobs, strict=True)
        ],
        "outputs": [{"name": o, "parameters": {"binary_data": True}} for o in outputs],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(head)),
    }
    return b"".join([head, *blobs]), headers


def encode_openwhisk(
    tensors: Sequence[Tensor], outputs: Sequence[str], model: str, wrap: bool = True
) -> tuple[bytes, dict[str, str]]:
    """An action container's /run body, {"value": params}; the controller API takes
    the params alone (`wrap` False). `model_name` picks the model in an image serving
    several (runtime/builtin_action.py)."""
    params = {"model_name": model, **oip_json_doc(tensors, outputs)}
    doc = {"value": params} if wrap else params
    return json.dumps(doc, separators=(",", ":")).encode(), {"Content-Type": "application/json"}


# -- the pool of prepared requests ----------------------------------------------------------


@dataclass(frozen=True)
class PreparedRequest:
    path: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"


@dataclass(frozen=True)
class RequestMix:
    """How to build a run's requests: model, kind, protocol, and where to send them."""

    spec: ModelSpec
    kind: str
    protocol: str = "oip"
    encoding: str = "binary"
    path: str = ""
    """Empty: /v2/models/{model}/infer for OIP, /run for OpenWhisk."""
    extra_headers: dict[str, str] = field(default_factory=dict)

    def target_path(self) -> str:
        if self.path:
            return self.path
        return "/run" if self.protocol == "openwhisk" else f"/v2/models/{self.spec.name}/infer"

    def encode(self, tensors: Sequence[Tensor]) -> tuple[bytes, dict[str, str]]:
        if self.protocol == "openwhisk":
            wrap = not self.target_path().startswith("/api/v1/namespaces/")
            return encode_openwhisk(tensors, self.spec.outputs, self.spec.name, wrap)
        if self.protocol != "oip":
            raise ValueError(f"unknown protocol {self.protocol!r} (known: {', '.join(PROTOCOLS)})")
        if self.encoding == "json":
            return encode_json(tensors, self.spec.outputs)
        return encode_binary(tensors, self.spec.outputs)

    def pool(self, size: int, seed: int) -> list[PreparedRequest]:
        """`size` distinct requests, the same for the same seed; a run cycles through them."""
        rng = np.random.default_rng(seed)
        path = self.target_path()
        out = []
        for _ in range(size):
            body, headers = self.encode(make_tensors(self.spec, self.kind, rng))
            out.append(PreparedRequest(path, body, {**headers, **self.extra_headers}))
        return out
