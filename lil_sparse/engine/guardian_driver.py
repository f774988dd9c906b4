"""Guardian inside the engine loop: submit checks, collect verdicts, bound the lag.

Checks run on a :class:`GuardianPool` (worker threads; zlib releases the GIL), so compression
overlaps with the next decode steps. A verdict is applied in the first step after it arrives:
the stop lands ``lag`` tokens after the check that called for it. The lag is bounded: once a
request's oldest pending check is ``max_lag_steps`` tokens old, the engine waits for it. With
``workers == 0`` checks run inline and the lag is zero, which makes online runs equal offline
replay token for token.
"""

from __future__ import annotations

from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import GuardianCheckRecord
from lil_sparse.guardian import Guardian, GuardianPool, sequence_bytes, zlib_compressed_size
from lil_sparse.guardian.guardian import CompressedSize


class GuardianDriver:
    def __init__(
        self, workers: int, max_lag_steps: int, compressed_size: CompressedSize = zlib_compressed_size
    ) -> None:
        self.pool: GuardianPool[str] = GuardianPool(workers)
        self._compressed_size = compressed_size  # tests pass a gated one to prove the loop never waits
        self.max_lag_steps = max_lag_steps
        self._guardians: dict[str, Guardian] = {}
        self._prompt_text: dict[str, str] = {}
        self._oldest_pending: dict[str, int] = {}  # request -> generated tokens at its oldest pending check

    def admit(self, seq: Sequence, prompt_text: str) -> None:
        options = seq.options.guardian
        if not options.enabled:
            return
        self._prompt_text[seq.request_id] = prompt_text
        prompt = sequence_bytes(prompt_text, "", seq.prompt_token_ids, [], options.source)
        self._guardians[seq.request_id] = Guardian(options, prompt, self._compressed_size)
        seq.guardian_report.enabled = True
        seq.guardian_report.shadow = options.shadow

    def after_token(self, seq: Sequence) -> None:
        """Submit a check when one is due after the sequence's latest token."""
        guardian = self._guardians.get(seq.request_id)
        generated = seq.num_output_tokens
        if guardian is None or not guardian.due(generated):
            return
        data = sequence_bytes(
            self._prompt_text[seq.request_id],
            seq.output_text,
            seq.prompt_token_ids,
            seq.output_token_ids,
            seq.options.guardian.source,
        )
        self._oldest_pending.setdefault(seq.request_id, generated)
        self.pool.submit(seq.request_id, guardian, data, generated)

    def collect(self, running: list[Sequence]) -> list[tuple[str, GuardianCheckRecord]]:
        """Finished checks, after waiting for any that lag too far behind its sequence."""
        for seq in running:
            oldest = self._oldest_pending.get(seq.request_id)
            if oldest is not None and seq.num_output_tokens - oldest >= self.max_lag_steps:
                self.pool.wait(seq.request_id)
        results = self.pool.poll()
        for request_id, _ in results:
            if self.pool.pending(request_id) == 0:
                self._oldest_pending.pop(request_id, None)
        return [(request_id, record) for request_id, record in results if not self._shadow(request_id)]

    def _shadow(self, request_id: str) -> bool:
        # Shadow mode: the verdicts stay in the request's Guardian report; the engine never sees
        # them, so it never finishes the request early.
        guardian = self._guardians.get(request_id)
        return guardian is not None and guardian.options.shadow

    def release(self, seq: Sequence) -> None:
        """Forget a finished request and fill its report."""
        guardian = self._guardians.pop(seq.request_id, None)
        self._prompt_text.pop(seq.request_id, None)
        self._oldest_pending.pop(seq.request_id, None)
        if guardian is not None and guardian.options.shadow:
            # A shadow report is the product: finish the checks still in flight (at most the lag
            # bound's worth) so a would-stop verdict near the end is not lost.
            self.pool.wait(seq.request_id)
        self.pool.cancel(seq.request_id)
        if guardian is not None:
            applied = seq.guardian_report.applied_at_step
            seq.guardian_report = guardian.report()
            seq.guardian_report.applied_at_step = applied

    def shutdown(self) -> None:
        self.pool.shutdown()
