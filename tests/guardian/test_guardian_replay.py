"""Offline replay gives the verdicts the engine would have given online."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from guardian_texts import seeded_prose, with_loop
from tokenizers import Tokenizer

from lil_sparse.events import GuardianReport
from lil_sparse.guardian import Guardian, GuardianPool, replay, replay_tokens, sequence_bytes
from lil_sparse.options import GuardianMode, GuardianOptions
from lil_sparse.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny"), architecture="qwen2")
    return Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))


def online_report(
    options: GuardianOptions,
    prompt: str,
    output_ids: list[int],
    decode: Callable[[list[int]], str],
    pool_workers: int,
) -> GuardianReport:
    """What the engine does: one token per step, a check whenever one is due, on a pool."""
    guardian = Guardian(options, sequence_bytes(prompt, "", [], [], options.source))
    with GuardianPool[str](pool_workers) as pool:
        for generated in range(1, len(output_ids) + 1):
            if guardian.due(generated):
                text = decode(output_ids[:generated])
                pool.submit("request", guardian, sequence_bytes(prompt, text, [], [], "text"), generated)
            if any(record.stop for _, record in pool.poll()):
                break
        pool.wait("request")
        pool.poll()
    return guardian.report()


@pytest.mark.parametrize("mode", ["full", "incremental"])
@pytest.mark.parametrize("pool_workers", [0, 2])
def test_replay_matches_online_checks(tokenizer: Tokenizer, mode: GuardianMode, pool_workers: int) -> None:
    prompt = "<|im_start|>user\nSolve it.<|im_end|>\n<|im_start|>assistant\n"
    output = with_loop(seeded_prose(700, seed=3), sentences=2, repeats=25)
    output_ids = tokenizer.encode(output).ids
    assert tokenizer.decode(output_ids) == output  # byte-level BPE round-trips

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids)

    options = GuardianOptions(enabled=True, interval_tokens=100, mode=mode)
    online = online_report(options, prompt, output_ids, decode, pool_workers)
    offline = replay_tokens(options, prompt, output_ids, decode)
    assert online.stop_step is not None
    assert offline.stop_step == online.stop_step
    # On a pool, checks submitted before the stop verdict came back also ran; they follow it.
    trajectory = [
        (c.generated_tokens, c.compressed_bytes, c.growth_bytes, c.stop)
        for c in online.checks
        if c.generated_tokens <= online.stop_step
    ]
    assert trajectory == [
        (c.generated_tokens, c.compressed_bytes, c.growth_bytes, c.stop) for c in offline.checks
    ]


def test_replay_runs_every_check_when_asked() -> None:
    options = GuardianOptions(enabled=True, interval_tokens=10, threshold_bytes=20)
    report = replay(options, lambda k: b"x" * (4 * k), 95, stop_at_first=False)
    assert [c.generated_tokens for c in report.checks] == list(range(10, 91, 10))
    assert report.stop_step == 20  # remembered even though the checks went on
    stopped = replay(options, lambda k: b"x" * (4 * k), 95)
    assert [c.generated_tokens for c in stopped.checks] == [10, 20]


def test_replay_with_no_due_check_is_empty() -> None:
    report = replay(GuardianOptions(enabled=True, interval_tokens=250), lambda k: b"y" * k, 249)
    assert report.checks == [] and report.stop_step is None
    with pytest.raises(ValueError, match="num_generated"):
        replay(GuardianOptions(), lambda k: b"", -1)
