"""The weight and bias the Triton linear kernels take (:mod:`lil_sparse.kernels.gemv`,
:mod:`lil_sparse.kernels.skinny_gemm`): one rule, so the kernels and the dispatch of
:mod:`lil_sparse.kernels.linear` agree on what leaves a layer to PyTorch.
"""

from __future__ import annotations

import torch

MAX_WEIGHT_ELEMENTS = 2**31
"""The kernels' offsets (``row * row_stride + column``) are 32-bit: larger weights stay with
PyTorch."""


def weight_refusal(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why a kernel refuses ``weight`` and ``bias`` for ``x: [M, K]`` (``"weight (4, 9) must be
    [N, 8] with contiguous rows"``), or None: ``weight: [N, K]`` with contiguous rows whose last
    element sits at an offset below :data:`MAX_WEIGHT_ELEMENTS` (a row view of a wider tensor
    counts its stride), ``bias: [N]`` contiguous (the kernels read ``bias[row]`` at unit stride)
    or None, both of x's dtype."""
    k = x.shape[1]
    n = weight.shape[0]
    if weight.shape != (n, k) or weight.stride(1) != 1:
        return f"weight {tuple(weight.shape)} must be [N, {k}] with contiguous rows"
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        bias_dtype = "" if bias is None else f", bias {bias.dtype}"
        return f"x, weight and bias must share a dtype: x {x.dtype}, weight {weight.dtype}{bias_dtype}"
    if bias is not None and bias.shape != (n,):
        return f"bias must be [N] = [{n}], got {tuple(bias.shape)}"
    if bias is not None and not bias.is_contiguous():
        return f"bias must be contiguous, got stride {bias.stride()}"
    span = (n - 1) * weight.stride(0) + k if n else 0
    if span >= MAX_WEIGHT_ELEMENTS:
        return f"a weight spanning {span} elements needs 64-bit offsets; use F.linear"
    return None
