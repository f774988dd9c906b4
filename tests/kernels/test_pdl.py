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


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_pdl_kernel_waits_first(module):
    kernels = pdl_kernels(module)
    assert kernels, f"{module.__name__} launches with launch_options but has no PDL kernel"
    for kernel in kernels:
        body = kernel.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        first = body[0]
        assert (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Call)
            and ast.unparse(first.value) == "wait_for_previous(PDL)"
        ), f"{module.__name__}.{kernel.name} must call wait_for_previous(PDL) first"


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
