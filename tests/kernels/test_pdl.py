"""Programmatic dependent launch: off CUDA no kernel asks for it, and every kernel that can be
launched with it waits for the previous kernel before it reads another kernel's output or stores
(the rule of lil_sparse/kernels/pdl.py).

The rule checks read the kernels' source: a PDL kernel that loaded another kernel's output or
stored anything before ``gdc_wait`` would race the kernel before it, and no numerical test on CPU
can see that (the interpreter runs no PDL). Before its wait a kernel may compute indices and load
weights through its module's ``_prefetch_*`` helpers; the rule is tried on kernels it must refuse.
The GPU tests run every kernel with PDL on the H200.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

from lil_sparse.kernels import (
    fused_layers,
    gemv,
    page_scores,
    page_select,
    paged_decode,
    pdl,
    quest_chain,
    rotary_append,
    row_argmax,
    skinny_gemm,
)

KERNEL_MODULES = [
    fused_layers,
    gemv,
    page_scores,
    page_select,
    paged_decode,
    quest_chain,
    rotary_append,
    row_argmax,
    skinny_gemm,
]


def test_every_module_that_launches_with_pdl_is_checked():
    """A module of the engine launching with PDL (``launch_options``, or Triton's ``launch_pdl``
    itself) but missing from :data:`KERNEL_MODULES` would escape the rule checks below."""
    root = Path(pdl.__file__).parents[2]  # the directory holding lil_sparse/
    launching = {
        ".".join(path.relative_to(root).with_suffix("").parts)
        for path in (root / "lil_sparse").rglob("*.py")
        if "launch_options(" in path.read_text() or "launch_pdl" in path.read_text()
    }
    assert launching - {pdl.__name__} == {module.__name__ for module in KERNEL_MODULES}


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


INDEX_CALLS = ("tl.program_id", "tl.arange")
"""Calls a PDL kernel may make before its wait besides its module's ``_prefetch_*`` helpers."""

WEIGHT_POINTERS = ("w_ptr",)
"""Kernel parameters that point at model weights, which no kernel of a step writes: the only
pointers a PDL kernel may name before its wait. The rule reads pointers by name: every kernel
here names its pointer parameters ``*_ptr``, and a parameter added here is a claim about what
its launches pass (``gemv._launch`` passes the weight)."""

FORBIDDEN_IN_PREFETCH = ("store", "atomic", "asm", "gdc", "barrier", "wait")
"""Words of ``tl`` calls a ``_prefetch_*`` helper may not make: writes, waits, inline assembly."""


def source_tree(module) -> ast.Module:
    return ast.parse(inspect.getsource(module))


def pdl_kernels(tree: ast.Module) -> list[ast.FunctionDef]:
    """The module's ``@triton.jit`` functions that take a ``PDL`` argument."""
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and any(arg.arg == "PDL" for arg in node.args.args)
    ]


def call_names(node: ast.AST) -> list[str]:
    return [ast.unparse(call.func) for call in ast.walk(node) if isinstance(call, ast.Call)]


def is_the_wait(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and ast.unparse(statement) == "wait_for_previous(PDL)"


def before_the_wait_problems(statement: ast.stmt, helpers: set[str]) -> list[str]:
    """Why ``statement`` may not run before a PDL kernel's wait (empty: it may). It must be an
    assignment whose calls compute indices (:data:`INDEX_CALLS`) or are the module's
    ``_prefetch_*`` helpers, and whose only pointers are weights (:data:`WEIGHT_POINTERS`), so
    those helpers load nothing another kernel writes."""
    text = ast.unparse(statement)[:60]
    if not isinstance(statement, ast.Assign):
        return [f"`{text}`: only assignments may come before the wait"]
    problems = [
        f"`{text}`: calls {name}"
        for name in call_names(statement.value)
        if name not in INDEX_CALLS and name not in helpers
    ]
    pointers = {
        node.id for node in ast.walk(statement) if isinstance(node, ast.Name) and node.id.endswith("_ptr")
    }
    problems += [f"`{text}`: names {name}, not a weight" for name in sorted(pointers - set(WEIGHT_POINTERS))]
    return problems


def pdl_rule_problems(tree: ast.Module) -> list[str]:
    """Every breach of the PDL rule in a kernel module's source (lil_sparse/kernels/pdl.py): each
    PDL kernel calls ``wait_for_previous(PDL)`` in its body, and before that only computes indices
    and loads weights through ``_prefetch_*`` helpers defined in the module, which call only
    ``tl`` functions that neither write nor wait (:data:`FORBIDDEN_IN_PREFETCH`)."""
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    helpers = {node.name: node for node in functions if node.name.startswith("_prefetch_")}
    problems = []
    for name, helper in helpers.items():
        for call in call_names(helper):
            if call not in helpers and (
                not call.startswith("tl.") or any(word in call for word in FORBIDDEN_IN_PREFETCH)
            ):
                problems.append(f"{name}: calls {call}")
    for kernel in pdl_kernels(tree):
        body = kernel.body
        if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            body = body[1:]  # the docstring
        waits = [i for i, statement in enumerate(body) if is_the_wait(statement)]
        if not waits:
            problems.append(f"{kernel.name}: never calls wait_for_previous(PDL)")
            continue
        for statement in body[: waits[0]]:
            problems += [
                f"{kernel.name}: {problem}" for problem in before_the_wait_problems(statement, set(helpers))
            ]
    return problems


PREFETCH_HELPER = """
def _prefetch_weight_tile(w_ptr, rows):
    return tl.load(w_ptr + rows)
"""


def kernel_source(before_the_wait: str, helper: str = PREFETCH_HELPER) -> str:
    lines = "".join(f"    {line}\n" for line in before_the_wait.splitlines())
    kernel = f"def _kernel(x_ptr, w_ptr, out_ptr, n, PDL: tl.constexpr):\n{lines}    wait_for_previous(PDL)\n"
    return helper + "\n" + kernel


@pytest.mark.parametrize(
    "before_the_wait, helper",
    [
        ("x = tl.load(x_ptr)", PREFETCH_HELPER),
        ("tl.store(out_ptr, 0)", PREFETCH_HELPER),
        ("y = _row_block_dots(x_ptr)", PREFETCH_HELPER),
        ("if n:\n    a = 1", PREFETCH_HELPER),
        ("x = _prefetch_weight_tile(x_ptr, 0)", PREFETCH_HELPER),  # an activation through the helper
        ("rows = x_ptr + 1\nw = _prefetch_weight_tile(w_ptr, rows)", PREFETCH_HELPER),
        ("w = _prefetch_elsewhere(w_ptr, 0)", PREFETCH_HELPER),  # not defined here: unchecked
        (
            "w = _prefetch_weight_tile(w_ptr, 0)",
            "def _prefetch_weight_tile(w_ptr, rows):\n    tl.store(w_ptr, 0)\n",
        ),
        (
            "w = _prefetch_weight_tile(w_ptr, 0)",
            "def _prefetch_weight_tile(w_ptr, rows):\n    return _dots(w_ptr)\n",
        ),
    ],
)
def test_the_pdl_rule_refuses(before_the_wait, helper):
    """The rule on kernels it must refuse (so a weaker rule fails here)."""
    assert pdl_rule_problems(ast.parse(kernel_source(before_the_wait, helper)))


def test_the_pdl_rule_accepts_indices_and_weight_prefetches():
    before = "\n".join(
        [
            "rows = tl.program_id(0) * 4 + tl.arange(0, 4)",
            "mask = rows < n",
            "w = _prefetch_weight_tile(w_ptr, rows)",
        ]
    )
    assert pdl_rule_problems(ast.parse(kernel_source(before))) == []


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_pdl_kernel_waits_before_reading_activations(module):
    """Before ``wait_for_previous(PDL)`` a kernel computes indices and loads weights only
    (:func:`pdl_rule_problems`); nothing reads another kernel's output or stores."""
    tree = source_tree(module)
    assert pdl_kernels(tree), f"{module.__name__} launches with launch_options but has no PDL kernel"
    assert pdl_rule_problems(tree) == []


@pytest.mark.parametrize("module", KERNEL_MODULES, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_pdl_launch_passes_its_flag(module):
    """Each launch with ``launch_options`` also sets the kernel's ``PDL`` constexpr, from the same
    tensor: launched with PDL but compiled without the wait would race."""
    tree = source_tree(module)
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


def test_the_gemv_prefetching_an_activation_breaks_the_rule():
    """The real GEMV kernel with its first prefetch pointed at the input row instead of the
    weight: the rule sees it (so the check above reads the kernel that runs)."""
    source = inspect.getsource(gemv)
    prefetch = "_prefetch_weight_tile(w_ptr, rows, row_mask, w_stride, 0,"
    assert source.count(prefetch) == 1
    mutated = ast.parse(source.replace(prefetch, prefetch.replace("w_ptr", "x_ptr")))
    [problem] = pdl_rule_problems(mutated)
    assert problem.startswith("_gemv: `gate0 = _prefetch_weight_tile(x_ptr") and problem.endswith(
        "names x_ptr, not a weight"
    )
