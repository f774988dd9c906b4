"""Guardian early stop for one request (Lil, arXiv 2601.03043).

Every ``interval_tokens`` generated tokens the whole sequence so far is compressed with zlib.
A sequence that keeps carrying new information keeps growing when compressed; one that loops
(the model repeats itself) compresses to almost nothing more, so when the compressed size grew
by less than ``threshold_bytes`` since the previous check, Guardian says stop.

The decision is a pure function of the bytes: the same sequence gives the same verdicts, online
or replayed. Only ``cpu_seconds`` (``time.thread_time``, so pool workers measure their own
thread) depends on the machine, and it never enters a decision.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable

from lil_sparse.events import GuardianCheckRecord, GuardianReport
from lil_sparse.guardian.sequence import sequence_bytes
from lil_sparse.options import GuardianOptions

# zlib's default level. The paper names zlib (DEFLATE: LZ77 plus Huffman) and no level, so we
# take the library default that a plain ``zlib.compress(data)`` uses.
ZLIB_LEVEL = 6

CompressedSize = Callable[[bytes], int]

__all__ = ["ZLIB_LEVEL", "CompressedSize", "Guardian", "sequence_bytes", "zlib_compressed_size"]


def zlib_compressed_size(sequence: bytes) -> int:
    """Bytes of ``zlib.compress(sequence, ZLIB_LEVEL)``, header and checksum included."""
    return len(zlib.compress(sequence, ZLIB_LEVEL))


class Guardian:
    """Guardian checks for one request. Not thread safe: run one request's checks in order.

    ``compressed_size`` replaces the full-mode compressor; production always uses the default
    (zlib level 6). Tests pass a gated wrapper around it to control when a check finishes.
    """

    def __init__(
        self,
        options: GuardianOptions,
        prompt: bytes,
        compressed_size: CompressedSize = zlib_compressed_size,
    ) -> None:
        self.options = options
        self.prompt = prompt
        self._compressed_size = compressed_size
        self._checks: list[GuardianCheckRecord] = []
        self._stop_step: int | None = None
        # Incremental mode: the stream compressor, the bytes it has seen and its output so far.
        self._compressor = zlib.compressobj(ZLIB_LEVEL) if options.mode == "incremental" else None
        self._seen = b""
        self._stream_bytes = 0

    def due(self, generated_tokens: int) -> bool:
        """True when a check belongs after ``generated_tokens`` tokens (a positive multiple of
        the interval)."""
        return generated_tokens > 0 and generated_tokens % self.options.interval_tokens == 0

    @property
    def stop_step(self) -> int | None:
        """Generated-token count at the first check that said stop, or None."""
        return self._stop_step

    @property
    def checks(self) -> tuple[GuardianCheckRecord, ...]:
        return tuple(self._checks)

    def check(self, sequence: bytes, generated_tokens: int) -> GuardianCheckRecord:
        """Compress ``sequence`` (the whole sequence: prompt plus output so far) and decide.

        Raises ``ValueError`` when ``generated_tokens`` does not increase from one check to the
        next, when ``sequence`` does not start with the prompt, or (incremental mode) when it
        does not extend the sequence of the previous check.
        """
        if self._checks and generated_tokens <= self._checks[-1].generated_tokens:
            raise ValueError(
                f"generated_tokens: checks must move forward, got {generated_tokens} after "
                f"{self._checks[-1].generated_tokens}"
            )
        if not sequence.startswith(self.prompt):
            raise ValueError("sequence: must start with the prompt bytes this Guardian was created with")
        started = time.thread_time()
        if self._compressor is None:
            size = self._compressed_size(sequence)
        else:
            size = self._incremental_size(self._compressor, sequence)
        cpu_seconds = time.thread_time() - started
        previous = self._checks[-1].compressed_bytes if self._checks else None
        growth = None if previous is None else size - previous
        stop = growth is not None and growth < self.options.threshold_bytes
        record = GuardianCheckRecord(generated_tokens, size, growth, stop, cpu_seconds)
        self._checks.append(record)
        if stop and self._stop_step is None:
            self._stop_step = generated_tokens
        return record

    def _incremental_size(self, compressor: zlib._Compress, sequence: bytes) -> int:
        """Running total of the stream compressor's output after feeding the new bytes and a
        sync flush (which byte-aligns the stream, so the total is exact at every check)."""
        seen = len(self._seen)
        if sequence[:seen] != self._seen:
            raise ValueError(
                "sequence: incremental mode needs each check's sequence to extend the previous one"
            )
        new_bytes = sequence[seen:]
        self._stream_bytes += len(compressor.compress(new_bytes))
        self._stream_bytes += len(compressor.flush(zlib.Z_SYNC_FLUSH))
        self._seen = sequence
        return self._stream_bytes

    def report(self) -> GuardianReport:
        """The trajectory so far. ``applied_at_step`` is left for the engine to fill in."""
        return GuardianReport(
            enabled=self.options.enabled,
            checks=list(self._checks),
            stop_step=self._stop_step,
            cpu_seconds=sum(record.cpu_seconds for record in self._checks),
        )
