"""Paper 000's baseline design: a plain FastAPI app around onnxruntime, no batching.

OIP v2 binary tensors in and out, parsed by hand; each request runs in FastAPI's thread
pool, as a straightforward wrapper would.
"""

from __future__ import annotations

import json

import numpy as np
import uvicorn
from common import parse_args, session
from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool


def main() -> None:
    args = parse_args(__doc__ or "")
    sess = session(args.model, args.threads)
    input_name, output_name = sess.get_inputs()[0].name, sess.get_outputs()[0].name
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post(f"/v2/models/{args.name}/infer")
    async def infer(request: Request) -> Response:
        body = await request.body()
        size = int(request.headers["inference-header-content-length"])
        spec = json.loads(body[:size])["inputs"][0]
        x = np.frombuffer(body[size:], dtype=np.float32).reshape(spec["shape"])
        (y,) = await run_in_threadpool(sess.run, [output_name], {input_name: x})
        blob = np.ascontiguousarray(y, dtype="<f4").tobytes()
        output = {"name": output_name, "datatype": "FP32", "shape": list(y.shape)}
        output["parameters"] = {"binary_data_size": len(blob)}
        head = json.dumps({"model_name": args.name, "outputs": [output]}).encode()
        return Response(
            head + blob,
            media_type="application/octet-stream",
            headers={"inference-header-content-length": str(len(head))},
        )

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
