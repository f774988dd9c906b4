"""Rotary position embeddings (RoPE), in the Hugging Face "rotate half" layout.

The two rotated coordinates of a pair are ``i`` and ``i + head_dim / 2`` (not adjacent), which is
how HF Llama/Qwen2 checkpoints are laid out. GGUF files of llama arch store q/k rows permuted to
the adjacent-pair layout; the GGUF loader undoes that, so this module has one layout only.
"""

from __future__ import annotations

import math

import torch

from lil_sparse.models.config import ModelConfig, RopeScaling


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """The rotation speed of each coordinate pair.

    Returns: float32 [head_dim // 2] on the CPU (explicit, so it is real even when the model is
    built under a ``meta`` device context).
    """
    exponents = torch.arange(0, config.head_dim, 2, dtype=torch.int64, device="cpu").float() / config.head_dim
    inv_freq = 1.0 / (config.rope_theta**exponents)
    if config.rope_scaling is not None:
        inv_freq = _llama3_scale(inv_freq, config.rope_scaling)
    return inv_freq


def _llama3_scale(inv_freq: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    # Same formula as Meta's reference and transformers' _compute_llama3_parameters.
    old_context = scaling.original_max_position_embeddings
    low_freq_wavelen = old_context / scaling.low_freq_factor
    high_freq_wavelen = old_context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (old_context / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotary_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines for each token's position.

    Args:
        positions: int64 [T], position of each token within its sequence.
        inv_freq: float32 [head_dim // 2], on the same device.
    Returns:
        cos, sin: float32 [T, head_dim // 2].
    """
    # float32 even for bf16 models: angles at positions of several thousand need the precision.
    angles = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` by its tokens' angles.

    Args:
        x: [T, heads, head_dim], any float dtype.
        cos, sin: float32 [T, head_dim // 2].
    Returns:
        [T, heads, head_dim], same dtype as ``x``, contiguous.
    """
    half = x.shape[-1] // 2
    # Cast the angles to x's dtype before multiplying, as transformers does, so bf16 results match.
    cos = cos.to(x.dtype)[:, None, :]
    sin = sin.to(x.dtype)[:, None, :]
    first, second = x[..., :half], x[..., half:]
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)
