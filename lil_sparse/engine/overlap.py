"""Overlap scheduling: launch decode step n+1 before the host handles step n's tokens.

    step n:   ... sample (device) -> copy tokens to host (event) -> launch decode n+1 with the
              sampled tokens still on the device -> wait for the copy -> detokenizer, stop checks
    step n+1: aborts, verdicts, schedule -> take decode n+1's rows -> prompt chunks -> sample ...

The host's per-token work of step n (and the page prep, inputs and plan of step n+1) runs while
the GPU decodes, as in SGLang's overlap scheduler and vLLM's async scheduling.

Why outputs equal the serial engine's. The decode launched ahead for a request reads exactly
what the serial step n+1 would: the token sampled for it (the device tensor the host copy is
made from), its position and pages (host counts that step n's token handling never changes).
Only requests whose next input or pause state that handling cannot change run ahead
(:func:`runs_ahead`): no answer phase (it replaces the sampled token), no Guardian request that
this token could pause (a pending check it would lag behind:
:meth:`GuardianDriver.may_pause_after_token`; between checks Guardian requests run ahead), no
abort or pending finish. One such request in the step and the step runs serially. A Guardian
request whose token stops it while a check is pending waits for the verdict and then finishes,
so it never decodes again: its row run ahead is dropped like a finished one's.
A request that the handling finishes (EOS, stop string, length) is released as usual: the GPU
stream orders the ahead step's reads and writes of its pages and block-table slot before any
later reuse, and its row is dropped. The chunked scheduler decodes every running request that
is not paused, so step n+1's decode rows are the ahead rows still running (plus, at most,
requests that were paused for Guardian at step n: they decode in a second call). Each launch's
KV report entry and peak are held back until its token is taken, so a dropped row leaves no
trace in a report (``poison_freed_pages`` checks the taken rows for NaN when they are taken).
Rows are batch invariant (the sampler by construction, the CPU model by the
isolation tests); on the GPU a row's logits match the serial engine's as far as the kernels
are batch invariant, the same condition under which a request's tokens do not depend on which
other requests share its steps.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch

from lil_sparse.engine.kv_records import DecodeKVRecord
from lil_sparse.engine.model_runner import ModelRunner
from lil_sparse.engine.sequence import Sequence, SequenceStatus


@dataclass(frozen=True, slots=True)
class AheadStep:
    """A decode step launched ahead: ``logits [len(seqs), V] float32`` (valid until the runner's
    next decode call: it may be a CUDA graph's output buffer), and per row the KV record of the launch,
    applied to the request's report once the row's token is taken."""

    seqs: list[Sequence]
    logits: torch.Tensor
    kv_records: list[DecodeKVRecord]


@dataclass(frozen=True, slots=True)
class TakenRows:
    """What step n+1 gets from the step launched ahead: ``seqs`` (in decode order) and their
    ``logits`` (None when no row was taken), ``rest``: decode rows it did not run (they decode
    now), ``stale``: running requests it ran that were not scheduled (never, with the chunked
    scheduler: the engine fails them rather than drop a token silently)."""

    seqs: list[Sequence]
    logits: torch.Tensor | None
    rest: list[Sequence]
    stale: list[Sequence]


def runs_ahead(
    seqs: list[Sequence],
    answering: Collection[str],
    finishing: Collection[str],
    may_pause: Callable[[Sequence], bool],
) -> bool:
    """Whether no row's next decode input or pause state can change while the host handles
    its token: no answer phase, no pending finish, no abort requested, and no Guardian request
    that its token could pause (``may_pause``: a check it would lag behind)."""
    return not any(
        s.abort_requested or s.request_id in answering or s.request_id in finishing or may_pause(s)
        for s in seqs
    )


class Overlap:
    """The decode step launched ahead (at most one) and the counters of steps with and without."""

    def __init__(self, runner: ModelRunner) -> None:
        self.runner = runner
        self.ahead: AheadStep | None = None
        self.ahead_steps = 0  # sampling steps that launched the next decode before handling tokens
        self.serial_steps = 0  # sampling steps that did not (overlap off or a request not eligible)
        self.catch_up_decodes = 0  # steps whose decode rows were not all run ahead (second call)

    def reset_counters(self) -> None:
        """Zero the counters of :meth:`stats`."""
        self.ahead_steps = self.serial_steps = self.catch_up_decodes = 0

    def stats(self) -> dict[str, int]:
        return {
            "ahead_steps": self.ahead_steps,
            "serial_steps": self.serial_steps,
            "catch_up_decodes": self.catch_up_decodes,
        }

    def launch(self, seqs: list[Sequence], token_ids: torch.Tensor) -> None:
        """Run the next decode of ``seqs`` on ``token_ids: [len(seqs)] int64`` (their sampled
        tokens, on the device). Raises what the runner raises (the launch is then lost)."""
        kv_records: list[DecodeKVRecord] = []
        logits = self.runner.decode(seqs, input_ids=token_ids, kv_records=kv_records)
        self.ahead = AheadStep(list(seqs), logits, kv_records)
        self.ahead_steps += 1

    def take(self, decode: list[Sequence]) -> TakenRows:
        """Step n+1's share of the step launched ahead (which is gone after this call)."""
        ahead, self.ahead = self.ahead, None
        if ahead is None:
            return TakenRows([], None, decode, [])
        row_of = {id(seq): row for row, seq in enumerate(ahead.seqs)}
        taken = [s for s in decode if id(s) in row_of]
        rest = [s for s in decode if id(s) not in row_of]
        rows = [row_of[id(s)] for s in taken]
        scheduled = set(rows)
        stale = [
            s
            for row, s in enumerate(ahead.seqs)
            if row not in scheduled and s.status == SequenceStatus.RUNNING
        ]
        for seq, row in zip(taken, rows, strict=True):  # the launch's KV record, now its token is here
            ahead.kv_records[row].apply(seq.kv_report)
        if rest:
            self.catch_up_decodes += 1
        if not taken:
            return TakenRows([], None, rest, stale)
        logits = ahead.logits
        if rows != list(range(len(ahead.seqs))):
            index = torch.tensor(rows, dtype=torch.long).to(logits.device, non_blocking=True)
            logits = logits[index]  # a list index would copy synchronously
        elif rest:  # the second decode call may replay the graph that owns these logits
            logits = logits.clone()
        return TakenRows(taken, logits, rest, stale)

    def drop(self) -> list[Sequence]:
        """Forget the step launched ahead when step n+1 decodes nothing; returns its running
        requests (stale: see :class:`TakenRows`)."""
        return self.take([]).stale
