"""One request's life on the event loop: submit to the engine loop, receive its events, abort on exit.

Both gRPC services (lil_sparse.v1 and SMG's SGLang scheduler service) stream a request the same
way; only how they turn events into responses differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions
from server.engine_loop import EngineLoop

EventQueue = asyncio.Queue[TokenEvent | BaseException]


@asynccontextmanager
async def submitted(
    engine_loop: EngineLoop, request_id: str, prompt_token_ids: list[int], options: RequestOptions
) -> AsyncIterator[EventQueue]:
    """Submit, wait until the engine accepted the request, and yield the queue its events arrive on.

    Raises what ``EngineLoop.submit`` raises (QueueFull, ShuttingDown) or the acceptance future
    does (InvalidArgument). If the body does not finish normally the request is aborted, so its
    pages are freed on the engine's next step: as a cancel when the client went away (the task
    cancelled by a cancel or a deadline, or the stream closed), as the server's abort when the body
    raised (the metrics count the two apart, :class:`server.loop_messages.Abort`).
    """
    loop = asyncio.get_running_loop()
    events: EventQueue = asyncio.Queue()

    def sink(event: TokenEvent | BaseException) -> None:  # called on the engine thread
        loop.call_soon_threadsafe(events.put_nowait, event)

    accepted = engine_loop.submit(request_id, prompt_token_ids, options, sink)
    try:
        await asyncio.wrap_future(accepted)
        yield events
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: a cancel, a deadline
        engine_loop.abort(request_id, cancelled=True)
        raise
    except BaseException:  # the body failed: the server cut the request
        engine_loop.abort(request_id)
        raise
