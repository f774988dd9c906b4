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
# The rest of ``zlib.compress``'s settings, spelled out so the stream compressor of incremental
# mode is configured exactly like full mode: zlib container (15-bit window), memory level 8,
# default strategy.
ZLIB_WBITS = zlib.MAX_WBITS
ZLIB_MEM_LEVEL = zlib.DEF_MEM_LEVEL
ZLIB_STRATEGY = zlib.Z_DEFAULT_STRATEGY

CompressedSize = Callable[[bytes], int]

__all__ = [
    "ZLIB_LEVEL",
    "CompressedSize",
    "Guardian",
    "StreamCompressedSize",
    "sequence_bytes",
    "zlib_compressed_size",
]


def zlib_compressed_size(sequence: bytes) -> int:
    """Bytes of ``zlib.compress(sequence, ZLIB_LEVEL, ZLIB_WBITS)``, header and checksum included.

    ``zlib.compress`` always uses memory level 8 and the default strategy (CPython's
    ``zlib_compress_impl``), which :class:`StreamCompressedSize` matches.
    """
    return len(zlib.compress(sequence, ZLIB_LEVEL, ZLIB_WBITS))


class StreamCompressedSize:
    """Exact ``zlib_compressed_size`` of a growing byte string, at a cost set by the new bytes.

    One ``zlib.compressobj`` (same level, window, memory level and strategy as full mode) is fed
    each check's new bytes with no flush, so its state is the state ``zlib.compress`` reaches
    after those bytes. A check finishes a *copy* of it (``copy()`` then ``flush(Z_FINISH)``):
    the copy's output, after what the stream already emitted, is byte for byte what
    ``zlib.compress`` gives for the whole input, because deflate's output does not depend on how
    the input was split when nothing is flushed. The stream itself is never flushed, so nothing
    accumulates from one check to the next.

    Cost per check: compressing the new bytes, copying the deflate state (about 256 KiB at these
    settings, independent of the sequence) and coding the open block (at most 16K symbols).
    A sync flush instead (this class's predecessor) ends a block at every check and adds 6 to 43
    bytes of headers per check, which is a different statistic than full mode's.
    """

    def __init__(self) -> None:
        self._compressor = zlib.compressobj(
            ZLIB_LEVEL, zlib.DEFLATED, ZLIB_WBITS, ZLIB_MEM_LEVEL, ZLIB_STRATEGY
        )
        self._seen = b""  # the previous check's sequence (kept by reference, not copied)
        self._emitted_bytes = 0  # what the stream compressor has output so far

    def __call__(self, sequence: bytes) -> int:
        """Compressed size of ``sequence``, which must extend the previous call's sequence;
        raises ``ValueError`` otherwise."""
        if not sequence.startswith(self._seen):
            raise ValueError(
                "sequence: incremental mode needs each check's sequence to extend the previous one"
            )
        self._emitted_bytes += len(self._compressor.compress(sequence[len(self._seen) :]))
        self._seen = sequence
        return self._emitted_bytes + len(self._compressor.copy().flush(zlib.Z_FINISH))


class Guardian:
    """Guardian checks for one request. Not thread safe: run one request's checks in order.

    ``compressed_size`` replaces the full-mode compressor; production always uses the default
    (zlib level 6). Tests pass a gated wrapper around it to control when a check finishes.
    Incremental mode gives the same sizes as full mode through a :class:`StreamCompressedSize`.
    """

    def __init__(
        self,
        options: GuardianOptions,
        prompt: bytes,
        compressed_size: CompressedSize = zlib_compressed_size,
    ) -> None:
        self.options = options
        self.prompt = prompt
        self._compressed_size = StreamCompressedSize() if options.mode == "incremental" else compressed_size
        self._checks: list[GuardianCheckRecord] = []
        self._stop_step: int | None = None

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
        size = self._compressed_size(sequence)
        cpu_seconds = time.thread_time() - started
        previous = self._checks[-1].compressed_bytes if self._checks else None
        growth = None if previous is None else size - previous
        stop = growth is not None and growth < self.options.threshold_bytes
        record = GuardianCheckRecord(generated_tokens, size, growth, stop, cpu_seconds)
        self._checks.append(record)
        if stop and self._stop_step is None:
            self._stop_step = generated_tokens
        return record

    def report(self) -> GuardianReport:
        """The trajectory so far. ``applied_at_step`` is left for the engine to fill in."""
        return GuardianReport(
            enabled=self.options.enabled,
            checks=list(self._checks),
            stop_step=self._stop_step,
            cpu_seconds=sum(record.cpu_seconds for record in self._checks),
            shadow=self.options.shadow,
        )
