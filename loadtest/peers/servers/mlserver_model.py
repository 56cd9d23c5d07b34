"""MLServer's custom-runtime MLModel over onnxruntime (loaded by `mlserver start`)."""

from __future__ import annotations

import asyncio

from common import session
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxModel(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra or {}
        self.session = session(self.settings.parameters.uri, int(extra["threads"]))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        (y,) = await asyncio.to_thread(self.session.run, [self.output_name], {self.input_name: x})
        return InferenceResponse(
            model_name=self.name, outputs=[NumpyCodec.encode_output(self.output_name, y)]
        )
