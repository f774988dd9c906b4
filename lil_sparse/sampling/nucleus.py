"""Top-k then top-p filtering by per-row thresholds, without sorting the vocabulary (CUDA).

:func:`filter_by_thresholds` composes two row-wise kernels: a top-k mask of the logits, then a
top-p renormalisation of the softmax of what the mask kept (so top-p measures the row's own
top-k mass, as :func:`~lil_sparse.sampling.sampler.filter_top_k_top_p` does). On CUDA the kernels
are FlashInfer 0.6.6's (:func:`flashinfer_kernels`); :data:`TORCH_RULES` states their rule in
PyTorch, so the composition runs and is tested on CPU and the GPU test checks the kernels
against it.

What FlashInfer 0.6.6 keeps (read in the v0.6.6 tag of flashinfer-ai/flashinfer):

- ``flashinfer.sampling.top_k_mask_logits(logits, top_k)`` (``flashinfer/sampling.py``; kernel
  ``RadixTopKMaskLogitsKernel_MultiCTA`` in ``include/flashinfer/topk.cuh``, launched by
  ``csrc/renorm.cu:top_k_mask_logits``): the pivot is the row's exact k-th largest value (a
  radix select over the float's order-preserving bits, counts of equal values included); the
  kernel keeps ``logit >= pivot`` and writes ``-inf`` elsewhere, so every value tied with the
  k-th is kept (more than k tokens at a tie). ``k >= V`` copies the row. ``k == 0`` is not
  "keep all": the select finds no bucket and the pivot becomes a NaN, so the whole row turns
  ``-inf`` -- :func:`filter_by_thresholds` passes ``V`` for our 0. ``top_k`` is cast to int32.
  float32, float16, bfloat16. A row of 151,936 float32 is split over 3 CTAs on an H200 (as many
  as its shared memory needs, independent of the batch) that meet at spin barriers in a 1 MiB
  state buffer cached per device (``_get_cache_buf``, zeroed at the first call, reset by the
  kernel at its end); the counts are integers, so the result is exact and does not depend on
  the split or the batch.
- ``flashinfer.sampling.top_p_renorm_probs(probs, top_p)`` (``flashinfer/sampling.py``; kernel
  ``TopPRenormProbKernel`` in ``include/flashinfer/sampling.cuh``, via ``TopPRenormProb``): one
  CTA per row (1024 threads from sm80 on), float32 only (the wrapper casts). A ternary search
  on the probability value keeps ``low`` with ``f(low) >= p`` and ``high`` with ``f(high) < p``,
  ``f(x) = sum(probs[probs > x])`` (block sums in float32), until one distinct value lies in
  ``(low, high]``; it returns ``probs / f(low)`` where ``probs > low``, else 0. So a token
  ``x`` is kept iff the mass of the strictly larger probabilities is ``< p``: for distinct
  values exactly our nucleus (the most likely token always stays, ``p > 0``), while a value
  tied across the boundary is kept whole (ours keeps the tied tokens that sort first). ``p``
  is compared with absolute sums, so ``probs`` must sum to 1 (they are a softmax here). ``p >=
  1`` only renormalises every probability (a zero probability stays 0, so such rows are not
  masked by :func:`filter_by_thresholds`). Compiled with ``-use_fast_math`` (denormal
  probabilities count as 0; they never reach a nucleus).
- Both: no host sync (the host side reads device attributes and launches; the wrappers only
  allocate their outputs with ``torch.empty_like``), block reductions and radix counts are
  deterministic, and each row reads only its own ``top_k`` / ``top_p``. Nothing in them stops a
  CUDA graph capture once the state buffer exists (the first call, made eagerly, creates it;
  tests/gpu/test_nucleus_gpu.py captures and replays one); the engine samples outside its
  graphs anyway. The shared state buffer means two top-k masks must not run concurrently on two
  streams of one device.

Ties are not rare in the engine: its logits come from a bfloat16 ``lm_head`` (8 significant
bits, steps of 0.125 between 16 and 32), so a top-k of 20 or 40 often ends inside a run of equal
logits, and FlashInfer then keeps the whole run where the sort keeps the first tokens of it.

All of this is read from the source; the ``k == 0`` row and the tie behaviour are stated from
the kernels' code, and the GPU test checks the kernels against :data:`TORCH_RULES` (ties
included for top-k).

The sampling module of FlashInfer is JIT-compiled at its first use unless the JIT cache package
is installed.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import torch

FLASHINFER_AVAILABLE = importlib.util.find_spec("flashinfer") is not None


@dataclass(frozen=True)
class ThresholdKernels:
    """The two row-wise kernels :func:`filter_by_thresholds` composes.

    mask_top_k:   ``(logits [B, V] float32, k [B] int32 in [1, V]) -> [B, V] float32``, the
                  logits ``>=`` the row's k-th largest, ``-inf`` elsewhere.
    renorm_top_p: ``(probs [B, V] float32 summing to 1 per row, top_p [B] float32) -> [B, V]``
                  float32, positive exactly where the mass of the strictly larger probabilities
                  is ``< top_p`` (every positive probability where ``top_p >= 1``).
    """

    mask_top_k: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    renorm_top_p: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def filter_by_thresholds(
    scaled: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, kernels: ThresholdKernels
) -> torch.Tensor:
    """Set logits outside each row's top-k, then outside its top-p nucleus, to -inf.

    scaled: [B, V] float32 logits (already divided by temperature).
    top_k:  [B] int64, 0 keeps all. top_p: [B] float32 in (0, 1], 1.0 keeps all.
    Returns [B, V] float32: the rule of :func:`~lil_sparse.sampling.sampler.filter_top_k_top_p`
    (top-p over the row's renormalised top-k mass, the most likely token always stays, a row
    with neither filter comes back unchanged, each row uses only its own settings), except that
    a value tied across the top-k or nucleus boundary is kept whole, and sums round in another
    order (a nucleus boundary within float32 rounding of ``top_p`` may fall one token apart).
    No sort, no host sync: the two kernels, a softmax and two elementwise passes.
    """
    vocab_size = scaled.shape[-1]
    # 0 means "keep all" here but "mask all" to FlashInfer's kernel.
    k = torch.where(top_k > 0, top_k, vocab_size).clamp(max=vocab_size).to(torch.int32)  # [B]
    masked = kernels.mask_top_k(scaled.contiguous(), k)  # [B, V], the row's top-k candidates
    probs = masked.softmax(dim=-1)  # [B, V], renormalised over the candidates
    kept = kernels.renorm_top_p(probs, top_p.contiguous()) > 0  # [B, V]
    # Rows without top-p keep every candidate, even one whose probability underflows to 0.
    outside = ~kept & (top_p < 1.0).unsqueeze(1)
    return masked.masked_fill_(outside, float("-inf"))


def _top_k_mask_rule(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """FlashInfer's ``top_k_mask_logits`` rule: keep ``logits >= `` the k-th largest value."""
    vocab_size = logits.shape[-1]
    index = (k.long().clamp(1, vocab_size) - 1).unsqueeze(1)  # [B, 1]
    kth = logits.sort(dim=-1, descending=True).values.gather(1, index)  # [B, 1]
    return logits.masked_fill(logits < kth, float("-inf"))


def _top_p_renorm_rule(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """FlashInfer's ``top_p_renorm_probs`` rule: keep a positive probability while the mass of
    the strictly larger ones is ``< top_p`` (all where ``top_p >= 1``), renormalised."""
    descending = probs.sort(dim=-1, descending=True).values  # [B, V]
    running = descending.cumsum(dim=-1)
    # How many probabilities are strictly larger than each token's (its tie group's first rank).
    larger = torch.searchsorted(descending.neg().contiguous(), probs.neg().contiguous())  # [B, V]
    mass_larger = torch.where(larger > 0, running.gather(1, (larger - 1).clamp(min=0)), 0.0)
    all_rows = (top_p >= 1.0).unsqueeze(1)
    kept = (probs > 0) & ((mass_larger < top_p.unsqueeze(1)) | all_rows)
    kept_probs = torch.where(kept, probs, 0.0)
    return kept_probs / kept_probs.sum(dim=-1, keepdim=True)


TORCH_RULES = ThresholdKernels(mask_top_k=_top_k_mask_rule, renorm_top_p=_top_p_renorm_rule)


@functools.cache
def flashinfer_kernels() -> ThresholdKernels:
    """FlashInfer 0.6.6's kernels (imported on the first call; raises ``ImportError`` without
    FlashInfer)."""
    from flashinfer.sampling import top_k_mask_logits, top_p_renorm_probs

    return ThresholdKernels(mask_top_k=top_k_mask_logits, renorm_top_p=top_p_renorm_probs)


def threshold_filter_available(scaled: torch.Tensor) -> bool:
    """Whether :func:`filter_by_thresholds` can run ``scaled`` on FlashInfer's kernels: a CUDA
    tensor and FlashInfer importable."""
    return scaled.is_cuda and FLASHINFER_AVAILABLE
