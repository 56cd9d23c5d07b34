"""MLServer with the custom ONNX MLModel and its adaptive batching on.

MLServer's REST API has no binary tensor extension, so requests are OIP JSON. One
process (parallel_workers 0), so it runs with the same threads as the other peers.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from common import parse_args


def main() -> None:
    args = parse_args(__doc__ or "")
    grpc_port, metrics_port = (int(p) for p in args.free_ports.split(",")[:2])
    here = Path(__file__).resolve().parent
    root = Path(args.workdir)
    model_dir = root / args.name
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in ("mlserver_model.py", "common.py"):
        shutil.copy(here / name, model_dir / name)
    settings = {
        "http_port": args.port,
        "grpc_port": grpc_port,
        "metrics_port": metrics_port,
        "parallel_workers": 0,
        "host": "127.0.0.1",
    }
    (root / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": args.name,
        "implementation": "mlserver_model.OnnxModel",
        "max_batch_size": args.max_batch,
        "max_batch_time": args.delay_ms / 1000,
        "parameters": {"uri": str(Path(args.model).resolve()), "extra": {"threads": args.threads}},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings))
    mlserver = Path(sys.executable).parent / "mlserver"
    os.execv(mlserver, [str(mlserver), "start", str(root)])


if __name__ == "__main__":
    main()
