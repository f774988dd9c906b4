"""Put a state dict (Hugging Face names) into a fresh :class:`CausalLM` without a random init."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch

from lil_sparse.models.config import ModelConfig
from lil_sparse.models.transformer import CausalLM

# Keys some checkpoints carry that our model computes instead.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
# The torch.nn.init functions that nn.Linear and nn.Embedding call from reset_parameters.
_INIT_FUNCTIONS = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_")


@contextmanager
def _skip_parameter_init() -> Iterator[None]:
    """Make ``torch.nn.init``'s in-place initialisers no-ops while the model is built.

    Every parameter is replaced by a checkpoint tensor right after, so a random init is wasted
    work; worse, on the meta device ``normal_`` (nn.Embedding's init) runs a Python meta kernel
    whose first call imports torch's reference decompositions: 2-3 s per process. This is what
    transformers' ``no_init_weights`` does. Not thread-safe: nothing else builds modules while
    a model loads.
    """
    saved = {name: getattr(torch.nn.init, name) for name in _INIT_FUNCTIONS}

    def keep(tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return tensor

    for name in _INIT_FUNCTIONS:
        setattr(torch.nn.init, name, keep)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(torch.nn.init, name, function)


def build_model(config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]]) -> CausalLM:
    """Build the model from ``(name, tensor)`` pairs; the tensors are used as is (their dtype/device).

    Raises ValueError naming the tensor when one is missing, unexpected or the wrong shape.
    """
    # Meta device: no memory is allocated; assign=True swaps in the tensors.
    with torch.device("meta"), _skip_parameter_init():
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
