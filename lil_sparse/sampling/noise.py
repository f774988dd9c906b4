"""Counter-based random noise for sampling: a hash of (seed, position, vocabulary index).

A row's noise depends on nothing but its own seed and position, so a request samples the same
tokens alone or inside any batch, at any row. Everything runs on the device in int64 arithmetic
that never overflows: values stay below 2^32 and every product below 2^49 (32-bit times 16-bit).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive vocabulary indices apart
# Uniforms carry 23 random bits, as (2k + 1) / 2^24: exactly representable in float32 and
# strictly inside (0, 1), so -log(-log(u)) is always finite.
_UNIFORM_BITS = 23


def _multiply_mod_2_32(values: torch.Tensor, constant: int) -> torch.Tensor:
    """``values * constant mod 2^32`` for int64 ``values`` in [0, 2^32), split into 16-bit
    halves of the constant so no int64 product overflows."""
    low, high = constant & 0xFFFF, constant >> 16
    return (values * low + (((values * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(values: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser (a bijection with full avalanche) on int64 in [0, 2^32)."""
    values = values ^ (values >> 16)
    values = _multiply_mod_2_32(values, 0x85EBCA6B)
    values = values ^ (values >> 13)
    values = _multiply_mod_2_32(values, 0xC2B2AE35)
    return values ^ (values >> 16)


def row_keys(seed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row.

    seed:      [B] int64 in [0, 2^63).
    positions: [B] int64, the sequence position of the token being sampled.
    Returns    [B] int64 in [0, 2^32).
    """
    seed_low, seed_high = seed & _MASK32, (seed >> 32) & _MASK32
    key = _mix32(_mix32(seed_high) ^ seed_low)
    return _mix32(key ^ (positions & _MASK32))


def uniform_noise(seed: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniforms in (0, 1), one per (row, vocabulary index).

    seed, positions: [B] int64. Returns [B, V] float32.
    """
    keys = row_keys(seed, positions).unsqueeze(1)  # [B, 1]
    index = torch.arange(vocab_size, device=seed.device, dtype=torch.int64).unsqueeze(0)  # [1, V]
    hashed = _mix32((_multiply_mod_2_32(index, _GOLDEN32) + keys) & _MASK32)  # [B, V]
    hashed = _mix32(hashed ^ _mix32(keys ^ 0x5BD1E995))  # second round decorrelates nearby keys
    odd = ((hashed >> (32 - _UNIFORM_BITS)) << 1) | 1  # [B, V] in [1, 2^24)
    return odd.to(torch.float32) * (2.0**-24)


def gumbel_noise(seed: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))``: argmax(logits + noise) samples softmax(logits).

    seed, positions: [B] int64. Returns [B, V] float32, finite.
    """
    return -torch.log(-torch.log(uniform_noise(seed, positions, vocab_size)))
