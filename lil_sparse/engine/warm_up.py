"""Start-up warm-up: a few dummy requests through every path a first request could take.

On CUDA the first use of a kernel costs far more than its run: FlashInfer builds each attention
module with nvcc on a machine's first use (9-16 s per kernel on an H100, 2026-11-22; its sampling
module 88 s on the H200, which :meth:`~lil_sparse.sampling.Sampler.warm_up` already pays), Triton
compiles every kernel specialization it has not cached, and the runner captures a CUDA graph
the second time it sees a step shape (:mod:`lil_sparse.engine.cuda_graphs`). Inside a request
each of these stalls every stream of the engine, for seconds. :func:`warm_up` pays them before
the engine serves (the server reports SERVING after the engine is built), as vLLM captures its
graphs at start-up:

1. for every page-table width bucket of the runner up to :data:`WIDTH_STEP` pages (4096 tokens
   at page size 16) that the context and the KV pool hold, one request per policy, each with
   that many pages and a budget of about half of them: selection (Quest, InfLLM), eviction (sink,
   H2O) and the dense path all run at that width, prefill included (Triton specializes the
   selection kernels by width, and graphs are captured per width); then each policy alone at
   the narrowest width (one row runs the one-token kernels);
2. for every batch bucket of the runner up to ``max_batch_size``, that many plain requests
   decoding together, long enough for the bucket's graph to be captured and replayed;
3. with chunked prefill, a prompt one page longer than the step's token budget beside a decoding
   request: the mixed steps and the paged chunk prefill;
4. the selection kernels at every width bucket up to the model's context, without requests
   (:mod:`lil_sparse.engine.selection_compile`): a long decode reaches the wider ones only after
   thousands of tokens, a lone selecting request the narrower ones, and the first to reach one
   would wait for its builds (0.24-0.37 s under Quest, 0.57-0.80 s under InfLLM, on the H200).

A round whose requests the context or the KV pool could not hold is left out (the report says
which widths, batch sizes and chunked prompt ran).

Every request is greedy with ``ignore_eos``; the prompts are fixed token ids. A warm-up request
that finishes with an error raises: a kernel that cannot run here fails the start, not a user's
request. The engine's step counters (graph replays, eager steps, overlap) restart at zero after.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lil_sparse.engine.model_runner import WIDTH_STEP, ModelRunner
from lil_sparse.engine.selection_compile import compile_selection_widths, width_buckets
from lil_sparse.events import FinishReason
from lil_sparse.options import POLICY_NAMES, RequestOptions, SamplingOptions, SparseOptions, StoppingOptions

if TYPE_CHECKING:
    from lil_sparse.engine.llm_engine import LLMEngine

logger = logging.getLogger(__name__)

DECODE_TOKENS = 5  # the first from the prefill, then 4 decode steps: eager, capture, 2 replays
MIN_WIDTH = 8  # the narrowest page table (ModelRunner.width_bucket)


@dataclass(frozen=True)
class WarmUpReport:
    """What :func:`warm_up` ran: ``seconds`` of wall time, ``requests`` in all, the decode
    ``batch_sizes`` it ran alone (the runner's buckets), the page-table ``widths`` every policy
    ran at, ``chunked_prompt_tokens`` (0 when prefill is not chunked or the context is too
    short for a second chunk) and the ``selection_widths`` whose selection kernels it ran without
    requests (every width bucket; empty where no fused selection runs)."""

    seconds: float
    requests: int
    batch_sizes: tuple[int, ...]
    widths: tuple[int, ...]
    chunked_prompt_tokens: int
    selection_widths: tuple[int, ...] = ()


def warm_up(engine: LLMEngine) -> WarmUpReport:
    """Run the warm-up rounds (module docstring) on ``engine``, which must hold no request, then
    zero its step counters. Returns a :class:`WarmUpReport`. Raises RuntimeError naming the round
    and the error when a warm-up request fails."""
    if engine.has_unfinished():
        raise RuntimeError("warm_up: the engine already holds requests")
    start = time.perf_counter()
    page_size = engine.config.page_size
    requests = 0
    widths = _table_widths(engine)
    short_tokens = min(page_size, engine.max_context - DECODE_TOKENS)
    buckets = _batch_buckets(engine.config.max_batch_size) if short_tokens >= 1 else []
    step_budget = engine.config.step_token_budget if engine.config.chunked_prefill else 0
    chunked = _chunked_prompt_tokens(engine, step_budget) if short_tokens >= 1 else 0
    every_width = width_buckets(engine.runner)
    logger.info(
        "warm-up: every policy at page-table widths %s, batch sizes %s, a chunked prompt of %d "
        "tokens, the selection kernels at widths %s, before serving (EngineConfig.warm_up)",
        ",".join(map(str, widths)) or "none",
        ",".join(map(str, buckets)) or "none",
        chunked,
        ",".join(map(str, every_width)) or "none",
    )

    # The default dense leading layers, fewer in a model too shallow for any layer to select.
    dense_layers = min(SparseOptions().dense_layers, engine.model_config.num_layers - 1)
    for width in widths:
        prompt = _prompt(width * page_size - DECODE_TOKENS - 1, engine)  # width pages, new tokens too
        keep = (width // 2 + 1) * page_size  # held pages over it; what it keeps also `width` wide
        options = [_options(policy, keep, dense_layers) for policy in POLICY_NAMES]
        requests += _run(engine, f"policies at width {width}", [prompt] * len(options), options)

    if widths:  # each policy alone too: a first request often is (batch 1 runs other kernels)
        prompt = _prompt(widths[0] * page_size - DECODE_TOKENS - 1, engine)
        for policy in POLICY_NAMES:
            options = [_options(policy, (widths[0] // 2 + 1) * page_size, dense_layers)]
            requests += _run(engine, f"{policy} alone", [prompt], options)

    for batch in buckets:
        short = _prompt(short_tokens, engine)
        requests += _run(engine, f"batch {batch}", [short] * batch, [_options("full", page_size)] * batch)

    if chunked:
        chunks = -(-chunked // step_budget) + 1
        decoding = _options("full", page_size, new_tokens=DECODE_TOKENS + chunks)
        prompts = [_prompt(short_tokens, engine), _prompt(chunked, engine)]
        requests += _run(engine, "chunked prefill", prompts, [decoding, _options("full", page_size)])

    group = engine.model_config.queries_per_kv_head
    ran = compile_selection_widths(engine.runner, group, every_width)
    selection_widths = tuple(every_width) if ran else ()

    engine.reset_step_counters()
    report = WarmUpReport(
        time.perf_counter() - start, requests, tuple(buckets), tuple(widths), chunked, selection_widths
    )
    logger.info(
        "warm-up: %.1f s, %d requests; selection kernels at widths %s",
        report.seconds,
        report.requests,
        ",".join(map(str, selection_widths)) or "none",
    )
    return report


def _chunked_prompt_tokens(engine: LLMEngine, step_budget: int) -> int:
    """A prompt one page past the step's token budget (so it prefills in two chunks), or 0 when
    prefill is not chunked (``step_budget`` 0) or the context or the KV pool cannot hold it."""
    page_size = engine.config.page_size
    tokens = step_budget + page_size
    pages = -(-(tokens + DECODE_TOKENS) // page_size) * engine.model_config.num_kv_heads
    fits = tokens + DECODE_TOKENS <= engine.max_context and pages <= engine.pool.num_pages
    return tokens if step_budget and fits else 0


def _table_widths(engine: LLMEngine) -> list[int]:
    """The runner's page-table width buckets (powers of two from 8, :data:`WIDTH_STEP` at most)
    that a request of that many pages fits: in the model's context with :data:`DECODE_TOKENS`
    new tokens, and in the KV pool."""
    page_size, heads = engine.config.page_size, engine.model_config.num_kv_heads
    widths, width = [], MIN_WIDTH
    while (
        width <= WIDTH_STEP
        and width * page_size <= engine.max_context
        and width * heads <= engine.pool.num_pages
    ):
        widths.append(width)
        width *= 2
    return widths


def _batch_buckets(max_batch_size: int) -> list[int]:
    """One batch size per batch bucket the runner can pad to
    (:meth:`~lil_sparse.engine.model_runner.ModelRunner.batch_bucket`) with at most
    ``max_batch_size`` requests: each bucket's size, or ``max_batch_size`` for the last bucket
    when it is larger (12 requests pad to 16)."""
    counts = range(1, max_batch_size + 1)
    return sorted({min(ModelRunner.batch_bucket(count), max_batch_size) for count in counts})


def _prompt(tokens: int, engine: LLMEngine) -> list[int]:
    """``tokens`` fixed token ids spread over the vocabulary (any ids do: EOS is ignored)."""
    vocab = engine.model_config.vocab_size
    return [(1 + 7919 * i) % vocab for i in range(max(tokens, 1))]


def _options(
    policy: str, budget_tokens: int, dense_layers: int = 0, new_tokens: int = DECODE_TOKENS
) -> RequestOptions:
    """Greedy, ``new_tokens`` tokens whatever they are (EOS ignored), under ``policy``."""
    return RequestOptions(
        sampling=SamplingOptions(),
        stopping=StoppingOptions(max_new_tokens=new_tokens, ignore_eos=True),
        sparse=SparseOptions(policy=policy, budget_tokens=budget_tokens, dense_layers=dense_layers),
    )


def _run(engine: LLMEngine, round_name: str, prompts: list[list[int]], options: list[RequestOptions]) -> int:
    """Run one round to completion, at most ``max_waiting`` requests at a time (the queue takes
    no more); raise if any request failed. Returns the round's request count."""
    group = max(1, engine.config.max_waiting)
    for first in range(0, len(prompts), group):
        try:
            reports = engine.generate(prompts[first : first + group], options[first : first + group])
        except Exception as error:  # a refused request: the engine's own limits
            raise RuntimeError(f"warm-up ({round_name}) failed: {error}") from error
        for report in reports:
            if report.finish_reason == FinishReason.ERROR:
                raise RuntimeError(f"warm-up ({round_name}) failed: {report.error}")
    return len(prompts)
