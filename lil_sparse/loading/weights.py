"""Put a state dict (Hugging Face names) into a fresh :class:`CausalLM` without a random init."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from lil_sparse.models.config import ModelConfig
from lil_sparse.models.transformer import CausalLM

# Keys some checkpoints carry that our model computes instead.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_model(config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]]) -> CausalLM:
    """Build the model from ``(name, tensor)`` pairs; the tensors are used as is (their dtype/device).

    Raises ValueError naming the tensor when one is missing, unexpected or the wrong shape.
    """
    # Meta device: no memory is allocated and no random init runs; assign=True swaps in the tensors.
    with torch.device("meta"):
        model = CausalLM(config)
    expected = {name: tensor.shape for name, tensor in model.state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if name.endswith(_IGNORED_SUFFIXES) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue  # a tied checkpoint may still store lm_head; the embedding is the one we use
        if name not in expected:
            raise ValueError(f"weights: unexpected tensor {name!r} for a {config.architecture} model")
        if tensor.shape != expected[name]:
            raise ValueError(
                f"weights: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name])}"
            )
        state[name] = tensor
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ValueError(f"weights: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    model.requires_grad_(False)
    return model
