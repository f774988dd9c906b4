"""Launch a Triton kernel's compiled binary directly once its specialization is known.

``kernel[grid](*args, **constexprs)`` (Triton's ``JITFunction.run``) binds the arguments, works
out their specialization and the cache key, and looks the compiled kernel up on every call, then
launches it. For a kernel launched outside a CUDA graph that bookkeeping is most of the launch:
on the H200 machine's host the argmax's first kernel took 29-33 us of host time per launch
through the JIT and 14-15 us as ``CompiledKernel[grid](*args)`` (Triton's own launcher for a
compiled kernel), against 11 us for a one-element PyTorch kernel (``bench/launch_host.py``,
2026-12-01 20:10 UTC, Triton 3.6.0, 2000 calls each at batch 1 and 8). Every Triton launch site
of the engine goes through a :class:`KernelLauncher`: the kernels a CUDA-graph step launches
outside its graph (the step's inputs, the greedy pick's argmax) and every per-layer kernel of
prefill and of eager decode steps. End to end on SmolLM2 the effect is small against the host's
noise (H200, 2026-12-01, ``bench/launcher_ab.py``, arms alternating by round; TTFT and the eager
decode step read 14-39 ms): with repeated prompt lengths (22:13, 22:31) a prefill's time to first
token and an eager decode step were faster with it in 54 of 64 paired rounds, by medians of
1.6-3.2 ms; with every prompt's length new (22:40, this key) in 17 of 28, by medians of -0.1 to
4.6 ms.

:class:`KernelLauncher` keeps, per specialization, the compiled kernel the JIT returned and
launches it directly afterwards, on each launch's own grid (the grid is a launch parameter, not
part of what Triton compiles: a prefill's kernels, whose grid follows the prompt's length, reuse
one compiled kernel for every length). Its key holds everything Triton specializes on,
conservatively: every integer and bool argument by value (Triton types an integer by its range
and specializes one equal to 1 or divisible by 16), every tensor by dtype (and the first one's
device), and every keyword (constexprs and launch options) by value; a tensor whose address is
not a multiple of 16 bytes (which Triton would specialize the other way) and any other kind of
argument take the JIT, as does everything in Triton's CPU interpreter, where there is no
compiled kernel. The first launch of a key goes through the JIT, which compiles or finds the
kernel exactly as before. The reference is the JIT launch itself:
``tests/kernels/test_launcher.py`` checks on CUDA that both give the same bits (the argmax at
five shapes, ``add_rmsnorm`` at unseen lengths) and that a misaligned view is not served by an
aligned key.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

ENABLED = True
"""Whether :class:`KernelLauncher` launches compiled kernels directly (benchmarks and tests
switch it off to compare with the JIT)."""

MAX_KEYS = 256
"""Specializations kept per kernel; a new one beyond this drops the least recently used."""

_JIT = object()  # a key whose launches take the JIT (no compiled kernel to launch)


class KernelLauncher:
    """``launcher(grid, *args, **keywords)`` launches ``kernel`` like ``kernel[grid](*args,
    **keywords)``. ``args`` are the kernel's leading parameters in order; ``keywords`` name the
    rest of its parameters (every one of them: no defaults are filled in) plus Triton's launch
    options (``num_warps``, the PDL flag, ...). Returns None."""

    def __init__(self, kernel: Any) -> None:
        self.kernel = kernel
        self.direct_launches = 0  # launches that skipped the JIT (for tests and benchmarks)
        self._runners: OrderedDict[tuple[object, ...], Any] = OrderedDict()

    def __call__(self, grid: tuple[int, ...], *args: object, **keywords: object) -> None:
        key = _key(args, keywords) if ENABLED else None
        if key is None:
            self.kernel[grid](*args, **keywords)
            return
        runner = self._runners.get(key)
        if runner is None:
            self._remember(key, self.kernel[grid](*args, **keywords), len(args), keywords)
            return
        if runner is _JIT:
            self.kernel[grid](*args, **keywords)
            return
        self._runners.move_to_end(key)
        compiled, parameters = runner
        compiled[(*grid, 1, 1)[:3]](*args, *(keywords[name] for name in parameters))
        self.direct_launches += 1

    def _remember(
        self,
        key: tuple[object, ...],
        compiled: object,
        leading: int,
        keywords: dict[str, object],
    ) -> None:
        if len(self._runners) >= MAX_KEYS:
            self._runners.popitem(last=False)
        names = list(getattr(self.kernel, "arg_names", ()))[leading:]
        if hasattr(compiled, "result"):  # an asynchronous compile's future
            compiled = compiled.result()
        complete = all(name in keywords for name in names)
        if not complete or not hasattr(compiled, "packed_metadata"):
            self._runners[key] = _JIT  # the interpreter, or parameters left to their defaults
            return
        self._runners[key] = (compiled, tuple(names))


def _key(args: tuple[object, ...], keywords: dict[str, object]) -> tuple[object, ...] | None:
    """What the launch's compiled kernel depends on (None: take the JIT every time). Not the
    grid: Triton compiles a kernel for its arguments' specialization and launches it on any
    grid."""
    parts: list[object] = []
    device = None
    for arg in args:
        if isinstance(arg, torch.Tensor):
            if arg.data_ptr() % 16:
                return None
            if device is None:  # a compiled kernel is loaded per device
                device = arg.get_device()
                parts.append(device)
            parts.append(arg.dtype)
        elif isinstance(arg, int):  # bool included, told apart by its type
            parts.append((type(arg), arg))
        elif isinstance(arg, float):
            parts.append(float)
        else:
            return None
    parts.append(tuple(keywords.items()))
    key = tuple(parts)
    try:
        hash(key)
    except TypeError:  # an unhashable keyword value
        return None
    return key
