"""Every module-level value a ``@triton.jit`` function reads is a ``tl.constexpr``.

Triton refuses a plain Python int, float or bool global when it compiles a kernel for a GPU
("Cannot access global variable ... from within @jit'ed function"), but its CPU interpreter,
which runs this suite in CI, reads it without complaint: the sampler's Gumbel noise kernel
passed every interpreter test and then failed to compile on the H200 (2026-12-01). This check
reads each kernel's code object, so CPU CI sees what only a GPU compile would.
"""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

import lil_sparse.kernels  # noqa: E402

PLAIN_SCALARS = (bool, int, float)


def kernel_modules() -> list[types.ModuleType]:
    """Every module of :mod:`lil_sparse.kernels`."""
    names = [info.name for info in pkgutil.iter_modules(lil_sparse.kernels.__path__)]
    return [importlib.import_module(f"lil_sparse.kernels.{name}") for name in sorted(names)]


def jit_functions(module: types.ModuleType) -> list[tuple[str, types.FunctionType]]:
    """``(name, python function)`` of each ``@triton.jit`` function defined in ``module``."""
    found = []
    for name, value in vars(module).items():
        # JITFunction, or InterpretedFunction under TRITON_INTERPRET=1 (CI): both keep ``fn``.
        fn = getattr(value, "fn", None)
        is_jit = type(value).__module__.startswith("triton.runtime")
        if is_jit and isinstance(fn, types.FunctionType) and fn.__module__ == module.__name__:
            found.append((name, fn))
    return found


def plain_scalar_globals(fn: types.FunctionType) -> list[str]:
    """The global names ``fn`` reads whose module value is a plain bool, int or float."""
    names = []
    for name in fn.__code__.co_names:
        value = fn.__globals__.get(name)
        if isinstance(value, PLAIN_SCALARS) and not isinstance(value, tl.constexpr):
            names.append(name)
    return names


def test_the_check_finds_kernels_in_every_module():
    counted = sum(len(jit_functions(module)) for module in kernel_modules())
    assert counted >= 30  # 36 on 2026-12-01


FIXTURE_WIDTH = 8
FIXTURE_SHIFT = tl.constexpr(3)


def fixture_kernel(x):
    """A kernel body reading one constexpr global and one plain int global."""
    return (x >> FIXTURE_SHIFT) & FIXTURE_WIDTH


def test_the_check_refuses_a_plain_int_global():
    assert plain_scalar_globals(fixture_kernel) == ["FIXTURE_WIDTH"]


@pytest.mark.parametrize("module", kernel_modules(), ids=lambda module: module.__name__.rsplit(".", 1)[-1])
def test_jit_functions_read_only_constexpr_scalars(module):
    offenders = {name: plain_scalar_globals(fn) for name, fn in jit_functions(module)}
    assert {name: globals_ for name, globals_ in offenders.items() if globals_} == {}
