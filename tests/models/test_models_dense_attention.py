"""DenseCausalAttention against torch's scaled_dot_product_attention over a grid of shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lil_sparse.models import DenseCausalAttention
from lil_sparse.models.dense_attention import causal_attention


def sdpa_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torch's own GQA causal attention for one sequence with as many queries as keys."""
    group = q.shape[1] // k.shape[1]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).float(),
        k.repeat_interleave(group, dim=1).transpose(0, 1).float(),
        v.repeat_interleave(group, dim=1).transpose(0, 1).float(),
        is_causal=True,
    )
    return out.transpose(0, 1)


@pytest.mark.parametrize(("num_heads", "num_kv_heads"), [(4, 4), (4, 2), (8, 1), (6, 2)])
@pytest.mark.parametrize("head_dim", [16, 64])
@pytest.mark.parametrize("lengths", [[1], [9], [5, 1, 12]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_sdpa(
    num_heads: int, num_kv_heads: int, head_dim: int, lengths: list[int], dtype: torch.dtype
) -> None:
    generator = torch.Generator().manual_seed(sum(lengths) + num_heads)
    total = sum(lengths)
    q = torch.randn(total, num_heads, head_dim, generator=generator).to(dtype)
    k = torch.randn(total, num_kv_heads, head_dim, generator=generator).to(dtype)
    v = torch.randn(total, num_kv_heads, head_dim, generator=generator).to(dtype)
    out = DenseCausalAttention(lengths)(0, q, k, v)
    assert out.shape == q.shape and out.dtype == dtype
    expected = torch.cat(
        [
            sdpa_reference(*parts)
            for parts in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True)
        ]
    )
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), expected, rtol=tolerance, atol=tolerance)


def test_queries_are_the_last_positions_of_the_keys() -> None:
    """Decoding: 3 new queries over 10 keys equal the last 3 rows of attention over all 10."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(10, 4, 16, generator=generator)
    k = torch.randn(10, 2, 16, generator=generator)
    v = torch.randn(10, 2, 16, generator=generator)
    torch.testing.assert_close(causal_attention(q[-3:], k, v), causal_attention(q, k, v)[-3:])


def test_query_head_reads_kv_head_by_integer_division() -> None:
    """Query head i reads KV head i // (num_heads // num_kv_heads): with one token, o = v of that head."""
    q = torch.randn(1, 6, 8)
    k = torch.randn(1, 3, 8)
    v = torch.arange(3, dtype=torch.float32)[None, :, None].expand(1, 3, 8).contiguous()
    out = DenseCausalAttention()(0, q, k, v)
    assert out[0, :, 0].tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_bad_lengths_raise() -> None:
    with pytest.raises(ValueError, match="sequence_lengths"):
        DenseCausalAttention([3, 0])
    q = torch.randn(5, 2, 4)
    with pytest.raises(ValueError, match="sequence_lengths"):
        DenseCausalAttention([2, 2])(0, q, q, q)
