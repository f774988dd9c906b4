"""Guardian offline replay from a recorded trajectory equals the engine's own replay and the
engine's online stop step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from eval.guardian_replay import (
    GuardianSetting,
    record_trajectory,
    replay_stop_step,
    stop_chances,
    truncated_text,
)
from eval.records import Trajectory
from lil_sparse.config import EngineConfig
from lil_sparse.engine import LLMEngine
from lil_sparse.guardian import replay_tokens
from lil_sparse.loading.tokenizer import Tokenizer
from lil_sparse.options import GuardianOptions, RequestOptions, SamplingOptions, StoppingOptions

PROMPT = "<|im_start|>user\nHow many clips did Natalia sell?<|im_end|>\n<|im_start|>assistant\n"
CLEAN = (
    "Natalia sold 48 clips in April. In May she sold half as many, 48 / 2 = 24 clips. "
    "Altogether she sold 48 + 24 = 72 clips in April and May. def add(a, b): return a + b. "
    "The quick brown fox jumps over the lazy dog 0123456789 times; so the answer is \\boxed{72}. "
)
LOOP = "So the answer is 72. " * 60


def decode_batch(tokenizer: Tokenizer) -> Callable[[list[list[int]]], list[str]]:
    return lambda prefixes: tokenizer.backend.decode_batch(prefixes, skip_special_tokens=True)


@pytest.mark.parametrize(("interval", "threshold"), [(25, 20), (50, 10), (50, 40), (100, 20), (25, 0)])
def test_trajectory_replay_equals_engine_replay(tiny_model_dir: Path, interval: int, threshold: int) -> None:
    tokenizer = Tokenizer.from_folder(tiny_model_dir)
    output_ids = tokenizer.encode(CLEAN + LOOP)
    trajectory = record_trajectory(PROMPT, output_ids, decode_batch(tokenizer), base_interval=25)
    options = GuardianOptions(enabled=True, interval_tokens=interval, threshold_bytes=threshold)
    reference = replay_tokens(options, PROMPT, output_ids, lambda ids: tokenizer.decode(ids))
    expected = (
        reference.stop_step
        if reference.stop_step is not None and reference.stop_step < len(output_ids)
        else None
    )
    stop = replay_stop_step(trajectory, len(output_ids), GuardianSetting(interval, threshold))
    assert stop == expected
    # Every check's size matches the engine's replay, not only the verdict.
    for check in reference.checks:
        assert trajectory.compressed_bytes[check.generated_tokens // 25] == check.compressed_bytes
    if threshold > 0 and interval <= 50:
        assert stop is not None  # the loop must be caught: the test would be vacuous otherwise
        assert truncated_text(CLEAN + LOOP, trajectory, stop) == tokenizer.decode(output_ids[:stop])


def test_replay_rejects_interval_off_the_base(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_folder(tiny_model_dir)
    trajectory = record_trajectory(PROMPT, tokenizer.encode(CLEAN), decode_batch(tokenizer), base_interval=25)
    with pytest.raises(ValueError, match="interval_tokens"):
        replay_stop_step(trajectory, 100, GuardianSetting(30, 20))
    with pytest.raises(ValueError, match="guardian"):
        GuardianSetting.parse("250")


def test_replay_equals_online_stop_step(tiny_model_dir: Path) -> None:
    """The same prompt, with and without Guardian, in one batch: the run without Guardian,
    recorded and replayed, says stop exactly where the engine stopped the run with Guardian."""
    engine = LLMEngine.from_config(
        EngineConfig(model=str(tiny_model_dir), kv_cache_tokens=4096, max_batch_size=4, guardian_workers=0)
    )
    try:
        prompt = engine.tokenizer.encode(PROMPT)
        setting = GuardianSetting(25, 20)

        def options(guardian: bool) -> RequestOptions:
            return RequestOptions(
                sampling=SamplingOptions(temperature=0.0),
                stopping=StoppingOptions(max_new_tokens=160, ignore_eos=True),
                guardian=GuardianOptions(enabled=guardian, interval_tokens=25, threshold_bytes=20),
            )

        online, dense = engine.generate([prompt, prompt], [options(True), options(False)])
    finally:
        engine.close()
    assert online.finish_reason.value == "early_stop"
    assert online.guardian.stop_step is not None and online.guardian.stop_step < 160
    assert dense.output_token_ids[: online.completion_tokens] == online.output_token_ids
    prompt_text = engine.tokenizer.decode(prompt, skip_special_tokens=False)
    trajectory = record_trajectory(prompt_text, dense.output_token_ids, decode_batch(engine.tokenizer))
    assert replay_stop_step(trajectory, dense.completion_tokens, setting) == online.guardian.stop_step


@pytest.mark.parametrize("interval", [25, 50, 75, 100, 250])
def test_stop_chances_counts_the_checks_replay_can_stop_at(interval: int) -> None:
    """With a threshold no growth reaches, replay stops at the first check that can stop (2f),
    so it stops iff ``stop_chances`` is positive; with sizes that grow past any threshold it
    never stops, and the checks it looked at are the counted ones (every 25 tokens recorded)."""
    growing = Trajectory(25, tuple(range(0, 1000 * 41, 1000)), tuple(range(41)))  # 1000 tokens
    for output_tokens in range(0, 1001, 5):
        chances = stop_chances(output_tokens, interval)
        stop = replay_stop_step(growing, output_tokens, GuardianSetting(interval, 10**9))
        assert (stop is not None) == (chances > 0), (output_tokens, chances, stop)
        if stop is not None:
            assert stop == 2 * interval
        # The checks that could stop: k * interval for k >= 2, before the output's end.
        assert chances == len([k for k in range(2, 1000) if k * interval < output_tokens])
        assert replay_stop_step(growing, output_tokens, GuardianSetting(interval, 1000)) is None


def test_stop_chances_refuses_nonsense() -> None:
    assert stop_chances(0, 25) == 0 and stop_chances(51, 25) == 1 and stop_chances(50, 25) == 0
    with pytest.raises(ValueError, match="stop_chances"):
        stop_chances(10, 0)
    with pytest.raises(ValueError, match="stop_chances"):
        stop_chances(-1, 25)
