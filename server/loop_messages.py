"""What crosses the engine thread's boundary: inbox commands, the event sink, the stats snapshot.

The servicer's side puts :class:`Submit` and :class:`Abort` in :class:`~server.engine_loop.EngineLoop`'s
inbox; the engine thread answers through each request's :data:`EventSink` and publishes
:class:`LoopStats` for the gauges.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions

# What a request's sink receives: token events, then (only if the engine itself broke) an error.
EventSink = Callable[[TokenEvent | BaseException], None]


@dataclass(frozen=True, slots=True)
class Submit:
    request_id: str
    prompt_token_ids: list[int]
    options: RequestOptions
    sink: EventSink
    accepted: Future[str]  # resolved on the engine thread once add_request returned or raised


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop a request. ``cancelled``: its client went away (a cancel, a deadline, the gateway's
    Abort for a dropped HTTP stream), as opposed to the server cutting it (a drain past its grace
    period, a failure); the metrics count the two apart (``finish_reason="cancelled"``)."""

    request_id: str
    cancelled: bool = False
    sink: EventSink | None = None  # only the submission made with this sink (None: any holder)


@dataclass(frozen=True, slots=True)
class LoopStats:
    """A snapshot for the gauges: requests admitted, running and waiting, and KV use; and the
    engine's cumulative step counters (:class:`lil_sparse.engine.EngineStats`)."""

    in_flight: int
    num_running: int
    num_waiting: int
    kv_pages_used: int
    kv_pages_total: int
    graph_replays: int = 0
    eager_decodes: int = 0
    ahead_steps: int = 0
    serial_steps: int = 0

    @property
    def kv_usage_ratio(self) -> float:
        return self.kv_pages_used / self.kv_pages_total if self.kv_pages_total else 0.0
