"""A small ONNX graph builder shared by the sample-model architectures.

Weights are seeded random numbers, not trained ones: the sample models exist to measure
serving (cold start, batching, throughput), and random weights of the right shapes cost
the same FLOPs and bytes as trained ones.

Random weights alone make a poor stand-in, though: every ReLU adds a positive mean, each
layer mixes those means into per-channel offsets that do not depend on the input, and by
the last layer every image gets the same top class. A trained network's BatchNorm removes
exactly those offsets with its running statistics. So, given a few sample inputs, the
builder evaluates each layer as it adds it (float64 NumPy, see `evaluate`) and sets
BatchNorm statistics, and biases where asked to `center`, from what it measures: the
data-dependent initialization of Krähenbühl et al. 2016 and Mishkin & Matas 2016.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

# onnxruntime >= 1.18 (the runtime's floor) runs opset 17 / IR 8; newer opsets would only
# move `axes` of the Reduce* ops from attributes to inputs, which we do not need.
OPSET = 17
IR_VERSION = 8
BN_EPS = 1e-5  # torch.nn.BatchNorm2d's default

Dim = int | str  # str: a named dynamic dimension (dim_param)


class GraphBuilder:
    """Accumulates nodes and initializers; each layer method returns its output's name."""

    def __init__(self, seed: int) -> None:
        # The legacy RandomState is used on purpose: NumPy guarantees its stream stays the
        # same across releases (NEP 19), which `default_rng` does not, so a model's bytes
        # do not change when NumPy is upgraded.
        self.rng = np.random.RandomState(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.values: dict[str, np.ndarray] = {}  # float64 activations of the sample inputs
        self._arrays: dict[str, np.ndarray] = {}  # initializer name -> array
        self._names: set[str] = set()
        self._counts: dict[str, int] = {}
        self._scalars: dict[float, str] = {}

    # -- names, tensors, graph edges ------------------------------------------------------

    def unique(self, prefix: str) -> str:
        """A fresh name `prefix`, `prefix_1`, ...; node outputs and weights share one space."""
        n = self._counts.get(prefix, 0)
        name = prefix if n == 0 else f"{prefix}_{n}"
        while name in self._names:
            n += 1
            name = f"{prefix}_{n}"
        self._counts[prefix] = n + 1
        self._names.add(name)
        return name

    def weight(self, name: str, array: np.ndarray) -> str:
        out = self.unique(name)
        self.initializers.append(numpy_helper.from_array(array, out))
        self._arrays[out] = array
        return out

    def scalar(self, value: float) -> str:
        # Shared, so that each ReLU6 does not add two more tensors.
        if value not in self._scalars:
            self._scalars[value] = self.weight("const", np.array(value, dtype=np.float32))
        return self._scalars[value]

    def input(self, name: str, shape: Sequence[Dim], sample: np.ndarray | None = None) -> str:
        """A float32 graph input; `sample` (float64) turns on evaluation as layers are added."""
        self._names.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        if sample is not None:
            self.values[name] = sample.astype(np.float64)
        return name

    def output(self, value: str, name: str, shape: Sequence[Dim]) -> str:
        """Expose `value` as graph output `name` (an Identity renames it when needed)."""
        if value != name:
            self._names.add(name)
            self.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str | None = None,
        value: np.ndarray | None = None,
        **attrs: Any,
    ) -> str:
        """Add a node; with sample inputs, also its output's `value` (given or evaluated)."""
        out = self.unique(name or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        if value is None and inputs[0] in self.values:
            args = [self.values[i] if i in self.values else self._arrays[i] for i in inputs]
            value = evaluate(op_type, args, attrs)
        if value is not None:
            self.values[out] = value
        return out

    # -- random weights -------------------------------------------------------------------

    def normal(self, shape: Sequence[int], std: float) -> np.ndarray:
        return (self.rng.standard_normal(tuple(shape)) * std).astype(np.float32)

    def uniform(self, shape: Sequence[int], low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, tuple(shape)).astype(np.float32)

    def he(self, shape: Sequence[int], fan_in: int, gain: float = 2.0) -> np.ndarray:
        # He et al. 2015: std = sqrt(gain / fan_in) keeps the activation scale through
        # ReLU layers (gain 2) or linear ones (gain 1).
        return self.normal(shape, math.sqrt(gain / fan_in))

    # -- layers ---------------------------------------------------------------------------

    def conv(
        self,
        x: str,
        name: str,
        c_in: int,
        c_out: int,
        kernel: int | tuple[int, ...],
        *,
        stride: int = 1,
        pad: int | tuple[int, ...] = 0,
        groups: int = 1,
        batchnorm: bool = False,
        fold_bn: bool = True,
        gain: float = 2.0,
        center: bool = False,
    ) -> str:
        """A Conv (1-D or 2-D by the length of `kernel`), optionally followed by BatchNorm.

        `name` is the torchvision module path (e.g. "layer1.0.conv1"), so initializers read
        like a torchvision state_dict. BatchNorm's running statistics are those measured on
        the sample inputs; with `fold_bn` it is folded into the convolution (w' = w·γ/σ,
        b' = β - μ·γ/σ) as inference exporters do, giving the conv a "<name>.bias" that
        torchvision's lacks. Without BatchNorm the bias is zero, or with `center` it
        cancels the measured mean of each output channel.
        """
        ks = (kernel,) * 2 if isinstance(kernel, int) else tuple(kernel)
        pads = (pad,) * len(ks) if isinstance(pad, int) else tuple(pad)
        attrs = {"kernel_shape": list(ks), "strides": [stride] * len(ks), "pads": list(pads) * 2}
        w = self.he((c_out, c_in // groups, *ks), c_in // groups * math.prod(ks), gain)
        xv = self.values.get(x)
        y = None if xv is None else evaluate("Conv", [xv, w], {**attrs, "group": groups})
        mean, var = _channel_stats(y, c_out)
        if batchnorm and not fold_bn:
            conv_inputs = [x, self.weight(f"{name}.weight", w)]
            y_name = self.op("Conv", conv_inputs, name, y, group=groups, **attrs)
            gamma, beta = self._bn_affine(c_out)
            params = [gamma, beta, mean, var]
            keys = ("weight", "bias", "running_mean", "running_var")
            names = [self.weight(f"{name}.bn.{k}", p) for k, p in zip(keys, params, strict=True)]
            return self.op("BatchNormalization", [y_name, *names], f"{name}.bn", epsilon=BN_EPS)
        if batchnorm:
            gamma, beta = self._bn_affine(c_out)
            scale = gamma / np.sqrt(var + np.float32(BN_EPS))
            w = (w * scale.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32)
            b = (beta - mean * scale).astype(np.float32)
            value = None
            if y is not None:
                value = (y - _per_channel(mean, y)) * _per_channel(scale, y) + _per_channel(beta, y)
        else:
            b = -mean if center else np.zeros(c_out, dtype=np.float32)
            value = None if y is None else y + _per_channel(b, y)
        inputs = [x, self.weight(f"{name}.weight", w), self.weight(f"{name}.bias", b)]
        return self.op("Conv", inputs, name, value, group=groups, **attrs)

    def _bn_affine(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        # Mild per-channel scale and shift, as a trained BatchNorm has.
        return self.uniform((c,), 0.8, 1.2), self.normal((c,), 0.1)

    def gemm(
        self, x: str, name: str, c_in: int, c_out: int, *, gain: float = 1.0, center: bool = False
    ) -> str:
        """A torch.nn.Linear, y = x·Wᵀ + b; `center` makes b cancel the measured mean of y.

        Centering matters for a classifier over ReLU features: without it the logits are
        dominated by W·E[x], the same for every input, and so is the argmax.
        """
        w = self.he((c_out, c_in), c_in, gain)
        xv = self.values.get(x)
        mean, _ = _channel_stats(None if xv is None else xv @ w.T.astype(np.float64), c_out)
        b = -mean if center else np.zeros(c_out, dtype=np.float32)
        inputs = [x, self.weight(f"{name}.weight", w), self.weight(f"{name}.bias", b)]
        return self.op("Gemm", inputs, name=name, transB=1)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def relu6(self, x: str) -> str:
        # MobileNetV2's ReLU6 (Sandler et al. 2018) is Clip(0, 6) in ONNX.
        return self.op("Clip", [x, self.scalar(0.0), self.scalar(6.0)], name="relu6")

    def tanh(self, x: str) -> str:
        return self.op("Tanh", [x])

    def add(self, a: str, b: str) -> str:
        return self.op("Add", [a, b])

    def concat(self, xs: Sequence[str], axis: int = 1) -> str:
        return self.op("Concat", list(xs), axis=axis)

    def maxpool(self, x: str, kernel: int, stride: int, pad: int = 0, ceil: bool = False) -> str:
        return self.op(
            "MaxPool",
            [x],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad] * 4,
            ceil_mode=int(ceil),
        )

    def global_avgpool_flat(self, x: str) -> str:
        """adaptive_avg_pool2d(x, 1) then flatten(x, 1): [B, C, H, W] -> [B, C]."""
        return self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)

    def softmax(self, x: str) -> str:
        return self.op("Softmax", [x], axis=-1)

    # -- finish ---------------------------------------------------------------------------

    def model(self, graph_name: str, doc: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, graph_name, self.inputs, self.outputs, self.initializers
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="kindling.modelzoo",
            doc_string=doc,
        )
        onnx.checker.check_model(model)
        return model


def _channel_stats(y: np.ndarray | None, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (axis 1) mean and variance of `y`, as float32 like BatchNorm's buffers.

    Rounding to float32 also makes the weights derived from them byte-identical across
    BLAS builds, whose float64 sums differ only far below float32 precision.
    """
    if y is None:
        return np.zeros(channels, dtype=np.float32), np.ones(channels, dtype=np.float32)
    axes = tuple(i for i in range(y.ndim) if i != 1)
    return y.mean(axis=axes).astype(np.float32), y.var(axis=axes).astype(np.float32)


def _per_channel(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    return v.astype(np.float64).reshape(-1, *[1] * (like.ndim - 2))


def evaluate(op_type: str, args: list[np.ndarray], attrs: dict[str, Any]) -> np.ndarray:
    """The ops the builder emits, in float64 NumPy, for the sample-input activations."""
    x = args[0]
    if op_type == "Conv":
        return _conv(x, args[1].astype(np.float64), attrs) + (
            _per_channel(args[2], x) if len(args) > 2 else 0.0
        )
    if op_type == "Relu":
        return np.maximum(x, 0.0)
    if op_type == "Clip":
        return np.clip(x, float(args[1]), float(args[2]))
    if op_type == "Add":
        return x + args[1]
    if op_type == "Concat":
        return np.concatenate(args, axis=attrs["axis"])
    if op_type == "MaxPool":
        return _maxpool(x, attrs)
    if op_type == "GlobalAveragePool":
        return x.mean(axis=(2, 3), keepdims=True)
    if op_type == "Flatten":
        return x.reshape(len(x), -1)
    if op_type == "Gemm":
        return x @ args[1].T.astype(np.float64) + args[2]
    if op_type == "BatchNormalization":
        gamma, beta, mean, var = (_per_channel(a, x) for a in args[1:])
        return (x - mean) / np.sqrt(var + attrs["epsilon"]) * gamma + beta
    raise NotImplementedError(f"no NumPy evaluation of {op_type}")


def _conv(x: np.ndarray, w: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    """2-D convolution with ONNX Conv semantics (square stride and padding)."""
    (s, _), p, g = attrs["strides"], attrs["pads"][0], attrs["group"]
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::s, ::s]  # B C H W kh kw
    b, c, h, wd = win.shape[:4]
    if g == c and len(w) == c:
        # Depthwise: a per-channel weighted sum of the k·k shifted views, which avoids
        # einsum's slow path for a contraction over one input channel.
        taps = (
            win[..., i, j] * w[:, 0, i, j].reshape(-1, 1, 1) for i in range(kh) for j in range(kw)
        )
        return sum(taps, np.zeros((b, c, h, wd)))
    win = win.reshape(b, g, c // g, h, wd, kh, kw)
    wg = w.reshape(g, -1, c // g, kh, kw)
    return np.einsum("bgchwij,gocij->bgohw", win, wg, optimize=True).reshape(b, -1, h, wd)


def _maxpool(x: np.ndarray, attrs: dict[str, Any]) -> np.ndarray:
    (k, _), (s, _), p = attrs["kernel_shape"], attrs["strides"], attrs["pads"][0]
    h = x.shape[2] + 2 * p
    rounding = math.ceil if attrs["ceil_mode"] else math.floor
    out = rounding((h - k) / s) + 1
    if attrs["ceil_mode"] and (out - 1) * s >= x.shape[2] + p:
        out -= 1  # a window may not start in the right padding (ONNX / PyTorch rule)
    extra = max(0, (out - 1) * s + k - h)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p + extra), (p, p + extra)), constant_values=-np.inf)
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(4, 5))


def parameter_count(model: onnx.ModelProto) -> int:
    """Elements of floating-point tensor initializers: the weights, not 0-d constants."""
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    return sum(
        math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats and t.dims
    )
