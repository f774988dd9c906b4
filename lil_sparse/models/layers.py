"""The pieces of a Llama/Qwen2 decoder layer. Parameter names match Hugging Face checkpoints
(``self_attn.q_proj``, ``mlp.gate_proj``, ``input_layernorm``...), so a HF state dict loads as is.

Each piece has two forwards. ``forward`` is the plain PyTorch reference and runs anywhere.
``forward_fused`` (CUDA, after :meth:`DecoderLayer.fuse`) computes the same function with fewer
launches: one QKV and one gate/up matmul over concatenated weights (the separate HF parameters
become views of them, so nothing is stored twice), the Triton kernels of
:mod:`lil_sparse.kernels.fused_layers` for residual add + RMSNorm, RoPE and SiLU-mul, and for a
single token row (a batch-1 decode step) the GEMV of :mod:`lil_sparse.kernels.gemv` in place of
cuBLAS, with SiLU-mul applied by the gate/up GEMV itself.
Moving or casting a module (``.to``, ``.float()``) drops the fusion: call ``fuse`` again after.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lil_sparse.models.attention_fn import AttentionFn
from lil_sparse.models.config import ModelConfig
from lil_sparse.models.rope import apply_rotary


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back, as transformers does."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden], same dtype."""
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def concatenate_into_views(linears: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One weight ``[sum(out), in]`` (and bias) holding the linears' weights, whose parameters
    become views of it: the fused matmul and the HF-named parameters share storage."""
    weight = torch.cat([linear.weight.detach() for linear in linears])
    has_bias = linears[0].bias is not None
    bias = torch.cat([linear.bias.detach() for linear in linears]) if has_bias else None
    start = 0
    for linear in linears:
        end = start + linear.weight.shape[0]
        linear.weight.data = weight[start:end]
        if bias is not None:
            linear.bias.data = bias[start:end]
        start = end
    return weight, bias


class MLP(nn.Module):
    """SwiGLU feed-forward: ``down(silu(gate(x)) * up(x))``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up: torch.Tensor | None = None  # [2 * intermediate, hidden] once fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden]."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    def fuse(self) -> None:
        self.gate_up, _ = concatenate_into_views([self.gate_proj, self.up_proj])

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        from lil_sparse.kernels.linear import gate_up_silu_mul, linear

        if self.gate_up is None:
            raise RuntimeError("call fuse() before forward_fused()")
        down = self.down_proj
        return linear(gate_up_silu_mul(x, self.gate_up), down.weight, down.bias)

    def _apply(self, fn, recurse=True):
        self.gate_up = None  # moved or cast parameters no longer view the fused weight
        return super()._apply(fn, recurse)


class SelfAttention(nn.Module):
    """Projects q/k/v, applies RoPE to q and k, hands them to the ``AttentionFn``, projects the output."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * config.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * config.head_dim, bias=bias)
        self.o_proj = nn.Linear(config.num_heads * config.head_dim, config.hidden_size, bias=False)
        self.qkv: tuple[torch.Tensor, torch.Tensor | None] | None = None  # fused weight, bias

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """x: [T, hidden]; cos, sin: float32 [T, head_dim // 2] -> [T, hidden]."""
        tokens = x.shape[0]
        q = self.q_proj(x).view(tokens, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(tokens, self.num_kv_heads, self.head_dim)
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        o = attention(self.layer_index, q, k, v.contiguous())  # [T, num_heads, head_dim]
        return self.o_proj(o.reshape(tokens, self.num_heads * self.head_dim))

    def fuse(self) -> None:
        self.qkv = concatenate_into_views([self.q_proj, self.k_proj, self.v_proj])

    def forward_fused(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """:meth:`forward` with one QKV matmul and one RoPE kernel for q and k."""
        from lil_sparse.kernels.linear import linear

        if self.qkv is None:
            raise RuntimeError("call fuse() before forward_fused()")
        return self.attend_fused(linear(x, *self.qkv), cos, sin, attention)

    def attend_fused(
        self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """The rest of :meth:`forward_fused` from the fused projection ``qkv: [T, (Hq + 2 Hkv) *
        D]``: RoPE, attention and the output projection -> ``[T, hidden]``."""
        from lil_sparse.kernels.fused_layers import rotary_qk

        tokens = qkv.shape[0]
        rotated_heads = self.num_heads + self.num_kv_heads
        qk = qkv[:, : rotated_heads * self.head_dim].view(tokens, rotated_heads, self.head_dim)
        # A view, not a copy: a decode step writes v straight from here into its cache pages.
        v = qkv[:, rotated_heads * self.head_dim :].view(tokens, self.num_kv_heads, self.head_dim)
        # A RotatingAttentionFn applies RoPE on the way into the KV cache. getattr, not isinstance
        # of the runtime-checkable Protocol: that costs 5-11 us per layer of every eager forward.
        rotate_and_attend = getattr(attention, "rotate_and_attend", None)
        if rotate_and_attend is not None:
            o = rotate_and_attend(self.layer_index, qk, self.num_heads, cos, sin, v)
        else:
            q, k = rotary_qk(qk, self.num_heads, cos, sin)
            o = attention(self.layer_index, q, k, v)
        return self.project_output(o)

    def project_output(self, o: torch.Tensor) -> torch.Tensor:
        """The output projection of the attention's ``o: [T, Hq, D]`` -> ``[T, hidden]``."""
        from lil_sparse.kernels.linear import linear

        return linear(
            o.reshape(o.shape[0], self.num_heads * self.head_dim), self.o_proj.weight, self.o_proj.bias
        )

    def _apply(self, fn, recurse=True):
        self.qkv = None  # moved or cast parameters no longer view the fused weight
        return super()._apply(fn, recurse)


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention, then MLP."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config, layer_index)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """x: [T, hidden] -> [T, hidden]."""
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attention)
        return x + self.mlp(self.post_attention_layernorm(x))

    def fuse(self) -> None:
        self.self_attn.fuse()
        self.mlp.fuse()

    @property
    def fused(self) -> bool:
        return self.self_attn.qkv is not None and self.mlp.gate_up is not None

    def forward_fused(
        self,
        x: torch.Tensor,
        residual: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention: AttentionFn,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The same block with the residual carried apart (vLLM's layout): returns ``(branch
        output, residual)``; the next layer (or the final norm) adds them inside its RMSNorm
        kernel. ``residual`` is ``None`` for the first layer, whose input is the residual: the
        returned residual is then ``x`` itself, updated in place (pass a tensor the caller no
        longer needs; :class:`~lil_sparse.models.transformer.CausalLM` passes its embedding
        output). The input norm runs inside the QKV projection where that is one kernel (one CUDA
        row: :func:`~lil_sparse.kernels.linear.rmsnorm_linear`, which for later layers returns
        ``x + residual`` in a new tensor); when the attention also lets the model write the
        layer's K/V itself (:class:`~lil_sparse.models.attention_fn.AppendingAttentionFn`, a decode
        step updating no key metadata), RoPE and the append run in that kernel's epilogue too
        (:func:`~lil_sparse.kernels.linear.rmsnorm_qkv_rope_append`). The post-attention norm
        updates the residual in place. ``x, residual: [T, hidden]`` in the model dtype."""
        from lil_sparse.kernels.fused_layers import add_rmsnorm
        from lil_sparse.kernels.gemv import RopeAppend
        from lil_sparse.kernels.linear import rmsnorm_linear, rmsnorm_qkv_rope_append

        attn = self.self_attn
        if attn.qkv is None:
            raise RuntimeError("call fuse() before forward_fused()")
        norm = self.input_layernorm
        # An AppendingAttentionFn lets one kernel project, rotate and append (a CUDA token row).
        target = getattr(attention, "append_target", None)
        target = None if target is None else target(attn.layer_index)
        fused = None
        if target is not None:
            k_cache, v_cache, slots = target
            rope = RopeAppend(cos, sin, slots, k_cache, v_cache, attn.num_heads, attn.num_kv_heads)
            fused = rmsnorm_qkv_rope_append(x, residual, norm.weight, norm.eps, *attn.qkv, rope)
        if fused is not None:
            q, residual = fused
            attended = attn.project_output(attention.attend_appended(attn.layer_index, q))  # type: ignore[attr-defined]
        else:
            qkv, residual = rmsnorm_linear(x, residual, norm.weight, norm.eps, *attn.qkv)
            attended = attn.attend_fused(qkv, cos, sin, attention)
        norm = self.post_attention_layernorm
        normed = add_rmsnorm(attended, residual, norm.weight, norm.eps)
        return self.mlp.forward_fused(normed), residual
