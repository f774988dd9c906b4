"""A decode step's device inputs from the block table in one kernel.

Before each decode step the runner turns a few host integers per sequence (token, position,
block-table slot, index of the newest page, offset in it) into the step's device inputs: token
ids, positions, each row's page table cut to the step's width, the cache slot of each row's new
K/V and each row's ``last_page_len``. In PyTorch that is an indexing of the block table, a
gather, three elementwise ops, a cast and a copy, each a launch of a few microseconds outside the
CUDA graph (the reference, :func:`lil_sparse.engine.decode_inputs.decode_inputs_reference`);
here one program per attention row (sequence x KV head) does all of it, and writes straight into
the tensors a captured graph reads, so the graph needs no copies of them either.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from lil_sparse.kernels.launcher import KernelLauncher

FIELDS = 5
"""Host integers per sequence, one row each in ``fields``: token id, position, block-table slot
(-1 for a padding row), index of the newest page in its table row, offset in that page."""

BLOCK_W = 1024
"""Page-table entries copied per loop step."""


@triton.jit
def _decode_inputs(
    fields_ptr,  # [FIELDS, P] int64 (see FIELDS)
    device_ids_ptr,  # [count] int64 (stride ids_stride) when IDS_ON_DEVICE, else unused
    table_ptr,  # [slots, H, max_pages] int32, pages contiguous
    ids_ptr,  # [P] int64
    positions_ptr,  # [P] int64
    write_slots_ptr,  # [P, H] int64 contiguous
    base_ptr,  # [P * H, width] contiguous, the table's dtype
    last_ptr,  # [P * H] int32
    ids_stride,
    count,
    padded,
    width,
    slot_stride,
    head_stride,
    scratch_page,
    H: tl.constexpr,
    PAGE_SIZE: tl.constexpr,
    BLOCK: tl.constexpr,
    IDS_ON_DEVICE: tl.constexpr,
):
    """One program per row ``r = b * H + h``: the row's table cut to ``width`` (the scratch page
    for a padding row), its write slot and ``last_page_len``; the programs of head 0 also write
    the sequence's token id and position."""
    row = tl.program_id(0)
    seq = row // H
    head = row % H
    slot = tl.load(fields_ptr + 2 * padded + seq)
    newest = tl.load(fields_ptr + 3 * padded + seq)
    offset = tl.load(fields_ptr + 4 * padded + seq)
    # A padding row reads table slot 0 (any valid row) and takes the scratch page instead: no
    # scalar masks, which Triton 3.9's interpreter refuses.
    real = slot >= 0
    source = table_ptr + tl.where(real, slot, 0) * slot_stride + head * head_stride
    start = 0
    while start < width:  # (Triton's interpreter ranges over no runtime bound)
        cols = start + tl.arange(0, BLOCK)
        inside = cols < width
        pages = tl.where(real, tl.load(source + cols, mask=inside, other=0), scratch_page)
        tl.store(base_ptr + row * width + cols, pages, mask=inside)
        start += BLOCK
    newest_page = tl.where(real, tl.load(source + newest), scratch_page)
    tl.store(write_slots_ptr + row, newest_page.to(tl.int64) * PAGE_SIZE + offset)
    tl.store(last_ptr + row, (offset + 1).to(tl.int32))
    if head == 0:
        if IDS_ON_DEVICE:  # count >= 1 here (decode_inputs); padding rows read id 0, then drop it
            ours = seq < count
            token = tl.where(ours, tl.load(device_ids_ptr + tl.where(ours, seq, 0) * ids_stride), 0)
        else:
            token = tl.load(fields_ptr + seq)
        tl.store(ids_ptr + seq, token)
        tl.store(positions_ptr + seq, tl.load(fields_ptr + padded + seq))


# Direct launches once a shape is known: it runs before every graph step, outside the graph.
_DECODE_INPUTS = KernelLauncher(_decode_inputs)


def decode_inputs(
    fields: torch.Tensor,
    table: torch.Tensor,
    width: int,
    page_size: int,
    scratch_page: int,
    count: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    input_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Write a decode step's inputs into ``out = (ids [P] int64, positions [P] int64,
    write_slots [P, H] int64, base [P * H, width])`` (contiguous, on the table's device, base in
    the table's dtype) and return ``last_page_len: [P * H] int32``.

    ``fields: [FIELDS, P] int64`` on the table's device (:data:`FIELDS`; rows ``count`` and later
    are padding: slot -1, position 0, newest page 0, offset 0); ``table: [slots, H, max_pages]``
    int32 with contiguous pages, ``width <= max_pages``; ``input_ids: [count] int64`` on the device
    (any stride, as the reference takes it) replaces the fields' token ids (overlap scheduling),
    padding rows get token 0. Padding rows
    read and write the ``scratch_page``. Equal to
    :func:`lil_sparse.engine.decode_inputs.decode_inputs_reference`. Raises ValueError on shapes
    or dtypes it cannot read.
    """
    padded = fields.shape[1]
    heads = table.shape[1]
    ids, positions, write_slots, base = out
    if fields.shape[0] != FIELDS or fields.dtype != torch.int64 or not fields.is_contiguous():
        raise ValueError(
            f"decode_inputs: fields must be a contiguous [{FIELDS}, P] int64, got {tuple(fields.shape)}"
        )
    if table.dim() != 3 or table.stride(2) != 1 or not 0 < width <= table.shape[2]:
        raise ValueError(f"decode_inputs: table {tuple(table.shape)} with contiguous pages, width {width}")
    wanted = (
        (ids, (padded,), torch.int64),
        (positions, (padded,), torch.int64),
        (write_slots, (padded, heads), torch.int64),
        (base, (padded * heads, width), table.dtype),
    )
    for tensor, shape, dtype in wanted:
        if tensor.shape != shape or tensor.dtype != dtype or not tensor.is_contiguous():
            raise ValueError(
                f"decode_inputs: an output is {tuple(tensor.shape)} {tensor.dtype}, want {shape} {dtype}"
            )
    if input_ids is not None and (input_ids.shape != (count,) or input_ids.dtype != torch.int64):
        raise ValueError(f"decode_inputs: input_ids must be [{count}] int64, got {tuple(input_ids.shape)}")
    last_page_len = torch.empty(padded * heads, dtype=torch.int32, device=table.device)
    if count == 0:  # no real rows: nothing to read from input_ids (the fields' ids are 0)
        input_ids = None
    _DECODE_INPUTS(
        (padded * heads,), fields, fields if input_ids is None else input_ids, table, ids, positions,
        write_slots, base, last_page_len, 0 if input_ids is None else input_ids.stride(0), count, padded,
        width, table.stride(0), table.stride(1), scratch_page,
        H=heads, PAGE_SIZE=page_size, BLOCK=BLOCK_W, IDS_ON_DEVICE=input_ids is not None,
    )  # fmt: skip
    return last_page_len
