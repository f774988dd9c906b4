"""Each row's argmax and log-sum-exp over a vocabulary of logits, in two short kernels.

The sampler needs, per row of ``[B, V]`` fp32 logits, the argmax (the greedy token, and the
Gumbel-max sample) and ``log_softmax`` at the chosen token. PyTorch runs ``argmax`` as one
reduction block per row (27.1 us for 8 rows of the 8B shape's 128,256 logits, 8.9 us for one
row of the 1.5B shape's 151,936; H200 profiles of the decode step, 2026-11-30/12-01,
``docs/bench/profile_llama8b_32768_8_full0.txt`` and ``profile_qwen1.5b_4096_1_full0.txt``) and
``log_softmax`` as another full pass, then a gather: about 4 MB of reads taking tens of
microseconds. Here a grid of ``(rows, chunks)`` programs each reduces ``BLOCK`` logits to their
maximum, the first index holding it and ``sum(exp(x - max))``; one program per row then merges
the chunks (the online-softmax merge of Milakov and Gimelshein, 2018).

Returns what ``log_softmax`` at a token needs, as PyTorch computes it
(``aten/src/ATen/native/cuda/SoftMax.cu``: ``x - max - log(sum(exp(x - max)))``): the row's
``max`` and ``log_sum``; so the log-probability of token ``t`` is ``(x[t] - max) - log_sum``
(``-log_sum`` for the argmax itself).

Exactness against the references (:func:`argmax_logsumexp_reference`, ``torch.argmax`` and
``torch.logsumexp``): the argmax and the maximum are exact, including ties (the first index, as
``torch.argmax`` documents) and NaN (the first NaN, and NaN for the maximum and ``log_sum``, as
PyTorch propagates it). A row whose maximum is not finite (all ``-inf``, or holding ``+inf``)
gets ``log_sum`` NaN, as ``log_softmax``'s ``exp(x - max)`` does there. ``log_sum`` adds the same
terms in another order: equal up to float32 rounding (the tests bound it).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.gumbel_noise import gumbel_at, row_key
from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous

BLOCK = 2048
"""Logits per program of the first kernel (8 KiB of fp32): 63 chunks per row at 128,256."""


@triton.jit
def _chunk_max(
    logits_ptr,  # [B, V] float32, rows at row_stride, columns contiguous
    max_ptr,  # [B, C] float32: the chunk's maximum (NaN if it holds one)
    index_ptr,  # [B, C] int64: the first index of that maximum (of the first NaN)
    sum_ptr,  # [B, C] float32: sum(exp(x - max)) over the chunk (0 when max is not finite)
    seed_ptr,  # NOISE: [B] int64 sampling seeds, else unused
    position_ptr,  # NOISE: [B] int64 positions, else unused
    vocab,
    row_stride,
    chunks,
    BLOCK: tl.constexpr,
    NOISE: tl.constexpr,
    PDL: tl.constexpr,
):
    """With ``NOISE`` the logits are ``x + gumbel(seed, position, index)``
    (:mod:`lil_sparse.kernels.gumbel_noise`): the Gumbel-max sample's argmax."""
    wait_for_previous(PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offsets = chunk * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < vocab
    x = tl.load(logits_ptr + row.to(tl.int64) * row_stride + offsets, mask=inside, other=float("-inf"))
    if NOISE:  # -inf (filtered, or past the vocabulary) stays -inf: the noise is finite
        key = row_key(tl.load(seed_ptr + row), tl.load(position_ptr + row))
        x = x + gumbel_at(key, offsets.to(tl.int64))
    nan = x != x
    first_nan = tl.min(tl.where(nan, offsets, vocab), axis=0)
    best = tl.max(tl.where(nan, float("-inf"), x), axis=0)
    first_best = tl.min(tl.where(inside & (x == best), offsets, vocab), axis=0)
    finite = (best != float("-inf")) & (best != float("inf"))
    shift = tl.where(finite, best, 0.0)
    total = tl.where(finite, tl.sum(tl.where(inside, tl.exp(x - shift), 0.0), axis=0), 0.0)
    has_nan = first_nan < vocab
    out = row * chunks + chunk
    tl.store(max_ptr + out, tl.where(has_nan, float("nan"), best))
    tl.store(index_ptr + out, tl.where(has_nan, first_nan, first_best).to(tl.int64))
    tl.store(sum_ptr + out, total)


@triton.jit
def _merge_chunks(
    max_ptr,
    index_ptr,
    sum_ptr,
    token_ptr,  # [B] int64
    row_max_ptr,  # [B] float32 (not RECORD)
    log_sum_ptr,  # [B] float32 (not RECORD)
    record_ptr,  # RECORD: [2, B] float64, the tokens then their log-probabilities (-log_sum)
    rows,
    chunks,
    vocab,
    BLOCK_C: tl.constexpr,
    RECORD: tl.constexpr,
    PDL: tl.constexpr,
):
    """Each row's token and either its maximum and ``log_sum`` or, with ``RECORD``, the host
    record of :func:`greedy_record` instead."""
    wait_for_previous(PDL)
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    inside = c < chunks
    at = row * chunks + c
    best = tl.load(max_ptr + at, mask=inside, other=float("-inf"))
    index = tl.load(index_ptr + at, mask=inside, other=vocab)
    total = tl.load(sum_ptr + at, mask=inside, other=0.0)
    nan = inside & (best != best)
    first_nan = tl.min(tl.where(nan, index, vocab), axis=0)
    row_max = tl.max(tl.where(nan, float("-inf"), best), axis=0)
    first_best = tl.min(tl.where(inside & (best == row_max), index, vocab), axis=0)
    # Chunks whose maximum is -inf add nothing (their sum is 0; exp(-inf - -inf) would be NaN).
    scale = tl.where(best == float("-inf"), 0.0, tl.exp(best - row_max))
    row_sum = tl.sum(tl.where(inside, total * scale, 0.0), axis=0)
    has_nan = first_nan < vocab
    token = tl.where(has_nan, first_nan, first_best)
    tl.store(token_ptr + row, token)
    finite = (row_max != float("-inf")) & (row_max != float("inf"))
    log_sum = tl.where(has_nan, float("nan"), tl.where(finite, tl.log(row_sum), float("nan")))
    if RECORD:
        tl.store(record_ptr + row, token.to(tl.float64))
        tl.store(record_ptr + rows + row, (-log_sum).to(tl.float64))
    else:
        tl.store(row_max_ptr + row, tl.where(has_nan, float("nan"), row_max))
        tl.store(log_sum_ptr + row, log_sum)


# Direct launches once a shape is known: two of the few kernels a graph step launches eagerly.
_CHUNK_MAX = KernelLauncher(_chunk_max)
_MERGE_CHUNKS = KernelLauncher(_merge_chunks)


def argmax_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(argmax [B] int64, max [B] float32, log_sum [B] float32)`` of ``logits: [B, V]`` float32
    (columns contiguous, ``V >= 1``), where ``log_sum = log(sum(exp(x - max)))`` per row (so
    ``logsumexp = max + log_sum``). Two launches, no host sync; any device Triton runs on.
    Raises ValueError for other dtypes or shapes. Reference: :func:`argmax_logsumexp_reference`.
    """
    _check("argmax_logsumexp", logits)
    return _launch(logits, None)


def greedy_record(logits: torch.Tensor, out: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's greedy token of ``logits: [B, V]`` float32, as :func:`argmax_logsumexp` finds
    it, as ``token [B] int64`` and ``record [2, B] float64``: the tokens, then their
    log-probabilities (``-log_sum``, ``log_softmax`` at the argmax), both written by the same two
    launches. The record is what the engine takes to the host every step
    (:meth:`~lil_sparse.sampling.sampler.Sampler.sample_record`), which otherwise took a
    negation, two casts and a stack. ``out``: a contiguous ``[2, B]`` float64 tensor to write the
    record into (returned as the record), on the logits' device or in pinned host memory, which
    a CUDA kernel writes through the unified address space (zero-copy: no copy to the host
    after it; :func:`kernel_writes_pinned` checks a device allows it). Reference:
    :func:`greedy_record_reference`. Raises ValueError for other dtypes or shapes."""
    _check("greedy_record", logits)
    rows = logits.shape[0]
    if out is None:
        out = torch.empty((2, rows), dtype=torch.float64, device=logits.device)
    elif out.shape != (2, rows) or out.dtype != torch.float64 or not out.is_contiguous():
        raise ValueError(
            f"greedy_record: out must be a contiguous [2, {rows}] float64, got {tuple(out.shape)}"
        )
    return _launch(logits, None, out)[0], out


def kernel_writes_pinned(device: torch.device) -> bool:
    """Whether :func:`greedy_record`'s kernel, run on the CUDA ``device``, writes a record into
    pinned host memory correctly: one greedy record of a known row written to a pinned tensor
    and read back after a synchronize (False where the launch refuses the pointer: pinned
    memory not mapped into the device's address space). Synchronises with ``device``."""
    logits = torch.zeros(1, 3, device=device)
    logits[0, 1] = 1.0
    host = torch.full((2, 1), float("nan"), dtype=torch.float64, pin_memory=True)
    try:
        greedy_record(logits, out=host)
        torch.cuda.synchronize(device)
    except (ValueError, RuntimeError):
        return False
    logprob = torch.log_softmax(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), 0)[1].item()
    return host[0, 0].item() == 1.0 and abs(host[1, 0].item() - logprob) < 1e-6


def greedy_record_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`greedy_record` from :func:`argmax_logsumexp_reference`."""
    token, _, log_sum = argmax_logsumexp_reference(logits)
    return token, torch.stack((token.to(torch.float64), log_sum.neg().to(torch.float64)))


def gumbel_argmax(scaled: torch.Tensor, seed: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The Gumbel-max sample of each row: ``argmax(scaled + gumbel_noise(seed, positions, V))``
    ``[B] int64`` for ``scaled: [B, V]`` float32 logits (divided by the temperature, filtered
    entries -inf; columns contiguous) and ``seed, positions: [B] int64`` on its device, with the
    noise made inside the argmax's first kernel (:mod:`lil_sparse.kernels.gumbel_noise`) instead
    of a ``[B, V]`` tensor. ``scaled`` is not written. Ties go to the first index, as
    :func:`argmax_logsumexp`. The reference is :func:`lil_sparse.sampling.noise.gumbel_noise`
    then the argmax; the noise's logarithms are Triton's, equal to PyTorch's up to the last bit
    of a float32. Raises ValueError for other dtypes or shapes."""
    _check("gumbel_argmax", scaled)
    rows = scaled.shape[0]
    for name, tensor in (("seed", seed), ("positions", positions)):
        if tensor.shape != (rows,) or tensor.dtype != torch.int64 or tensor.device != scaled.device:
            raise ValueError(f"gumbel_argmax: {name} must be [{rows}] int64 on {scaled.device}")
    return _launch(scaled, (seed.contiguous(), positions.contiguous()))[0]


def _check(name: str, logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.dtype != torch.float32 or logits.shape[1] < 1 or logits.stride(1) != 1:
        raise ValueError(
            f"{name}: logits must be [B, V >= 1] float32 with contiguous columns, "
            f"got {tuple(logits.shape)} {logits.dtype}"
        )


def _launch(
    logits: torch.Tensor,
    noise: tuple[torch.Tensor, torch.Tensor] | None,
    record: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two kernels over ``logits`` (plus the Gumbel noise of ``noise = (seed, positions)``).
    With ``record`` ([2, B] float64) the second writes it instead of the maximum and ``log_sum``,
    and returns ``(token, record, record)``."""
    rows, vocab = logits.shape
    token = torch.empty(rows, dtype=torch.int64, device=logits.device)
    if record is None:
        row_max = torch.empty(rows, dtype=torch.float32, device=logits.device)
        log_sum = torch.empty(rows, dtype=torch.float32, device=logits.device)
    else:
        row_max = log_sum = record
    if rows == 0:
        return token, row_max, log_sum
    chunks = triton.cdiv(vocab, BLOCK)
    partial_max = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    partial_index = torch.empty((rows, chunks), dtype=torch.int64, device=logits.device)
    partial_sum = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    _CHUNK_MAX(
        (rows, chunks), logits, partial_max, partial_index, partial_sum, *(noise or (logits, logits)), vocab,
        logits.stride(0), chunks, BLOCK=BLOCK, NOISE=noise is not None, PDL=use_pdl(logits), num_warps=8,
        **launch_options(logits),
    )  # fmt: skip
    _MERGE_CHUNKS(
        (rows,), partial_max, partial_index, partial_sum, token, row_max, log_sum, row_max, rows, chunks,
        vocab, BLOCK_C=triton.next_power_of_2(chunks), RECORD=record is not None, PDL=use_pdl(logits),
        num_warps=4, **launch_options(logits),
    )  # fmt: skip
    return token, row_max, log_sum


def argmax_logsumexp_reference(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`argmax_logsumexp` in PyTorch: ``torch.argmax``, ``amax`` and
    ``log(sum(exp(x - max)))`` as ``log_softmax`` computes it."""
    token = logits.argmax(dim=-1)
    row_max = logits.amax(dim=-1)
    log_sum = (logits - row_max.unsqueeze(1)).exp().sum(dim=-1).log()
    return token, row_max, log_sum
