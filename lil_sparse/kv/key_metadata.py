"""One layer's page key metadata, as the decode append kernels update it."""

from __future__ import annotations

from typing import NamedTuple

import torch


class KeyMetadata(NamedTuple):
    """Views of one layer of :class:`lil_sparse.kv.KVCache`'s metadata (see its docstring).

    ``bounds: [pages, 2, D]`` key min and max in the cache dtype (Quest); ``key_sum: [pages, D]``
    float32, the running key sum; ``key_mean: [pages, D]`` in the cache dtype, ``key_sum * (1 /
    page_size)`` rounded once (InfLLM's representative). The kernels that take it check shapes
    and layouts (:func:`check_key_metadata`); building one costs nothing per layer.
    """

    bounds: torch.Tensor
    key_sum: torch.Tensor
    key_mean: torch.Tensor


def check_key_metadata(meta: KeyMetadata, head_dim: int, caller: str) -> None:
    """Raise ``ValueError`` (naming ``caller``) unless ``meta`` is contiguous, shaped for ``head_dim``,
    with a float32 sum and the mean in the bounds' dtype."""
    pages = meta.bounds.shape[0]
    if meta.bounds.shape != (pages, 2, head_dim) or meta.key_sum.shape != (pages, head_dim):
        raise ValueError(
            f"{caller}: key metadata shaped {[tuple(t.shape) for t in meta]} for head_dim {head_dim}"
        )
    if meta.key_mean.shape != (pages, head_dim):
        raise ValueError(f"{caller}: key_mean {tuple(meta.key_mean.shape)}, want ({pages}, {head_dim})")
    if meta.key_sum.dtype != torch.float32 or meta.key_mean.dtype != meta.bounds.dtype:
        raise ValueError(f"{caller}: key_sum must be float32 and key_mean in the bounds' dtype")
    if not all(t.is_contiguous() for t in meta):
        raise ValueError(f"{caller}: key_bounds, key_sum and key_mean must be contiguous")
