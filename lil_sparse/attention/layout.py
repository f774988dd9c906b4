"""The page layout of one decode step: how many pages each attention row reads.

A row is one (sequence, KV head) pair: row ``r = b * num_kv_heads + h``. A policy may pick
different pages in every layer (Quest, InfLLM), but the *number* of pages per row is fixed for
the step, so one layout (one FlashInfer ``plan()``) serves every layer that uses it; only the page
ids change per layer. Selected pages travel as a padded ``page_ids: [rows, width] int32`` whose
row ``r`` lists ``counts[r]`` pages with the newest (partial) page last; ``flat_positions`` (or,
for a fixed width, ``padded_positions``) turn that into FlashInfer's CSR ``indices`` on the
device, with no host sync.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DecodeLayout:
    """CSR page-table geometry for one step.

    - ``counts: [rows] int32``: pages read per row (``counts_host`` is the same on the host).
    - ``indptr: [rows + 1] int32``: CSR row offsets (``indptr[0] == 0``).
    - ``last_page_len: [rows] int32``: tokens in each row's last page, ``1 <= v <= page_size``.
    - ``flat_positions: [nnz] int64``: positions of the real entries in the flattened padded table.
    - ``last_page_len_host``: ``last_page_len`` on the host when the caller knows it (empty if
      not), so a backend can plan without a device sync.
    - ``stride``, ``padded_positions: [rows * stride] int64``: when the step's ``page_ids`` have
      a fixed width ``stride`` (a width bucket), the real entries' positions in
      ``page_ids.reshape(-1)`` followed by zeros. Packing with them has a static shape, so it can
      run inside a CUDA graph: the kernel reads only the first ``nnz`` indices.
    """

    counts: torch.Tensor
    counts_host: tuple[int, ...]
    indptr: torch.Tensor
    last_page_len: torch.Tensor
    flat_positions: torch.Tensor
    width: int
    nnz: int
    last_page_len_host: tuple[int, ...] = ()
    stride: int = 0
    padded_positions: torch.Tensor | None = None

    @classmethod
    def build(
        cls,
        counts_host: list[int],
        last_page_len: torch.Tensor,
        last_page_len_host: tuple[int, ...] = (),
        stride: int = 0,
    ) -> DecodeLayout:
        """``counts_host``: pages per row (host ints); ``last_page_len: [rows] int32`` on the device
        (``last_page_len_host``: the same values on the host, optional)."""
        device = last_page_len.device
        if not counts_host or min(counts_host) < 1:
            raise ValueError("every row must read at least one page")
        width = max(counts_host)
        counts = torch.tensor(counts_host, dtype=torch.int32).to(device, non_blocking=True)
        indptr = torch.zeros(len(counts_host) + 1, dtype=torch.int32, device=device)
        torch.cumsum(counts, dim=0, out=indptr[1:])
        nnz = sum(counts_host)
        # Row-major positions of the valid entries, computed without a host sync: entry j of row r
        # sits at r * width + j, and row r owns CSR slots indptr[r] .. indptr[r+1].
        csr = torch.arange(nnz, device=device)
        row_of = torch.repeat_interleave(
            torch.arange(len(counts_host), device=device), counts.long(), output_size=nnz
        )
        in_row = csr - indptr[row_of].long()
        flat_positions = row_of * width + in_row
        padded_positions = None
        if stride:
            if stride < width:
                raise ValueError(f"stride: {stride} is narrower than the widest row ({width} pages)")
            padded_positions = torch.zeros(len(counts_host) * stride, dtype=torch.long, device=device)
            padded_positions[:nnz] = row_of * stride + in_row
        return cls(
            counts,
            tuple(counts_host),
            indptr,
            last_page_len,
            flat_positions,
            width,
            nnz,
            last_page_len_host,
            stride,
            padded_positions,
        )

    @property
    def rows(self) -> int:
        return len(self.counts_host)

    def token_mask(self, page_size: int, width: int = 0) -> torch.Tensor:
        """``[rows, width * page_size] bool``: which token slots of the padded pages hold real
        tokens. ``width`` defaults to the widest row; a fixed (bucketed) width keeps shapes static."""
        width = width or self.width
        offsets = torch.arange(page_size, device=self.counts.device)
        slot = torch.arange(width, device=self.counts.device)
        last = (self.counts - 1).long().unsqueeze(1)  # [rows, 1]
        full_page = slot.unsqueeze(0) < last  # [rows, width]
        last_page = slot.unsqueeze(0) == last
        in_last = offsets.view(1, 1, -1) < self.last_page_len.view(-1, 1, 1)  # [rows, 1, page_size]
        mask = full_page.unsqueeze(2) | (last_page.unsqueeze(2) & in_last)
        return mask.reshape(self.rows, width * page_size)
