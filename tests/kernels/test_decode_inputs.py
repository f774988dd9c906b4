"""The decode step's inputs in one Triton kernel against the PyTorch reference (the interpreter
on CPU; tests/gpu runs the kernel inside every engine step on the H200)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.engine.decode_inputs import decode_inputs_reference
from lil_sparse.kernels.decode_inputs import BLOCK_W, FIELDS, decode_inputs

SCRATCH = 7
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def step_fields(
    count: int, padded: int, slots: list[int], held: list[int], page_size: int, gen
) -> torch.Tensor:
    """``[FIELDS, padded]`` as the runner packs them: ids, positions, slots (-1 padding), newest
    page index, offset in it."""
    positions = [
        held[i] * page_size - int(torch.randint(1, page_size + 1, (1,), generator=gen)) for i in range(count)
    ]
    rows = [
        torch.randint(3, 1000, (count,), generator=gen).tolist(),
        positions,
        slots,
        [h - 1 for h in held],
        [p % page_size for p in positions],
    ]
    pad = padded - count
    fill = [0, 0, -1, 0, 0]
    fields = [row + [value] * pad for row, value in zip(rows, fill, strict=True)]
    return torch.tensor(fields, dtype=torch.long, device=DEVICE)


def outputs(padded: int, heads: int, width: int) -> tuple[torch.Tensor, ...]:
    return (
        torch.full((padded,), -5, dtype=torch.long, device=DEVICE),
        torch.full((padded,), -5, dtype=torch.long, device=DEVICE),
        torch.full((padded, heads), -5, dtype=torch.long, device=DEVICE),
        torch.full((padded * heads, width), -5, dtype=torch.int32, device=DEVICE),
    )


@pytest.mark.parametrize(
    "count, padded, heads, width, page_size, device_ids",
    [
        (1, 1, 2, 8, 16, False),
        (3, 4, 2, 16, 16, True),
        (5, 8, 1, 32, 4, False),
        (2, 2, 8, 64, 1, True),
        (2, 4, 2, BLOCK_W + 40, 16, False),  # two loop steps over the table's width
    ],
)
def test_kernel_equals_the_reference(count, padded, heads, width, page_size, device_ids):
    gen = torch.Generator().manual_seed(count * 100 + width)
    table = torch.randint(0, 5000, (6, heads, width + 9), generator=gen, dtype=torch.int32).to(DEVICE)
    slots = torch.randperm(6, generator=gen)[:count].tolist()
    held = torch.randint(1, width + 1, (count,), generator=gen).tolist()
    held[0] = width  # a row whose newest page is the table's last column in the step
    fields = step_fields(count, padded, slots, held, page_size, gen)
    input_ids = torch.randint(3, 1000, (count,), generator=gen).to(DEVICE) if device_ids else None
    want = decode_inputs_reference(fields, table, width, page_size, SCRATCH, count, input_ids)
    out = outputs(padded, heads, width)
    last_page_len = decode_inputs(fields, table, width, page_size, SCRATCH, count, out, input_ids)
    ids, positions, write_slots, base = out
    assert torch.equal(ids, want.input_ids)
    assert torch.equal(positions, want.positions)
    assert torch.equal(write_slots, want.write_slots)
    assert torch.equal(base, want.base)
    assert torch.equal(last_page_len, want.last_page_len)
    # The engine's CPU path passes the host's last_page_len: the same values, one host tensor.
    host = tuple(int(offset) + 1 for offset in fields[4].tolist() for _ in range(heads))
    with_host = decode_inputs_reference(fields, table, width, page_size, SCRATCH, count, input_ids, host)
    assert torch.equal(with_host.last_page_len, want.last_page_len)
    assert with_host.last_page_len_host == host
    # The reference's own values, spelled out for one real and one padding row.
    assert base[0].tolist() == table[slots[0], 0, :width].tolist()
    assert write_slots[0, 0] == table[slots[0], 0, held[0] - 1] * page_size + fields[4, 0]
    assert ids[0] == (input_ids[0] if device_ids else fields[0, 0])
    if padded > count:
        assert base[-1].tolist() == [SCRATCH] * width
        assert write_slots[-1].tolist() == [SCRATCH * page_size] * heads
        assert last_page_len[-1] == 1 and ids[-1] == 0 and positions[-1] == 0


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: {**a, "fields": a["fields"][:4]}, "fields"),
        (lambda a: {**a, "fields": a["fields"].int()}, "fields"),
        (lambda a: {**a, "width": 99}, "width"),
        (lambda a: {**a, "out": (*a["out"][:3], a["out"][3][:, :4])}, "output"),
        (lambda a: {**a, "out": (a["out"][0].int(), *a["out"][1:])}, "output"),
        (lambda a: {**a, "input_ids": torch.zeros(5, dtype=torch.long)}, "input_ids"),
    ],
)
def test_kernel_refuses_what_it_cannot_read(change, match):
    gen = torch.Generator().manual_seed(0)
    table = torch.zeros(4, 2, 16, dtype=torch.int32, device=DEVICE)
    args = {
        "fields": step_fields(1, 2, [0], [3], 16, gen),
        "table": table,
        "width": 8,
        "page_size": 16,
        "scratch_page": SCRATCH,
        "count": 1,
        "out": outputs(2, 2, 8),
        "input_ids": None,
    }
    assert args["fields"].shape[0] == FIELDS
    with pytest.raises(ValueError, match=match):
        decode_inputs(**change(args))


def test_device_token_ids_may_be_strided():
    """``input_ids`` is any ``[count]`` int64 tensor, as the reference takes it: a strided view
    (every other entry of a longer tensor) feeds its own entries, not the ones its storage holds
    next to each other."""
    count, padded, heads, width, page_size = 3, 4, 2, 8, 16
    gen = torch.Generator().manual_seed(3)
    table = torch.randint(0, 5000, (4, heads, width), generator=gen, dtype=torch.int32).to(DEVICE)
    fields = step_fields(count, padded, [2, 0, 3], [5, 8, 1], page_size, gen)
    input_ids = torch.tensor([11, 900, 12, 901, 13, 902], device=DEVICE)[::2]
    want = decode_inputs_reference(fields, table, width, page_size, SCRATCH, count, input_ids)
    out = outputs(padded, heads, width)
    decode_inputs(fields, table, width, page_size, SCRATCH, count, out, input_ids)
    assert want.input_ids.tolist() == [11, 12, 13, 0]
    assert out[0].tolist() == [11, 12, 13, 0]
