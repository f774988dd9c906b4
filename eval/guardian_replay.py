"""Guardian offline: record an output's trajectory once, then replay any (interval, threshold).

The engine's Guardian compresses ``sequence_bytes(prompt_text, output_text_so_far)`` after every
``interval_tokens`` generated tokens and stops at the first check whose compressed size grew by
less than ``threshold_bytes`` since the previous check. That verdict depends only on the bytes,
so the sizes at every multiple of a small base interval decide every interval that is a multiple
of it. :func:`record_trajectory` measures them with the engine's own helpers
(:func:`lil_sparse.guardian.sequence_bytes`, :func:`zlib_compressed_size`); :func:`replay_stop_step`
replays a setting from them without recompressing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from eval.records import Trajectory
from lil_sparse.guardian import sequence_bytes, zlib_compressed_size

# 25 divides the intervals we sweep (25, 50, 100, 250) and gives ~60 points for a 1500-token output.
DEFAULT_BASE_INTERVAL = 25
_REPLACEMENT_CHARACTER = "\ufffd"


@dataclass(frozen=True, slots=True)
class GuardianSetting:
    interval_tokens: int
    threshold_bytes: int

    def __post_init__(self) -> None:
        if self.interval_tokens < 1:
            raise ValueError(f"interval_tokens: must be >= 1, got {self.interval_tokens}")
        if self.threshold_bytes < 0:
            raise ValueError(f"threshold_bytes: must be >= 0, got {self.threshold_bytes}")

    @staticmethod
    def parse(spec: str) -> GuardianSetting:
        """``"250:20"`` -> interval 250 tokens, threshold 20 bytes."""
        interval, sep, threshold = spec.partition(":")
        if not sep:
            raise ValueError(f"guardian: {spec!r} is not INTERVAL:THRESHOLD")
        return GuardianSetting(int(interval), int(threshold))

    def label(self) -> str:
        return f"f={self.interval_tokens}, t={self.threshold_bytes}"


def record_trajectory(
    prompt_text: str,
    output_token_ids: Sequence[int],
    decode_prefixes: Callable[[list[list[int]]], list[str]],
    base_interval: int = DEFAULT_BASE_INTERVAL,
) -> Trajectory:
    """Compressed size and output length after every ``base_interval`` tokens of the output.

    ``prompt_text`` is the prompt as the engine gives it to Guardian (decoded with special
    tokens). ``decode_prefixes`` decodes a batch of output prefixes the way the engine's
    detokenizer does (special tokens skipped), e.g. ``tokenizers.Tokenizer.decode_batch``.
    """
    ids = list(output_token_ids)
    steps = list(range(base_interval, len(ids) + 1, base_interval))
    texts = ["", *decode_prefixes([ids[:k] for k in steps])]
    sizes, chars = [], []
    for text in texts:
        kept = text.rstrip(_REPLACEMENT_CHARACTER)  # what the engine has emitted at that step
        sizes.append(zlib_compressed_size(sequence_bytes(prompt_text, kept, (), (), "text")))
        chars.append(len(kept))
    return Trajectory(base_interval, tuple(sizes), tuple(chars))


def replay_stop_step(trajectory: Trajectory, output_tokens: int, setting: GuardianSetting) -> int | None:
    """The generated-token count at which Guardian would have stopped this output, or None.

    Only checks before the output's end count: the engine runs no check after the token that
    finished the request, and a stop there would save nothing. Raises ``ValueError`` when the
    interval is not a multiple of the trajectory's base interval.
    """
    base = trajectory.base_interval
    if setting.interval_tokens % base:
        raise ValueError(
            f"interval_tokens: {setting.interval_tokens} is not a multiple of the recorded "
            f"base interval {base}"
        )
    stride = setting.interval_tokens // base
    sizes = trajectory.compressed_bytes
    # Check j (j >= 1) is at j * interval tokens; the first check only sets the baseline.
    for index in range(2 * stride, len(sizes), stride):
        generated = index * base
        if generated >= output_tokens:
            break
        if sizes[index] - sizes[index - stride] < setting.threshold_bytes:
            return generated
    return None


def stop_chances(output_tokens: int, interval_tokens: int) -> int:
    """How many Guardian checks could stop an output of ``output_tokens`` tokens: the checks at
    ``k * interval_tokens`` tokens for ``k >= 2`` before the output's end (the first check only
    sets the baseline, and none runs after the last token; :func:`replay_stop_step`). 0 means
    the setting cannot stop that output whatever its threshold. Raises ``ValueError`` for an
    interval under 1 or a negative length."""
    if interval_tokens < 1 or output_tokens < 0:
        raise ValueError(f"stop_chances: interval {interval_tokens} (>= 1), output {output_tokens} (>= 0)")
    return max(0, (output_tokens - 1) // interval_tokens - 1)


def truncated_text(output_text: str, trajectory: Trajectory, stop_step: int) -> str:
    """The output as it stood when Guardian stopped at ``stop_step`` generated tokens."""
    return output_text[: trajectory.text_chars[stop_step // trajectory.base_interval]]
