"""ImageNet classifiers with torchvision's layer structure and seeded random weights.

Layer by layer each graph matches torchvision.models (channel counts, kernels, strides,
paddings, pooling), and initializers carry torchvision's state_dict names, so trained
weights could be dropped in. BatchNorm is folded into the preceding convolution, as an
inference export does; that is why such a conv has a ".bias" torchvision's lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kindling.modelzoo.build import SampleModel, make_config
from kindling.modelzoo.graph import GraphBuilder

CLASSES = 1000
IMAGE = ["batch", 3, 224, 224]
LOGITS = ["batch", CLASSES]

_PROVENANCE = (
    "Input is an ImageNet-normalized RGB image [batch, 3, 224, 224]; output is 1000 "
    "ImageNet logits (no softmax). Weights are seeded random (He init; BatchNorm "
    "statistics and biases measured on synthetic images), not trained: the classes "
    "predicted are meaningless, the cost and the shapes are real."
)


def _vision_config(name: str, architecture: str) -> dict[str, Any]:
    return make_config(
        name,
        inputs=[{"name": "input", "datatype": "FP32", "shape": [-1, *IMAGE[1:]]}],
        outputs=[{"name": "logits", "datatype": "FP32", "shape": [-1, CLASSES]}],
        description=f"{architecture} {_PROVENANCE}",
    )


def calibration_images(count: int = 4, size: int = 224, seed: int = 0) -> np.ndarray:
    """Seeded stand-ins for normalized photos: smooth random color fields plus fine noise.

    They only set BatchNorm statistics and biases (see graph.py), which need image-like
    spatial correlation, not real content; at the served 224 px, since the statistics
    of the last layers shift with the resolution.
    """
    rng = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    images = 0.3 * rng.standard_normal((count, 3, size, size))
    for image in images:
        for _ in range(6):
            fy, fx, phase = rng.uniform(-8, 8), rng.uniform(-8, 8), rng.uniform(0, 2 * np.pi)
            image += rng.standard_normal((3, 1, 1)) * np.sin(fy * yy + fx * xx + phase)
    # ImageNet-normalized inputs are about zero-mean, unit-variance per channel.
    mean = images.mean(axis=(0, 2, 3), keepdims=True)
    return (images - mean) / images.std(axis=(0, 2, 3), keepdims=True)


def _image(g: GraphBuilder) -> str:
    return g.input("input", IMAGE, sample=calibration_images())


def _finish(g: GraphBuilder, logits: str, config: dict[str, Any]) -> SampleModel:
    g.output(logits, "logits", LOGITS)
    name = config["name"]
    return SampleModel(name, g.model(name, config["description"]), config, {})


# -- MobileNetV2 ---------------------------------------------------------------------------

# Sandler et al. 2018, Table 2, as torchvision.models.mobilenet_v2 (width_mult=1.0):
# expansion t, output channels c, repeats n, first stride s.
MOBILENET_V2_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def config_mobilenet_v2() -> dict[str, Any]:
    return _vision_config(
        "mobilenet_v2",
        "MobileNetV2 (Sandler et al. 2018; torchvision.models.mobilenet_v2, 3.5M parameters):"
        " 17 inverted residual blocks with ReLU6 and linear bottlenecks, 1280-d features;"
        " BatchNorm folded into the convolutions.",
    )


def _conv_bn_relu6(
    g: GraphBuilder,
    x: str,
    name: str,
    c_in: int,
    c_out: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
) -> str:
    # torchvision's Conv2dNormActivation: padding (k-1)//2, no conv bias, BN, ReLU6.
    y = g.conv(
        x, name, c_in, c_out, k, stride=stride, pad=(k - 1) // 2, groups=groups, batchnorm=True
    )
    return g.relu6(y)


def _inverted_residual(
    g: GraphBuilder, x: str, prefix: str, c_in: int, c_out: int, stride: int, t: int
) -> str:
    hidden = round(c_in * t)
    layers = 0
    y = x
    if t != 1:
        y = _conv_bn_relu6(g, y, f"{prefix}.conv.0.0", c_in, hidden, 1)
        layers = 1
    y = _conv_bn_relu6(g, y, f"{prefix}.conv.{layers}.0", hidden, hidden, 3, stride, groups=hidden)
    # The projection has no activation: the paper's "linear bottleneck".
    y = g.conv(y, f"{prefix}.conv.{layers + 1}", hidden, c_out, 1, batchnorm=True)
    if stride == 1 and c_in == c_out:
        y = g.add(x, y)
    return y


def build_mobilenet_v2() -> SampleModel:
    g = GraphBuilder(seed=1801_04381)  # the paper's arXiv id
    x = _conv_bn_relu6(g, _image(g), "features.0.0", 3, 32, 3, 2)
    c_in, index = 32, 1
    for t, c, n, s in MOBILENET_V2_SETTING:
        for i in range(n):
            x = _inverted_residual(g, x, f"features.{index}", c_in, c, s if i == 0 else 1, t)
            c_in, index = c, index + 1
    x = _conv_bn_relu6(g, x, f"features.{index}.0", c_in, 1280, 1)
    # Dropout(0.2) before the classifier is the identity at inference.
    logits = g.gemm(g.global_avgpool_flat(x), "classifier.1", 1280, CLASSES, center=True)
    return _finish(g, logits, config_mobilenet_v2())


# -- SqueezeNet 1.1 ------------------------------------------------------------------------

# torchvision.models.squeezenet1_1 (the official SqueezeNet v1.1 of Iandola et al.):
# (features index, in, squeeze, expand1x1, expand3x3) per Fire module; max pools sit at
# features indices 2, 5 and 8.
SQUEEZENET1_1_FIRES = (
    (3, 64, 16, 64, 64),
    (4, 128, 16, 64, 64),
    (6, 128, 32, 128, 128),
    (7, 256, 32, 128, 128),
    (9, 256, 48, 192, 192),
    (10, 384, 48, 192, 192),
    (11, 384, 64, 256, 256),
    (12, 512, 64, 256, 256),
)
SQUEEZENET1_1_POOL_BEFORE = {6, 9}


def config_squeezenet1_1() -> dict[str, Any]:
    return _vision_config(
        "squeezenet1_1",
        "SqueezeNet 1.1 (Iandola et al. 2016, v1.1 of the official repo; "
        "torchvision.models.squeezenet1_1, 1.24M parameters): 8 Fire modules, "
        "no BatchNorm, final 1x1 conv + ReLU + global average pool.",
    )


def _fire(g: GraphBuilder, x: str, prefix: str, c_in: int, sq: int, e1: int, e3: int) -> str:
    s = g.relu(g.conv(x, f"{prefix}.squeeze", c_in, sq, 1, center=True))
    left = g.relu(g.conv(s, f"{prefix}.expand1x1", sq, e1, 1, center=True))
    right = g.relu(g.conv(s, f"{prefix}.expand3x3", sq, e3, 3, pad=1, center=True))
    return g.concat([left, right])


def build_squeezenet1_1() -> SampleModel:
    g = GraphBuilder(seed=1602_07360)  # the paper's arXiv id
    # Conv 3x3/2 without padding, then ceil-mode 3x3/2 max pools: 224 -> 111 -> 55.
    x = g.relu(g.conv(_image(g), "features.0", 3, 64, 3, stride=2, center=True))
    x = g.maxpool(x, 3, 2, ceil=True)
    for index, c_in, sq, e1, e3 in SQUEEZENET1_1_FIRES:
        if index in SQUEEZENET1_1_POOL_BEFORE:
            x = g.maxpool(x, 3, 2, ceil=True)
        x = _fire(g, x, f"features.{index}", c_in, sq, e1, e3)
    # Dropout(0.5) is the identity at inference. torchvision initializes this last conv
    # with std 0.01 rather than He's, which, averaged after the ReLU, leaves logits near
    # 0.005; He's scale gives logits of a trained network's order instead.
    x = g.relu(g.conv(x, "classifier.1", 512, CLASSES, 1, center=True))
    return _finish(g, g.global_avgpool_flat(x), config_squeezenet1_1())


# -- ResNet-18 -----------------------------------------------------------------------------

# He et al. 2016, Table 1 (18-layer): two BasicBlocks per stage; torchvision.models.resnet18.
RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))


def config_resnet18() -> dict[str, Any]:
    return _vision_config(
        "resnet18",
        "ResNet-18 (He et al. 2016; torchvision.models.resnet18, 11.7M parameters): "
        "7x7 stem, 4 stages of 2 BasicBlocks (64-512 channels), global average pool, "
        "fc 512 -> 1000; BatchNorm folded into the convolutions.",
    )


def _basic_block(g: GraphBuilder, x: str, prefix: str, c_in: int, c_out: int, stride: int) -> str:
    y = g.relu(g.conv(x, f"{prefix}.conv1", c_in, c_out, 3, stride=stride, pad=1, batchnorm=True))
    y = g.conv(y, f"{prefix}.conv2", c_out, c_out, 3, pad=1, batchnorm=True)
    if stride != 1 or c_in != c_out:
        # torchvision's downsample: 1x1 conv with the block's stride, then BN.
        x = g.conv(x, f"{prefix}.downsample.0", c_in, c_out, 1, stride=stride, batchnorm=True)
    return g.relu(g.add(y, x))


def build_resnet18() -> SampleModel:
    g = GraphBuilder(seed=1512_03385)  # the paper's arXiv id
    x = g.relu(g.conv(_image(g), "conv1", 3, 64, 7, stride=2, pad=3, batchnorm=True))
    x = g.maxpool(x, 3, 2, pad=1)
    c_in = 64
    for stage, (c_out, stride) in enumerate(RESNET18_STAGES, start=1):
        for block in range(2):
            x = _basic_block(
                g, x, f"layer{stage}.{block}", c_in, c_out, stride if block == 0 else 1
            )
            c_in = c_out
    logits = g.gemm(g.global_avgpool_flat(x), "fc", 512, CLASSES, center=True)
    return _finish(g, logits, config_resnet18())


__all__ = [
    "build_mobilenet_v2",
    "build_resnet18",
    "build_squeezenet1_1",
    "config_mobilenet_v2",
    "config_resnet18",
    "config_squeezenet1_1",
]
