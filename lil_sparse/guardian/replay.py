"""Replay Guardian over a saved output, exactly as the engine would have checked it online.

The eval harness records each request's output once (Guardian off) and replays many
``(interval_tokens, threshold_bytes)`` settings offline: a check's verdict depends only on the
sequence bytes at that step, so the replayed stop step equals the online one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from lil_sparse.events import GuardianReport
from lil_sparse.guardian.guardian import Guardian
from lil_sparse.guardian.sequence import sequence_bytes
from lil_sparse.options import GuardianOptions


def replay(
    options: GuardianOptions,
    sequence_at: Callable[[int], bytes],
    num_generated: int,
    stop_at_first: bool = True,
) -> GuardianReport:
    """Run the checks due within ``num_generated`` tokens and return the trajectory.

    ``sequence_at(k)`` is the whole sequence (see :func:`sequence_bytes`) after ``k`` generated
    tokens; ``sequence_at(0)`` is the prompt. Like the engine, replay ends at the first check
    that says stop unless ``stop_at_first`` is False (then every due check runs, for plots).
    """
    if num_generated < 0:
        raise ValueError(f"num_generated: must be >= 0, got {num_generated}")
    guardian = Guardian(options, sequence_at(0))
    interval = options.interval_tokens
    for generated_tokens in range(interval, num_generated + 1, interval):
        record = guardian.check(sequence_at(generated_tokens), generated_tokens)
        if record.stop and stop_at_first:
            break
    return guardian.report()


def replay_tokens(
    options: GuardianOptions,
    prompt_text: str,
    output_token_ids: Sequence[int],
    decode: Callable[[list[int]], str],
    prompt_token_ids: Sequence[int] = (),
    stop_at_first: bool = True,
) -> GuardianReport:
    """:func:`replay` for a saved list of output token ids.

    ``decode(ids)`` must turn an output prefix into the text the engine had at that step (the
    engine decodes the whole prefix, so ``tokenizer.decode`` with the engine's settings fits).
    ``prompt_token_ids`` is needed only for ``source="token_ids"``.
    """
    output_ids = list(output_token_ids)

    def sequence_at(generated_tokens: int) -> bytes:
        prefix = output_ids[:generated_tokens]
        text = decode(prefix) if options.source == "text" else ""
        return sequence_bytes(prompt_text, text, prompt_token_ids, prefix, options.source)

    return replay(options, sequence_at, len(output_ids), stop_at_first)
