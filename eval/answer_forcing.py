"""Guardian's stop action ``answer`` (online runs) against truncation (replayed), both paired with
the dense run of the same problem.

A truncating stop is replayed offline on the dense output (the tokens are the same up to the
stop). Forcing an answer changes the tokens after the stop, so it needs its own online run; this
module pairs each such run with its problem's dense (``full``, Guardian off) record and with the
truncation replayed at the same (interval, threshold) on that dense record.
"""

from __future__ import annotations

import numpy as np

from eval.analysis import GuardianOutcome
from eval.dense import is_dense
from eval.guardian_replay import GuardianSetting
from eval.records import SampleRecord
from eval.stats import difference_of_means, paired_bootstrap, saving
from eval.tables import _fmt, _pp, _table, _with_ci

AnswerArm = tuple[GuardianSetting, int]  # (interval and threshold, answer_max_tokens)


def answer_arms(records: list[SampleRecord]) -> dict[AnswerArm, list[tuple[int, int]]]:
    """Answer-forcing arm -> (dense record index, answer record index) for every problem both ran."""
    dense = {
        (r.dataset, r.problem_id): i
        for i, r in enumerate(records)
        if is_dense(r.policy) and not r.guardian.enabled
    }
    arms: dict[AnswerArm, list[tuple[int, int]]] = {}
    for i, r in enumerate(records):
        g = r.guardian
        twin = dense.get((r.dataset, r.problem_id))
        if g.enabled and g.action == "answer" and is_dense(r.policy) and twin is not None:
            arm = (GuardianSetting(g.interval_tokens, g.threshold_bytes), g.answer_max_tokens)
            arms.setdefault(arm, []).append((twin, i))
    return arms


def answer_settings(records: list[SampleRecord]) -> list[GuardianSetting]:
    """The (interval, threshold) settings of the answer-forcing runs (to replay truncation at)."""
    return sorted({setting for setting, _ in answer_arms(records)}, key=lambda s: s.label())


def answer_forcing_table(
    records: list[SampleRecord],
    truncation: dict[GuardianSetting, list[GuardianOutcome]],
    resamples: int,
) -> str:
    """One row per answer-forcing arm, all sets pooled: tokens saved and accuracy change against
    the dense run, for forcing an answer (online) and for truncating (replayed). Token savings
    count the forced prompt and the answer as generated tokens."""
    rows = []
    for (setting, answer_max), pairs in sorted(answer_arms(records).items(), key=lambda a: a[0][0].label()):
        dense = [records[d] for d, _ in pairs]
        forced = [records[a] for _, a in pairs]
        truncated = [truncation[setting][d] for d, _ in pairs]
        lengths = [float(r.output_tokens) for r in dense]
        correct = [float(bool(r.correct)) for r in dense]
        answered = [float(bool(r.correct)) for r in forced]
        cut = [float(o.correct) for o in truncated]
        stopped = sum(r.guardian.answer_started_at is not None for r in forced)
        rows.append(
            [
                setting.label(),
                str(answer_max),
                str(len(pairs)),
                _fmt(100 * stopped / len(pairs), 0),
                _with_ci(
                    paired_bootstrap(lengths, [float(r.output_tokens) for r in forced], saving, resamples),
                    signed=False,
                ),
                _with_ci(
                    paired_bootstrap(lengths, [float(o.tokens_kept) for o in truncated], saving, resamples),
                    signed=False,
                ),
                _fmt(100 * float(np.mean(correct))),
                _fmt(100 * float(np.mean(answered))),
                _with_ci(_pp(paired_bootstrap(correct, answered, difference_of_means, resamples))),
                _fmt(100 * float(np.mean(cut))),
                _with_ci(_pp(paired_bootstrap(correct, cut, difference_of_means, resamples))),
            ]
        )
    header = [
        "setting",
        "answer tokens",
        "n",
        "stopped %",
        "token saving, answer % [95% CI]",
        "token saving, truncate % [95% CI]",
        "accuracy dense %",
        "accuracy answer %",
        "Δ accuracy answer pp [95% CI]",
        "accuracy truncate %",
        "Δ accuracy truncate pp [95% CI]",
    ]
    return _table(header, rows)
