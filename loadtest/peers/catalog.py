"""The peers: what each one is, what it installs, and how it is configured fairly.

Fair means: the same model file and onnxruntime version, the same intra-op thread count,
each peer's own batching on where it has one (max batch 32, 2 ms queue delay, as
Kindling's sample config), and binary tensors where its protocol allows them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Peer:
    name: str
    title: str
    packages: tuple[str, ...]
    """Pinned, installed into the peer's own virtualenv; empty: this interpreter."""
    script: str
    """Server script in servers/ (Kindling: empty, it is `kindling serve`)."""
    encoding: str
    """binary (OIP + binary tensors), json (OIP JSON) or bentoml (BentoML's JSON)."""
    path: str
    """Inference path; {model} is replaced."""
    batching: str
    note: str = ""


PEERS: tuple[Peer, ...] = (
    Peer(
        "fastapi",
        "FastAPI + onnxruntime (paper 000's baseline design)",
        ("fastapi==0.165.0", "uvicorn==0.54.0"),
        "fastapi_server.py",
        "binary",
        "/v2/models/{model}/infer",
        "none (the design has none)",
    ),
    Peer(
        "kserve",
        "KServe Python ModelServer",
        ("kserve==0.21.0",),
        "kserve_server.py",
        "binary",
        "/v2/models/{model}/infer",
        "none: KServe batches in its agent sidecar, not in the Python server",
        "binary inputs are decoded into Python lists (InferRequest.from_bytes calls "
        "set_data_from_numpy(binary_data=False)): most of its latency for a 224x224 image",
    ),
    Peer(
        "mlserver",
        "MLServer, custom ONNX MLModel",
        ("mlserver==1.7.1",),
        "mlserver_server.py",
        "json",
        "/v2/models/{model}/infer",
        "adaptive: max_batch_size 32, max_batch_time 2 ms",
        "REST has no binary tensor extension: OIP JSON",
    ),
    Peer(
        "bentoml",
        "BentoML service, onnxruntime",
        # 1.4.40 needs certifi>=2026.10.19, newer than the package index has.
        ("bentoml==1.4.30",),
        "bentoml_server.py",
        "bentoml",
        "/predict",
        "adaptive: batchable, max_batch_size 32",
        "numpy arrays as JSON (the pickle format is refused by the main server)",
    ),
    Peer(
        "pytriton",
        "NVIDIA PyTriton (Triton server, Python backend)",
        ("nvidia-pytriton==0.7.0",),
        "pytriton_server.py",
        "binary",
        "/v2/models/{model}/infer",
        "dynamic batcher: max_batch_size 32, 2 ms queue delay",
    ),
    Peer(
        "kindling",
        "Kindling",
        (),
        "",
        "binary",
        "/v2/models/{model}/infer",
        "adaptive: max_batch_size 32, 2 ms queue delay (config.yaml)",
    ),
)
BY_NAME = {peer.name: peer for peer in PEERS}
