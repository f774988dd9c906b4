"""A decode step's flat device inputs, built from the scheduled sequences with one host copy.

Per sequence the host knows a few integers (last token, position, slot, newest page, offset in
it); they go up in one non-blocking copy, and every page index is derived on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lil_sparse.engine.sequence import Sequence


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
) -> DecodeInputs:
    """The inputs of a decode step over ``seqs`` padded to ``padded`` rows.

    ``table``: the block table ``[max_slots, Hkv, max_pages_per_seq] int32``; ``width``: the
    step's table width (``ModelRunner.width_bucket``). ``input_ids``: ``[len(seqs)] int64`` on
    ``device``, the tokens to feed when the host does not hold them yet (overlap scheduling: the
    previous step's sampled tokens, still on the device); None feeds ``s.last_token_id``.
    Nothing here waits for the device.
    """
    heads = num_kv_heads
    count = len(seqs)
    pad = padded - count
    offsets = [s.next_position % page_size for s in seqs] + [0] * pad
    last_page_len_host = tuple(offset + 1 for offset in offsets for _ in range(heads))
    # One host-to-device copy: input ids, positions, slots, newest page index and offset per
    # sequence (padding rows: token 0 at position 0, newest page 0), then last_page_len per
    # row. Everything else is derived on the device in a few kernels.
    no_pad = [0] * pad
    host = (
        ([s.last_token_id for s in seqs] if input_ids is None else [0] * count)
        + no_pad
        + [s.next_position for s in seqs]
        + no_pad
        + [s.slot for s in seqs]
        + [s.held_pages - 1 for s in seqs]
        + no_pad
        + offsets
        + list(last_page_len_host)
    )
    values = torch.tensor(host, dtype=torch.long).to(device, non_blocking=True)
    if input_ids is not None:  # device to device, into the fresh buffer: no sync
        values[:count].copy_(input_ids)
    ids, positions = values[:padded], values[padded : 2 * padded]
    slots = values[2 * padded : 2 * padded + count]
    newest_index = values[2 * padded + count : 3 * padded + count]
    offsets_dev = values[3 * padded + count : 4 * padded + count]
    last_page_len = values[4 * padded + count :].to(torch.int32)
    base = table[slots, :, :width]  # [count, Hkv, width] int32
    if pad:
        scratch = torch.full((pad, heads, width), scratch_page, dtype=base.dtype, device=device)
        base = torch.cat([base, scratch])
    newest = base.gather(2, newest_index.view(padded, 1, 1).expand(padded, heads, 1))  # [B, Hkv, 1]
    write_slots = newest.squeeze(2).long() * page_size + offsets_dev.unsqueeze(1)  # [B, Hkv]
    base = base.reshape(padded * heads, width)
    return DecodeInputs(ids, positions, write_slots, base, last_page_len, last_page_len_host)
