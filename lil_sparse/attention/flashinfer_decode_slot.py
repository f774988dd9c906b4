"""One planned FlashInfer decode batch (a *slot*): its buffers, its wrapper, and its two-call split.

A slot serves one layout of a step (a fixed number of rows at one position in the step). Its
``indptr``/``indices``/``last_page_len`` buffers are what the kernels read and what page selection
writes into (:func:`lil_sparse.kernels.page_select.select_pages` writes row ``r`` at
``indices[indptr[r]:]``). The batch runs either as one call of the slot's own wrapper, or, when
its rows are very unequal (:func:`lil_sparse.attention.decode_split.choose_split`), as two calls
over rows ``[0, split)`` and ``[split, rows)``. The two part wrappers read the *same* ``indices``
buffer through their own ``indptr`` holding absolute offsets (FlashInfer derives lengths from
``indptr`` differences and reads pages from ``indices[indptr[row]]`` on), and their
``last_page_len`` buffers are views into the slot's, so selection, packing and the
``last_page_len`` refresh work on the slot exactly as for one call.

With a *lane* (a second CUDA stream, :class:`FlashInferBackend` ``concurrent_split``) the two
calls run concurrently: the long rows' call on the current stream and the short rows' call on the
lane, forked before the first is queued and joined right after the second, so each call's kernels
fill the SMs the other's tail leaves idle. The second call's wrapper then has a float workspace
of its own (its split-k partial results and merge would otherwise share the first call's), and
each call runs exactly the kernels it runs one after the other, so the outputs are bit for bit
those of the serial calls.

A slot of few rows can also run the Triton decode of :mod:`lil_sparse.kernels.paged_decode`
(``fast``) instead of FlashInfer's kernels, over the same three buffers, in steps whose page
counts fall in its fast regime (``fast_tiles``, set with the plan).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # Triton is imported only where the Triton decode runs (lil_sparse.kernels)
    from lil_sparse.kernels.fast_decode import FastDecode
    from lil_sparse.kernels.paged_decode import DecodeTiles

# Split points a slot keeps part wrappers for; a new one beyond runs as one call. Each split
# point holds two wrappers of 1 MiB of device and 1 MiB of pinned host memory (their plan arrays;
# FlashInfer first allots 8 MiB of each, freed at once), so a slot holds at most 32 MiB of each,
# outside the KV cache. Split points are sequence boundaries, so a slot of n sequences has n - 1.
MAX_SPLITS = 16
PART_INT_WORKSPACE_BYTES = 1 << 20

# (indptr buffer, indices buffer, last_page_len buffer, part) -> wrapper; part is None for the
# slot's own wrapper, else 0 or 1 for the first or second call of a split (small int workspace)
WrapperFactory = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "int | None"], object]


@dataclass(frozen=True)
class PlanShape:
    """What every ``plan()`` of the backend passes besides the page counts."""

    group: int  # query heads per row (per KV head)
    head_dim: int
    page_size: int
    dtype: torch.dtype


@dataclass
class DecodePart:
    """One call over rows ``start:end`` of a slot; ``indptr: [end - start + 1] int32`` holds
    offsets into the slot's whole ``indices`` buffer."""

    start: int
    end: int
    wrapper: object
    indptr: torch.Tensor


@dataclass
class DecodeSlot:
    """One planned decode batch: a wrapper and the int32 buffers its kernel reads.

    - ``indptr: [rows + 1]``, ``last_page_len: [rows]``: written by ``plan()`` when the page
      counts change; otherwise only ``last_page_len`` is refreshed.
    - ``indices: [capacity]``: CSR page ids, rewritten per layer when the selection changes.
    - ``packed_from``: the padded ``page_ids`` tensor the current indices came from. Held by
      reference, so ``is`` cannot be fooled by a recycled id; layers that pass the same tensor
      (full, eviction policies) skip the rewrite.
    - ``split``: rows in the first of two calls this step, 0 for one call; ``parts`` keeps the
      part wrappers by split point (never dropped: a captured CUDA graph reads their buffers).
    - ``lane``: a CUDA stream for the second call of a split (None: the calls run one after the
      other on the current stream).
    - ``fast``: the Triton decode for these rows (None: FlashInfer only); ``fast_tiles``: the
      tiles this step runs it with (set by the backend with each plan; None: FlashInfer; never
      with a split).
    """

    wrapper: object
    indptr: torch.Tensor
    indices: torch.Tensor
    last_page_len: torch.Tensor
    packed_from: torch.Tensor | None = None
    planned_counts: tuple[int, ...] | None = None  # counts_host of the last plan(), None before
    planned_last: tuple[int, ...] | None = None  # host last_page_len in the buffer, None if unknown
    split: int = 0
    parts: dict[int, tuple[DecodePart, DecodePart]] = field(default_factory=dict)
    lane: torch.cuda.Stream | None = None
    fast: FastDecode | None = None
    fast_tiles: DecodeTiles | None = None

    @property
    def rows(self) -> int:
        return self.last_page_len.shape[0]

    def can_split(self, split: int) -> bool:
        return split in self.parts or len(self.parts) < MAX_SPLITS

    def calls(self) -> list[tuple[int, int, object]]:
        """``(first row, end row, wrapper)`` of each call this step, in order."""
        if not self.split:
            return [(0, self.rows, self.wrapper)]
        return [(part.start, part.end, part.wrapper) for part in self.parts[self.split]]

    def run(
        self, q: torch.Tensor, k_pages: torch.Tensor, v_pages: torch.Tensor, return_lse: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This step's call(s) over ``q: [rows, G, D]``: ``out: [rows, G, D]``, and ``lse: [rows, G]
        float32`` (FlashInfer's base-2 log-sum-exp) when asked."""
        q = q.contiguous()
        if self.fast_tiles is not None and self.fast is not None:
            csr = (self.indptr, self.indices, self.last_page_len)
            return self.fast.run(q, k_pages, v_pages, *csr, return_lse, self.fast_tiles)
        if not self.split:
            if return_lse:
                out, lse = self.wrapper.run(q, (k_pages, v_pages), return_lse=True)  # type: ignore[attr-defined]
                return out, lse
            return self.wrapper.run(q, (k_pages, v_pages)), None  # type: ignore[attr-defined]
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[:2], dtype=torch.float32, device=q.device) if return_lse else None
        first, second = self.calls()  # two calls over contiguous rows, the long rows first
        current = torch.cuda.current_stream(q.device)
        if self.lane is None or self.lane == current:  # (a pool stream can be the current one)
            for call in (first, second):
                _run_rows(call, q, k_pages, v_pages, out, lse)
            return out, lse
        # Fork before the first call is queued (else the lane would wait for it), join after the
        # second: q, out and lse are the current stream's, and it frees them only after the join.
        # The join is in a finally: a fork left open would fail a capture and hide the error.
        self.lane.wait_stream(current)
        try:
            _run_rows(first, q, k_pages, v_pages, out, lse)
            with torch.cuda.stream(self.lane):
                _run_rows(second, q, k_pages, v_pages, out, lse)
        finally:
            current.wait_stream(self.lane)
        return out, lse

    def plan(
        self,
        indptr: torch.Tensor,
        last_page_len: torch.Tensor,
        shape: PlanShape,
        split: int,
        make_wrapper: WrapperFactory,
    ) -> None:
        """``plan()`` this step's call(s): ``indptr: [rows + 1]`` and ``last_page_len: [rows]``
        int32 on the host; ``split`` rows in the first call (0: one call)."""
        if not split:
            _plan(self.wrapper, indptr, self.indices, last_page_len, shape)
        else:
            self.indptr.copy_(indptr, non_blocking=True)  # selection writes at the whole indptr
            for part in self._parts(split, make_wrapper):
                part_indptr = indptr[part.start : part.end + 1]  # absolute offsets
                _plan(part.wrapper, part_indptr, self.indices, last_page_len[part.start : part.end], shape)
        self.split = split

    def _parts(self, split: int, make_wrapper: WrapperFactory) -> tuple[DecodePart, DecodePart]:
        parts = self.parts.get(split)
        if parts is None:
            device = self.indptr.device
            made: list[DecodePart] = []
            for start, end in ((0, split), (split, self.rows)):
                indptr = torch.zeros(end - start + 1, dtype=torch.int32, device=device)
                part = len(made)
                wrapper = make_wrapper(indptr, self.indices, self.last_page_len[start:end], part)
                made.append(DecodePart(start, end, wrapper, indptr))
            parts = self.parts[split] = (made[0], made[1])
        return parts


def _run_rows(
    call: tuple[int, int, object],
    q: torch.Tensor,
    k_pages: torch.Tensor,
    v_pages: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor | None,
) -> None:
    """Run one call of a split over rows ``start:end`` into those rows of ``out`` (and ``lse``)."""
    start, end, wrapper = call
    wrapper.run(  # type: ignore[attr-defined]
        q[start:end],
        (k_pages, v_pages),
        out=out[start:end],
        lse=None if lse is None else lse[start:end],
        return_lse=lse is not None,
    )


def _plan(
    wrapper: object, indptr: torch.Tensor, indices: torch.Tensor, last: torch.Tensor, shape: PlanShape
) -> None:
    wrapper.plan(  # type: ignore[attr-defined]
        indptr,
        indices[:0],
        last,
        shape.group,
        1,
        shape.head_dim,
        shape.page_size,
        q_data_type=shape.dtype,
        kv_data_type=shape.dtype,
    )


def needs_plan(planned_counts: tuple[int, ...] | None, counts: tuple[int, ...]) -> bool:
    """Whether a slot planned for ``planned_counts`` pages per row must call ``plan()`` for ``counts``.

    A slot is one wrapper of fixed batch size (rows), heads (group, 1 KV head), head_dim,
    page_size and dtypes, all of which :meth:`FlashInferBackend.begin_decode_step` passes
    unchanged on every call. What else ``plan()`` reads, in FlashInfer 0.6.6's
    ``flashinfer/decode.py`` (``BatchDecodeWithPagedKVCacheWrapper.plan``):

    - lines 940-946 (CUDA-graph mode): copy ``indptr``, ``last_page_len`` and ``indices`` into the
      fixed buffers; the kernel reads them there (``run``, lines 1346-1348 and 1411-1413).
    - CUDA-core path, lines 1111-1127: the C++ ``DecodePlan`` gets ``indptr_host`` and the fixed
      sizes only (``csrc/batch_decode.cu`` line 70), never ``last_page_len``.
    - tensor-core path, lines 1070-1095: ``kv_lens_arr_host`` (from ``last_page_len``) is passed,
      but FA2's ``BatchPrefillWithKVCachePlan`` (``csrc/batch_prefill.cu`` lines 63-67) hands
      ``PrefillPlan`` only ``qo_indptr`` and ``kv_indptr``: its split derives kv lengths from the
      page indptr (``attention/scheduler.cuh`` line 517, ``kv_indptr_h[i + 1] - kv_indptr_h[i]``).
      ``_max_kv_len`` (line 1038) reaches only the trtllm-gen ``paged_run`` (``prefill.py`` 638-660).

    So the plan (the work split it writes into the wrapper's own int workspace) is a function of
    the page counts (``indptr``) alone: a slot whose counts equal ``planned_counts`` keeps it and
    only its ``last_page_len`` buffer is rewritten. The two-call split is a function of the
    counts too, so it is kept with the plan.
    """
    return planned_counts != counts
