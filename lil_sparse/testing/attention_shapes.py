"""A model config that only carries an attention shape, for attention-backend tests and benches."""

from __future__ import annotations

from lil_sparse.models.config import ModelConfig


def attention_model_config(
    num_heads: int, num_kv_heads: int, head_dim: int, num_layers: int = 1, max_positions: int = 8192
) -> ModelConfig:
    """A Llama-shaped ``ModelConfig`` with ``num_heads`` query heads over ``num_kv_heads`` KV heads
    of ``head_dim``; the MLP and vocabulary are token-sized (16), since an attention backend reads
    only the head shape, the layer count and ``max_positions`` (its page-table width)."""
    return ModelConfig(
        architecture="llama",
        vocab_size=16,
        hidden_size=num_heads * head_dim,
        intermediate_size=16,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        rope_theta=1e4,
        rms_norm_eps=1e-6,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        attention_bias=False,
    )
