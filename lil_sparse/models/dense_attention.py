"""Plain dense causal attention: the CPU reference every fast attention path is compared against."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class DenseCausalAttention:
    """An :class:`~lil_sparse.models.attention_fn.AttentionFn` without a KV cache.

    Every call must carry the whole of each sequence (prompt and everything generated so far), so
    decoding re-runs the full sequence each step: slow, but obviously correct. The flattened tokens
    are split into sequences by ``sequence_lengths``; with None, all tokens are one sequence.
    Scores and softmax run in float32 whatever the input dtype, as transformers' eager attention does.
    """

    def __init__(self, sequence_lengths: Sequence[int] | None = None) -> None:
        if sequence_lengths is not None and any(length <= 0 for length in sequence_lengths):
            raise ValueError(f"sequence_lengths: every length must be positive, got {list(sequence_lengths)}")
        self.sequence_lengths = None if sequence_lengths is None else list(sequence_lengths)

    def __call__(self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q: [T, num_heads, head_dim]; k, v: [T, num_kv_heads, head_dim] -> o: [T, num_heads, head_dim]."""
        total = q.shape[0]
        lengths = self.sequence_lengths if self.sequence_lengths is not None else [total]
        if sum(lengths) != total:
            raise ValueError(f"sequence_lengths: they sum to {sum(lengths)} but the batch has {total} tokens")
        outputs = [
            causal_attention(q_part, k_part, v_part)
            for q_part, k_part, v_part in zip(
                q.split(lengths), k.split(lengths), v.split(lengths), strict=True
            )
        ]
        return torch.cat(outputs, dim=0)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention for one sequence whose last ``Q`` tokens are the queries.

    Args:
        q: [Q, num_heads, head_dim], the last Q positions of the sequence.
        k, v: [K, num_kv_heads, head_dim] with K >= Q, the whole sequence.
    Returns:
        o: [Q, num_heads, head_dim], dtype of ``q``.
    """
    num_queries, num_heads, head_dim = q.shape
    num_keys, num_kv_heads, _ = k.shape
    group = num_heads // num_kv_heads
    # repeat_interleave puts query head i on KV head i // group, the HF convention.
    keys = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, K, D]
    values = v.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [H, K, D]
    queries = q.float().transpose(0, 1)  # [H, Q, D]
    scores = queries @ keys.transpose(1, 2) / math.sqrt(head_dim)  # [H, Q, K]
    query_positions = torch.arange(num_keys - num_queries, num_keys, device=q.device)
    key_positions = torch.arange(num_keys, device=q.device)
    future = key_positions[None, :] > query_positions[:, None]  # [Q, K]
    scores = scores.masked_fill(future, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return (weights @ values).transpose(0, 1).to(q.dtype)  # [Q, H, D]
