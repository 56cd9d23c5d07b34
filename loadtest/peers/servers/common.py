"""What every peer server script shares: its command line and the onnxruntime session.

These scripts run inside each peer's own virtualenv (~/.cache/kindling/peers/...), where
Kindling is not installed: they import only the peer's packages, numpy and onnxruntime,
and this file, found beside them.
"""

from __future__ import annotations

import argparse
from typing import Any


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", required=True, help="path to model.onnx")
    parser.add_argument("--name", required=True, help="the model's name in URLs")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, required=True, help="onnxruntime intra-op threads")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=2.0, help="batching queue delay")
    parser.add_argument("--workdir", default="", help="scratch directory for config files")
    parser.add_argument("--free-ports", default="", help="spare ports, comma-separated")
    return parser.parse_args()


def session(path: str, threads: int) -> Any:
    """The same session for every peer: CPU, `threads` intra-op threads, no spinning
    (Kindling's own settings, so only the serving stack differs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
