"""Direct launches of compiled Triton kernels (:mod:`lil_sparse.kernels.launcher`).

On CPU: the key (what a compiled kernel depends on) and the plumbing, with a stand-in kernel
that records what it is called with. On CUDA: the real kernels launched directly give the JIT's
bits, a key never serves arguments Triton would specialize differently, and a direct launch is
captured by a CUDA graph like any other.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels import launcher
from lil_sparse.kernels.launcher import KernelLauncher, _key

CUDA = torch.cuda.is_available()


class Compiled:
    """A stand-in ``CompiledKernel``: ``compiled[grid](*args)`` records the call."""

    packed_metadata = object()

    def __init__(self, calls: list[tuple[object, ...]]) -> None:
        self.calls = calls

    def __getitem__(self, grid: tuple[int, int, int]):
        return lambda *args: self.calls.append(("direct", grid, *args))


class Kernel:
    """A stand-in ``triton.jit`` function of parameters ``x, n, BLOCK, FLAG``."""

    arg_names = ("x", "n", "BLOCK", "FLAG")

    def __init__(self, compiled: bool = True) -> None:
        self.calls: list[tuple[object, ...]] = []
        self.compiled = compiled

    def __getitem__(self, grid: tuple[int, ...]):
        def run(*args: object, **keywords: object) -> object:
            self.calls.append(("jit", grid, *args, tuple(sorted(keywords.items()))))
            return Compiled(self.calls) if self.compiled else None

        return run


def test_the_key_holds_what_triton_specializes_on():
    x = torch.zeros(8)
    base = _key((x, 16), {"BLOCK": 4})
    assert base is not None
    assert _key((x, 16), {"BLOCK": 4}) == base
    assert _key((x, 17), {"BLOCK": 4}) != base  # every integer by value (1, multiples of 16)
    assert _key((x, 1), {"BLOCK": 4}) != _key((x, True), {"BLOCK": 4})  # bool is not int
    assert _key((x.double(), 16), {"BLOCK": 4}) != base  # the dtype
    assert _key((x, 16), {"BLOCK": 8}) != base  # constexprs and launch options
    assert _key((torch.zeros(8), 16), {"BLOCK": 4}) == base  # not the address itself
    assert _key((x, 2.5), {}) == _key((x, 0.5), {})  # floats are not specialized


@pytest.mark.parametrize(
    "args, keywords",
    [
        ((torch.zeros(8)[1:], 16), {}),  # 4 bytes past a 16-byte boundary: Triton specializes on it
        (("text", 16), {}),  # an argument of another kind
        ((torch.zeros(8), 16), {"BLOCK": [4]}),  # an unhashable keyword
    ],
)
def test_launches_the_key_cannot_describe_take_the_jit(args, keywords):
    assert _key(args, keywords) is None


def test_the_first_launch_takes_the_jit_and_later_ones_the_compiled_kernel():
    kernel = Kernel()
    launch = KernelLauncher(kernel)
    x = torch.zeros(4)
    for _ in range(3):
        launch((5, 2), x, 7, BLOCK=32, FLAG=True, num_warps=4)
    assert kernel.calls[0] == ("jit", (5, 2), x, 7, (("BLOCK", 32), ("FLAG", True), ("num_warps", 4)))
    # The compiled kernel takes every parameter in order (constexprs too), on a 3-entry grid, and
    # not the launch options (they are compiled in).
    assert kernel.calls[1:] == [("direct", (5, 2, 1), x, 7, 32, True)] * 2
    assert launch.direct_launches == 2


def test_one_compiled_kernel_serves_every_grid():
    """A prefill's kernels launch on a grid that follows the prompt's length: the grid is not
    compiled in, so after the first launch every grid takes the compiled kernel, each on its own
    grid."""
    kernel = Kernel()
    launch = KernelLauncher(kernel)
    x = torch.zeros(4)
    for rows in (5, 9, 2048):
        launch((rows,), x, 7, BLOCK=32, FLAG=True)
    assert [call[:2] for call in kernel.calls] == [
        ("jit", (5,)),
        ("direct", (9, 1, 1)),
        ("direct", (2048, 1, 1)),
    ]
    assert launch.direct_launches == 2


def test_switched_off_or_without_a_compiled_kernel_every_launch_takes_the_jit(monkeypatch):
    interpreted = Kernel(compiled=False)  # Triton's interpreter returns no compiled kernel
    launch = KernelLauncher(interpreted)
    for _ in range(3):
        launch((1,), torch.zeros(4), 7, BLOCK=32, FLAG=False)
    assert [call[0] for call in interpreted.calls] == ["jit"] * 3
    monkeypatch.setattr(launcher, "ENABLED", False)
    kernel = Kernel()
    launch = KernelLauncher(kernel)
    for _ in range(3):
        launch((1,), torch.zeros(4), 7, BLOCK=32, FLAG=False)
    assert [call[0] for call in kernel.calls] == ["jit"] * 3 and launch.direct_launches == 0


def test_parameters_left_to_their_defaults_keep_the_jit():
    kernel = Kernel()
    launch = KernelLauncher(kernel)
    for _ in range(2):
        launch((1,), torch.zeros(4), 7, BLOCK=32)  # FLAG not passed
    assert [call[0] for call in kernel.calls] == ["jit"] * 2


def test_the_least_recently_used_key_goes_beyond_the_limit(monkeypatch):
    monkeypatch.setattr(launcher, "MAX_KEYS", 2)
    kernel = Kernel()
    launch = KernelLauncher(kernel)
    x = torch.zeros(4)
    for n in (1, 2, 1, 3, 1, 2):  # 2 is dropped when 3 comes (1 was used more recently)
        launch((1,), x, n, BLOCK=32, FLAG=False)
    assert [call[0] for call in kernel.calls] == ["jit", "jit", "direct", "jit", "direct", "jit"]


@pytest.mark.skipif(not CUDA, reason="compiled kernels need CUDA")
@pytest.mark.parametrize("rows, vocab", [(1, 49152), (8, 151936), (3, 1000), (2, 1), (4, 2049)])
def test_direct_launches_give_the_jits_bits(rows, vocab, monkeypatch):
    from lil_sparse.kernels import row_argmax

    logits = torch.randn(rows, vocab, device="cuda") * 4
    logits[0, vocab // 2] = logits[0].max()  # a tie: the first index wins either way
    monkeypatch.setattr(launcher, "ENABLED", False)
    want_token, want_record = row_argmax.greedy_record(logits)
    want = row_argmax.argmax_logsumexp(logits)
    monkeypatch.setattr(launcher, "ENABLED", True)
    before = row_argmax._CHUNK_MAX.direct_launches + row_argmax._MERGE_CHUNKS.direct_launches
    for _ in range(3):
        token, record = row_argmax.greedy_record(logits)
        assert torch.equal(token, want_token) and torch.equal(record, want_record)
        got = row_argmax.argmax_logsumexp(logits)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    after = row_argmax._CHUNK_MAX.direct_launches + row_argmax._MERGE_CHUNKS.direct_launches
    assert after - before >= 8  # both kernels, both variants, from the second call on


@pytest.mark.skipif(not CUDA, reason="compiled kernels need CUDA")
def test_a_misaligned_view_is_not_served_by_an_aligned_key():
    from lil_sparse.kernels import row_argmax

    base = torch.randn(2, 4097, device="cuda")
    aligned = base[:, :4096]
    misaligned = base[:, 1:]  # 4 bytes in: Triton compiles it without the 16-byte alignment
    for _ in range(2):
        row_argmax.argmax_logsumexp(aligned)
    want = row_argmax.argmax_logsumexp_reference(misaligned)
    before = row_argmax._CHUNK_MAX.direct_launches
    token, row_max, _ = row_argmax.argmax_logsumexp(misaligned)
    assert row_argmax._CHUNK_MAX.direct_launches == before
    assert torch.equal(token, want[0]) and torch.equal(row_max, want[1])


@pytest.mark.skipif(not CUDA, reason="compiled kernels need CUDA")
def test_a_direct_launch_is_captured_by_a_cuda_graph():
    from lil_sparse.kernels import row_argmax

    logits = torch.randn(4, 5000, device="cuda")
    for _ in range(2):  # the second call's launches are direct
        row_argmax.greedy_record(logits)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        token, record = row_argmax.greedy_record(logits)
    logits.copy_(torch.randn(4, 5000, device="cuda"))
    graph.replay()
    want_token, want_record = row_argmax.greedy_record_reference(logits)
    assert torch.equal(token, want_token) and torch.equal(record[0], want_record[0])
    torch.testing.assert_close(record[1], want_record[1], rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(not CUDA, reason="compiled kernels need CUDA")
def test_a_prefill_kernel_launched_directly_on_every_grid_gives_the_jits_bits(monkeypatch):
    """``add_rmsnorm`` at prompt lengths it has not seen: from the second launch on each takes
    the compiled kernel on its own grid, with the JIT's bits."""
    from lil_sparse.kernels import fused_layers

    weight = torch.randn(576, device="cuda", dtype=torch.bfloat16)
    before = fused_layers._ADD_RMSNORM.direct_launches
    for rows in (3, 1, 300, 2049):
        x = torch.randn(rows, 576, device="cuda", dtype=torch.bfloat16)
        residual = torch.randn_like(x)
        monkeypatch.setattr(launcher, "ENABLED", False)
        want_residual = residual.clone()
        want = fused_layers.add_rmsnorm(x, want_residual, weight, 1e-5)
        monkeypatch.setattr(launcher, "ENABLED", True)
        got = fused_layers.add_rmsnorm(x, residual, weight, 1e-5)
        assert torch.equal(got, want) and torch.equal(residual, want_residual)
    assert fused_layers._ADD_RMSNORM.direct_launches - before >= 3
