"""What runs next: continuous batching with page reservations and chunked prefill.

Requests join between steps and leave as soon as they finish. A request is admitted only when
the pool can hold its worst case (prompt plus ``max_new_tokens`` for retention policies, the
budget for eviction policies), so a running request never runs out of pages and nothing is ever
preempted. Admission allocates the pages of the whole prompt at once.

Chunked prefill (the default) follows Sarathi-Serve and vLLM: a step has a token budget
(``EngineConfig.max_num_batched_tokens``). Every decoding request gets one token of it first, so
running streams advance every step; what is left goes to prompt chunks, first to requests already
prefilling (in admission order), then to newly admitted ones. A prompt longer than the budget
takes several steps, and an abort or deadline is applied before its next chunk.

A step runs its decode rows and its prompt chunks as two model calls, not one mixed batch. The
decode call keeps its fixed shapes (bucketed page tables, per-policy page selection, CUDA-graph
replay) and the prefill call keeps its dense ragged attention; a mixed batch would need every
attention path to take variable-length query rows and could no longer replay a captured graph.
The cost is one more pass over the weights per step while a prompt is prefilling, small against
a chunk of hundreds of tokens; the fairness bound (one chunk per step) is the same.

Without chunking (``chunked_prefill=False``) new requests' whole prompts run in a step of their
own before decode, as in nano-vllm, up to ``max_prefill_tokens`` per step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lil_sparse.engine.sequence import PrefillChunk, Sequence, SequenceStatus
from lil_sparse.policies import get_policy


@dataclass(frozen=True)
class ScheduledBatch:
    """One step's work: ``decode`` requests each produce a token; ``prefill`` chunks advance
    prompts (``admitted``: requests that need pages and a slot before their first chunk)."""

    decode: list[Sequence]
    prefill: list[PrefillChunk]
    admitted: list[Sequence]


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
        step_token_budget: int = 0,
    ) -> None:
        """``step_token_budget``: tokens per step with chunked prefill (0: prefill unchunked)."""
        self.num_pages = num_pages
        self.num_kv_heads = num_kv_heads
        self.page_size = page_size
        self.max_batch_size = max_batch_size
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.step_token_budget = step_token_budget
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
        batch = self._schedule_chunked() if self.step_token_budget else self._schedule_whole_prompts()
        return batch if batch.decode or batch.prefill else None

    def _schedule_chunked(self) -> ScheduledBatch:
        decode: list[Sequence] = []
        prefilling: list[Sequence] = []
        for seq in self.running:  # one pass, admission order kept in both
            (prefilling if seq.is_prefilling else decode).append(seq)
        budget = self.step_token_budget - len(decode)
        chunks: list[PrefillChunk] = []
        for seq in prefilling:
            if budget > 0:
                end = min(seq.num_prompt_tokens, seq.num_cached_tokens + budget)
                chunks.append(PrefillChunk(seq, seq.num_cached_tokens, end))
                budget -= end - seq.num_cached_tokens

        def first_chunk(seq: Sequence) -> bool:
            nonlocal budget
            if budget <= 0:
                return False
            chunks.append(PrefillChunk(seq, 0, min(seq.num_prompt_tokens, budget)))
            budget -= chunks[-1].num_tokens
            return True

        admitted = self._admit(first_chunk)
        return ScheduledBatch(decode, chunks, admitted)

    def _schedule_whole_prompts(self) -> ScheduledBatch:
        tokens = 0

        def fits(seq: Sequence) -> bool:
            nonlocal tokens
            if tokens and tokens + seq.num_prompt_tokens > self.max_prefill_tokens:
                return False
            tokens += seq.num_prompt_tokens
            return True

        admitted = self._admit(fits)
        if admitted:
            return ScheduledBatch([], [PrefillChunk(s, 0, s.num_prompt_tokens) for s in admitted], admitted)
        return ScheduledBatch(list(self.running), [], [])

    def _admit(self, fits: Callable[[Sequence], bool]) -> list[Sequence]:
        """Move waiting requests (in order) to running while slots, pages and ``fits`` allow
        (``fits`` is asked last, once per request that gets in if it says yes)."""
        admitted: list[Sequence] = []
        while self.waiting and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            if self.reserved_pages + seq.reserved_pages > self.num_pages or not fits(seq):
                break
            self.waiting.popleft()
            self.reserved_pages += seq.reserved_pages
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
        return admitted

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
    def num_prefilling(self) -> int:
        """Running requests still prefilling their prompt (part of ``num_running``)."""
        return sum(1 for seq in self.running if seq.is_prefilling)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)
