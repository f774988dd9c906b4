"""Guardian inside the engine loop: submit checks, collect verdicts, gate and pause requests.

Checks run on a :class:`GuardianPool` (worker threads; zlib releases the GIL), so compression
overlaps with the next decode steps. While a request's check is pending, the request may keep
decoding, but its tokens after the check are held back (the engine releases them only once the
verdict says go on), so a stop lands exactly at the check that called for it: no token after a
decided stop reaches the client or the counts. The lag is bounded per request: once
``max_lag_steps`` tokens wait behind a pending check, that request pauses (leaves the decode
batch) until the verdict arrives; the other requests keep running. With ``workers == 0`` checks
run inline, which makes online runs equal offline replay token for token.

Two per-request options change that:

- shadow mode (``GuardianOptions.shadow``): verdicts are recorded in the request's report and
  never reach the engine, so nothing is held back (:meth:`GuardianDriver.gate` is None) and the
  tokens are those of the Guardian-off run. The lag bound still pauses a shadow request that runs
  ``max_lag_steps`` tokens ahead of its oldest pending check (it bounds the checks in flight; the
  tokens do not change), and at the end the checks still in flight are finished, so a would-stop
  verdict near the end is not lost.
- stop action ``answer``: the request pauses at every pending check (a lag bound of 0), so no
  token is decoded past a check before its verdict. A stop therefore lands exactly at the check
  with nothing to discard: the answer phase continues from there, and the sequence never attends
  KV of a token that the stop threw away. (Rewinding the KV of discarded tokens is not possible
  in general: an eviction policy at its budget recycles an old page for the new tokens and H2O's
  scores absorb their attention.)
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
        self._shadow: set[str] = set()  # requests whose verdicts are recorded, never applied
        self._pause_at_check: set[str] = set()  # stop action "answer": lag bound 0
        self._closed: set[str] = set()  # no more checks (the answer phase runs)

    def admit(self, seq: Sequence, prompt_text: str) -> None:
        options = seq.options.guardian
        if not options.enabled:
            return
        prompt = sequence_bytes(prompt_text, "", seq.prompt_token_ids, [], options.source)
        self._guardians[seq.request_id] = Guardian(options, prompt, self._compressed_size)
        self._prompt_text[seq.request_id] = prompt_text
        if options.shadow:
            self._shadow.add(seq.request_id)
        elif options.action == "answer":
            self._pause_at_check.add(seq.request_id)
        seq.guardian_report.enabled = True
        seq.guardian_report.shadow = options.shadow

    def watches(self, request_id: str) -> bool:
        """Whether the request has a Guardian (admitted with Guardian on, not yet released).

        Only such a request ever has a pending check, so for any other one :meth:`after_token`
        does nothing and :meth:`gate` is None: the engine skips both.
        """
        return request_id in self._guardians

    def after_token(self, seq: Sequence, output_text: str) -> None:
        """Submit a check when one is due after the sequence's latest token.

        ``output_text`` is the decoded output so far (what replay decodes from the same ids).
        """
        guardian = self._guardians.get(seq.request_id)
        generated = seq.num_output_tokens
        if guardian is None or seq.request_id in self._closed or not guardian.due(generated):
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
        it must be held back), or None. Always None in shadow mode (nothing is held back)."""
        pending = self._pending.get(request_id)
        return pending[0] if pending and request_id not in self._shadow else None

    def lagging(self, seq: Sequence) -> bool:
        """The request has ``max_lag_steps`` tokens (0 for stop action ``answer``) past its oldest
        pending check: pause it until the verdict."""
        pending = self._pending.get(seq.request_id)
        bound = 0 if seq.request_id in self._pause_at_check else self.max_lag_steps
        return pending is not None and len(pending) > 0 and seq.num_output_tokens - pending[0] >= bound

    def may_pause_after_token(self, seq: Sequence) -> bool:
        """Whether the request could be paused (:meth:`lagging`) at the next step, once the token
        being handled now is appended: a pending check it would be ``max_lag_steps`` (0 for stop
        action ``answer``) tokens past, or a check due at that token under a lag bound of 0.
        Verdicts only ever shrink the pending checks, so False is a promise (overlap scheduling
        runs such a request ahead); True may be cautious."""
        request_id = seq.request_id
        guardian = self._guardians.get(request_id)
        if guardian is None:
            return False
        generated = seq.num_output_tokens + 1
        bound = 0 if request_id in self._pause_at_check else self.max_lag_steps
        pending = self._pending.get(request_id)
        if pending and generated - pending[0] >= bound:
            return True
        return bound == 0 and request_id not in self._closed and guardian.due(generated)

    def collect(self) -> list[tuple[str, GuardianCheckRecord | Exception]]:
        """Verdicts (or a check's exception) that arrived since the last call. Never blocks.

        A shadow request's verdicts stay in its Guardian (its report) and are not returned; a
        check that raised is returned for every request (a failure is its request's own).
        """
        results = self.pool.poll()
        for request_id, _ in results:
            pending = self._pending.get(request_id)
            if pending:
                pending.popleft()
                if not pending:
                    del self._pending[request_id]
        return [
            (request_id, verdict)
            for request_id, verdict in results
            if request_id not in self._shadow or isinstance(verdict, Exception)
        ]

    def close_checks(self, seq: Sequence) -> None:
        """No more checks for this request (its answer phase runs): drop any in flight. Its report
        keeps the checks that gave a verdict."""
        self._closed.add(seq.request_id)
        self._pending.pop(seq.request_id, None)
        self.pool.cancel(seq.request_id)

    def wait_any(self, request_ids: list[str], timeout: float) -> None:
        """Block until one of these requests' pending checks finishes (or ``timeout`` seconds)."""
        self.pool.wait_any(request_ids, timeout)

    def release(self, seq: Sequence) -> None:
        """Forget a finished request and fill its report with the checks of the tokens it kept."""
        guardian = self._guardians.pop(seq.request_id, None)
        self._prompt_text.pop(seq.request_id, None)
        self._pending.pop(seq.request_id, None)
        self._pause_at_check.discard(seq.request_id)
        self._closed.discard(seq.request_id)
        if seq.request_id in self._shadow:
            # A shadow report is the product: finish the checks still in flight (at most the lag
            # bound's worth) so a would-stop verdict near the end is not lost.
            self._shadow.discard(seq.request_id)
            self.pool.wait(seq.request_id)
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
