"""KServe's Python ModelServer with a custom onnxruntime Model, OIP v2 with binary tensors.

KServe batches in its Go agent sidecar, not in the Python server, so this peer runs
unbatched, as an InferenceService without the agent would.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import parse_args, session
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class OnnxModel(Model):
    def __init__(self, name: str, path: str, threads: int) -> None:
        super().__init__(name)
        self.path, self.threads = path, threads
        self.load()

    def load(self) -> bool:
        self.session = session(self.path, self.threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.ready = True
        return self.ready

    async def predict(
        self, payload: InferRequest, headers: Any = None, response_headers: Any = None
    ) -> InferResponse:
        x = payload.inputs[0].as_numpy()
        (y,) = await asyncio.to_thread(self.session.run, [self.output_name], {self.input_name: x})
        output = InferOutput(name=self.output_name, shape=list(y.shape), datatype="FP32")
        output.set_data_from_numpy(y, binary_data=True)
        return InferResponse(
            model_name=self.name,
            infer_outputs=[output],
            response_id=payload.id,
            use_binary_outputs=True,
        )


def main() -> None:
    args = parse_args(__doc__ or "")
    grpc_port = int(args.free_ports.split(",")[0])
    model = OnnxModel(args.name, args.model, args.threads)
    server = ModelServer(
        http_port=args.port,
        grpc_port=grpc_port,
        workers=1,
        enable_grpc=False,
        enable_latency_logging=False,  # per-request log lines: not part of serving
        access_log_format=None,
    )
    server.start([model])


if __name__ == "__main__":
    main()
