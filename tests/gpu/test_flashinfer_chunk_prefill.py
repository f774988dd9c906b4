"""FlashInfer's paged chunk prefill against the PyTorch chunk path, on a random bf16 paged cache.

Each case packs several chunks that continue a prompt, after rows the kernel must leave alone (a
fresh prompt's): prefixes and lengths that end mid-page, on a page boundary and at one token.
Every request's pages are scattered through the pool, per KV head, with a spare page past its
end; every slot no request wrote holds NaN, so reading one (a wrong page, a slot past ``kv_len``)
poisons the output. One ``plan()`` serves two layers with different KV.

Reference: :func:`chunk_attention` on the KV gathered from the pages, in fp32 from the same bf16
inputs. Tolerances as in ``conftest.py``: max ``|diff| <= 3e-2``, relative L2 ``<= 1e-2``.
"""

from __future__ import annotations

import pytest
import torch

from lil_sparse.attention.chunked_prefill import chunk_attention, gather_prompt_kv
from lil_sparse.attention.flashinfer_chunk_prefill import ChunkSpan, PagedChunkPrefill
from lil_sparse.attention.reference import ReferenceBackend
from lil_sparse.config import EngineConfig
from lil_sparse.engine.prefill_attention import ChunkRows, PrefillAttention
from lil_sparse.kv import KVCache
from lil_sparse.policies import get_policy
from lil_sparse.testing.attention_shapes import attention_model_config

pytestmark = pytest.mark.gpu
pytest.importorskip("flashinfer")

PAGE_SIZE = 16
KV_HEADS = 2
LAYERS = 2
LEADING_ROWS = 5  # packed rows before the chunks: the kernel must not write them
UNTOUCHED = 7.0
# (prompt_start, chunk length) of the chunks one plan() covers.
CASES = {
    "one-token": [(1, 1)],
    "mid-page": [(16, 1), (5, 11), (33, 16), (7, 40)],
    "page-aligned": [(16, 16), (64, 32)],
    "long": [(1000, 513), (2047, 1), (300, 77)],
}


def paged_cache(chunks: list[tuple[int, int]], head_dim: int, seed: int):
    """A NaN-filled bf16 cache where each chunk's request wrote random K/V for positions
    ``0 .. start + length - 1`` into its own scattered pages. Returns ``(kv, spans, rows,
    spare)``: ``spare: [7] int64`` pool pages no chunk holds."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    held = [-(-(start + length) // PAGE_SIZE) + 1 for start, length in chunks]  # one spare page
    num_pages = KV_HEADS * sum(held) + 7
    kv = KVCache(LAYERS, num_pages, PAGE_SIZE, head_dim, torch.bfloat16, torch.device("cuda"))
    kv.k.fill_(float("nan"))
    kv.v.fill_(float("nan"))
    pool = torch.randperm(num_pages, device="cuda", generator=gen)
    spans, row, used = [], LEADING_ROWS, 0
    for (start, length), pages in zip(chunks, held, strict=True):
        page_ids = pool[used : used + KV_HEADS * pages].view(KV_HEADS, pages)
        used += KV_HEADS * pages
        positions = torch.arange(start + length, device="cuda")
        slots = (page_ids[:, positions // PAGE_SIZE] * PAGE_SIZE + positions % PAGE_SIZE).t()  # [end, Hkv]
        for layer in range(LAYERS):
            keys = torch.randn(slots.shape[0], KV_HEADS, head_dim, device="cuda", generator=gen)
            values = torch.randn(keys.shape, device="cuda", generator=gen)
            kv.write(layer, slots, keys, values, update_metadata=False)
        spans.append(ChunkSpan(row, start, length, page_ids))
        row += length
    return kv, spans, row, pool[used:]


def fused_queries(rows: int, heads: int, head_dim: int, seed: int) -> torch.Tensor:
    """``[rows, heads, head_dim]`` bf16 queries as a strided view of a fused QKV output."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(rows, (heads + 2 * KV_HEADS) * head_dim, device="cuda", generator=gen).bfloat16()
    return qkv[:, : heads * head_dim].view(rows, heads, head_dim)


def assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    diff = (got.float() - want).abs()
    assert not torch.isnan(got).any()
    assert diff.max().item() <= 3e-2
    assert (diff.norm() / want.norm()).item() <= 1e-2


@pytest.fixture(scope="module")
def workspace() -> torch.Tensor:
    return torch.zeros(128 * 1024 * 1024, dtype=torch.uint8, device="cuda")


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 4, 6])
@pytest.mark.parametrize("case", sorted(CASES))
def test_paged_chunks_match_the_torch_chunk_path(case, group, head_dim, workspace):
    chunks = CASES[case]
    kv, spans, rows, _spare = paged_cache(chunks, head_dim, seed=group * head_dim + len(chunks))
    planner = PagedChunkPrefill(workspace, PAGE_SIZE)
    planner.plan(spans, group, head_dim, torch.bfloat16, torch.bfloat16)
    for layer in range(LAYERS):
        q = fused_queries(rows, KV_HEADS * group, head_dim, seed=layer)
        out = torch.full(q.shape, UNTOUCHED, dtype=torch.bfloat16, device="cuda")
        planner.run(q, kv.k[layer], kv.v[layer], out)
        assert bool((out[:LEADING_ROWS] == UNTOUCHED).all())
        for span in spans:
            keys, values = gather_prompt_kv(kv.k[layer], kv.v[layer], span.page_ids, span.prompt_end)
            assert not torch.isnan(keys).any() and not torch.isnan(values).any()
            chunk_rows = slice(span.row_start, span.row_start + span.length)
            want = chunk_attention(q[chunk_rows].float(), keys.float(), values.float())
            assert_close(out[chunk_rows], want)
    assert planner.plans == 1


def test_plan_rejects_what_the_kernel_cannot_run(workspace):
    _kv, spans, _rows, _spare = paged_cache([(20, 10)], 64, seed=0)
    planner = PagedChunkPrefill(workspace, PAGE_SIZE)
    short = ChunkSpan(spans[0].row_start, 20, 10, spans[0].page_ids[:, :1])  # 30 tokens, 1 page
    with pytest.raises(ValueError, match="needs 2 pages"):
        planner.plan([short], 4, 64, torch.bfloat16, torch.bfloat16)
    with pytest.raises(ValueError, match="prompt_start >= 1"):
        planner.plan([ChunkSpan(0, 0, 10, spans[0].page_ids)], 4, 64, torch.bfloat16, torch.bfloat16)
    with pytest.raises(RuntimeError, match="plan"):
        planner.run(
            torch.zeros(1, 4, 64), torch.zeros(1, 1, 16, 64), torch.zeros(1, 1, 16, 64), torch.zeros(1, 4, 64)
        )


def flashinfer_backend(group: int, head_dim: int):
    from lil_sparse.attention.flashinfer_backend import FlashInferBackend

    config = EngineConfig(model="unused", device="cuda", backend="flashinfer", page_size=PAGE_SIZE)
    model_config = attention_model_config(group * KV_HEADS, KV_HEADS, head_dim, num_layers=LAYERS)
    return FlashInferBackend(config, model_config)


@pytest.mark.parametrize("group", [1, 6])
def test_prefill_call_on_flashinfer_equals_the_reference_backend(group):
    """A whole prefill call: one fresh prompt (ragged kernel) and two continuing chunks (paged
    kernel), H2O observing one of them. Outputs agree within the tolerance; the page mass H2O
    records comes from the same queries and keys either way (it stays in torch), so it agrees to
    fp32 summation order (``index_add_`` on CUDA): rtol 1e-5."""
    head_dim, fresh_len = 64, LEADING_ROWS
    kv, spans, rows, spare = paged_cache([(37, 20), (16, 45)], head_dim, seed=group)
    fresh_pages = spare[:KV_HEADS].view(KV_HEADS, 1)  # the fresh prompt's one page per KV head
    h2o = get_policy("h2o")
    chunk_rows = [ChunkRows(0, fresh_len, 0, fresh_len, fresh_pages)]
    for span, observed in zip(spans, (False, True), strict=True):
        token_pages = span.page_ids[:, torch.arange(span.prompt_end, device="cuda") // PAGE_SIZE]
        chunk_rows.append(
            ChunkRows(
                span.row_start,
                span.row_start + span.length,
                span.prompt_start,
                span.prompt_end,
                span.page_ids,
                observer=h2o if observed else None,
                token_pages=token_pages if observed else None,
            )
        )
    slots = torch.cat(
        [
            (c.page_ids[:, pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE).t()
            for c in chunk_rows
            for pos in [torch.arange(c.prompt_start, c.prompt_end, device="cuda")]
        ]
    )
    gen = torch.Generator(device="cuda").manual_seed(11)
    k = torch.randn(rows, KV_HEADS, head_dim, device="cuda", generator=gen).bfloat16()
    v = torch.randn(rows, KV_HEADS, head_dim, device="cuda", generator=gen).bfloat16()
    kv.attention_mass.zero_()
    results = {}
    for name, backend in (
        ("reference", ReferenceBackend()),
        ("flashinfer", flashinfer_backend(group, head_dim)),
    ):
        cache = KVCache(LAYERS, kv.num_pages, PAGE_SIZE, head_dim, torch.bfloat16, torch.device("cuda"))
        for source, target in ((kv.k, cache.k), (kv.v, cache.v), (kv.attention_mass, cache.attention_mass)):
            target.copy_(source)
        attention = PrefillAttention(cache, backend, slots, chunk_rows, update_metadata=False)
        outs = [
            attention(layer, fused_queries(rows, KV_HEADS * group, head_dim, layer), k, v)
            for layer in range(LAYERS)
        ]
        results[name] = (torch.stack(outs), cache.attention_mass.clone())
        if name == "flashinfer":
            assert backend.chunk_prefill().plans == 1  # one plan for both layers and both chunks
    ref_out, ref_mass = results["reference"]
    out, mass = results["flashinfer"]
    assert_close(out, ref_out.float())
    assert ref_mass.sum().item() > 0
    torch.testing.assert_close(mass, ref_mass, rtol=1e-5, atol=1e-7)
