"""FlashInfer decode and prefill against the reference backend, layer by layer, on random KV.

Every policy chooses the pages (its own ``keep_scores`` / ``select_slots`` on the random cache),
then both backends attend those pages. Tolerances are in ``conftest.py``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lil_sparse.attention.layout import DecodeLayout
from lil_sparse.attention.reference import ReferenceBackend
from lil_sparse.config import EngineConfig
from lil_sparse.engine.page_manager import compact_rows
from lil_sparse.kv import KVCache
from lil_sparse.policies import POLICIES, PolicyBatch
from lil_sparse.testing.attention_shapes import attention_model_config

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PAGE_SIZE = 16
HEADS = 2  # KV heads per sequence in the policy batch (InfLLM shares pages across them)


def make_backend(
    group: int,
    head_dim: int,
    tensor_cores: bool,
    split_calls: bool = True,
    concurrent_split: bool = True,
    fast_decode: bool = False,
):
    """A FlashInfer backend of ``HEADS`` KV heads. ``fast_decode`` off by default: whether a slot of
    few rows runs the Triton decode depends on the GPU's SM count, and these tests are about
    FlashInfer's kernels (a test of the Triton path asks for it)."""
    from lil_sparse.attention.flashinfer_backend import FlashInferBackend

    config = EngineConfig(model="unused", device="cuda", backend="flashinfer", page_size=PAGE_SIZE)
    model_config = attention_model_config(group * HEADS, HEADS, head_dim)
    return FlashInferBackend(
        config,
        model_config,
        use_tensor_cores=tensor_cores,
        split_calls=split_calls,
        concurrent_split=concurrent_split,
        fast_decode=fast_decode,
    )


def random_rows(rows: int, held: int, group: int, head_dim: int, seed: int):
    """A bf16 cache where each row holds ``held`` random pages; returns (kv, table, last_len, q)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    num_pages = rows * held + 5
    kv = KVCache(1, num_pages, PAGE_SIZE, head_dim, torch.bfloat16, torch.device("cuda"))
    table = torch.randperm(num_pages, device="cuda", generator=gen)[: rows * held].view(rows, held).int()
    last_len = torch.randint(1, PAGE_SIZE + 1, (rows,), device="cuda", generator=gen)
    offsets = torch.arange(PAGE_SIZE, device="cuda")
    in_page = torch.ones(rows, held, PAGE_SIZE, dtype=torch.bool, device="cuda")
    in_page[:, -1] = offsets.unsqueeze(0) < last_len.unsqueeze(1)
    slots = (table.long().unsqueeze(2) * PAGE_SIZE + offsets)[in_page].view(-1, 1)  # [T, 1]
    keys = torch.randn(slots.shape[0], 1, head_dim, device="cuda", generator=gen)
    kv.write(0, slots, keys, torch.randn(keys.shape, device="cuda", generator=gen))
    kv.attention_mass.uniform_(generator=gen)
    q = torch.randn(rows, group, head_dim, device="cuda", generator=gen).bfloat16()
    return kv, table, last_len.int(), q


def policy_pages(name: str, kv: KVCache, table: torch.Tensor, q: torch.Tensor, budget: int):
    """``(page_ids [rows, width] int32, counts)`` the policy attends for the newest token."""
    rows, held = table.shape
    full = lambda v: torch.full((rows,), v, dtype=torch.long, device="cuda")  # noqa: E731
    select = min(held, budget)
    batch = PolicyBatch(
        rows=torch.arange(rows, device="cuda"),
        table=table,
        held=full(held),
        select_count=full(select),
        sink_pages=full(1),
        recent_pages=full(2),
        dense_layers=full(0),
        max_select=select,
        num_kv_heads=HEADS,
    )
    policy = POLICIES[name]
    if name == "full":
        return table, [held] * rows
    if policy.evicts:
        compacted, _ = compact_rows(table, policy.keep_scores(batch, kv), full(select), full(held))
        return compacted[:, :select].contiguous(), [select] * rows
    older = table.gather(1, policy.select_slots(0, q, batch, kv)[:, : select - 1])
    return torch.cat([older, table[:, -1:]], dim=1), [select] * rows


GRID = list(itertools.product(POLICIES, [1, 4, 8], [64, 128], [False, True]))


@pytest.mark.parametrize(("policy", "group", "head_dim", "tensor_cores"), GRID)
def test_decode_matches_reference_for_every_policy(policy, group, head_dim, tensor_cores):
    backend = make_backend(group, head_dim, tensor_cores)
    rows, held, budget = 2 * HEADS * 3, 40, 9
    kv, table, last_len, q = random_rows(rows, held, group, head_dim, seed=group + head_dim)
    page_ids, counts = policy_pages(policy, kv, table, q.float(), budget)
    layout = DecodeLayout.build(counts, last_len, tuple(last_len.tolist()))
    backend.begin_decode_step([layout])
    out = backend.decode(0, q, kv.k[0], kv.v[0], page_ids, layout)
    ref = ReferenceBackend().decode(0, q, kv.k[0], kv.v[0], page_ids, layout)
    assert out.shape == ref.shape == (rows, group, head_dim) and out.dtype == torch.bfloat16
    diff = (out.float() - ref.float()).abs()
    assert diff.max().item() <= 3e-2
    assert (diff.norm() / ref.float().norm()).item() <= 1e-2


@pytest.mark.parametrize("tensor_cores", [False, True])
def test_rewriting_indices_after_one_plan_equals_a_fresh_plan(tensor_cores):
    backend = make_backend(4, 128, tensor_cores)
    rows, held, budget = 16, 64, 32
    kv, table, last_len, q = random_rows(rows, held, 4, 128, seed=7)
    gen = torch.Generator(device="cuda").manual_seed(3)

    def pick() -> torch.Tensor:
        order = torch.rand(rows, held - 1, device="cuda", generator=gen).argsort(1)[:, : budget - 1]
        return torch.cat([table[:, :-1].gather(1, order), table[:, -1:]], dim=1)

    first, second = pick(), pick()
    layout = DecodeLayout.build([budget] * rows, last_len, tuple(last_len.tolist()))
    backend.begin_decode_step([layout])
    out_first = backend.decode(0, q, kv.k[0], kv.v[0], first, layout).clone()
    rewritten = backend.decode(0, q, kv.k[0], kv.v[0], second, layout).clone()
    backend.begin_decode_step([layout])
    fresh = backend.decode(0, q, kv.k[0], kv.v[0], second, layout)
    assert torch.equal(rewritten, fresh)
    assert not torch.equal(out_first, rewritten)  # the rewrite really changed what was read


def test_prefill_matches_reference():
    backend = make_backend(4, 128, False)
    gen = torch.Generator(device="cuda").manual_seed(0)
    cu_seqlens = [0, 5, 133, 300]
    total = cu_seqlens[-1]
    q = torch.randn(total, 4 * HEADS, 128, device="cuda", generator=gen).bfloat16()
    k = torch.randn(total, HEADS, 128, device="cuda", generator=gen).bfloat16()
    v = torch.randn(total, HEADS, 128, device="cuda", generator=gen).bfloat16()
    out = backend.prefill(q, k, v, cu_seqlens)
    ref = ReferenceBackend().prefill(q.float(), k.float(), v.float(), cu_seqlens)
    diff = (out.float() - ref).abs()
    assert diff.max().item() <= 3e-2
    assert (diff.norm() / ref.norm()).item() <= 1e-2


@pytest.mark.parametrize(("group", "tensor_cores"), [(1, False), (4, False), (4, True), (6, True)])
def test_lse_is_base_two_and_gives_the_reference_page_mass(group, tensor_cores):
    """FlashInfer's ``return_lse`` is ``log2 sum exp(scaled scores)``; fed to the fused H2O
    kernel it gives the reference fp32 probability pass's page mass (rtol 1e-3: bf16 attention
    kernels round the lse's inputs differently from the fp32 reference)."""
    from lil_sparse.attention.reference import paged_page_probs, paged_scores
    from lil_sparse.kernels.page_mass import add_page_mass

    backend = make_backend(group, 128, tensor_cores)
    rows, held = 2 * HEADS * 3, 40
    kv, table, last_len, q = random_rows(rows, held, group, 128, seed=group)
    layout = DecodeLayout.build([held] * rows, last_len, tuple(last_len.tolist()))
    backend.begin_decode_step([layout])
    _out, lse = backend.decode_with_lse(0, q, kv.k[0], kv.v[0], table, layout)
    want_lse = torch.logsumexp(paged_scores(q, kv.k[0], table, layout), dim=-1) / math.log(2)
    assert lse is not None and lse.shape == (rows, group)
    torch.testing.assert_close(lse.float(), want_lse, rtol=1e-3, atol=1e-3)
    want = kv.attention_mass.clone()
    want.index_add_(0, table.reshape(-1).long(), paged_page_probs(q, kv.k[0], table, layout).reshape(-1))
    add_page_mass(q, kv.k[0], table, layout.counts, last_len, lse, kv.attention_mass)
    torch.testing.assert_close(kv.attention_mass, want, rtol=1e-3, atol=1e-4)


# (pages per row, last_page_len per row, whether the layout carries a host copy of last_page_len)
PLAN_REUSE_STEPS = [
    ([3, 3, 2, 5, 1, 4], [5, 16, 1, 9, 3, 12], True),  # first plan
    ([3, 3, 2, 5, 1, 4], [6, 16, 2, 10, 4, 13], True),  # same counts, last_page_len changed
    ([3, 3, 2, 5, 1, 4], [6, 16, 2, 10, 4, 13], True),  # nothing changed
    ([3, 4, 2, 5, 1, 4], [7, 1, 3, 11, 5, 14], True),  # row 1 crossed into a new page
    ([3, 4, 2, 5, 1, 4], [8, 2, 4, 12, 6, 15], False),  # same counts, last_page_len only on the device
    ([3, 4, 2, 5, 1, 4], [9, 3, 5, 13, 7, 16], True),  # host copy again after a device-only step
    ([3, 3, 2, 5, 1, 4], [5, 16, 1, 9, 3, 12], True),  # back to the first counts: plans again
    ([3, 3, 2, 5, 1, 4], [5, 16, 1, 9, 3, 12], False),
]


@pytest.mark.parametrize("fast_decode", [False, True], ids=["flashinfer", "triton"])
@pytest.mark.parametrize(
    ("group", "head_dim", "tensor_cores"), [(3, 64, False), (4, 128, False), (4, 128, True), (8, 64, True)]
)
def test_plan_reuse_equals_a_fresh_plan_every_step(group, head_dim, tensor_cores, fast_decode):
    """One backend keeps its plan while page counts stay and only refreshes last_page_len; a new
    backend per step plans from scratch. Same kernel split, so the outputs are bit-identical, and
    both match the reference backend. With ``fast_decode`` the 6 short rows run the Triton decode
    (:mod:`lil_sparse.kernels.paged_decode`), which reads the same refreshed buffers."""
    rows, held = 6, 6
    kv, table, _, _ = random_rows(rows, held, group, head_dim, seed=11)
    # Fill every page completely so any last_page_len reads written keys.
    slots = (table.long().unsqueeze(2) * PAGE_SIZE + torch.arange(PAGE_SIZE, device="cuda")).view(-1, 1)
    gen = torch.Generator(device="cuda").manual_seed(5)
    keys = torch.randn(slots.shape[0], 1, head_dim, device="cuda", generator=gen)
    kv.write(0, slots, keys, torch.randn(keys.shape, device="cuda", generator=gen))
    reused = make_backend(group, head_dim, tensor_cores, fast_decode=fast_decode)
    for step, (counts, last, host) in enumerate(PLAN_REUSE_STEPS):
        q = torch.randn(rows, group, head_dim, device="cuda", generator=gen).bfloat16()
        page_ids = table  # row r reads its first counts[r] pages, every one fully written
        last_dev = torch.tensor(last, dtype=torch.int32, device="cuda")
        layout = DecodeLayout.build(counts, last_dev, tuple(last) if host else ())
        reused.begin_decode_step([layout])
        if fast_decode and reused._slot_of(layout).fast is None:
            pytest.skip(f"{reused.num_sms} SMs: {rows} rows get too few splits for the Triton decode")
        # The Triton decode's key is minus its pages per loop step (step_tiles): 1 for 5 pages.
        assert reused.step_key([layout]) == ((-1,) if fast_decode else (0,)), step
        if fast_decode:
            from lil_sparse.kernels.fast_decode import step_tiles

            slot = reused._slot_of(layout)
            assert slot.fast is not None and slot.fast_tiles == step_tiles(slot.fast.tiles, max(counts))
        out = reused.decode(0, q, kv.k[0], kv.v[0], page_ids, layout).clone()
        fresh = make_backend(group, head_dim, tensor_cores, fast_decode=fast_decode)
        fresh.begin_decode_step([layout])
        expected = fresh.decode(0, q, kv.k[0], kv.v[0], page_ids, layout)
        assert torch.equal(out, expected), step
        ref = ReferenceBackend().decode(0, q, kv.k[0], kv.v[0], page_ids, layout)
        diff = (out.float() - ref.float()).abs()
        assert diff.max().item() <= 3e-2, step
        assert (diff.norm() / ref.float().norm()).item() <= 1e-2, step


@pytest.mark.parametrize(("group", "head_dim"), [(6, 128), (4, 64)])
def test_long_equal_rows_take_the_pipelined_triton_decode(group, head_dim):
    """Two rows of 1100 pages (past one loop step per split at 128 splits x 8 pages) run the
    pipelined Triton decode (``DecodeTiles.pipelined``, :func:`runs_triton`); rows of 1100 and
    600 pages (the longest 1.29x the mean) keep FlashInfer's planned decode. Both match the
    reference backend, as FlashInfer does."""
    rows, held = 2, 1100
    kv, table, last_len, q = random_rows(rows, held, group, head_dim, seed=17)
    for counts in ([held, held], [held, 600]):
        last = [int(x) for x in last_len] if counts[1] == held else [int(last_len[0]), PAGE_SIZE]
        layout = DecodeLayout.build(counts, torch.tensor(last, dtype=torch.int32, device="cuda"), tuple(last))
        backend = make_backend(group, head_dim, tensor_cores=True, fast_decode=True)
        backend.begin_decode_step([layout])
        slot = backend._slot_of(layout)
        if slot.fast is None or slot.fast.tiles.splits < 64:
            pytest.skip(f"{backend.num_sms} SMs: 2 rows get too few splits for the pipelined regime")
        pipelined = counts[1] == held
        assert (slot.fast_tiles is not None and slot.fast_tiles.pipelined) is pipelined, counts
        if pipelined:
            assert backend.step_key([layout]) == (-(slot.fast_tiles.block_pages << 16),)
        out = backend.decode(0, q, kv.k[0], kv.v[0], table, layout)
        ref = ReferenceBackend().decode(0, q, kv.k[0], kv.v[0], table, layout)
        diff = (out.float() - ref.float()).abs()
        assert diff.max().item() <= 3e-2, counts
        assert (diff.norm() / ref.float().norm()).item() <= 1e-2, counts
