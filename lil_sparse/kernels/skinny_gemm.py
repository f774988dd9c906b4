"""Linear layers of a few token rows (``y = x @ W^T + b`` for ``x: [M, K]``, ``2 <= M <= 32``)
as a weight-streaming Triton GEMM.

A decode step at batch 2-32 reads each weight once for a handful of rows: still a matter of
bandwidth, not arithmetic (16 rows make 16 multiply-adds per weight element). cuBLAS picks
tall-skinny tiles for it that leave bandwidth unused (H200 profile of the 8B batch-8 quest step,
2026-12-01 01:34 UTC, PDL off: the gate/up GEMM 59.6 us, QKV 15.8, output 10.8 + a 1.7 us
split-K reduce, down 30.2 + 1.7, against 56, 12, 8 and 28 us of weight bytes). Here every
program owns ``BLOCK_N`` weight rows (output columns), streams them in ``BLOCK_K`` steps of a
``for`` loop that Triton software-pipelines (``stages``), and accumulates
``W_tile @ x_tile^T`` on the tensor cores in fp32 (the row count padded to 16, the smallest dot
Triton issues, or to 32). No split-K: every program reads whole weight rows, so no reduction kernel
follows. Launched with PDL (:mod:`lil_sparse.kernels.pdl`); it waits before its first load.

*Measured, not adopted:* splitting K until every SM has a program (the 8B output projection's
64-row tiles make 64 programs on 132 SMs), each tile's last program adding the fp32 partials in
split order (an atomic count). Slower everywhere it applied (H200, 2026-12-01 about 01:48 UTC,
``bench/skinny_micro.py --rows 8``, microseconds per call, split against none): 8B QKV 18.7 /
15.8 (2 splits), output 14.1 / 10.9 (4), down 34.1 / 30.4 (4); end to end (``bench/decode_e2e.py``,
8B/32k/batch 8, alternately, two rounds) dense 12.59 / 12.58 against 12.45 / 12.43 ms, Quest@4096
7.41 / 7.42 against 7.25 / 7.25. Nor a bulk L2 prefetch of each program's first weight bytes
before the PDL wait (``cp.async.bulk.prefetch.L2``, the first 2560 bytes, 8 KiB or whole rows
of every program's rows; H200, 2026-12-01 about 02:56, ``bench/skinny_micro.py --rows 8``, two
rounds): the 8B weights got slower at every size (QKV 16.0 against 18.0-24.3 us, output 10.8
against 11.6-15.8, gate/up 57.0 against 64.1-92.4), the 1.5B QKV and output 0.3-0.4 us faster.

Numerics: bf16/fp16 products summed in fp32 and rounded to the output dtype once, bias added
in fp32 before that rounding, as cuBLAS does; only the order of the sum differs, so results
equal ``F.linear`` up to one rounding of each output (the tests compare both with the fp32
product). On CPU (Triton's interpreter, for the tests) the tiles are widened to fp32 first, as
the interpreter has no bf16 dot.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.fused_layers import TL_DTYPES, silu_times
from lil_sparse.kernels.launcher import KernelLauncher
from lil_sparse.kernels.linear_operands import weight_refusal
from lil_sparse.kernels.pdl import launch_options, use_pdl, wait_for_previous

MAX_ROWS = 32
"""The most token rows one launch takes (rows pad to 16, or to 32 past 16: :func:`padded_rows`)."""


def padded_rows(rows: int) -> int:
    """The row count the kernel's dot runs for ``rows`` token rows: 16 (Triton's smallest dot) up
    to 16 rows, else 32."""
    return 16 if rows <= 16 else 32


@dataclass(frozen=True)
class SkinnyTiles:
    """Launch shape: ``block_n`` weight rows per program and ``block_k`` columns per loop step
    (powers of two, at least 16: Triton's smallest dot), ``warps`` per program (a power of two)
    and ``stages`` of Triton's software pipeline over the K loop (positive)."""

    block_n: int
    block_k: int
    warps: int = 4
    stages: int = 4

    def __post_init__(self) -> None:
        for name, least in (("block_n", 16), ("block_k", 16), ("warps", 1)):
            value = getattr(self, name)
            if value < least or value & (value - 1):
                raise ValueError(f"SkinnyTiles.{name} must be a power of two >= {least}, got {value}")
        if self.stages < 1:
            raise ValueError(f"SkinnyTiles.stages must be positive, got {self.stages}")


def choose_skinny_tiles(k: int, rows: int = 16) -> SkinnyTiles:
    """Tiles for weights of ``k`` columns and ``rows`` token rows (the output count did not change
    the winner), from ``bench/skinny_micro.py --rows 8 --sweep`` on the H200 (2026-12-01, about
    01:37 UTC, 24 tiles per weight): 64 rows per program and 5 pipeline stages won on every
    weight; 256-column steps on all but the SiLU-mul kernel's (two weight tiles per step:
    :func:`choose_skinny_silu_tiles`). Past 16 rows (padded to 32) 4 stages, as 5 would not fit
    in shared memory (not swept)."""
    return SkinnyTiles(
        block_n=64,
        block_k=min(256, triton.next_power_of_2(k)),
        warps=4,
        stages=5 if padded_rows(rows) == 16 else 4,
    )


def choose_skinny_silu_tiles(k: int) -> SkinnyTiles:
    """:func:`choose_skinny_tiles` for :func:`skinny_silu_mul`: 128-column steps, 5 stages at any
    row count (they fit in shared memory at 32 rows)."""
    return SkinnyTiles(block_n=64, block_k=min(128, triton.next_power_of_2(k)), warps=4, stages=5)


PAYING_ROWS = 32
"""The most token rows :func:`skinny_pays` sends to the skinny GEMM: all it takes. The sweep ran
at 8 rows; up to 16 the kernel does the same work (rows pad to 16). Past 16 (padded to 32, 4
stages) it beat or matched cuBLAS on the same weights but the 8B QKV, 0.4 us slower (H200,
2026-12-01 about 02:53 UTC, ``bench/skinny_micro.py --rows 16,24,32``, us per call at 24 / 32
rows, cuBLAS against ours):
8B output 13.7 / 11.5 and 14.0 / 11.6, down 32.7 / 32.0 and 33.2 / 32.2, gate/up with SiLU-mul
59.0 / 59.1 and 59.7 / 59.2, QKV 15.9 / 16.3 and 16.3 / 16.7, LM head 255.3 / 248.6 and 254.8 /
251.2; 1.5B QKV 5.9 / 5.4 and 5.8 / 5.4, output 5.4 / 5.1 both. End to end (``bench/decode_e2e.py``,
16 against 32 alternately, two rounds in one process, about 02:54, printed output): the 8B/32k
mixed batch (30 rows) 16.37 / 16.36 against 16.11 / 16.13 ms; at batch 32, 8B/4k dense 8.83 /
8.83 against 8.52 / 8.54, 1.5B/4k dense 2.85 / 2.84 against 2.71 / 2.71, 1.5B/32k dense 8.68 /
8.68 against 8.52 / 8.52 and quest@4096 4.94 / 4.95 against 4.84 / 4.83."""


def skinny_pays(n: int, k: int, rows: int) -> bool:
    """Whether the skinny GEMM runs an ``[n, k]`` weight for ``rows`` token rows instead of
    cuBLAS: 2 to :data:`PAYING_ROWS` rows, on the two shape classes where it beat or matched
    cuBLAS with :func:`choose_skinny_tiles`' tiles at 8 rows in the sweep above (microseconds per
    call, cuBLAS against ours):

    - ``k >= 4096`` and ``n >= 4096``, the 8B shape: output 13.2 / 10.9, gate/up with SiLU-mul
      59.0 / 57.5, down 32.5 / 30.4, QKV at par (16.0 / 16.0); the LM head (128256 x 4096) at
      252.6 / 242.2 in the report run's micro-benchmark (``docs/bench/skinny_micro.md``, where
      the 8B QKV read 16.0 / 16.4);
    - ``1536 <= k < 4096`` and ``1536 <= n < 4096``, the 1.5B QKV and output projections: 5.7 /
      5.0 and 5.3 / 4.9.

    The 17-32-row figures are under :data:`PAYING_ROWS`.

    Everything else stays with cuBLAS: the 1.5B down projection (1536 x 8960: 11.5 / 17.0, too
    few programs for its long rows) and gate/up (18.2 / 18.3), and the small models' weights.
    On SmolLM2-135M's the kernel won (``bench/skinny_micro.py --models smollm2 --rows 2,8,16``,
    about 02:53: QKV 3.1 against 3.2-3.9 us, output 3.0 / 3.3, gate/up 4.1 / 5.8, down 4.1-4.3 /
    4.8-5.0; its LM head lost, 21 / 16.6), but that model's steps are host-bound and its
    end-to-end effect is not measured, so they stay with cuBLAS."""
    if not 2 <= rows <= PAYING_ROWS:
        return False
    return (k >= 4096 and n >= 4096) or (1536 <= k < 4096 and 1536 <= n < 4096)


@triton.jit
def _weight_dot(
    w_ptr, x, cols, col_mask, w_stride, k0, acc,
    K: tl.constexpr, BLOCK_K: tl.constexpr, UPCAST: tl.constexpr,
):  # fmt: skip
    """``acc + W[cols, k0:k0+BLOCK_K] @ x^T``: ``[BLOCK_N, M_PAD]`` fp32 (zeros past ``K``)."""
    ks = k0 + tl.arange(0, BLOCK_K)
    w = tl.load(
        w_ptr + cols[:, None] * w_stride + ks[None, :],
        mask=col_mask[:, None] & (ks < K)[None, :],
        other=0.0,
        eviction_policy="evict_first",  # read once per step: keep L2 for activations
    )
    if UPCAST:  # fp32 tiles on CPU: exact products, as the bf16 tensor-core dot's are
        return tl.dot(w.to(tl.float32), tl.trans(x), acc, input_precision="ieee")
    return tl.dot(w, tl.trans(x), acc)


@triton.jit
def _skinny_gemm(
    x_ptr,  # [M, K], rows at x_stride, columns contiguous
    w_ptr,  # [N, K] (SILU_MUL: [2N, K], gate rows then up rows), rows contiguous
    bias_ptr,  # [N], or unused
    out_ptr,  # [M, N] contiguous
    m,
    n,
    x_stride,
    w_stride,
    K: tl.constexpr,
    M_PAD: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    SILU_MUL: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    DTYPE: tl.constexpr,
    PDL: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n
    tokens = tl.arange(0, M_PAD)
    token_mask = tokens < m
    wait_for_previous(PDL)
    acc = tl.zeros((BLOCK_N, M_PAD), tl.float32)
    up = tl.zeros((BLOCK_N, M_PAD), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(
            x_ptr + tokens[:, None] * x_stride + ks[None, :],
            mask=token_mask[:, None] & (ks < K)[None, :],
            other=0.0,
        )
        if UPCAST:
            x = x.to(tl.float32)
        acc = _weight_dot(w_ptr, x, cols, col_mask, w_stride, k0, acc, K, BLOCK_K, UPCAST)
        if SILU_MUL:
            up = _weight_dot(w_ptr, x, cols + n, col_mask, w_stride, k0, up, K, BLOCK_K, UPCAST)
    offsets = tokens[None, :] * n + cols[:, None]  # out[token, col], stored from [col, token]
    mask = col_mask[:, None] & token_mask[None, :]
    if SILU_MUL:  # the projection's output rounds to DTYPE before silu_mul reads it
        gate = acc.to(DTYPE).to(tl.float32)
        tl.store(out_ptr + offsets, silu_times(gate, up.to(DTYPE).to(tl.float32), DTYPE), mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)[:, None]
        tl.store(out_ptr + offsets, acc.to(DTYPE), mask=mask)


def skinny_refusal(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> str | None:
    """Why :func:`skinny_linear` refuses these inputs (``"x must have 2 to 32 rows ..."``), or
    None. It takes ``x: [M, K]`` with ``2 <= M <= MAX_ROWS`` and contiguous columns, in bf16 or
    fp16 (fp32 would run the dot in tf32), and the weight and bias that
    :func:`~lil_sparse.kernels.linear_operands.weight_refusal` takes."""
    if x.dim() != 2 or not 2 <= x.shape[0] <= MAX_ROWS or x.stride(1) != 1:
        return f"x must have 2 to {MAX_ROWS} rows [M, K] with contiguous columns, got {tuple(x.shape)}"
    if x.dtype not in (torch.bfloat16, torch.float16):
        return f"x must be bfloat16 or float16, not {x.dtype}"
    return weight_refusal(x, weight, bias)


def skinny_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, tiles: SkinnyTiles | None = None
) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x: [M, K]`` of 2 to :data:`MAX_ROWS` rows.

    ``weight: [N, K]``, ``bias: [N]`` or None, one dtype (bf16 or fp16). Returns ``[M, N]``
    (contiguous) in that dtype. ``tiles`` overrides :func:`choose_skinny_tiles` (benchmarks).
    Raises ValueError for the inputs :func:`skinny_refusal` names.
    """
    _check("skinny_linear", x, weight, bias)
    n = weight.shape[0]
    return _launch(x, weight, bias, n, False, tiles or choose_skinny_tiles(x.shape[1], x.shape[0]))


def skinny_silu_mul(x: torch.Tensor, gate_up: torch.Tensor, tiles: SkinnyTiles | None = None) -> torch.Tensor:
    """``silu_mul(F.linear(x, gate_up))`` for ``x: [M, K]`` of 2 to :data:`MAX_ROWS` rows, in one
    kernel: each program reads its gate rows and the matching up rows and writes
    ``silu(gate) * up``, rounded as :func:`lil_sparse.kernels.fused_layers.silu_mul` rounds the
    projection's rounded output (so it equals :func:`skinny_linear` with the same tiles then
    ``silu_mul``, bit for bit).

    ``gate_up: [2I, K]`` (gate rows, then up rows). Returns ``[M, I]``. Raises ValueError as
    :func:`skinny_linear` does, or for an odd number of rows.
    """
    double = gate_up.shape[0]
    if double % 2:
        raise ValueError(f"skinny_silu_mul: gate_up has {double} rows, want gate and up halves")
    _check("skinny_silu_mul", x, gate_up, None)
    return _launch(
        x,
        gate_up,
        None,
        double // 2,
        True,
        tiles or choose_skinny_silu_tiles(x.shape[1]),
    )


def _check(caller: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    refusal = skinny_refusal(x, weight, bias)
    if refusal is not None:
        raise ValueError(f"{caller}: {refusal}")


def _launch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    n: int,
    fuse_silu: bool,
    tiles: SkinnyTiles,
) -> torch.Tensor:
    m, k = x.shape
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    _SKINNY_GEMM(
        (triton.cdiv(n, tiles.block_n),),
        x, weight, weight if bias is None else bias, out, m, n, x.stride(0), weight.stride(0),
        K=k, M_PAD=padded_rows(m), HAS_BIAS=bias is not None, SILU_MUL=fuse_silu,
        BLOCK_N=tiles.block_n, BLOCK_K=min(tiles.block_k, max(16, triton.next_power_of_2(k))),
        UPCAST=not x.is_cuda, DTYPE=TL_DTYPES[x.dtype], PDL=use_pdl(x), num_warps=tiles.warps,
        num_stages=tiles.stages, **launch_options(x),
    )  # fmt: skip
    return out


# Direct launches once a specialization is known (lil_sparse/kernels/launcher.py).
_SKINNY_GEMM = KernelLauncher(_skinny_gemm)
