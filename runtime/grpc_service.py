"""`inference.GRPCInferenceService` over the data plane: the OIP's third transport.

Imported only when KINDLING_GRPC_PORT is set (runtime/lifecycle.py): grpcio and protobuf are
the `grpc` extra (`pip install kindling[grpc]`), not in the default runtime image.

Served by grpc.aio on the HTTP server's event loop, so the data plane (its batcher and
counters, which are not thread-safe) is driven from one thread whatever the transport.
Handlers are registered generically by method name, which is all the generated
`*_pb2_grpc.py` would add (and grpcio-tools to the build); Triton's RPCs that Kindling does
not serve (streaming, model load/unload, shared memory, trace and log settings) answer
UNIMPLEMENTED, as grpcio does for any method not registered.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from kindling.errors import InvalidInput, KindlingError
from kindling.runtime import grpc_model_config_pb2 as config_pb
from kindling.runtime import grpc_service_pb2 as pb
from kindling.runtime.codec import InferRequest
from kindling.runtime.dataplane import DataPlane
from kindling.runtime.grpc_codec import decode_infer_request, encode_infer_response

log = logging.getLogger("kindling.runtime.grpc")

SERVICE = "inference.GRPCInferenceService"
COLD_START_KEY = "kindling-cold-start"

# Kindling's HTTP status -> gRPC status, the one place errors are mapped (gRPC's
# doc/http-grpc-status-mapping.md read backwards, and Triton's own choices). 413 is
# RESOURCE_EXHAUSTED, not INVALID_ARGUMENT: it is what grpcio itself answers for a message
# over grpc.max_receive_message_length, so a request too large gets one code whichever
# limit it hits, and like 429 it says "smaller or later may pass", not "never valid".
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(exc: KindlingError) -> grpc.StatusCode:
    code = STATUS_CODES.get(exc.status_code)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if exc.status_code < 500 else grpc.StatusCode.INTERNAL


Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _mapped(method: Method, message: Any) -> Callable[[bytes, Any], Awaitable[Any]]:
    """The RPC on the request's raw bytes: parsed here, so that a malformed message is the
    client's error (INVALID_ARGUMENT, through the one error table) and not grpcio's
    deserializer failure with a Python exception in its text; then any KindlingError as
    its status code with its message, anything else as INTERNAL."""

    async def call(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            try:
                request = message.FromString(raw)
            except DecodeError:
                raise InvalidInput(
                    f"the request is not a valid {message.DESCRIPTOR.name} protobuf message"
                ) from None
            return await method(request, context)
        except KindlingError as exc:
            await context.abort(status_code(exc), exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    call.__name__ = method.__name__
    return call


def _version(request: Any) -> str | None:
    return request.version or None


class InferenceServicer:
    """The RPCs, each a method named as in grpc_service.proto."""

    def __init__(self, plane: DataPlane, max_json_bytes: int) -> None:
        self.plane = plane
        self.max_json_bytes = max_json_bytes

    async def ServerLive(self, _request: Any, _context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, _request: Any, _context: Any) -> Any:
        return pb.ServerReadyResponse(ready=not await self.plane.unready())

    async def ModelReady(self, request: Any, _context: Any) -> Any:
        model = self.plane.model(request.name, _version(request))
        return pb.ModelReadyResponse(ready=await self.plane.readiness(model) is None)

    async def ServerMetadata(self, _request: Any, _context: Any) -> Any:
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, _context: Any) -> Any:
        model = self.plane.model(request.name, _version(request))
        meta = model.metadata(self.plane.timeline)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta["platform"],
            inputs=[tensor(**t) for t in meta["inputs"]],
            outputs=[tensor(**t) for t in meta["outputs"]],
        )

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def read() -> InferRequest:
            return decode_infer_request(request, self.max_json_bytes)

        try:
            result = await self.plane.infer(request.model_name, request.model_version or None, read)
        finally:
            # REST's kindling-cold-start header, as trailing metadata: true on the first.
            cold = self.plane.claim_cold()
            context.set_trailing_metadata(((COLD_START_KEY, "true" if cold else "false"),))
        model = result.model
        return encode_infer_response(model.name, model.version, result.outputs, result.request_id)

    async def ModelConfig(self, request: Any, _context: Any) -> Any:
        config = self.plane.triton_config(request.name, _version(request))
        return pb.ModelConfigResponse(config=json_format.ParseDict(config, config_pb.ModelConfig()))

    async def ModelStatistics(self, request: Any, _context: Any) -> Any:
        stats = self.plane.statistics(request.name or None, _version(request))
        return json_format.ParseDict(stats, pb.ModelStatisticsResponse())

    async def RepositoryIndex(self, request: Any, _context: Any) -> Any:
        index = self.plane.repository_index(ready_only=request.ready)
        return pb.RepositoryIndexResponse(
            models=[pb.RepositoryIndexResponse.ModelIndex(**entry) for entry in index]
        )

    def handler(self) -> grpc.GenericRpcHandler:
        service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
        handlers = {}
        for rpc in service.methods:
            method = getattr(self, rpc.name, None)
            if method is None:
                continue
            handlers[rpc.name] = grpc.unary_unary_rpc_method_handler(
                _mapped(method, getattr(pb, rpc.input_type.name)),
                response_serializer=getattr(pb, rpc.output_type.name).SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


class GrpcServer:
    """The gRPC listener's lifecycle, started and drained with the HTTP server's."""

    def __init__(
        self, plane: DataPlane, host: str, port: int, max_message_bytes: int, max_json_bytes: int
    ) -> None:
        self.plane = plane
        self.address = f"{host}:{port}"
        self.max_message_bytes = max_message_bytes
        self.max_json_bytes = max_json_bytes
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        """Bind and serve; OSError when the port cannot be bound. The server is made here,
        not in __init__: grpc.aio binds to the loop running when it is made."""
        self.server = grpc.aio.server(
            options=[
                # A request's bound, as KINDLING_MAX_BODY_BYTES is REST's: grpcio refuses a
                # larger message before decoding it, with RESOURCE_EXHAUSTED.
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", -1),
                # A port in use is an error, as for the HTTP listener; grpcio's default
                # SO_REUSEPORT would share it with whatever holds it.
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers(
            (InferenceServicer(self.plane, self.max_json_bytes).handler(),)
        )
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as exc:  # grpcio's "Failed to bind to address"
            raise OSError(str(exc)) from None
        await self.server.start()
        log.info("serving gRPC on %s", self.address)

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs, let those in flight finish for up to `grace_s`."""
        if self.server is not None:
            await self.server.stop(grace_s)
