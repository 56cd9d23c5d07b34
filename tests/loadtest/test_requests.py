"""Request kinds decode with the runtime's own OIP decoder, in every shape they take."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kindling.loadtest.requests import (
    KNOWN_MODELS,
    InputSpec,
    ModelSpec,
    RequestMix,
    detect_kind,
    embed,
    word_vector,
)
from kindling.runtime.codec import HEADER_LENGTH, decode_request

KIM_BYTES = ModelSpec("kim_cnn", (InputSpec("text", "BYTES", (-1,)),), ("probabilities",))
SM_BYTES = ModelSpec(
    "sm_cnn",
    (InputSpec("question", "BYTES", (-1,)), InputSpec("answer", "BYTES", (-1,))),
    ("probabilities",),
)


def decode(prepared):
    return decode_request(prepared.body, prepared.headers.get("Inference-Header-Content-Length"))


def test_known_models_get_their_kinds():
    kinds = {name: detect_kind(spec) for name, spec in KNOWN_MODELS.items()}
    assert kinds == {
        "kim_cnn": "sentence",
        "sm_cnn": "pair",
        "mobilenet_v2": "image",
        "squeezenet1_1": "image",
        "resnet18": "image",
        "minilm": "sentence",
    }
    assert detect_kind(KIM_BYTES) == "sentence" and detect_kind(SM_BYTES) == "pair"


def test_image_requests_are_binary_fp32_images():
    (prepared,) = RequestMix(KNOWN_MODELS["resnet18"], "image").pool(1, seed=0)
    request = decode(prepared)
    assert request.inputs["input"].shape == (1, 3, 224, 224)
    assert request.inputs["input"].dtype == np.float32
    assert request.outputs[0].name == "logits" and request.outputs[0].binary
    assert prepared.path == "/v2/models/resnet18/infer"


def test_sentences_go_as_bytes_when_the_model_takes_bytes():
    (prepared,) = RequestMix(KIM_BYTES, "sentence").pool(1, seed=0)
    text = decode(prepared).inputs["text"]
    assert text.shape == (1,) and isinstance(text[0], bytes) and b" " in text[0]


def test_sentences_go_as_word_vectors_when_the_model_takes_fp32():
    (prepared,) = RequestMix(KNOWN_MODELS["kim_cnn"], "sentence").pool(1, seed=0)
    vectors = decode(prepared).inputs["embeddings"]
    assert vectors.dtype == np.float32 and vectors.shape[0] == 1 and vectors.shape[2] == 300
    assert vectors.shape[1] >= 3  # one vector per word of a real sentence
    assert np.abs(vectors).max() <= 0.25


def test_word_vectors_are_deterministic_per_word():
    np.testing.assert_array_equal(word_vector("film", 50), word_vector("film", 50))
    assert not np.array_equal(word_vector("film", 50), word_vector("movie", 50))
    sentence = embed("The film, the film.", 50)
    np.testing.assert_array_equal(sentence[0, 0], sentence[0, 2])  # "the" twice


@pytest.mark.parametrize("spec", [KNOWN_MODELS["sm_cnn"], SM_BYTES])
def test_pairs_send_question_and_answer(spec):
    (prepared,) = RequestMix(spec, "pair").pool(1, seed=3)
    inputs = decode(prepared).inputs
    assert set(inputs) == {"question", "answer"}


def test_json_encoding_decodes_to_the_same_tensors():
    binary = RequestMix(KNOWN_MODELS["kim_cnn"], "sentence").pool(4, seed=1)
    as_json = RequestMix(KNOWN_MODELS["kim_cnn"], "sentence", encoding="json").pool(4, seed=1)
    for b, j in zip(binary, as_json, strict=True):
        assert HEADER_LENGTH not in {k.lower() for k in j.headers}
        np.testing.assert_array_equal(
            decode(b).inputs["embeddings"], decode(j).inputs["embeddings"]
        )


def test_openwhisk_wraps_the_oip_request_in_value():
    mix = RequestMix(KNOWN_MODELS["minilm"], "sentence", protocol="openwhisk")
    (prepared,) = mix.pool(1, seed=0)
    assert prepared.path == "/run"
    doc = json.loads(prepared.body)
    assert doc["value"]["model_name"] == "minilm"  # an image may serve several models
    assert doc["value"]["inputs"][0]["name"] == "text"
    assert decode_request(json.dumps(doc["value"]).encode(), None).inputs["text"].shape == (1,)


def test_openwhisk_controller_api_takes_the_parameters_themselves():
    path = "/api/v1/namespaces/_/actions/minilm?blocking=true&result=true"
    mix = RequestMix(KNOWN_MODELS["minilm"], "sentence", protocol="openwhisk", path=path)
    (prepared,) = mix.pool(1, seed=0)
    assert prepared.path == path and "inputs" in json.loads(prepared.body)


def test_pools_are_seeded_and_carry_extra_headers():
    mix = RequestMix(KIM_BYTES, "sentence", extra_headers={"Host": "kim.default.example.com"})
    a, b = mix.pool(32, seed=9), mix.pool(32, seed=9)
    assert [p.body for p in a] == [p.body for p in b]
    assert len({p.body for p in a}) > 20  # distinct sentences, not one body repeated
    assert a[0].headers["Host"] == "kim.default.example.com"
