"""A decode step's flat device inputs, built from the scheduled sequences with one host copy.

Per sequence the host knows a few integers (last token, position, block-table slot, newest
page, offset in it); they go up in one non-blocking copy, and every page index is derived on the
device: on CUDA by one Triton kernel (:mod:`lil_sparse.kernels.decode_inputs`), which can write
straight into a captured graph's input tensors, elsewhere by :func:`decode_inputs_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.engine.sequence import Sequence
from lil_sparse.kernels import TRITON_AVAILABLE


@dataclass(frozen=True, slots=True)
class DecodeInputs:
    """``B`` = the step's rows, padding included; ``Hkv`` = KV heads; ``W`` = the table width.

    ``input_ids``, ``positions``: ``[B] int64`` (padding rows: token 0 at position 0).
    ``write_slots``: ``[B, Hkv] int64``, the cache slot each row's new K/V goes to.
    ``base``: ``[B * Hkv, W] int32``, each row's page table (padding rows: the scratch page).
    ``last_page_len``: ``[B * Hkv] int32``, tokens in each row's newest page (1..page_size), and
    ``last_page_len_host`` the same values on the host.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    write_slots: torch.Tensor
    base: torch.Tensor
    last_page_len: torch.Tensor
    last_page_len_host: tuple[int, ...]


def build_decode_inputs(
    seqs: list[Sequence],
    padded: int,
    width: int,
    table: torch.Tensor,
    scratch_page: int,
    page_size: int,
    num_kv_heads: int,
    device: torch.device,
    input_ids: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> DecodeInputs:
    """The inputs of a decode step over ``seqs`` padded to ``padded`` rows.

    ``table``: the block table ``[max_slots, Hkv, max_pages_per_seq] int32``; ``width``: the
    step's table width (``ModelRunner.width_bucket``). ``input_ids``: ``[len(seqs)] int64`` on
    ``device``, the tokens to feed when the host does not hold them yet (overlap scheduling: the
    previous step's sampled tokens, still on the device); None feeds ``s.last_token_id``.
    ``out``: tensors to write ``(input_ids, positions, write_slots, base)`` into, shaped as
    :class:`DecodeInputs` has them (a captured graph's inputs: CUDA only); the returned inputs
    are then those tensors. Nothing here waits for the device.
    """
    count = len(seqs)
    pad = padded - count
    offsets = [s.next_position % page_size for s in seqs] + [0] * pad
    last_page_len_host = tuple(offset + 1 for offset in offsets for _ in range(num_kv_heads))
    no_pad = [0] * pad
    host = (
        ([s.last_token_id for s in seqs] if input_ids is None else [0] * count)
        + no_pad
        + [s.next_position for s in seqs]
        + no_pad
        + [s.slot for s in seqs]
        + [-1] * pad
        + [s.held_pages - 1 for s in seqs]
        + no_pad
        + offsets
    )
    fields = torch.tensor(host, dtype=torch.long).view(5, padded).to(device, non_blocking=True)
    args = (fields, table, width, page_size, scratch_page, count)
    if not (table.is_cuda and TRITON_AVAILABLE):
        if out is not None:
            raise ValueError("build_decode_inputs: out is for CUDA steps (the Triton kernel writes it)")
        return decode_inputs_reference(*args, input_ids, last_page_len_host)
    from lil_sparse.kernels.decode_inputs import decode_inputs

    if out is None:
        out = allocate_decode_inputs(padded, num_kv_heads, width, table.dtype, device)
    last_page_len = decode_inputs(*args, out, input_ids)
    return DecodeInputs(*out, last_page_len, last_page_len_host)


def allocate_decode_inputs(
    padded: int, num_kv_heads: int, width: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty ``(input_ids [B] int64, positions [B] int64, write_slots [B, Hkv] int64, base
    [B * Hkv, width] dtype)`` for a step of ``padded`` rows: what
    :func:`build_decode_inputs` writes into."""
    return (
        torch.empty(padded, dtype=torch.long, device=device),
        torch.empty(padded, dtype=torch.long, device=device),
        torch.empty(padded, num_kv_heads, dtype=torch.long, device=device),
        torch.empty(padded * num_kv_heads, width, dtype=dtype, device=device),
    )


def decode_inputs_reference(
    fields: torch.Tensor,
    table: torch.Tensor,
    width: int,
    page_size: int,
    scratch_page: int,
    count: int,
    input_ids: torch.Tensor | None = None,
    last_page_len_host: tuple[int, ...] = (),
) -> DecodeInputs:
    """:func:`lil_sparse.kernels.decode_inputs.decode_inputs` in PyTorch (the reference, and the
    path off CUDA), from the same ``fields: [5, P] int64`` (token id, position, block-table slot
    or -1 for padding, newest page index, offset in it; padding rows last). ``last_page_len``
    comes from ``last_page_len_host`` when given (one host tensor: fewer ops on the CPU, where
    this is the engine's path), else from the offsets on the device."""
    padded = fields.shape[1]
    heads = table.shape[1]
    ids = fields[0]
    if input_ids is not None:  # a copy: the caller's fields stay as they were
        ids = ids.clone()
        ids[:count].copy_(input_ids)
    base = table[fields[2, :count], :, :width]  # [count, Hkv, width]
    if padded > count:
        scratch = torch.full(
            (padded - count, heads, width), scratch_page, dtype=base.dtype, device=base.device
        )
        base = torch.cat([base, scratch])
    newest = base.gather(2, fields[3].view(padded, 1, 1).expand(padded, heads, 1))  # [B, Hkv, 1]
    write_slots = newest.squeeze(2).long() * page_size + fields[4].unsqueeze(1)  # [B, Hkv]
    if last_page_len_host:
        last_page_len = torch.tensor(last_page_len_host, dtype=torch.int32).to(
            fields.device, non_blocking=True
        )
    else:
        last_page_len = (fields[4] + 1).repeat_interleave(heads).to(torch.int32)
    return DecodeInputs(
        ids, fields[1], write_slots, base.reshape(padded * heads, width), last_page_len, last_page_len_host
    )
