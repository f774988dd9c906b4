"""Counter-based random noise for sampling: a hash of (seed, position, vocabulary index).

A row's noise depends on nothing but its own seed and position, so a request samples the same
tokens alone or inside any batch, at any row. Everything runs on the device in int64 arithmetic
that never overflows: hashed values stay below 2^32 and every multiplier below 2^31, so each
product is below 2^63.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN32 = 0x9E3779B9  # 2^32 / golden ratio: spreads consecutive vocabulary indices apart
# Uniforms carry 23 random bits, as (2k + 1) / 2^24: exactly representable in float32 and
# strictly inside (0, 1), so -log(-log(u)) is always finite.
_UNIFORM_BITS = 23


def _mix32_(values: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (a bijection with low avalanche bias), in place on int64 values in
    [0, 2^32). Constants from Chris Wellons' hash-prospector ("lowbias32" family); both are
    below 2^31, which keeps the int64 products exact."""
    values.bitwise_xor_(values >> 16).mul_(0x21F0AAAD).bitwise_and_(_MASK32)
    values.bitwise_xor_(values >> 15).mul_(0x735A2D97).bitwise_and_(_MASK32)
    return values.bitwise_xor_(values >> 15)


def row_keys(seed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row.

    seed:      [B] int64 in [0, 2^63).
    positions: [B] int64, the sequence position of the token being sampled.
    Returns    [B] int64 in [0, 2^32).
    """
    key = _mix32_((seed >> 32) & _MASK32)
    key = _mix32_(key.bitwise_xor_(seed & _MASK32))
    return _mix32_(key.bitwise_xor_(positions & _MASK32))


def uniform_noise(seed: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniforms in (0, 1), one per (row, vocabulary index).

    seed, positions: [B] int64. Returns [B, V] float32.
    """
    keys = row_keys(seed, positions).unsqueeze(1)  # [B, 1]
    # index * golden mod 2^32, split so the product stays exact: index < 2^31, halves < 2^16.
    index = torch.arange(vocab_size, device=seed.device, dtype=torch.int64)  # [V]
    spread = (index * (_GOLDEN32 & 0xFFFF) + (((index * (_GOLDEN32 >> 16)) & 0xFFFF) << 16)) & _MASK32
    hashed = _mix32_((spread.unsqueeze(0) + keys).bitwise_and_(_MASK32))  # [B, V]
    odd = hashed.bitwise_right_shift_(32 - _UNIFORM_BITS - 1).bitwise_or_(1)  # [B, V] odd, < 2^24
    return odd.to(torch.float32).mul_(2.0**-24)


def gumbel_noise(seed: torch.Tensor, positions: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Standard Gumbel noise ``-log(-log(u))``: argmax(logits + noise) samples softmax(logits).

    seed, positions: [B] int64. Returns [B, V] float32, finite.
    """
    return uniform_noise(seed, positions, vocab_size).log_().neg_().log_().neg_()
