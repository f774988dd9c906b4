"""``CausalLM``: our own Llama/Qwen2 decoder over flattened (varlen) batches, no KV cache inside."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from lil_sparse.models.attention_fn import AttentionFn
from lil_sparse.models.config import ModelConfig
from lil_sparse.models.layers import DecoderLayer, RMSNorm
from lil_sparse.models.rope import inverse_frequencies, rotary_cos_sin


class DecoderStack(nn.Module):
    """Embeddings, decoder layers and the final norm (HF's ``model.`` prefix)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, index) for index in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """A Llama or Qwen2 causal language model.

    Parameter names are the Hugging Face ones (``model.layers.0.self_attn.q_proj.weight``,
    ``lm_head.weight``...), so ``load_state_dict`` takes a HF safetensors state dict unchanged. With
    tied embeddings there is no ``lm_head``: logits use ``model.embed_tokens.weight``.

    There is no batch dimension and no padding: a batch is the concatenation of its sequences'
    new tokens, and the ``AttentionFn`` knows which token belongs to which sequence.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = DecoderStack(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )
        # A plain attribute, not a buffer: module.to(bfloat16) must not round the frequencies,
        # and construction under a meta device must still give real values. Moved lazily in forward.
        self._inv_freq = inverse_frequencies(config)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        """Run the decoder.

        Args:
            input_ids: int64 [T], the new tokens of every sequence, concatenated.
            positions: int64 [T], each token's position within its own sequence.
            attention: the per-layer attention (KV cache and sparsity live there).
        Returns:
            hidden: [T, hidden_size] in the model dtype, after the final RMSNorm.
        """
        if input_ids.dim() != 1 or positions.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and positions must both be 1-D [T]; got {tuple(input_ids.shape)} "
                f"and {tuple(positions.shape)}"
            )
        if self._inv_freq.device != positions.device:
            self._inv_freq = self._inv_freq.to(positions.device)
        cos, sin = rotary_cos_sin(positions, self._inv_freq)
        hidden = self.model.embed_tokens(input_ids)
        if self.fused and hidden.is_cuda:
            return self._forward_fused(hidden, cos, sin, attention)
        for layer in self.model.layers:
            hidden = layer(hidden, cos, sin, attention)
        return self.model.norm(hidden)

    @property
    def fused(self) -> bool:
        return all(layer.fused for layer in self._decoder_layers())

    def fuse(self) -> None:
        """Concatenate QKV and gate/up weights and use the Triton fused kernels on CUDA
        (:mod:`lil_sparse.models.layers`). Call it once the model is on its device and dtype."""
        for layer in self._decoder_layers():
            if not layer.fused:
                layer.fuse()

    def _decoder_layers(self) -> list[DecoderLayer]:
        return cast(list[DecoderLayer], list(self.model.layers))

    def _forward_fused(
        self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: AttentionFn
    ) -> torch.Tensor:
        from lil_sparse.kernels.fused_layers import add_rmsnorm

        residual = None
        for layer in self._decoder_layers():
            hidden, residual = layer.forward_fused(hidden, residual, cos, sin, attention)
        norm = self.model.norm
        return add_rmsnorm(hidden, residual, norm.weight, norm.eps)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: [N, hidden_size] (usually the last token of each sequence) -> float32 [N, vocab_size].
        A fused model on CUDA runs one row through the GEMV of :mod:`lil_sparse.kernels.gemv`."""
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        if self.fused and hidden.is_cuda:
            from lil_sparse.kernels.linear import linear

            return linear(hidden, weight).float()
        return F.linear(hidden, weight).float()
