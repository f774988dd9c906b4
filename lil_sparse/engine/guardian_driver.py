"""Guardian inside the engine loop: submit checks, collect verdicts, gate and pause requests.

Checks run on a :class:`GuardianPool` (worker threads; zlib releases the GIL), so compression
overlaps with the next decode steps. While a request's check is pending, the request may keep
decoding, but its tokens after the check are held back (the engine releases them only once the
verdict says go on), so a stop lands exactly at the check that called for it: no token after a
decided stop reaches the client or the counts. The lag is bounded per request: once
``max_lag_steps`` tokens wait behind a pending check, that request pauses (leaves the decode
batch) until the verdict arrives; the other requests keep running. With ``workers == 0`` checks
run inline, which makes online runs equal offline replay token for token.
"""

from __future__ import annotations

from collections import deque

from lil_sparse.engine.sequence import Sequence
from lil_sparse.events import GuardianCheckRecord
from lil_sparse.guardian import Guardian, GuardianPool, sequence_bytes, zlib_compressed_size
from lil_sparse.guardian.guardian import CompressedSize


class GuardianDriver:
    def __init__(
        self, workers: int, max_lag_steps: int, compressed_size: CompressedSize = zlib_compressed_size
    ) -> None:
        self.pool: GuardianPool[str] = GuardianPool(workers)
        self._compressed_size = compressed_size  # tests pass a gated one to hold a check
        self.max_lag_steps = max_lag_steps
        self._guardians: dict[str, Guardian] = {}
        self._prompt_text: dict[str, str] = {}
        self._pending: dict[str, deque[int]] = {}  # request -> generated tokens of checks without a verdict

    def admit(self, seq: Sequence, prompt_text: str) -> None:
        options = seq.options.guardian
        if not options.enabled:
            return
        prompt = sequence_bytes(prompt_text, "", seq.prompt_token_ids, [], options.source)
        self._guardians[seq.request_id] = Guardian(options, prompt, self._compressed_size)
        self._prompt_text[seq.request_id] = prompt_text
        seq.guardian_report.enabled = True

    def after_token(self, seq: Sequence, output_text: str) -> None:
        """Submit a check when one is due after the sequence's latest token.

        ``output_text`` is the decoded output so far (what replay decodes from the same ids).
        """
        guardian = self._guardians.get(seq.request_id)
        generated = seq.num_output_tokens
        if guardian is None or not guardian.due(generated):
            return
        data = sequence_bytes(
            self._prompt_text[seq.request_id],
            output_text,
            seq.prompt_token_ids,
            seq.output_token_ids,
            seq.options.guardian.source,
        )
        self._pending.setdefault(seq.request_id, deque()).append(generated)
        self.pool.submit(seq.request_id, guardian, data, generated)

    def gate(self, request_id: str) -> int | None:
        """Generated-token count of the request's oldest check without a verdict (tokens after
        it must be held back), or None."""
        pending = self._pending.get(request_id)
        return pending[0] if pending else None

    def lagging(self, seq: Sequence) -> bool:
        """The request has ``max_lag_steps`` tokens waiting behind a pending check: pause it."""
        gate = self.gate(seq.request_id)
        return gate is not None and seq.num_output_tokens - gate >= self.max_lag_steps

    def collect(self) -> list[tuple[str, GuardianCheckRecord | Exception]]:
        """Verdicts (or a check's exception) that arrived since the last call. Never blocks."""
        results = self.pool.poll()
        for request_id, _ in results:
            pending = self._pending.get(request_id)
            if pending:
                pending.popleft()
                if not pending:
                    del self._pending[request_id]
        return results

    def wait_any(self, request_ids: list[str], timeout: float) -> None:
        """Block until one of these requests' pending checks finishes (or ``timeout`` seconds)."""
        self.pool.wait_any(request_ids, timeout)

    def release(self, seq: Sequence) -> None:
        """Forget a finished request and fill its report with the checks of the tokens it kept."""
        guardian = self._guardians.pop(seq.request_id, None)
        self._prompt_text.pop(seq.request_id, None)
        self._pending.pop(seq.request_id, None)
        self.pool.cancel(seq.request_id)
        if guardian is not None:
            applied = seq.guardian_report.applied_at_step
            report = guardian.report()
            kept = [c for c in report.checks if c.generated_tokens <= seq.num_output_tokens]
            report.checks = kept
            report.cpu_seconds = sum(c.cpu_seconds for c in kept)
            if report.stop_step is not None and report.stop_step > seq.num_output_tokens:
                report.stop_step = None
            report.applied_at_step = applied
            seq.guardian_report = report

    def shutdown(self) -> None:
        self.pool.shutdown()
