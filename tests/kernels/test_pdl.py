"""Programmatic dependent launch: off CUDA no kernel asks for it, and every kernel that can be
launched with it waits for the previous kernel before anything else (lil_sparse/kernels/pdl.py).

The second check reads the kernels' source: a PDL kernel that loaded another kernel's output or
stored anything before ``gdc_wait`` would race the kernel before it, and no numerical test on CPU
can see that (the interpreter runs no PDL). The GPU tests run every kernel with PDL on the H200.
"""

from __future__ import annotations

import ast
import inspect

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels import fused_layers, gemv, paged_decode, pdl, rotary_append

KERNEL_MODULES = [fused_layers, gemv, paged_decode, rotary_append]


def test_no_pdl_off_cuda(monkeypatch):
    cpu = torch.zeros(1)
    assert not pdl.use_pdl(cpu) and pdl.launch_options(cpu) == {}
    monkeypatch.setattr(pdl, "ENABLED", False)
    assert not pdl.use_pdl(cpu) and pdl.launch_options(cpu) == {}


def test_capability_is_asked_once_per_device(monkeypatch):
    """Launches ask :func:`pdl.use_pdl` twice each: the device query runs once per device. (No
    CUDA here: the query stands in for the driver's answer, 9.0 on device 0 and 8.0 on 1.)"""
    asked: list[torch.device] = []

    def capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return (9, 0) if device.index == 0 else (8, 0)

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    pdl.device_supports_pdl.cache_clear()
    try:
        answers = [pdl.device_supports_pdl(torch.device("cuda", index)) for _ in range(3) for index in (0, 1)]
    finally:
        pdl.device_supports_pdl.cache_clear()  # forget the stand-in's answers
    assert answers == [True, False] * 3
    assert asked == [torch.device("cuda", 0), torch.device("cuda", 1)]


def pdl_kernels(module) -> list[ast.FunctionDef]:
    """The module's ``@triton.jit`` functions that take a ``PDL`` argument."""
    tree = ast.parse(inspect.getsource(module))
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(arg.arg == "PDL" for arg in node.args.args)
    ]


BEFORE_THE_WAIT = ("tl.program_id", "tl.arange")
"""Calls a PDL kernel may make before its wait, besides ``_prefetch_*`` functions (loads of
weights, which no kernel of a step writes): index arithmetic only."""


def is_the_wait(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and ast.unparse(statement) == "wait_for_previous(PDL)"


def allowed_before_the_wait(statement: ast.stmt) -> bool:
    """An assignment whose calls are index arithmetic or ``_prefetch_*`` loads."""
    if not isinstance(statement, ast.Assign):
        return False
    calls = [ast.unparse(node.func) for node in ast.walk(statement.value) if isinstance(node, ast.Call)]
    return all(name in BEFORE_THE_WAIT or name.startswith("_prefetch_") for name in calls)


def test_the_prefix_rule_refuses_loads_stores_and_other_calls():
    """The rule below, on statements it must refuse and accept (so a weaker rule fails here)."""
    refused = ["x = tl.load(x_ptr)", "tl.store(out_ptr, 0)", "y = _row_block_dots(x_ptr)", "if P:\n    a = 1"]
    accepted = ["rows = tl.program_id(0) * 4 + tl.arange(0, 4)", "w = _prefetch_weight_tile(w_ptr, rows)"]
    assert not any(allowed_before_the_wait(ast.parse(source).body[0]) for source in refused)
    assert all(allowed_before_the_wait(ast.parse(source).body[0]) for source in accepted)


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_pdl_kernel_waits_first(module):
    """Before ``wait_for_previous(PDL)`` a kernel computes indices and loads weights only
    (``_prefetch_*`` functions, which must not store or wait); nothing reads another kernel's
    output or stores."""
    kernels = pdl_kernels(module)
    assert kernels, f"{module.__name__} launches with launch_options but has no PDL kernel"
    for kernel in kernels:
        body = kernel.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        waits = [i for i, statement in enumerate(body) if is_the_wait(statement)]
        assert waits, f"{module.__name__}.{kernel.name} never calls wait_for_previous(PDL)"
        for statement in body[: waits[0]]:
            assert allowed_before_the_wait(statement), (
                f"{module.__name__}.{kernel.name}: `{ast.unparse(statement)[:60]}` before the wait"
            )
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_prefetch_"):
            calls = {ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)}
            assert not {c for c in calls if "store" in c or "atomic" in c or "wait" in c}, node.name


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_pdl_launch_passes_its_flag(module):
    """Each launch with ``launch_options`` also sets the kernel's ``PDL`` constexpr, from the same
    tensor: launched with PDL but compiled without the wait would race."""
    tree = ast.parse(inspect.getsource(module))
    launches = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and any(kw.arg is None and "launch_options" in ast.unparse(kw.value)
                                              for kw in node.keywords)
    ]  # fmt: skip
    assert launches
    for call in launches:
        options = next(kw for kw in call.keywords if kw.arg is None)
        flag = next((kw for kw in call.keywords if kw.arg == "PDL"), None)
        assert flag is not None, f"{module.__name__}: a launch_options launch without PDL="
        tensor = ast.unparse(options.value).removeprefix("launch_options(")
        assert ast.unparse(flag.value) == f"use_pdl({tensor}", ast.unparse(call)[:120]
