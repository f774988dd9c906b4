"""Fused decoder-layer kernels against their PyTorch references, and the fused model forward
against the reference forward.

The kernels round every intermediate the way PyTorch does, so RoPE and SiLU-mul agree exactly
up to one-ulp ``exp`` differences (bf16: ``rtol 8e-3``, one ulp), and RMSNorm up to the order of
its fp32 sum (``rtol 8e-3`` in bf16, ``1e-5`` in fp32). Triton's CPU interpreter rounds bf16 by
truncation, so there bf16 results may sit up to three ulps off (three roundings in a row). The
whole model: logits within ``atol 2e-2`` (bf16) of the reference forward, the same greedy token.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from lil_sparse.kernels.fused_layers import add_rmsnorm, rotary_qk, silu_mul
from lil_sparse.models.config import ModelConfig
from lil_sparse.models.dense_attention import DenseCausalAttention
from lil_sparse.models.layers import RMSNorm
from lil_sparse.models.rope import apply_rotary, rotary_cos_sin
from lil_sparse.models.transformer import CausalLM

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.bfloat16, torch.float32]
BF16_ULPS = 1 if DEVICE == "cuda" else 3  # the interpreter's truncations add up over three roundings
TOL = {
    torch.bfloat16: {"rtol": 8e-3 * BF16_ULPS, "atol": 1e-2 * BF16_ULPS},
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
}


def randn(*shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(DEVICE, dtype)


@pytest.mark.parametrize(
    ("dtype", "tokens", "hidden"), list(itertools.product(DTYPES, [1, 5], [64, 96, 576]))
)
def test_add_rmsnorm_matches_reference(dtype, tokens, hidden):
    x, residual = randn(tokens, hidden, dtype=dtype, seed=1), randn(tokens, hidden, dtype=dtype, seed=2)
    norm = RMSNorm(hidden, 1e-6).to(DEVICE, dtype)
    norm.weight.data = randn(hidden, dtype=dtype, seed=3)
    summed = x + residual
    want = norm(summed)
    got_residual = residual.clone()
    got = add_rmsnorm(x, got_residual, norm.weight, norm.eps)
    if DEVICE == "cuda":  # the residual add rounds like PyTorch's (the CPU interpreter truncates)
        assert torch.equal(got_residual, summed)
    torch.testing.assert_close(got_residual, summed, **TOL[dtype])
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(add_rmsnorm(x, None, norm.weight, norm.eps), norm(x), **TOL[dtype])


@pytest.mark.parametrize(
    ("dtype", "q_heads", "k_heads", "head_dim"),
    [(d, 4, 2, 64) for d in DTYPES]
    + [
        (torch.bfloat16, 9, 3, 64),
        (torch.bfloat16, 12, 2, 128),
    ],
)
def test_rotary_qk_matches_reference(dtype, q_heads, k_heads, head_dim):
    tokens = 3
    # A slice of a fused QKV output: q and k heads, then v heads that RoPE must not touch.
    qkv = randn(tokens, (q_heads + 2 * k_heads) * head_dim, dtype=dtype, seed=4)
    qk = qkv[:, : (q_heads + k_heads) * head_dim].view(tokens, q_heads + k_heads, head_dim)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    cos, sin = rotary_cos_sin(torch.tensor([0, 17, 4000]).to(DEVICE), inv_freq.to(DEVICE))
    q, k = rotary_qk(qk, q_heads, cos, sin)
    want_q = apply_rotary(qk[:, :q_heads], cos, sin)
    want_k = apply_rotary(qk[:, q_heads:], cos, sin)
    assert q.is_contiguous() and k.is_contiguous()
    torch.testing.assert_close(q, want_q, **TOL[dtype])
    torch.testing.assert_close(k, want_k, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_matches_reference(dtype):
    gate_up = randn(4, 2 * 1536, dtype=dtype, seed=5) * 3
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_mul(gate_up), F.silu(gate) * up, **TOL[dtype])


def small_config() -> ModelConfig:
    return ModelConfig(
        architecture="qwen2",
        vocab_size=97,
        hidden_size=128,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        rope_theta=1e4,
        rms_norm_eps=1e-6,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        attention_bias=True,
    )


@pytest.mark.parametrize("tokens", [11, 1])  # one token: on CUDA every projection is the GEMV
def test_fused_model_forward_matches_reference(tokens):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if DEVICE == "cuda" else torch.float32
    model = CausalLM(small_config()).to(DEVICE, dtype).eval()
    ids = torch.randint(0, 97, (tokens,)).to(DEVICE)
    positions = torch.arange(tokens).to(DEVICE)
    with torch.inference_mode():
        want = model.compute_logits(model(ids, positions, DenseCausalAttention()))
        state = {k: v.clone() for k, v in model.state_dict().items()}
        model.fuse()
        assert model.fused
        cos, sin = rotary_cos_sin(positions, model._inv_freq.to(DEVICE))
        hidden = model._forward_fused(model.model.embed_tokens(ids), cos, sin, DenseCausalAttention())
        got = model.compute_logits(hidden)
    # Fusing keeps the HF-named parameters (views of the fused weights) and their values.
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    tol = {"rtol": 0, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(got, want, **tol)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    model.float()  # moving or casting drops the fusion: the reference path again
    assert not model.fused
