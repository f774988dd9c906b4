"""The gRPC servicer: thin async generators over the engine loop.

Each Generate call validates its input, tokenizes it on a small thread pool, submits it to the
engine thread, and streams from its own unbounded ``asyncio.Queue``: nothing is dropped when the
client reads slowly, and the events that piled up are merged into one chunk.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from lil_client._proto.lil_sparse.v1 import options_pb2, service_pb2, service_pb2_grpc

from lil_sparse.events import FinishReason, TokenEvent
from lil_sparse.options import RequestOptions
from server import convert, prompt_input
from server.config import ServerConfig
from server.engine_loop import EngineLoop
from server.errors import EngineFailed, InvalidArgument, ShuttingDown, map_errors
from server.submission import submitted
from server.wire import UndecodableRequest

logger = logging.getLogger(__name__)

_Message = TypeVar("_Message")
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["LilSparseService"].full_name


class LilSparseServicer(service_pb2_grpc.LilSparseServiceServicer):
    """Serves Generate and GetInfo for one engine. ``tokenizer`` and ``info`` come from the engine.

    Tokenizing runs on ``tokenizer_pool`` (a few threads), never on the event loop, so health
    checks and other streams keep moving while a long prompt is tokenized.
    """

    def __init__(
        self,
        engine_loop: EngineLoop,
        tokenizer: Any,
        info: Any,
        config: ServerConfig,
        version: str,
        tokenizer_pool: Executor,
        vocab_size: int,
    ):
        self._engine_loop = engine_loop
        self._tokenizer = tokenizer
        self._info = info
        self._config = config
        self._version = version
        self._tokenizer_pool = tokenizer_pool
        self._limits = prompt_input.PromptLimits(
            max_prompt_bytes=config.max_prompt_bytes,
            max_new_tokens_limit=config.max_new_tokens_limit,
            max_context=info.max_context,
            vocab_size=vocab_size,
        )
        self.draining = False

    @map_errors
    async def GetInfo(
        self, request: service_pb2.GetInfoRequest | UndecodableRequest, context: grpc.aio.ServicerContext
    ) -> service_pb2.GetInfoResponse:
        _decoded(request)
        limits = service_pb2.Limits(
            max_running=self._config.max_running,
            max_waiting=self._config.max_waiting,
            max_context=self._info.max_context,
            max_new_tokens_limit=self._config.max_new_tokens_limit,
            max_prompt_bytes=self._config.max_prompt_bytes,
        )
        return convert.info_response(self._info, self._config.default_options, limits, self._version)

    @map_errors
    async def Generate(
        self, request: service_pb2.GenerateRequest | UndecodableRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[service_pb2.GenerateResponse]:
        request = _decoded(request)
        if self.draining:
            raise ShuttingDown("server is shutting down")
        options = convert.options_from_request(
            request, self._config.default_options, self._config.max_new_tokens_limit
        )
        request_id = convert.request_id_of(request) or uuid.uuid4().hex
        prompt = await self._prompt(request, options)
        async with submitted(self._engine_loop, request_id, prompt, options) as submission:
            yield convert.started_response(request_id, len(prompt), options)
            async for response in _stream(submission.events, request.output):
                yield response

    async def _prompt(self, request: service_pb2.GenerateRequest, options: RequestOptions) -> list[int]:
        """Check sizes, tokenize off the event loop, and check the prompt against the context."""
        try:
            options.sparse.validate_for(self._info.page_size, self._info.num_layers)
        except ValueError as error:
            raise InvalidArgument(str(error)) from None
        prompt_input.check_prompt_size(request, self._limits)
        prompt = await asyncio.get_running_loop().run_in_executor(
            self._tokenizer_pool, prompt_input.prompt_token_ids, request, self._tokenizer
        )
        max_new_tokens = options.stopping.max_new_tokens
        prompt_input.check_prompt_fits(request, len(prompt), max_new_tokens, self._info.max_context)
        return prompt


def _decoded(request: _Message | UndecodableRequest) -> _Message:
    """The parsed request; INVALID_ARGUMENT for a body that did not parse (see server/wire.py)."""
    if isinstance(request, UndecodableRequest):
        raise InvalidArgument(f"request: the body is not a valid {request.message_name} ({request.reason})")
    return request


async def _stream(
    events: asyncio.Queue[TokenEvent | BaseException], output: options_pb2.OutputOptions
) -> AsyncIterator[service_pb2.GenerateResponse]:
    """Chunks until the final event, then the Finished message; merges events that piled up."""
    while True:
        batch = [await events.get()]
        while not events.empty():
            batch.append(events.get_nowait())
        token_ids: list[int] = []
        logprobs: list[float] = []
        text = ""
        answer_tokens = 0  # answer tokens always follow the thinking, so they end the chunk
        final: TokenEvent | None = None
        for event in batch:
            if isinstance(event, BaseException):
                raise event
            answer_tokens += len(event.token_ids) if event.answer else 0
            token_ids.extend(event.token_ids)
            logprobs.extend(event.logprobs)
            text += event.text_delta
            if event.finished:
                final = event
        if token_ids or text:
            yield convert.chunk_response(token_ids, text, logprobs, output, answer_tokens)
        if final is not None:
            if final.report is None:
                raise RuntimeError(f"final event of {final.request_id} carries no report")
            if final.finish_reason is FinishReason.ERROR:  # this request alone failed in the engine
                logger.error("request %s failed in the engine: %s", final.request_id, final.report.error)
                raise EngineFailed("the engine failed while handling this request")
            yield convert.finished_response(final.report, output)
            return
