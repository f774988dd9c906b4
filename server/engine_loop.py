"""The engine thread: the only thread that touches the (not thread-safe) engine.

The asyncio servicer hands submissions and aborts to this thread through a thread-safe inbox and
receives each request's TokenEvents through a callback it registered (the servicer's callback
hops back onto the event loop with ``call_soon_threadsafe``). Admission control lives here, in
front of the inbox, so a full queue is refused before any work is done.

Isolation: nothing one request or client does may stop this thread. Every call out of it (a
request's sink, its acceptance future, the metrics callbacks) is guarded, and a failing sink
aborts only its own request. If the thread dies anyway (a bug outside ``step()``), every open
stream fails, new calls are refused, and ``on_death`` tells the server to go NOT_SERVING and exit.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from lil_sparse.engine.scheduler import QueueFullError
from lil_sparse.events import TokenEvent
from lil_sparse.options import RequestOptions
from server.errors import EngineFailed, InvalidArgument, QueueFull, ShuttingDown
from server.loop_messages import Abort, EventSink, LoopStats, Submit

logger = logging.getLogger(__name__)

__all__ = ["EngineLoop", "EventSink", "LoopStats"]  # EventSink, LoopStats: loop_messages.py


class EngineLoop:
    """Runs ``engine.step()`` on its own thread while requests are unfinished.

    ``on_stats`` is called on the engine thread after every step and when going idle, and
    ``on_finished(event, options, cancelled)`` with every final event, so metrics stay off the
    event loop; ``cancelled`` says an aborted request's client went away (:meth:`abort`). A request
    whose sink raised still reaches ``on_finished`` at its final event (aborted by the server);
    ``on_dropped(options, finish_reason)`` is called for each admitted request that gets no final
    event: ``"cancelled"`` when its caller cancelled it before the engine accepted it (a client
    deadline shorter than its wait in the queue), ``"error"`` when an engine failure took it. So
    every admitted request is counted once, but those the engine refused (invalid, shutting down).
    """

    def __init__(
        self,
        engine: Any,
        max_running: int,
        max_waiting: int,
        on_stats: Callable[[LoopStats], None] | None = None,
        on_finished: Callable[[TokenEvent, RequestOptions, bool], None] | None = None,
        on_death: Callable[[BaseException], None] | None = None,
        on_dropped: Callable[[RequestOptions, str], None] | None = None,
    ) -> None:
        self._engine = engine
        self._max_running = max_running
        self._max_waiting = max_waiting
        self._on_stats = on_stats
        self._on_finished = on_finished
        self._on_death = on_death
        self._on_dropped = on_dropped
        self._inbox: queue.Queue[Submit | Abort | None] = queue.Queue()
        self._lock = threading.Lock()  # guards _admitted, _closed and _dead (touched from both sides)
        self._admitted: set[str] = set()
        self._closed = False
        self._dead: BaseException | None = None
        self.cancelled_before_acceptance = 0  # submissions their caller cancelled in the inbox
        self._sinks: dict[str, tuple[EventSink, RequestOptions]] = {}  # engine thread only
        # Engine thread only: why each aborted request was aborted, the first reason winning
        # (True: its client went away; False: the server cut it), read at its final event.
        self._abort_causes: dict[str, bool] = {}
        # Engine thread only: requests whose sink raised, aborted and awaiting their final event.
        self._orphans: dict[str, RequestOptions] = {}
        self._thread = threading.Thread(target=self._run, name="lil-sparse-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new submissions, abort what is left, and join the thread."""
        with self._lock:
            self._closed = True
            remaining = list(self._admitted)
        for request_id in remaining:
            self._inbox.put(Abort(request_id))
        self._inbox.put(None)
        self._thread.join(timeout)

    def close_admission(self) -> None:
        """Refuse new submissions (drain) while in-flight requests keep running."""
        with self._lock:
            self._closed = True

    @property
    def alive(self) -> bool:
        """False once the engine thread died (the server must restart)."""
        with self._lock:
            return self._dead is None

    @property
    def max_in_flight(self) -> int:
        """The one admission limit: requests running plus waiting (``max_running + max_waiting``)."""
        return self._max_running + self._max_waiting

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._admitted)

    def submit(
        self, request_id: str, prompt_token_ids: list[int], options: RequestOptions, sink: EventSink
    ) -> Future[str]:
        """Admit a request (thread-safe). The future resolves once the engine accepted it.

        Raises QueueFull or ShuttingDown (also once the engine died) at once; the future raises
        InvalidArgument if the engine rejected the options. The caller may cancel the future at any time.
        """
        if not request_id:  # the engine would make up its own id, and no event would find the sink
            raise InvalidArgument("request_id: must not be empty")
        with self._lock:
            if self._dead is not None:
                raise ShuttingDown("the engine stopped; the server is restarting")
            if self._closed:
                raise ShuttingDown("server is shutting down")
            if request_id in self._admitted:
                raise InvalidArgument(f"request_id: {request_id!r} is already in flight")
            if len(self._admitted) >= self.max_in_flight:
                raise self._queue_full(len(self._admitted))
            self._admitted.add(request_id)
            accepted: Future[str] = Future()
            # Under the lock: a thread that dies later still finds this in the inbox and fails it.
            self._inbox.put(Submit(request_id, prompt_token_ids, options, sink, accepted))
        return accepted

    def _queue_full(self, in_flight: int) -> QueueFull:
        """The one message for the one limit, wherever it trips."""
        return QueueFull(
            f"queue full: {in_flight} requests running or waiting "
            f"(max_running {self._max_running} + max_waiting {self._max_waiting}); retry later"
        )

    def abort(self, request_id: str, cancelled: bool = False, sink: EventSink | None = None) -> None:
        """Ask the engine to abort (thread-safe); it frees the pages on its next step.

        ``cancelled=True`` when the request's client went away (cancel, deadline, the gateway's
        Abort): the finish still reads ABORTED, and ``on_finished`` is told it was a cancel; the
        first abort's reason wins (a drain's abort stays the server's when the client's cancel
        follows). ``sink``: abort only the submission made with that sink, not a later request
        that reuses the id once this one finished (None: whichever holds the id, as at shutdown)."""
        self._inbox.put(Abort(request_id, cancelled, sink))

    def _release(self, request_id: str) -> None:
        with self._lock:
            self._admitted.discard(request_id)

    def _reject(self, command: Submit, error: BaseException) -> None:
        self._release(command.request_id)
        if not command.accepted.done():  # the caller may have cancelled meanwhile
            command.accepted.set_exception(error)

    def _handle(self, command: Submit | Abort) -> None:
        if isinstance(command, Abort):
            entry = self._sinks.get(command.request_id)
            if entry is not None and (command.sink is None or entry[0] is command.sink):
                self._abort_causes.setdefault(command.request_id, command.cancelled)
                self._engine.abort(command.request_id)
            return
        # Claims the future: False means the caller cancelled (client gone, deadline) before we got
        # here, so the request never reaches the engine; once claimed it can no longer be cancelled.
        if not command.accepted.set_running_or_notify_cancel():
            self.cancelled_before_acceptance += 1
            self._dropped(command.options, "cancelled")
            self._release(command.request_id)
            return
        try:
            self._engine.add_request(command.prompt_token_ids, command.options, request_id=command.request_id)
        except ValueError as error:  # the engine names the field
            self._reject(command, InvalidArgument(str(error)))
            return
        except QueueFullError:  # admission keeps the engine's queue below its limit; a backstop
            self._reject(command, self._queue_full(self.in_flight))
            return
        except Exception:
            logger.exception("add_request failed for %s", command.request_id)
            self._reject(command, EngineFailed("the engine could not accept the request"))
            return
        self._sinks[command.request_id] = (command.sink, command.options)
        command.accepted.set_result(command.request_id)

    def _handle_guarded(self, command: Submit | Abort) -> None:
        """One request's command failing (an abort that raises, say) fails that request only."""
        try:
            self._handle(command)
        except Exception:
            logger.exception("handling %s for %s failed", type(command).__name__, command.request_id)
            if isinstance(command, Submit):
                if self._sinks.pop(command.request_id, None) is not None:
                    self._engine.abort(command.request_id)  # accepted before the failure: free it
                self._reject(command, EngineFailed("the engine could not accept the request"))

    def _deliver(self, request_id: str, sink: EventSink, item: TokenEvent | BaseException) -> bool:
        """Call one request's sink; a sink that raises loses its request, never the thread."""
        try:
            sink(item)
            return True
        except Exception:
            logger.exception("delivering to %s failed; aborting that request", request_id)
            return False

    def _dispatch(self, events: list[TokenEvent]) -> None:
        for event in events:
            entry = self._sinks.get(event.request_id)
            if entry is None:
                orphan = self._orphans.pop(event.request_id, None) if event.finished else None
                if orphan is not None and self._on_finished is not None:  # the server cut it
                    self._guarded("on_finished", self._on_finished, event, orphan, False)
                continue
            sink, options = entry
            if event.finished:
                cancelled = self._abort_causes.pop(event.request_id, False)
                # Counted before the client can see its Finished message, so a scrape after it agrees.
                if self._on_finished is not None:
                    self._guarded("on_finished", self._on_finished, event, options, cancelled)
                del self._sinks[event.request_id]
                self._release(event.request_id)
                self._deliver(event.request_id, sink, event)
            elif not self._deliver(event.request_id, sink, event):
                del self._sinks[event.request_id]  # the engine frees the pages; we stop listening
                self._abort_causes.pop(event.request_id, None)
                self._orphans[event.request_id] = options  # counted at its final event
                self._engine.abort(event.request_id)
                self._release(event.request_id)

    def _fail_all(self, reason: str) -> None:
        """The engine's state is unknown: every stream fails, and the engine drops its requests."""
        logger.error("%s; failing %d requests", reason, len(self._sinks))
        self._abort_causes.clear()
        self._orphans.clear()
        for request_id, (sink, options) in list(self._sinks.items()):
            self._dropped(options, "error")
            self._deliver(request_id, sink, EngineFailed("the engine failed while generating"))
            self._release(request_id)
            try:
                self._engine.abort(request_id)
            except Exception:
                logger.exception("abort after failure failed for %s", request_id)
        self._sinks.clear()

    def _dropped(self, options: RequestOptions, finish_reason: str) -> None:
        if self._on_dropped is not None:
            self._guarded("on_dropped", self._on_dropped, options, finish_reason)

    def _guarded(self, name: str, callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("%s callback failed", name)

    def _publish_stats(self) -> None:
        if self._on_stats is None:
            return
        stats = self._engine.stats()
        self._guarded(
            "on_stats",
            self._on_stats,
            LoopStats(
                in_flight=self.in_flight,
                num_running=stats.num_running,
                num_waiting=stats.num_waiting,
                kv_pages_used=stats.kv_pages_used,
                kv_pages_total=stats.kv_pages_total,
                graph_replays=stats.graph_replays,
                eager_decodes=stats.eager_decodes,
                ahead_steps=stats.ahead_steps,
                serial_steps=stats.serial_steps,
            ),
        )

    def _take_commands(self, block: bool) -> list[Submit | Abort | None]:
        """Everything in the inbox; waits for the first item only when the engine is idle."""
        commands: list[Submit | Abort | None] = [self._inbox.get()] if block else []
        while True:
            try:
                commands.append(self._inbox.get_nowait())
            except queue.Empty:
                return commands

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as error:  # a bug outside step(): the process must restart
            logger.critical("the engine thread died", exc_info=error)
            self._die(error)

    def _die(self, error: BaseException) -> None:
        with self._lock:
            self._dead = error
            self._closed = True
        self._fail_all("the engine thread died")
        for command in self._take_commands(block=False):  # submissions nobody will handle now
            if isinstance(command, Submit) and command.accepted.set_running_or_notify_cancel():
                self._reject(command, ShuttingDown("the engine stopped; the server is restarting"))
        with self._lock:
            self._admitted.clear()
        if self._on_death is not None:
            self._guarded("on_death", self._on_death, error)

    def _serve(self) -> None:
        stopping = False
        while True:
            busy = self._engine.has_unfinished()
            if stopping and not busy:
                return
            for command in self._take_commands(block=not busy and not stopping):
                if command is None:
                    stopping = True
                else:
                    self._handle_guarded(command)
            if self._engine.has_unfinished():
                try:
                    events = self._engine.step()
                except Exception:
                    logger.exception("engine step failed")
                    self._fail_all("engine step failed")
                else:
                    self._dispatch(events)
            self._publish_stats()
