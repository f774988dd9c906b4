"""SMG's SGLang scheduler service over the same engine loop as ``lil_sparse.v1``.

The SMG gateway (``smg launch --worker-urls grpc://HOST:PORT``) detects this service, fetches
the tokenizer, applies the chat template and tokenizes itself, then calls Generate with token
ids. Each call is a thin async generator: validate, submit to the engine thread, stream its
events, abort on cancel. Errors map to status codes through the shared ``map_errors``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from smg_grpc_proto.generated import common_pb2
from smg_grpc_proto.generated import sglang_scheduler_pb2 as sglang
from smg_grpc_proto.generated import sglang_scheduler_pb2_grpc as sglang_grpc

from lil_sparse.events import TokenEvent
from server import convert as v1_convert
from server.config import ServerConfig
from server.engine_loop import EngineLoop, LoopStats
from server.errors import OutOfRange, ShuttingDown, map_errors
from server.smg import convert, info
from server.submission import Submission, submitted

SERVICE_NAME = sglang.DESCRIPTOR.services_by_name["SglangScheduler"].full_name


class SmgSchedulerServicer(sglang_grpc.SglangSchedulerServicer):
    """Generate, Abort, HealthCheck, GetModelInfo, GetServerInfo, GetLoads, GetTokenizer.

    ``engine`` gives ``tokenizer`` and ``info``; ``load`` returns the engine loop's latest
    stats (None before the first step). SubscribeKvEvents and the other SGLang RPCs answer
    UNIMPLEMENTED.
    """

    def __init__(
        self,
        engine_loop: EngineLoop,
        engine: Any,
        config: ServerConfig,
        version: str,
        load: Callable[[], LoopStats | None],
    ) -> None:
        self._engine_loop = engine_loop
        self._tokenizer = engine.tokenizer
        self._info = engine.info
        self._hf_config = engine.model_config.to_hf_dict()
        self._config = config
        self._version = version
        self._load = load
        self._started_at = time.time()
        self._bundle: bytes | None = None
        self.served_model_name = config.model_id
        self.draining = False
        # Requests this service submitted: Abort reaches only these submissions, never a
        # lil_sparse.v1 stream that shares the engine loop's request ids, nor a later request that
        # reuses a finished one's id (event-loop thread only).
        self._own_requests: dict[str, Submission] = {}

    @map_errors
    async def Generate(
        self, request: sglang.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sglang.GenerateResponse]:
        if self.draining:
            raise ShuttingDown("server is shutting down")
        options = convert.options_from_request(request, self._config.default_options, self._tokenizer)
        # The limits lil_sparse.v1 enforces hold on this path too (docs/reliability.md).
        v1_convert.check_max_new_tokens(options, self._config.max_new_tokens_limit)
        v1_convert.check_stop_strings(options.stopping.stop_strings)
        if request.request_id:
            v1_convert.check_request_id(request.request_id)
        prompt = convert.prompt_token_ids(request)
        try:
            options.sparse.validate_for(self._info.page_size, self._info.num_layers)
        except ValueError as error:
            raise convert.InvalidArgument(str(error)) from None
        if len(prompt) >= self._info.max_context:  # the prompt alone leaves no room for a token
            raise OutOfRange(
                f"tokenized.input_ids: the prompt ({len(prompt)} tokens) fills the model context of "
                f"{self._info.max_context} tokens"
            )
        if len(prompt) + options.stopping.max_new_tokens > self._info.max_context:
            raise OutOfRange(
                f"max_new_tokens: the prompt ({len(prompt)} tokens) plus max_new_tokens "
                f"({options.stopping.max_new_tokens}) exceeds the model context of "
                f"{self._info.max_context} tokens"
            )
        request_id = request.request_id or uuid.uuid4().hex
        if request_id in self._own_requests:  # the engine loop's own refusal, before it is ours twice
            raise convert.InvalidArgument(f"request_id: {request_id!r} is already in flight")

        def own(submission: Submission) -> None:  # admitted: Abort can reach it from here on
            self._own_requests[request_id] = submission

        try:
            async with submitted(self._engine_loop, request_id, prompt, options, own) as submission:
                async for response in _stream(request_id, request, len(prompt), submission.events):
                    yield response
        finally:
            # Any entry under this id is ours: the check above refuses a second one, and no await
            # comes between it and ``own``.
            self._own_requests.pop(request_id, None)

    @map_errors
    async def Abort(
        self, request: sglang.AbortRequest, context: grpc.aio.ServicerContext
    ) -> sglang.AbortResponse:
        # The gateway aborts a request whose HTTP client went away: a cancel. Only this service's
        # own requests: a lil_sparse.v1 stream with the same id is another client's (not found).
        submission = self._own_requests.get(request.request_id)
        known = submission is not None and not submission.finished.is_set()
        if known and submission is not None:
            submission.abort(cancelled=True)
        verdict = "aborted" if known else "not found"
        return sglang.AbortResponse(success=known, message=f"request {request.request_id} {verdict}")

    @map_errors
    async def HealthCheck(
        self, request: sglang.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> sglang.HealthCheckResponse:
        if self.draining:
            return sglang.HealthCheckResponse(healthy=False, message="server is shutting down")
        return sglang.HealthCheckResponse(healthy=True, message="ok")

    @map_errors
    async def GetModelInfo(
        self, request: sglang.GetModelInfoRequest, context: grpc.aio.ServicerContext
    ) -> sglang.GetModelInfoResponse:
        return info.model_info(
            self._info, self._tokenizer, self._hf_config, self._config, self.served_model_name
        )

    @map_errors
    async def GetServerInfo(
        self, request: sglang.GetServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> sglang.GetServerInfoResponse:
        in_flight = self._engine_loop.in_flight
        return info.server_info(self._info, self._config, self._version, in_flight, self._started_at)

    @map_errors
    async def GetLoads(
        self, request: sglang.GetLoadsRequest, context: grpc.aio.ServicerContext
    ) -> sglang.GetLoadsResponse:
        return info.loads(self._load(), self._config, self._version)

    async def SubscribeKvEvents(
        self, request: common_pb2.SubscribeKvEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.KvEventBatch]:
        """UNIMPLEMENTED, which the gateway reads as "no KV events": it routes on GetLoads and its
        own prefix tree instead. (The generated default raises, and grpc logs a traceback.)"""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "lil-sparse publishes no KV cache events")
        yield common_pb2.KvEventBatch()  # unreachable: makes this an async generator

    @map_errors
    async def GetTokenizer(
        self, request: common_pb2.GetTokenizerRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.GetTokenizerChunk]:
        if self._bundle is None:
            self._bundle = await asyncio.to_thread(info.tokenizer_bundle, self._tokenizer, self._hf_config)
        for chunk in info.tokenizer_chunks(self._bundle):
            yield chunk


def _unimplemented(name: str) -> Callable[..., Any]:
    async def handler(self: SmgSchedulerServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"lil-sparse does not implement {name}")

    handler.__name__, handler.__qualname__ = name, f"SmgSchedulerServicer.{name}"
    handler.__doc__ = "UNIMPLEMENTED, answered without the generated default's raise (a traceback per call)."
    return handler


# Every other unary RPC of the service (Embed, FlushCache, profiling, LoRA) answers UNIMPLEMENTED
# cleanly: the generated defaults raise NotImplementedError, and grpc logs a traceback for each
# call, so any client could fill the log. The streaming ones are written out above.
def _answer_the_rest_unimplemented() -> None:
    for method in sglang.DESCRIPTOR.services_by_name["SglangScheduler"].methods:
        if method.name not in vars(SmgSchedulerServicer) and not method.server_streaming:
            setattr(SmgSchedulerServicer, method.name, _unimplemented(method.name))


_answer_the_rest_unimplemented()


async def _stream(
    request_id: str,
    request: sglang.GenerateRequest,
    prompt_tokens: int,
    events: asyncio.Queue[TokenEvent | BaseException],
) -> AsyncIterator[sglang.GenerateResponse]:
    """Chunks (when ``request.stream``) and then one GenerateComplete; merges events that piled up."""
    completion_tokens = 0
    logprobs: list[float] = []
    while True:
        batch = [await events.get()]
        while not events.empty():
            batch.append(events.get_nowait())
        token_ids: list[int] = []
        new_logprobs: list[float] = []
        final: TokenEvent | None = None
        for event in batch:
            if isinstance(event, BaseException):
                raise event
            token_ids.extend(event.token_ids)
            new_logprobs.extend(event.logprobs)
            if event.finished:
                final = event
        completion_tokens += len(token_ids)
        logprobs.extend(new_logprobs)
        if request.stream and token_ids:
            yield convert.chunk_response(
                request_id, token_ids, new_logprobs, prompt_tokens, completion_tokens, request.return_logprob
            )
        if final is not None:
            if final.report is None:
                raise RuntimeError(f"final event of {final.request_id} carries no report")
            yield convert.complete_response(request_id, final.report, logprobs, request.return_logprob)
            return
