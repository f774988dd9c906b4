"""Every numeric option is checked against the dtype it is used in, and every refusal names the
field a caller can fix: options, prompt geometry and Quest's dense layers."""

from __future__ import annotations

import math

import pytest

from lil_sparse.engine import LLMEngine
from lil_sparse.options import (
    FLOAT32_MAX,
    INT32_MAX,
    GuardianOptions,
    RequestOptions,
    SamplingOptions,
    SparseOptions,
    StoppingOptions,
)
from lil_sparse.sampling import SamplingParams

NAN, INF = math.nan, math.inf
BAD_NUMBERS = [NAN, INF, -INF, True, "1", None]  # not finite, or not a number at all


def _rows():
    rows = []
    for value in BAD_NUMBERS:
        rows += [
            (SamplingOptions, "temperature", value),
            (SamplingOptions, "top_p", value),
            (SamplingOptions, "top_k", value),
            (StoppingOptions, "max_new_tokens", value),
            (SparseOptions, "budget_tokens", value),
            (SparseOptions, "sink_tokens", value),
            (SparseOptions, "recent_tokens", value),
            (SparseOptions, "dense_layers", value),
            (GuardianOptions, "interval_tokens", value),
            (GuardianOptions, "threshold_bytes", value),
        ]
        if value is not None:  # None is a valid seed: "draw one at admission"
            rows.append((SamplingOptions, "seed", value))
    rows += [
        (SamplingOptions, "temperature", 1e39),  # the case: overflows float32 when packed
        (SamplingOptions, "temperature", -0.5),
        (SamplingOptions, "top_p", 1e-50),  # flushes to 0 in float32
        (SamplingOptions, "top_p", 1.0000001),
        (SamplingOptions, "top_p", 0.0),
        (SamplingOptions, "top_k", -1),
        (SamplingOptions, "top_k", INT32_MAX + 1),
        (SamplingOptions, "seed", -1),
        (SamplingOptions, "seed", 2**63),
        (SamplingOptions, "seed", 1.5),
        (StoppingOptions, "max_new_tokens", 0),
        (StoppingOptions, "max_new_tokens", INT32_MAX + 1),
        (StoppingOptions, "max_new_tokens", 4.0),
        # budget_tokens 0 and below: refused against the page size, tests/engine/test_sparse_validation.py
        (SparseOptions, "budget_tokens", 2**40),
        (SparseOptions, "sink_tokens", -1),
        (SparseOptions, "sink_tokens", 2**31),
        (SparseOptions, "recent_tokens", -4),
        (SparseOptions, "recent_tokens", 2**63),
        (SparseOptions, "dense_layers", -1),
        (SparseOptions, "dense_layers", 2**31),
        (GuardianOptions, "interval_tokens", 0),
        (GuardianOptions, "interval_tokens", 2**31),
        (GuardianOptions, "threshold_bytes", -1),
        (GuardianOptions, "threshold_bytes", 2**64),
        (GuardianOptions, "enabled", 1),
        (StoppingOptions, "ignore_eos", "yes"),
        (StoppingOptions, "stop_strings", ["a"]),
    ]
    return rows


@pytest.mark.parametrize(("kind", "field", "value"), _rows())
def test_out_of_range_values_are_refused_naming_the_field(kind, field: str, value) -> None:
    with pytest.raises(ValueError, match=f"^{field}: "):
        kind(**{field: value})


@pytest.mark.parametrize("seed", [-1, 2**63, 2**64, -(2**64)])
def test_a_seed_out_of_range_gets_the_one_range_message(seed: int) -> None:
    """Every out-of-range seed names the same range, [0, 2^63), whatever its size."""
    with pytest.raises(ValueError) as raised:
        SamplingOptions(seed=seed)
    assert str(raised.value) == f"seed: must be in [0, 2^63) (int64), got {seed}"
    with pytest.raises(ValueError, match=r"^seed: must be an integer, got 1\.5$"):
        SamplingOptions(seed=1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options",
    [
        SamplingOptions(temperature=FLOAT32_MAX, top_k=INT32_MAX, top_p=1.2e-38, seed=2**63 - 1),
        SamplingOptions(temperature=1e-30, top_p=1.0, seed=0),
        SamplingOptions(temperature=3, top_k=0, top_p=1, seed=5),  # ints where floats go are fine
    ],
)
def test_the_extremes_that_pass_validation_pack_and_sample(options: SamplingOptions) -> None:
    params = SamplingParams.from_options([options, SamplingOptions()])
    assert math.isfinite(float(params.temperature[0])) and float(params.top_p[0]) > 0
    assert params.seed.tolist()[0] == options.seed


def test_prompt_errors_name_the_prompt_and_length_errors_max_new_tokens(engine: LLMEngine) -> None:
    vocab, context = engine.model_config.vocab_size, engine.max_context
    one = RequestOptions(stopping=StoppingOptions(max_new_tokens=1))
    cases = [
        ([], one, "prompt: must contain at least one token"),
        ([1, 2, vocab], one, f"prompt: token id {vocab} at index 2 is outside the vocabulary"),
        ([1, -2], one, "prompt: token id -2 at index 1"),
        ([1, True], one, "prompt: token id True at index 1"),
        ([5] * context, one, f"prompt: {context} tokens leave no room"),
        ([5] * (context + 7), one, f"prompt: {context + 7} tokens leave no room"),
        (
            [5] * (context - 1),
            RequestOptions(stopping=StoppingOptions(max_new_tokens=2)),
            f"max_new_tokens: prompt ({context - 1}) plus max_new_tokens (2) exceeds",
        ),
    ]
    for prompt, options, message in cases:
        with pytest.raises(ValueError) as raised:
            engine.add_request(prompt, options)
        assert str(raised.value).startswith(message), str(raised.value)
    assert not engine.has_unfinished() and engine.pool.num_used == 0


def test_quest_refuses_dense_layers_that_leave_no_sparse_layer(engine: LLMEngine) -> None:
    layers = engine.model_config.num_layers
    prompt = engine.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 3)
    stopping = StoppingOptions(max_new_tokens=4, ignore_eos=True)
    for dense in (layers, layers + 1, 99):
        quest = RequestOptions(stopping=stopping, sparse=SparseOptions("quest", 32, dense_layers=dense))
        with pytest.raises(ValueError, match=f"^dense_layers: must be below the model's {layers} layers"):
            engine.add_request(prompt, quest)
    # One sparse layer left is fine; other policies never read dense_layers.
    fine = [
        RequestOptions(stopping=stopping, sparse=SparseOptions("quest", 32, dense_layers=layers - 1)),
        RequestOptions(stopping=stopping, sparse=SparseOptions("sink", 32, dense_layers=99)),
    ]
    reports = engine.generate([prompt, prompt], fine)
    assert [r.completion_tokens for r in reports] == [4, 4]
    assert reports[0].kv.attended_pages_per_step[-1] < len(prompt) // 16 + 1  # quest really selected
