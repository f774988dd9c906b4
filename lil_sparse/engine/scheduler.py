"""What runs next: continuous batching with page reservations.

Requests join between steps and leave as soon as they finish. A request is admitted only when
the pool can hold its worst case (prompt plus ``max_new_tokens`` for retention policies, the
budget for eviction policies), so a running request never runs out of pages and nothing is ever
preempted. Prefill runs before decode, as in nano-vllm, so new requests wait at most one step.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lil_sparse.engine.sequence import Sequence, SequenceStatus
from lil_sparse.policies import get_policy


@dataclass(frozen=True)
class ScheduledBatch:
    seqs: list[Sequence]
    is_prefill: bool


class QueueFullError(RuntimeError):
    """The waiting queue is at ``max_waiting``."""


class Scheduler:
    def __init__(
        self,
        num_pages: int,
        num_kv_heads: int,
        page_size: int,
        max_batch_size: int,
        max_waiting: int,
        max_prefill_tokens: int,
    ) -> None:
        self.num_pages = num_pages
        self.num_kv_heads = num_kv_heads
        self.page_size = page_size
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.reserved_pages = 0

    def reservation(self, prompt_tokens: int, max_new_tokens: int, policy: str, budget_pages: int) -> int:
        """One-head pages a request may hold at its peak."""
        lifetime = -(-(prompt_tokens + max_new_tokens) // self.page_size)
        prompt = -(-prompt_tokens // self.page_size)
        per_head = max(prompt, min(lifetime, budget_pages)) if get_policy(policy).evicts else lifetime
        return per_head * self.num_kv_heads

    def add(self, seq: Sequence) -> None:
        if seq.reserved_pages > self.num_pages:
            raise ValueError(
                f"max_new_tokens: the prompt plus max_new_tokens needs {seq.reserved_pages} KV pages, "
                f"more than the {self.num_pages} the server has"
            )
        if len(self.waiting) >= self.max_waiting:
            raise QueueFullError(f"the waiting queue is full ({self.max_waiting} requests)")
        self.waiting.append(seq)

    def schedule(self) -> ScheduledBatch | None:
        admitted: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) + len(admitted) < self.max_batch_size:
            seq = self.waiting[0]
            if self.reserved_pages + seq.reserved_pages > self.num_pages:
                break
            if admitted and tokens + seq.num_prompt_tokens > self.max_prefill_tokens:
                break
            self.waiting.popleft()
            self.reserved_pages += seq.reserved_pages
            tokens += seq.num_prompt_tokens
            seq.status = SequenceStatus.RUNNING
            admitted.append(seq)
        if admitted:
            self.running.extend(admitted)
            return ScheduledBatch(admitted, is_prefill=True)
        if self.running:
            return ScheduledBatch(list(self.running), is_prefill=False)
        return None

    def shrink_reservation(self, seq: Sequence, pages: int) -> None:
        """After an eviction policy's prefill the request never holds more than its budget."""
        if pages < seq.reserved_pages:
            self.reserved_pages -= seq.reserved_pages - pages
            seq.reserved_pages = pages

    def finish(self, seq: Sequence) -> None:
        if seq.status == SequenceStatus.RUNNING:
            self.running.remove(seq)
            self.reserved_pages -= seq.reserved_pages
        elif seq.status == SequenceStatus.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        seq.status = SequenceStatus.FINISHED

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)
