"""The seam between the model and the KV cache: the model computes q/k/v, an ``AttentionFn`` attends."""

from __future__ import annotations

from typing import Protocol

import torch


class AttentionFn(Protocol):
    """Attention for one layer over the flattened tokens of a batch.

    The model calls this once per layer with the new tokens' projections; the implementation owns
    everything about context: it stores k/v (the engine's paged KV cache), picks which cached pages
    each query sees (sparse policies) and knows where each sequence starts. The model never sees
    sequence boundaries.

    Args:
        layer_index: which decoder layer, 0-based.
        q: [T, num_heads, head_dim], post-RoPE.
        k: [T, num_kv_heads, head_dim], post-RoPE, contiguous (the cache stores post-RoPE keys).
        v: [T, num_kv_heads, head_dim] with a unit inner stride; the fused model passes a view
            into its QKV output (rows ``(Hq + 2 Hkv) * D`` apart), and an implementation whose
            kernels need dense values copies them itself.
    Returns:
        o: [T, num_heads, head_dim], same dtype as ``q``. Query head ``i`` reads KV head
        ``i // (num_heads // num_kv_heads)`` (the Hugging Face GQA convention), scaled by
        ``1 / sqrt(head_dim)``.
    """

    def __call__(
        self, layer_index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor: ...


class RotatingAttentionFn(AttentionFn, Protocol):
    """An :class:`AttentionFn` that can also apply RoPE itself (the engine's decode step, which
    rotates the keys on their way into the cache in one kernel,
    :mod:`lil_sparse.kernels.rotary_append`). The fused model calls :meth:`rotate_and_attend`,
    where the attention has it, instead of rotating q and k and calling the attention.

    Args:
        layer_index: which decoder layer, 0-based.
        qk: [T, num_heads + num_kv_heads, head_dim], pre-RoPE query then key heads ("rotate half"
            layout); any token stride, heads and dims contiguous (a slice of the QKV output).
        q_heads: num_heads.
        cos, sin: float32 [T, head_dim // 2], the tokens' angles.
        v: as for :class:`AttentionFn`.
    Returns:
        o as :class:`AttentionFn` returns it, equal bit for bit to
        ``self(layer_index, *rotary_qk(qk, q_heads, cos, sin), v)``
        (:func:`lil_sparse.kernels.fused_layers.rotary_qk`).
    """

    def rotate_and_attend(
        self,
        layer_index: int,
        qk: torch.Tensor,
        q_heads: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor: ...


class AppendingAttentionFn(RotatingAttentionFn, Protocol):
    """A :class:`RotatingAttentionFn` that can also let the model write a layer's rotated keys
    and values into the cache itself (the engine's decode step; the fused model does it for one
    CUDA token inside its QKV projection kernel, :func:`lil_sparse.kernels.gemv.gemv_rmsnorm_rope_append`).

    ``append_target(layer_index)`` returns ``(k_cache, v_cache, write_slots)``: the layer's
    caches ``[pages, 1, page_size, D]`` and ``[T, num_kv_heads] int64`` slots
    (``page * page_size + offset``) for the new tokens, or None when the model must go through
    :meth:`rotate_and_attend` this time. After writing there, the model calls
    ``attend_appended(layer_index, q)`` with the post-RoPE ``q: [T, num_heads, head_dim]``; it
    returns what :meth:`rotate_and_attend` would.
    """

    def append_target(self, layer_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None: ...

    def attend_appended(self, layer_index: int, q: torch.Tensor) -> torch.Tensor: ...
