"""Per-row sampling settings of one decode step, as device tensors."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from lil_sparse.options import SamplingOptions


def with_request_seed(options: SamplingOptions, rng: random.Random | None = None) -> SamplingOptions:
    """``options`` with a seed: its own, or ``rng.getrandbits(63)`` drawn now.

    The engine calls this once at admission, so a request without a seed still samples from one
    fixed noise stream for its whole life, independent of the batches it runs in.
    """
    if options.seed is not None:
        return options
    return replace(options, seed=(rng or random).getrandbits(63))


def _float32_bits(value: float) -> int:
    """The float32 bit pattern of ``value`` as a signed 32-bit integer (fits int32 exactly)."""
    return int(struct.unpack("<i", struct.pack("<f", value))[0])


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Sampling settings of a batch of ``B`` rows, on the device.

    temperature: [B] float32, 1.0 on greedy rows (unused there, and never a divisor of zero).
    top_k:       [B] int64, 0 disables.
    top_p:       [B] float32, 1.0 disables.
    seed:        [B] int64 in [0, 2^63), 0 on greedy rows without a seed.
    greedy:      [B] bool, rows that take the argmax.
    positions:   [B] int64, the sequence position of each row's sampled token (the key of its
                 noise), when built with them; else None.

    Two host values, known from the options without a device sync, let the sampler skip work:
    ``filtering`` is False when no sampled row uses top-k or top-p; ``max_top_k`` is the largest
    top-k of the sampled rows when every filtering row has one (then a top-k of that width
    replaces a full sort of the vocabulary), else 0.
    """

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    seed: torch.Tensor
    greedy: torch.Tensor
    filtering: bool = False
    max_top_k: int = 0
    all_greedy: bool = False  # host flag: no row samples, so no noise is needed
    positions: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.greedy.shape[0])

    @classmethod
    def from_options(
        cls,
        options: Sequence[SamplingOptions],
        device: torch.device | str = "cpu",
        positions: Sequence[int] | None = None,
    ) -> SamplingParams:
        """Build the batch tensors with one host-to-device copy (``positions`` travel in it).

        Every sampled row needs a seed (see :func:`with_request_seed`); raises ``ValueError``
        naming ``seed`` otherwise.
        """
        return cls.from_packed(PackedOptions.pack(options), device, positions)

    @classmethod
    def from_packed(
        cls, packed: PackedOptions, device: torch.device | str = "cpu", positions: Sequence[int] | None = None
    ) -> SamplingParams:
        """:meth:`from_options` from options packed once (a batch that keeps its requests packs
        them once and sends only new positions with them every step)."""
        host = packed.table
        if positions is not None:
            host = torch.cat((host, torch.tensor([positions], dtype=torch.int64).view(1, -1)))
        device = torch.device(device)
        if device.type == "cuda":
            host = host.pin_memory()
        table = host.to(device, non_blocking=True)
        return cls(
            temperature=table[0].to(torch.int32).view(torch.float32),
            top_k=table[1],
            top_p=table[2].to(torch.int32).view(torch.float32),
            seed=table[3],
            greedy=table[4].bool(),
            filtering=packed.filtering,
            max_top_k=packed.max_top_k,
            all_greedy=packed.all_greedy,
            positions=None if positions is None else table[5],
        )


@dataclass(frozen=True, slots=True)
class PackedOptions:
    """The sampling options of ``B`` rows packed on the host: ``table: [5, B] int64`` (temperature
    bits, top_k, top_p bits, seed, greedy; floats as their float32 bit patterns, so the batch
    crosses to the device in a single copy and is split there) and the host flags of
    :class:`SamplingParams`."""

    table: torch.Tensor
    filtering: bool
    max_top_k: int
    all_greedy: bool

    @classmethod
    def pack(cls, options: Sequence[SamplingOptions]) -> PackedOptions:
        """Raises ``ValueError`` naming ``seed`` for a sampled row without a seed."""
        rows: list[tuple[int, ...]] = []
        filtering_rows = [o for o in options if not o.greedy and (o.top_k > 0 or o.top_p < 1.0)]
        top_ks = [o.top_k for o in filtering_rows]
        max_top_k = max(top_ks) if top_ks and min(top_ks) > 0 else 0
        for index, option in enumerate(options):
            if option.seed is None and not option.greedy:
                raise ValueError(
                    f"seed: row {index} samples (temperature {option.temperature}) without a seed; "
                    "assign one at admission with with_request_seed()"
                )
            temperature = 1.0 if option.greedy else option.temperature
            rows.append(
                (
                    _float32_bits(temperature),
                    option.top_k,
                    _float32_bits(option.top_p),
                    option.seed or 0,
                    int(option.greedy),
                )
            )
        table = torch.tensor(rows, dtype=torch.int64).reshape(len(rows), 5).T.contiguous()
        return cls(
            table=table,
            filtering=bool(filtering_rows),
            max_top_k=max_top_k,
            all_greedy=all(option.greedy for option in options),
        )
