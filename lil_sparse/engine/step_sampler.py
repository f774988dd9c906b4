"""Sample one token for every row of a step, isolating a row whose sampling fails.

The batch is sampled in one call, and the sampled tokens and their logprobs start for the host
together in one non-blocking transfer (:meth:`StepSampler.start`; an all-greedy batch's argmax
kernel writes them into pinned host memory itself, with no transfer after it,
:meth:`Sampler.sample_record`); :meth:`StepSampler.wait` is
the one host sync of a decode step, and it waits on that copy's CUDA event, not on the stream,
so work queued after the copy (overlap scheduling's next decode step, which reads the tokens
still on the device) keeps the GPU busy while the host reads them. Host values go to the device
in one non-blocking copy (the rows' sampling settings and positions,
:meth:`SamplingParams.from_packed`). A batch that keeps its requests packs their settings once;
an all-greedy one reuses its params and copies nothing. If the batch call raises (a request's
settings that cannot be packed, a sampler fault), each row is sampled alone to find the culprit
(:meth:`StepSampler.sample_each`): the sampler is batch invariant, so every other row gets
exactly the token the batch would have given it, and only a row that fails alone is reported as
failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lil_sparse.engine.sequence import Sequence
from lil_sparse.options import SamplingOptions
from lil_sparse.sampling import Sampler, SamplingParams
from lil_sparse.sampling.params import PackedOptions

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TokensInFlight:
    """A step's sampled tokens on their way to the host.

    ``token_ids: [B] int64`` on the device (what a decode step launched ahead feeds);
    ``host: [2, B] float64``, tokens then logprobs (pinned memory on CUDA), valid once ``ready``
    (the copy's event; None on CPU, where the copy is done already) has completed. On CUDA
    ``host`` is one of :class:`HostRecords`' reused buffers: ``landing`` is that buffer's slot
    and its use count when this step took it.
    """

    token_ids: torch.Tensor
    host: torch.Tensor
    ready: torch.cuda.Event | None
    landing: tuple[HostLanding, int] | None = None


@dataclass(slots=True)
class HostLanding:
    """One reusable landing place for a step's record: a pinned ``[2, B]`` float64 buffer, the
    event recorded once the record is in it (after the copy, or after the argmax kernel that wrote
    it there), and how many steps have used it."""

    host: torch.Tensor
    ready: torch.cuda.Event
    uses: int = 0


class HostRecords:
    """The pinned buffers and copy events of the steps' records, reused in a ring per batch size.

    A fresh pinned tensor and a fresh CUDA event every step cost the host 2-5 and 6.5-15 us on
    the H200 machine, by the host's speed (``bench/launch_host.py``, 2026-12-01 20:10 and 20:21
    UTC), besides the pinned allocator's work when the tensor is freed. A step reads its record
    (:meth:`StepSampler.wait`) before the engine starts another, and overlap scheduling keeps at
    most one more in flight, so a ring of :data:`RING` places per batch size is never reused under
    a reader; a record read after its place was reused raises RuntimeError instead of returning
    another step's tokens."""

    RING = 4

    def __init__(self, make: Callable[[int], HostLanding] | None = None) -> None:
        """``make(rows)``: a new place (default: pinned memory and a CUDA event)."""
        self._make = make or _pinned_landing
        self._rings: dict[int, list[HostLanding]] = {}  # per batch size, least recently taken first

    def take(self, rows: int) -> HostLanding:
        """The next place for a ``[2, rows]`` record (a new one the first :data:`RING` times)."""
        places = self._rings.setdefault(rows, [])
        if len(places) < self.RING:
            places.append(self._make(rows))
        else:
            places.append(places.pop(0))
        place = places[-1]
        place.uses += 1
        return place


def _pinned_landing(rows: int) -> HostLanding:
    return HostLanding(torch.empty((2, rows), dtype=torch.float64, pin_memory=True), torch.cuda.Event())


class StepSampler:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        # The last batch: its rows' options (held, so compared by identity), their packing and,
        # for an all-greedy batch, its params on the device.
        self._last: tuple[tuple[SamplingOptions, ...], PackedOptions] | None = None
        self._greedy: tuple[PackedOptions, torch.device, SamplingParams] | None = None
        self.host_records = HostRecords()

    def sample(
        self, seqs: list[Sequence], logits: torch.Tensor
    ) -> tuple[list[Sequence], list[int], list[float], list[tuple[Sequence, Exception]]]:
        """``logits: [len(seqs), V]``. Returns the rows that got a token, their tokens and
        logprobs, and the rows that failed with their exception (:meth:`start` then
        :meth:`wait`, or :meth:`sample_each` when the batch call raises)."""
        try:
            tokens, logprobs = self.wait(self.start(seqs, logits))
            return seqs, tokens, logprobs, []
        except Exception:
            logger.exception("sampling a batch of %d failed; sampling its rows one by one", len(seqs))
        return self.sample_each(seqs, logits)

    def start(self, seqs: list[Sequence], logits: torch.Tensor) -> TokensInFlight:
        """Sample every row of ``logits: [len(seqs), V]`` in one call and start the copy of the
        tokens and logprobs to the host; nothing here waits for the device. Raises what the
        batch call raises (then :meth:`sample_each` finds the failing rows)."""
        params = self._params(seqs, logits.device)
        if params.positions is None:  # _params always packs them
            raise RuntimeError("sampling params were built without positions")
        place = self.host_records.take(logits.shape[0]) if logits.is_cuda else None
        # One transfer as float64 (Sampler.sample_record); an all-greedy batch's argmax may
        # write the record into the pinned place itself, and then there is nothing to copy.
        token_ids, record = self.sampler.sample_record(
            logits, params, params.positions, host=None if place is None else place.host
        )
        if place is None:
            return TokensInFlight(token_ids, record, None)
        if record is not place.host:
            place.host.copy_(record, non_blocking=True)
        place.ready.record()
        return TokensInFlight(token_ids, place.host, place.ready, (place, place.uses))

    def wait(self, tokens: TokensInFlight) -> tuple[list[int], list[float]]:
        """The one host sync of the step (the scheduler needs the tokens): wait for the copy
        :meth:`start` began (its event only) and read it."""
        if tokens.ready is not None:
            tokens.ready.synchronize()
        ids, values = tokens.host.tolist()
        if tokens.landing is not None and tokens.landing[0].uses != tokens.landing[1]:
            raise RuntimeError("a step's sampled tokens were read after their host buffer was reused")
        return [int(token) for token in ids], values

    def sample_each(
        self, seqs: list[Sequence], logits: torch.Tensor
    ) -> tuple[list[Sequence], list[int], list[float], list[tuple[Sequence, Exception]]]:
        """The failure path: sample each row alone (a loop over rows is fine here). Returns
        what :meth:`sample` returns."""
        kept: list[Sequence] = []
        tokens, logprobs = [], []
        failed: list[tuple[Sequence, Exception]] = []
        for row, seq in enumerate(seqs):
            try:
                (token,), (logprob,) = self.wait(self.start([seq], logits[row : row + 1]))
            except Exception as error:
                failed.append((seq, error))
            else:
                kept.append(seq)
                tokens.append(token)
                logprobs.append(logprob)
        return kept, tokens, logprobs, failed

    def _params(self, seqs: list[Sequence], device: torch.device) -> SamplingParams:
        """The rows' :class:`SamplingParams` with their positions. The options of a batch that
        keeps its requests are packed once (the tuple compares its elements by identity first:
        O(B), no copy). A greedy row reads no noise, so an all-greedy batch packs zeros as
        positions and its params serve every later step of the same requests."""
        options = tuple(s.options.sampling for s in seqs)
        last = self._last
        if last is None or last[0] != options:
            last = self._last = (options, PackedOptions.pack(options))
        packed = last[1]
        if packed.all_greedy:
            greedy = self._greedy
            if greedy is None or greedy[0] is not packed or greedy[1] != device:
                params = SamplingParams.from_packed(packed, device, [0] * len(options))
                greedy = self._greedy = (packed, device, params)
            return greedy[2]
        positions = [s.num_prompt_tokens + s.num_output_tokens for s in seqs]
        return SamplingParams.from_packed(packed, device, positions)
