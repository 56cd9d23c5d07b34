"""MobileNetV2, SqueezeNet 1.1 and ResNet-18 from kindling.modelzoo.vision, in onnxruntime.

Without torch the architectures are checked through what pins them down: exact parameter
counts against torchvision's published ones, the feature-map size before pooling, and
initializer names/shapes; with torch and torchvision installed, a cross-check also runs
torchvision's own module on the same weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from kindling.modelzoo.build import SampleModel, build, graph_io
from kindling.modelzoo.graph import BN_EPS, GraphBuilder, parameter_count
from kindling.modelzoo.vision import calibration_images

# torchvision.models.*_Weights.IMAGENET1K_V1.meta["num_params"]
TORCHVISION_PARAMS = {"mobilenet_v2": 3_504_872, "squeezenet1_1": 1_235_496, "resnet18": 11_689_512}
# Channels x spatial size of the last feature map, before global average pooling.
FEATURE_MAP = {
    "mobilenet_v2": [1280, 7, 7],
    "squeezenet1_1": [1000, 13, 13],
    "resnet18": [512, 7, 7],
}

MODELS = [
    pytest.param("squeezenet1_1", id="squeezenet1_1"),
    pytest.param("mobilenet_v2", id="mobilenet_v2", marks=pytest.mark.slow),
    pytest.param("resnet18", id="resnet18", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module", params=MODELS)
def model(request) -> tuple[SampleModel, ort.InferenceSession]:
    sample = build(request.param)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(
        sample.model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return sample, session


def _logits(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(["logits"], {"input": x.astype(np.float32)})[0]


def test_output_shape_and_finite(model):
    _, session = model
    y = _logits(session, calibration_images(2, seed=11))
    assert y.shape == (2, 1000)
    assert y.dtype == np.float32
    assert np.isfinite(y).all()
    # Also for inputs far from the calibration images.
    assert np.isfinite(_logits(session, np.full((1, 3, 224, 224), 3.0))).all()


def test_batch_equals_single_runs(model):
    _, session = model
    x = calibration_images(3, seed=12)
    batched = _logits(session, x)
    singles = np.concatenate([_logits(session, x[i : i + 1]) for i in range(3)])
    scale = np.abs(batched).max()
    np.testing.assert_allclose(batched, singles, rtol=1e-4, atol=1e-4 * scale)


def test_different_inputs_different_outputs_and_classes(model):
    _, session = model
    y = _logits(session, calibration_images(8, seed=13))
    assert np.abs(y[0] - y[1]).max() > 1e-3 * np.abs(y).max()
    # Calibrated BatchNorm statistics and classifier biases keep random weights from
    # giving every image the same top class.
    assert len(set(y.argmax(axis=1).tolist())) >= 3


def test_parameter_count_matches_torchvision(model):
    sample, _ = model
    name = sample.name
    count = parameter_count(sample.model)
    assert abs(count - TORCHVISION_PARAMS[name]) / TORCHVISION_PARAMS[name] < 0.01
    # Exactly: each folded BatchNorm leaves a conv bias (β') where torchvision counts γ and
    # β; torchvision's convs in front of a BatchNorm have no bias of their own.
    folded = (
        0
        if name == "squeezenet1_1"
        else sum(
            t.dims[0]
            for t in sample.model.graph.initializer
            if t.name.endswith(".bias") and not t.name.startswith(("fc.", "classifier."))
        )
    )
    assert count + folded == TORCHVISION_PARAMS[name]


def test_feature_map_before_pooling(model):
    sample, _ = model
    inferred = onnx.shape_inference.infer_shapes(sample.model)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim
        ]
        for v in inferred.graph.value_info
    }
    pool = next(n for n in sample.model.graph.node if n.op_type == "GlobalAveragePool")
    assert shapes[pool.input[0]][1:] == FEATURE_MAP[sample.name]


def test_config_matches_graph(model):
    sample, _ = model
    inputs, outputs = graph_io(sample.model)
    assert inputs == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert outputs == [{"name": "logits", "datatype": "FP32", "shape": [-1, 1000]}]
    assert sample.config["inputs"] == inputs and sample.config["outputs"] == outputs
    assert sample.model.ir_version == 8
    assert [(o.domain, o.version) for o in sample.model.opset_import] == [("", 17)]


# ------------------------------------------------------------------ the graph helpers


def _tiny(fold_bn: bool) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A small net using every op the vision builders use, with its builder-side value."""
    sample = np.random.RandomState(0).standard_normal((2, 3, 19, 19))
    g = GraphBuilder(seed=1)
    x = g.input("x", ["batch", 3, 19, 19], sample=sample)
    a = g.relu6(g.conv(x, "a", 3, 8, 3, stride=2, pad=1, batchnorm=True, fold_bn=fold_bn))
    b = g.conv(a, "b", 8, 8, 3, pad=1, groups=8, batchnorm=True, fold_bn=fold_bn)
    c = g.relu(g.conv(g.add(a, b), "c", 8, 6, 1, center=True))
    d = g.maxpool(g.concat([c, a]), 3, 2, ceil=True)  # 10 -> 5 with ceil, 4 without
    y = g.gemm(g.global_avgpool_flat(d), "fc", 14, 5, center=True)
    g.output(y, "y", ["batch", 5])
    return g.model("tiny", ""), sample, g.values[y]


@pytest.mark.parametrize("fold_bn", [True, False])
def test_builder_numpy_values_match_onnxruntime(fold_bn):
    # The builder measures BatchNorm statistics with its own NumPy evaluation of the
    # graph; it must compute what onnxruntime computes.
    model, sample, value = _tiny(fold_bn)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": sample.astype(np.float32)})
    np.testing.assert_allclose(y, value, rtol=1e-4, atol=1e-5)


def test_batchnorm_folding_is_exact():
    folded, sample, _ = _tiny(fold_bn=True)
    unfolded, _, _ = _tiny(fold_bn=False)
    assert not any(n.op_type == "BatchNormalization" for n in folded.graph.node)
    assert sum(n.op_type == "BatchNormalization" for n in unfolded.graph.node) == 2
    run = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": sample.astype(np.float32)}
        )[0]
        for m in (folded, unfolded)
    ]
    np.testing.assert_allclose(run[0], run[1], rtol=1e-4, atol=1e-5)


def test_calibrated_batchnorm_normalizes():
    # Fresh images from the calibration distribution come out of each folded conv with
    # about the BatchNorm's own scale (γ in [0.8, 1.2]), the point of measuring them.
    model, _, _ = _tiny(fold_bn=False)
    bn_inputs = [n.output[0] for n in model.graph.node if n.op_type == "BatchNormalization"]
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in bn_inputs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(5).standard_normal((16, 3, 19, 19)).astype(np.float32)
    for y in session.run(None, {"x": x}):
        assert 0.6 < float(y.std(axis=(0, 2, 3)).mean()) < 1.4


# ---------------------------------------------------------- optional torchvision check


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v2", "squeezenet1_1", "resnet18"])
def test_matches_torchvision(name):
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    sample = build(name)
    ours = {t.name: numpy_helper.to_array(t) for t in sample.model.graph.initializer if t.dims}
    net = getattr(torchvision.models, name)(weights=None).eval()
    modules = list(net.named_modules())
    state: dict[str, np.ndarray] = {}
    for i, (path, module) in enumerate(modules):
        if isinstance(module, torch.nn.Conv2d | torch.nn.Linear):
            state[f"{path}.weight"] = ours.pop(f"{path}.weight")
            bias = ours.pop(f"{path}.bias")
            following = modules[i + 1] if i + 1 < len(modules) else None
            if following is not None and isinstance(following[1], torch.nn.BatchNorm2d):
                # Our folded conv = torchvision's conv followed by an identity BatchNorm
                # that adds the folded bias: γ=1, μ=0, σ²+ε=1.
                bn = following[0]
                state[f"{bn}.weight"] = np.ones_like(bias)
                state[f"{bn}.bias"] = bias
                state[f"{bn}.running_mean"] = np.zeros_like(bias)
                state[f"{bn}.running_var"] = np.full_like(bias, 1 - BN_EPS)
            else:
                state[f"{path}.bias"] = bias
    assert not ours, f"weights torchvision has no place for: {sorted(ours)}"
    reference = net.state_dict()
    missing = {k for k in reference if not k.endswith("num_batches_tracked")} - set(state)
    assert not missing, f"torchvision weights we lack: {sorted(missing)}"
    for key, value in state.items():
        assert tuple(reference[key].shape) == value.shape, key
        reference[key] = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
    net.load_state_dict(reference)
    x = calibration_images(2, seed=21).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(
        sample.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    got = session.run(["logits"], {"input": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
