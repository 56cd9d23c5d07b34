"""NVIDIA PyTriton: the real Triton Inference Server, a Python model behind it, dynamic
batching on; OIP v2 over Triton's HTTP endpoint with binary tensors."""

from __future__ import annotations

import os
import sysconfig

import numpy as np
from common import parse_args, session
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def prefer_this_libpython() -> None:
    """Triton's Python backend stub links libpython3.X.so.1.0 by name. On a machine with
    a distribution Python of the same minor version beside this interpreter (Debian's
    3.11.2 under pyenv's 3.11.7), the loader finds the distribution's library, whose C
    modules do not match this interpreter's standard library (RLock._recursion_count).
    Putting this interpreter's LIBDIR first makes the stub, started by tritonserver with
    this environment, embed the matching library."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if sysconfig.get_config_var("Py_ENABLE_SHARED") and libdir:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, os.environ.get("LD_LIBRARY_PATH", "")) if p
        )


def main() -> None:
    args = parse_args(__doc__ or "")
    prefer_this_libpython()
    grpc_port, metrics_port = (int(p) for p in args.free_ports.split(",")[:2])
    sess = session(args.model, args.threads)
    input_name, output_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    in_shape = tuple(int(d) for d in sess.get_inputs()[0].shape[1:])
    out_shape = tuple(int(d) for d in sess.get_outputs()[0].shape[1:])

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        (y,) = sess.run([output_name], {input_name: inputs[input_name]})
        return {output_name: y}

    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=args.port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        allow_grpc=False,
        allow_metrics=False,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.name,
            infer_func=infer,
            inputs=[Tensor(name=input_name, dtype=np.float32, shape=in_shape)],
            outputs=[Tensor(name=output_name, dtype=np.float32, shape=out_shape)],
            config=ModelConfig(
                max_batch_size=args.max_batch,
                batcher=DynamicBatcher(max_queue_delay_microseconds=int(args.delay_ms * 1000)),
            ),
        )
        triton.serve()


if __name__ == "__main__":
    main()
