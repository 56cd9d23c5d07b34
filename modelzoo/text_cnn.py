"""The two sentence CNNs of the serverless-inference papers, over pre-looked-up word vectors.

Both follow castorini/serverless-inference (kim_cnn/, sm_cnn/model.py): the request carries
the sentence's word vectors (the runtime's embeddings component looks them up), so the
graph starts at the embedding matrix rather than at token ids.

Both use *wide* convolutions, zero-padding w-1 positions on each side as Castor's
`padding=(w - 1, 0)` and Kim's own code (which pads every sentence with w-1 zero vectors)
do, so any sentence of at least one word is valid: no minimum length beyond 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kindling.modelzoo.build import SampleModel, make_config
from kindling.modelzoo.graph import GraphBuilder

# Bump on any change to these graphs or configs (kindling.modelzoo.build's cache key).
BUILDER_VERSION = "2"

# Kim 2014, section 3.1 (CNN-static on SST-1): word2vec 300-d vectors, filter windows
# 3, 4, 5 with 100 feature maps each; SST-1 has 5 classes.
KIM_DIM = 300
KIM_WIDTHS = (3, 4, 5)
KIM_FILTERS = 100
KIM_CLASSES = 5

# Severyn & Moschitti 2015 (TREC QA setup): 50-d word embeddings, filter width 5, 100
# feature maps; join layer [x_q; x_sim; x_a]; one hidden layer, here of the join layer's
# size as in Castor's SMModel; softmax over {irrelevant, relevant}. The paper's extra
# word-overlap features x_feat are left out: they need the raw text, which this graph
# never sees.
SM_DIM = 50
SM_WIDTH = 5
SM_FILTERS = 100
SM_JOIN = 2 * SM_FILTERS + 1
SM_CLASSES = 2

KIM_SEED = 2014
SM_SEED = 2015


# He init's gain for ReLU; 1 for tanh, which is linear near zero.
_GAIN = {"Relu": 2.0, "Tanh": 1.0}


# Stands in for a window that sees no word, below any real pre-activation.
_MASKED = -1e4


def _wide_conv_max(
    g: GraphBuilder,
    x: str,
    name: str,
    c_in: int,
    filters: int,
    width: int,
    act: str,
    masked: bool = False,
) -> str:
    """Wide Conv1d over time then max-over-time pooling: [B, c_in, L] -> [B, filters].

    The batcher zero-pads sentences to a batch's length, so padding must not change the
    max. The conv's bias is zero, so an all-padding window yields 0 before the
    activation: harmless under ReLU (relu(0) = 0, never above the max), but under tanh
    a 0 can exceed a channel whose real windows are all negative. `masked` drops the
    windows that see no word vector at all (all-zero input) from the max.
    """
    y = g.conv(x, name, c_in, filters, (width,), pad=(width - 1,), gain=_GAIN[act])
    if masked:
        # Per position whether its vector is non-zero [B, 1, L]; a window of the wide
        # conv sees a word if the max over it is positive [B, 1, L + width - 1].
        present = g.op(
            "ReduceMax",
            [g.op("Abs", [x], name=f"{name}.abs")],
            name=f"{name}.word",
            axes=[1],
            keepdims=1,
        )
        seen = g.op(
            "MaxPool",
            [present],
            name=f"{name}.seen",
            kernel_shape=[width],
            pads=[width - 1, width - 1],
        )
        real = g.op("Greater", [seen, g.scalar(0.0)], name=f"{name}.real")
        y = g.op("Where", [real, y, g.scalar(_MASKED)], name=f"{name}.masked")
    # ReLU and tanh are monotone, so max-then-activate equals the papers'
    # activate-then-max while applying the activation to [B, C] instead of [B, C, L].
    pooled = g.op("ReduceMax", [y], name=f"{name}.maxpool", axes=[2], keepdims=0)
    return g.op(act, [pooled], name=f"{name}.{act.lower()}")


def _channels_first(g: GraphBuilder, x: str) -> str:
    # [B, L, D] -> [B, D, L]: the word-vector dimension becomes Conv1d's channel axis,
    # the same computation as Castor's Conv2d(1, C, (w, D)) on [B, 1, L, D].
    return g.op("Transpose", [x], name=f"{x}.t", perm=[0, 2, 1])


def word_vectors(table: str, inputs: dict[str, str]) -> dict[str, Any]:
    """The runtime's text path of paper 000: clean_str_sst tokens -> vectors from `table`.

    min_length is the widest filter (Kim's code pads every sentence to it); max_length
    bounds a request's cost: SST's longest sentence has 56 tokens (Kim 2014, Table 1)."""
    return {
        "kind": "word_vectors",
        "table": table,
        "tokenizer": "clean_str_sst",
        "min_length": max(max(KIM_WIDTHS), SM_WIDTH),
        "max_length": 64,
        "inputs": inputs,
    }


def config_kim_cnn() -> dict[str, Any]:
    config = make_config(
        "kim_cnn",
        inputs=[{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, KIM_CLASSES]}],
        description=(
            "Kim CNN, static variant (Kim 2014, 'Convolutional Neural Networks for Sentence "
            "Classification'; castorini/serverless-inference kim_cnn): served input is a "
            "BYTES batch of sentences, tokenized with clean_str_sst and looked up in the "
            "300-d table demo300; the graph takes the sentence's 300-d word vectors "
            "[batch, length, 300] (graph input 'embeddings'); wide convolutions of "
            "widths 3, 4, 5 with 100 filters each, ReLU, max over time, linear 300 -> 5, "
            "softmax over the 5 SST-1 classes. Sequence length: any length >= 1 (wide "
            "convolution pads width-1 zeros each side, as Kim's code does); zero-padding "
            "a sentence to a batch's length leaves its output unchanged. Weights are "
            "seeded random, not trained."
        ),
    )
    config["preprocess"] = word_vectors("demo300", {"text": "embeddings"})
    return config


def build_kim_cnn() -> SampleModel:
    g = GraphBuilder(KIM_SEED)
    x = _channels_first(g, g.input("embeddings", ["batch", "length", KIM_DIM]))
    pooled = [
        _wide_conv_max(g, x, f"conv{i}", KIM_DIM, KIM_FILTERS, width, "Relu")
        for i, width in enumerate(KIM_WIDTHS, start=1)
    ]
    # Dropout (p=0.5 in the paper) is the identity at inference and is left out.
    logits = g.gemm(g.concat(pooled), "fc1", KIM_FILTERS * len(KIM_WIDTHS), KIM_CLASSES)
    g.output(g.softmax(logits), "probabilities", ["batch", KIM_CLASSES])
    config = config_kim_cnn()
    return SampleModel("kim_cnn", g.model("kim_cnn", config["description"]), config, {})


def config_sm_cnn() -> dict[str, Any]:
    sentence = {"datatype": "BYTES", "shape": [-1]}
    config = make_config(
        "sm_cnn",
        inputs=[{"name": "question", **sentence}, {"name": "answer", **sentence}],
        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [-1, SM_CLASSES]}],
        description=(
            "SM CNN (Severyn & Moschitti 2015, 'Learning to Rank Short Text Pairs with "
            "Convolutional Deep Neural Networks'; castorini/serverless-inference sm_cnn): "
            "served inputs question and answer are BYTES batches of sentences, tokenized "
            "with clean_str_sst and looked up in the 50-d table demo50; the graph takes "
            "[batch, length, 50] word vectors for each; per sentence a wide "
            "convolution of width 5 with 100 filters, tanh, max over time; join layer "
            "[x_q; x_q^T M x_a; x_a] (201), hidden layer 201 tanh, softmax over 2 classes "
            "(irrelevant, relevant). Sequence length: any length >= 1 per input (wide "
            "convolution pads 4 zeros each side); question and answer may differ in "
            "length; windows that see no word (all-zero vectors) are left out of the max, "
            "so zero-padding a sentence to a batch's length leaves its output unchanged. "
            "Weights are seeded random, not trained."
        ),
    )
    config["preprocess"] = word_vectors("demo50", {"question": "question", "answer": "answer"})
    return config


def build_sm_cnn() -> SampleModel:
    g = GraphBuilder(SM_SEED)
    q = _channels_first(g, g.input("question", ["batch", "question_length", SM_DIM]))
    a = _channels_first(g, g.input("answer", ["batch", "answer_length", SM_DIM]))
    # Separate filters per sentence, as Castor's conv_q / conv_a.
    x_q = _wide_conv_max(g, q, "conv_q", SM_DIM, SM_FILTERS, SM_WIDTH, "Tanh", masked=True)
    x_a = _wide_conv_max(g, a, "conv_a", SM_DIM, SM_FILTERS, SM_WIDTH, "Tanh", masked=True)
    # The paper's similarity x_sim = x_q^T M x_a, M in R^{100x100}; std
    # 1/100 keeps the bilinear sum of 10^4 terms near unit scale.
    m = g.weight("M", g.normal((SM_FILTERS, SM_FILTERS), 1.0 / SM_FILTERS))
    axes = g.weight("sim.axes", np.array([1], dtype=np.int64))
    qm = g.op("MatMul", [x_q, m], name="sim.qM")
    x_sim = g.op(
        "ReduceSum", [g.op("Mul", [qm, x_a], name="sim.qMa"), axes], name="x_sim", keepdims=1
    )
    join = g.concat([x_q, x_sim, x_a])
    hidden = g.tanh(g.gemm(join, "hidden", SM_JOIN, SM_JOIN))
    logits = g.gemm(hidden, "out", SM_JOIN, SM_CLASSES)
    g.output(g.softmax(logits), "probabilities", ["batch", SM_CLASSES])
    config = config_sm_cnn()
    return SampleModel("sm_cnn", g.model("sm_cnn", config["description"]), config, {})


__all__ = ["build_kim_cnn", "build_sm_cnn", "config_kim_cnn", "config_sm_cnn"]
