"""One request's life on the event loop: submit to the engine loop, receive its events, abort on exit.

Both gRPC services (lil_sparse.v1 and SMG's SGLang scheduler service) stream a request the same
way; only how they turn events into responses differs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions
from server.engine_loop import EngineLoop, EventSink

EventQueue = asyncio.Queue[TokenEvent | BaseException]


@dataclass(frozen=True, slots=True)
class Submission:
    """One submitted request: the queue its events arrive on, and an abort that reaches this
    submission only, never a later request that reuses its id (:meth:`EngineLoop.abort`'s sink)."""

    request_id: str
    events: EventQueue
    engine_loop: EngineLoop
    sink: EventSink
    finished: threading.Event  # set on the engine thread when its final event is delivered

    def abort(self, cancelled: bool) -> None:
        """Abort it (thread-safe); ``cancelled``: its client went away (the metrics' label)."""
        self.engine_loop.abort(self.request_id, cancelled=cancelled, sink=self.sink)


@asynccontextmanager
async def submitted(
    engine_loop: EngineLoop,
    request_id: str,
    prompt_token_ids: list[int],
    options: RequestOptions,
    on_submitted: Callable[[Submission], None] | None = None,
) -> AsyncIterator[Submission]:
    """Submit, wait until the engine accepted the request, and yield its :class:`Submission`.

    Raises what ``EngineLoop.submit`` raises (QueueFull, ShuttingDown) or the acceptance future
    does (InvalidArgument). ``on_submitted`` is called once the engine loop admitted it, before
    the wait for acceptance (so an abort can reach a request still in the inbox). If the body
    does not finish normally the request is aborted, so its pages are freed on the engine's next
    step: as a cancel when the client went away (the task cancelled by a cancel or a deadline,
    or the stream closed), as the server's abort when the body raised (the metrics count the two
    apart, :class:`server.loop_messages.Abort`).
    """
    loop = asyncio.get_running_loop()
    events: EventQueue = asyncio.Queue()

    finished = threading.Event()

    def sink(event: TokenEvent | BaseException) -> None:  # called on the engine thread
        if not isinstance(event, TokenEvent) or event.finished:
            finished.set()
        loop.call_soon_threadsafe(events.put_nowait, event)

    accepted = engine_loop.submit(request_id, prompt_token_ids, options, sink)
    submission = Submission(request_id, events, engine_loop, sink, finished)
    if on_submitted is not None:
        on_submitted(submission)
    try:
        await asyncio.wrap_future(accepted)
        yield submission
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: a cancel, a deadline
        submission.abort(cancelled=True)
        raise
    except BaseException:  # the body failed: the server cut the request
        submission.abort(cancelled=False)
        raise
