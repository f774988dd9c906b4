"""Where a step of very unequal rows splits into two decode calls, and the runner's row order.

``chunk_pages`` replays FlashInfer 0.6.6's ``PrefillBinarySearchKVChunkSize`` (checked here on
hand-worked cases); ``choose_split`` takes a split only where the cost model says it pays.
The GPU side (two calls attend what one does, graphs replay them) is tests/gpu/test_decode_split_gpu.py.
"""

from __future__ import annotations

import pytest

from lil_sparse.attention.decode_split import call_cost, choose_split, chunk_pages
from lil_sparse.engine.decode_layouts import longest_first

H200_SMS = 132
MIN_CHUNK = 8  # FlashInfer's max(128 // page_size, 1) at page size 16


def test_chunk_pages_is_the_smallest_chunk_within_the_units():
    # 64 rows of 2049 pages, 264 units: ceil(2049 / c) <= 4 first holds at c = 513.
    assert chunk_pages([2049] * 64, 264, MIN_CHUNK) == 513
    # 240 rows already take 240 of 264 units: the long rows cannot split at all.
    assert chunk_pages([2049] * 48 + [257] * 192, 264, MIN_CHUNK) == 2049
    # Few short rows: the search stops at FlashInfer's minimum chunk.
    assert chunk_pages([20, 3], 264, MIN_CHUNK) == MIN_CHUNK
    # Rows shorter than the minimum chunk: FlashInfer's search starts (and stops) at the minimum.
    assert chunk_pages([5, 3], 264, MIN_CHUNK) == MIN_CHUNK


def test_call_cost_is_bandwidth_over_the_units_in_use_or_the_largest_unit():
    # One call of the mixed batch waits for its unsplit 2049-page rows.
    assert call_cost([2049] * 48 + [257] * 192, H200_SMS, MIN_CHUNK) == 2049 + 20
    # 48 long rows alone split 5 ways (chunks of 410 pages): 240 of 264 units stream.
    assert call_cost([2049] * 48, H200_SMS, MIN_CHUNK) == pytest.approx(48 * 2049 * 2 / 240 + 20)
    # 192 short rows take one unit each: a quarter of the units idle, the rest stream.
    assert call_cost([257] * 192, H200_SMS, MIN_CHUNK) == pytest.approx(257 * 2 + 20)
    # 64 rows of 2049 pages fill 256 units (chunks of 513): the full bandwidth, nearly.
    assert call_cost([2049] * 64, H200_SMS, MIN_CHUNK) == pytest.approx(64 * 2049 * 2 / 256 + 20)


def test_the_mixed_batch_splits_between_long_and_short_rows():
    counts = [2049] * 48 + [257] * 192  # 6 full + 24 sparse sequences x 8 KV heads
    assert choose_split(counts, 8, H200_SMS, MIN_CHUNK) == 48


@pytest.mark.parametrize(
    "counts",
    [
        [2049] * 64,  # uniform: one call already streams at full bandwidth
        [300] * 8 + [20] * 56,  # few rows: one call splits the long rows finely enough
        [3, 3, 1, 1],  # tiny rows: a second call's overhead never pays
        [257] * 192 + [2049] * 48,  # short rows first: no drop to split at (the runner sorts)
    ],
)
def test_no_split_where_one_call_is_as_good(counts):
    assert choose_split(counts, 8 if len(counts) % 8 == 0 else 1, H200_SMS, MIN_CHUNK) == 0


def test_split_points_stay_on_sequence_boundaries():
    # 8 KV heads per sequence: a split inside a sequence's rows is never offered.
    counts = [2049] * 48 + [257] * 192
    split = choose_split(counts, 8, H200_SMS, MIN_CHUNK)
    assert split % 8 == 0
    with pytest.raises(ValueError, match="in steps of 8"):
        choose_split(counts[:-1], 8, H200_SMS, MIN_CHUNK)


def test_longest_first_orders_by_sparse_then_dense_then_held_pages_stably():
    # (dense layers, pages a dense layer attends, pages a sparse layer attends) per sequence
    per_seq = [
        (0, 257, 257),  # sink at budget
        (0, 2049, 2049),  # full
        (2, 2049, 257),  # quest: dense layers attend all it holds
        (0, 2049, 257),  # infllm: same sparse count, no dense layers
        (0, 2049, 2049),  # full again: keeps its place after the first full
    ]
    assert longest_first(per_seq) == [1, 4, 2, 3, 0]
    assert longest_first([per_seq[1], per_seq[4], per_seq[2]]) is None  # already in order


def test_the_runner_answers_in_the_callers_order(engine):
    """The step runs its rows longest first; logits and KV records come back in the caller's
    order: each request gets its own solo tokens and its own attended-page record."""
    from lil_sparse.options import RequestOptions, SparseOptions, StoppingOptions

    def opts(policy: str) -> RequestOptions:
        return RequestOptions(
            stopping=StoppingOptions(max_new_tokens=12, ignore_eos=True),
            sparse=SparseOptions(policy=policy, budget_tokens=32, dense_layers=1),
        )

    prompts = [[5 + i % 50 for i in range(n)] for n in (20, 150, 70)]  # 2, 10 and 5 prompt pages
    requests = [opts("full"), opts("sink"), opts("full")]  # sorted: 2 (full, 5 pages), 0, 1 (sink)
    orders = []
    real = longest_first

    def recording(per_seq):
        order = real(per_seq)
        orders.append(order)
        return order

    import lil_sparse.engine.model_runner as model_runner

    # The reference backend runs one call and does not ask for the order; FlashInfer's does
    # (prefers_longest_first), and the runner's reordering is the same code on either.
    backend = engine.runner.backend
    model_runner.longest_first = recording  # type: ignore[attr-defined]
    backend.prefers_longest_first = True
    try:
        together = engine.generate(prompts, requests)
    finally:
        model_runner.longest_first = real  # type: ignore[attr-defined]
        del backend.prefers_longest_first  # back to the class's False
    assert [2, 0, 1] in orders  # the step really reordered its rows
    alone = [engine.generate([p], [o])[0] for p, o in zip(prompts, requests, strict=True)]
    for got, want in zip(together, alone, strict=True):
        assert got.output_token_ids == want.output_token_ids
        assert got.kv.attended_pages_per_step == want.kv.attended_pages_per_step
    # A full request attends every page it holds; the sink request stays at its 2-page budget.
    assert together[1].kv.attended_pages_per_step[-1] == 2
    assert together[2].kv.attended_pages_per_step[-1] == 6  # 70 + 11 tokens: 6 pages


def reordering_engine(model_dir, overlap: bool, selection: str):
    from lil_sparse.config import EngineConfig
    from lil_sparse.engine import LLMEngine

    engine = LLMEngine.from_config(
        EngineConfig(
            model=str(model_dir),
            page_size=4,
            kv_cache_tokens=4096,
            max_batch_size=8,
            max_num_batched_tokens=24,
            guardian_workers=0,
            poison_freed_pages=True,
            overlap_scheduling=overlap,
            selection=selection,
        )
    )
    engine.runner.backend.prefers_longest_first = True  # as FlashInfer's backend asks
    return engine


def mixed_batch(seed: int):
    """8 requests over every policy: unequal prompts, budgets, windows, dense layers, stops,
    greedy and seeded sampling, so the step's rows are reordered and groups, eviction and the
    selection gate all see the new order."""
    import random

    from lil_sparse.options import (
        POLICY_NAMES,
        RequestOptions,
        SamplingOptions,
        SparseOptions,
        StoppingOptions,
    )

    rng = random.Random(seed)
    prompts, options = [], []
    for index in range(8):
        prompts.append([rng.randrange(3, 384) for _ in range(rng.choice([5, 13, 30, 61, 90]))])
        sampling = SamplingOptions(temperature=0.9, top_k=20, seed=index) if index % 2 else SamplingOptions()
        options.append(
            RequestOptions(
                sampling=sampling,
                stopping=StoppingOptions(max_new_tokens=rng.choice([6, 15, 25]), ignore_eos=True),
                sparse=SparseOptions(
                    policy=POLICY_NAMES[index % len(POLICY_NAMES)],
                    budget_tokens=rng.choice([8, 12, 20]),
                    sink_tokens=rng.choice([0, 4]),
                    recent_tokens=4,
                    dense_layers=rng.choice([0, 1]),
                ),
            )
        )
    return prompts, options


@pytest.mark.parametrize("overlap", [False, True])
@pytest.mark.parametrize("selection", ["exact", "when_faster"])
def test_a_reordered_mixed_batch_gives_every_request_its_solo_run(tiny_model_dir, overlap, selection):
    """With the rows reordered every step, each request's tokens and KV report (attended pages
    per step, peak pages, selection-gate skips) equal its solo run's, overlap on and off."""
    import lil_sparse.engine.model_runner as model_runner

    reordered = []

    def recording(per_seq):
        order = longest_first(per_seq)
        reordered.append(order is not None)
        return order

    model_runner.longest_first = recording  # type: ignore[attr-defined]
    try:
        engine = reordering_engine(tiny_model_dir, overlap, selection)
        for seed in range(2):
            prompts, options = mixed_batch(seed)
            together = engine.generate(prompts, options)
            alone = [engine.generate([p], [o])[0] for p, o in zip(prompts, options, strict=True)]
            for got, want in zip(together, alone, strict=True):
                assert got.output_token_ids == want.output_token_ids
                assert got.kv.attended_pages_per_step == want.kv.attended_pages_per_step
                assert got.kv.peak_pages == want.kv.peak_pages
                assert got.kv.selection_skipped_steps == want.kv.selection_skipped_steps
        engine.close()
    finally:
        model_runner.longest_first = longest_first  # type: ignore[attr-defined]
    assert any(reordered)
