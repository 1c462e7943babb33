"""The gRPC servicer: proto in, domain to the service, proto out. Nothing else."""

from __future__ import annotations

from typing import cast

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2
from inference.v1 import inference_service_pb2 as pb
from inference.v1 import inference_service_pb2_grpc as pb_grpc

from inference_service.domain import ModelInput
from inference_service.grpc import converters
from inference_service.grpc.request_id import current_request_id
from inference_service.render import CONTENT_TYPES, InvocationRenderer
from inference_service.service import InferenceService

# Initial metadata of an Invoke answered with a stored invocation (a retry): a response header
# through REST too.
REPLAYED_HEADER = "inference-replayed"


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """``inference.v1.InferenceService`` over an ``InferenceService``; errors are
    mapped by ``inference_service.grpc.errors.ErrorMappingInterceptor``."""

    def __init__(
        self, service: InferenceService, renderer: InvocationRenderer | None = None
    ) -> None:
        self._service = service
        self._renderer = renderer

    async def Invoke(  # noqa: N802 - gRPC method name
        self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvokeResponse:
        return await self._invoke(
            converters.model_input_from_proto(request.input), request.model, request.view, context
        )

    async def UploadInvocation(  # noqa: N802 - gRPC method name
        self, request: pb.UploadInvocationRequest, context: grpc.aio.ServicerContext
    ) -> pb.InvokeResponse:
        """Invoke, its input from a raw body and query parameters: the same call."""
        return await self._invoke(
            converters.model_input_from_upload(request), request.model, request.view, context
        )

    async def _invoke(
        self,
        model_input: ModelInput,
        model: str,
        view: int,
        context: grpc.aio.ServicerContext,
    ) -> pb.InvokeResponse:
        wants_content = converters.wants_content(view, default=False)
        invocation = await self._service.invoke(model_input, model)
        if invocation.replayed:
            # Also as a header: REST clients get it as an HTTP response header.
            await context.send_initial_metadata(((REPLAYED_HEADER, "true"),))
        return pb.InvokeResponse(
            invocation=converters.invocation_to_proto(invocation, with_content=wants_content),
            replayed=invocation.replayed,
        )

    async def GetInvocation(  # noqa: N802 - gRPC method name
        self, request: pb.GetInvocationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInvocationResponse:
        invocation = await self._service.get_invocation(
            request.id, with_content=converters.wants_content(request.view)
        )
        return pb.GetInvocationResponse(invocation=converters.invocation_to_proto(invocation))

    async def RenderInvocation(  # noqa: N802 - gRPC method name
        self, request: pb.RenderInvocationRequest, context: grpc.aio.ServicerContext
    ) -> httpbody_pb2.HttpBody:
        if self._renderer is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "rendering is not enabled")
        image_format = converters.render_format(request.format)
        renderer = cast(InvocationRenderer, self._renderer)  # not None: abort raised
        picture = await renderer.render(request.id, request.max_dimension, image_format)
        return httpbody_pb2.HttpBody(content_type=CONTENT_TYPES[image_format], data=picture)

    async def ListModels(  # noqa: N802 - gRPC method name
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        models = self._service.list_models()
        return pb.ListModelsResponse(models=[converters.model_to_proto(m) for m in models])

    async def GetModel(  # noqa: N802 - gRPC method name
        self, request: pb.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetModelResponse:
        model = self._service.get_model(request.name)
        return pb.GetModelResponse(model=converters.model_to_proto(model))

    async def ListInvocations(  # noqa: N802 - gRPC method name
        self, request: pb.ListInvocationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInvocationsResponse:
        invocations, next_page_token = await self._service.list_invocations(
            page_size=request.page_size,
            page_token=request.page_token,
            filter_text=request.filter,
            full=converters.wants_content(request.view, default=False),
        )
        return pb.ListInvocationsResponse(
            invocations=[converters.invocation_to_proto(i) for i in invocations],
            next_page_token=next_page_token,
        )

    async def DeleteInvocation(  # noqa: N802 - gRPC method name
        self, request: pb.DeleteInvocationRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        await self._service.delete_invocation(
            request.id,
            allow_missing=request.allow_missing,
            request_id=current_request_id.get(),
            caller=converters.caller_of(context.invocation_metadata()),
        )
        return empty_pb2.Empty()
