"""The selection kernels at every page-table width, without requests.

The start-up warm-up (:mod:`lil_sparse.engine.warm_up`) runs real requests at the width buckets
up to :data:`~lil_sparse.engine.model_runner.WIDTH_STEP` pages, every policy together (and each
alone only at the narrowest). A long decode reaches the wider buckets later (one every
``WIDTH_STEP`` pages: 4096 tokens at page size 16), and each (width, a group alone or beside
others, eager or in a graph) is a Triton specialization of a selecting policy's two kernels per
layer of its own (the radix select's block layout,
:func:`lil_sparse.kernels.radix_select.block_layout`; the scores' slots per program; the page
list's row mapping; the group tensors' strides). Built the first time a request reached it,
inside a step, it stopped every stream of the engine: after the warm-up, one request crossing
4096 and 8192 tokens waited 242 and 370 ms for a token under Quest, 265 + 307 and 404 + 395 ms
under InfLLM (H200, 2026-12-01 09:28 UTC, tiny Llama, fresh Triton cache, an ad hoc script;
sink, H2O and full: at most 5 ms); with the widths past 256 pages run here, eager and captured,
none waited more than 5 ms (09:49), and running every width also covers a lone selecting request
at the narrower ones (``tests/gpu/test_long_widths_gpu.py``, 09:52).

:func:`compile_selection_widths` runs both kernels of every selecting policy (registry flag
``selects_per_layer``), as a step runs them (:func:`~lil_sparse.engine.step_attention.select_fused`
on a :class:`~lil_sparse.engine.step_attention.PolicyGroup` built by the page manager, so the
tensors and their strides are an eager step's, and on its copy for a CUDA graph
(:func:`~lil_sparse.engine.cuda_graphs.static_group`: unit-stride columns, which Triton compiles
as variants of their own), on one sequence's rows at each width, alone in its step and beside
another sequence: rows of no request, reading block-table slot 0's page ids (every entry a valid
page) and writing a page list of their own.
"""

from __future__ import annotations

import torch

from lil_sparse.engine.cuda_graphs import static_group
from lil_sparse.engine.model_runner import WIDTH_STEP, ModelRunner
from lil_sparse.engine.page_manager import BatchRow
from lil_sparse.engine.step_attention import PolicyGroup, select_fused
from lil_sparse.kernels import fused_selection_enabled
from lil_sparse.policies import POLICIES, PolicyBatch, SelectionPolicy


def width_buckets(runner: ModelRunner) -> list[int]:
    """Every page-table width bucket the runner can use (:meth:`ModelRunner.width_bucket`): powers
    of two from 8 to :data:`WIDTH_STEP` pages, then multiples of it, up to the block table's width."""
    max_pages = runner.pages.table.max_pages_per_seq
    held = [1 << k for k in range(WIDTH_STEP.bit_length())]
    held += [*range(WIDTH_STEP + 1, max_pages + 1, WIDTH_STEP), max_pages]
    return sorted({runner.width_bucket(pages) for pages in held if pages <= max_pages})


def compile_selection_widths(runner: ModelRunner, group_size: int, widths: list[int]) -> int:
    """Run every selecting policy's selection kernels at each of ``widths`` (module docstring),
    for queries of ``group_size`` heads per KV head. Returns how many selections ran (0 where
    the fused selection does not run: off CUDA, or without Triton). Raises what a kernel raises."""
    kv = runner.kv
    if not widths or not fused_selection_enabled(kv.k, kv.head_dim):
        return 0
    shape = (runner.num_kv_heads, group_size, kv.head_dim)
    queries = torch.zeros(shape, dtype=kv.k.dtype, device=runner.device)
    selecting = [policy for policy in POLICIES.values() if policy.selects_per_layer]
    ran = 0
    for width in widths:
        for policy in selecting:
            for step_index in (0, 1):  # alone (every row of its step), and the step's second
                for captured in (False, True):
                    select_at_width(runner, policy, width, step_index, queries, captured)
                    ran += 1
    return ran


def select_at_width(
    runner: ModelRunner,
    policy: SelectionPolicy,
    width: int,
    step_index: int,
    queries: torch.Tensor,
    captured: bool = False,
) -> tuple[PolicyBatch, torch.Tensor, torch.Tensor]:
    """One fused selection of ``policy`` in the runner's last layer for a sequence of no request
    in block-table slot 0, holding ``width`` pages and attending half of them, as the
    ``step_index``-th sequence of a step (0: the step's only one), on the group's tensors as an
    eager step has them or (``captured``) as a CUDA graph's copy has them. ``queries: [Hkv, G,
    D]``. Returns the batch and the page list it wrote (``indptr: [2 Hkv + 1]``, ``indices``)."""
    heads, device = runner.num_kv_heads, runner.device
    count = width // 2  # older pages, then the newest
    row = BatchRow(slot=0, held=width, select_count=count, sink_pages=1, recent_pages=1, dense_layers=0)
    batch, _ = runner.pages.policy_batch_of([row], width=width, step_index=[step_index])
    indptr = torch.arange(0, 2 * heads + 1, dtype=torch.int32, device=device) * count
    indices = torch.full((2 * heads * count,), -1, dtype=torch.int32, device=device)
    alone = step_index == 0
    group = PolicyGroup(policy, batch, 0, 0, all_rows=alone, sole=alone)
    if captured:
        group = static_group(group)
    select_fused(runner.num_layers - 1, queries, group, runner.kv, indptr, indices)
    return group.batch, indptr, indices
