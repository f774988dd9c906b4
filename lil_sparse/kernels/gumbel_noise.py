"""The sampler's counter-based Gumbel noise (:mod:`lil_sparse.sampling.noise`) computed inside a
Triton kernel, where it is needed, instead of in about twenty elementwise int64 passes over a
``[B, V]`` tensor.

The same integer hash, step for step (int64 arithmetic that never overflows: values below
2^32, multipliers below 2^31), the same 23-bit uniforms ``(2k + 1) / 2^24`` and the same
``-log(-log(u))`` in float32. The integers and the uniforms are exact; the two logarithms are
Triton's, which may differ from PyTorch's in the last bit of a float32.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Globals a @triton.jit function reads must be tl.constexpr (Triton refuses plain ints when it
# compiles for a GPU; its CPU interpreter takes them).
MASK32 = tl.constexpr(0xFFFFFFFF)
GOLDEN32 = tl.constexpr(0x9E3779B9)
UNIFORM_BITS = tl.constexpr(23)


@triton.jit
def mix32(values):
    """:func:`lil_sparse.sampling.noise._mix32_` of int64 ``values`` in ``[0, 2^32)``."""
    values = ((values ^ (values >> 16)) * 0x21F0AAAD) & MASK32
    values = ((values ^ (values >> 15)) * 0x735A2D97) & MASK32
    return values ^ (values >> 15)


@triton.jit
def row_key(seed, position):
    """:func:`lil_sparse.sampling.noise.row_keys` of one row's int64 ``seed`` (in ``[0, 2^63)``)
    and ``position``."""
    key = mix32((seed >> 32) & MASK32)
    key = mix32(key ^ (seed & MASK32))
    return mix32(key ^ (position & MASK32))


@triton.jit
def gumbel_at(key, index):
    """float32 Gumbel noise of the vocabulary entries ``index`` (int64, below 2^31) for a row's
    ``key`` (:func:`row_key`): :func:`lil_sparse.sampling.noise.gumbel_noise`'s values."""
    spread = (index * (GOLDEN32 & 0xFFFF) + (((index * (GOLDEN32 >> 16)) & 0xFFFF) << 16)) & MASK32
    hashed = mix32((spread + key) & MASK32)
    odd = (hashed >> (32 - UNIFORM_BITS - 1)) | 1
    uniform = odd.to(tl.float32) * (2.0**-24)
    return -tl.log(-tl.log(uniform))
