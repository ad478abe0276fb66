"""Finished-function cells paste: in course order, each one runs in a fresh namespace that holds only torch,
math and the earlier finished cells, and every name its functions use is defined by then.

This is the README's promise to a learner who copies the finished cells into a notebook of their own.
"""
import ast
import builtins
import dis
import importlib
import inspect
import math
import pkgutil
import types
from pathlib import Path

import nbformat
import pytest
import torch

import helpers
from helpers import layers

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MARKER = "# Finished function"


def finished_cells() -> list[tuple[str, str, str]]:
    """[(notebook name, where, source)] of every finished-function cell, in course order."""
    cells = []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code" and c.source.startswith(MARKER):
                cells.append((path.name, f"{path.name} cell {i}", c.source))
    return cells


def global_names(code: types.CodeType) -> set[str]:
    """Names a function reads as globals (LOAD_GLOBAL / LOAD_NAME), nested functions included."""
    names = {ins.argval for ins in dis.get_instructions(code) if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME")}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= global_names(const)
    return names


def fresh_namespace() -> dict:
    return {"torch": torch, "math": math, "__name__": "pasted"}


def paste_cells(cells, ns: dict | None = None) -> dict:
    """Run the cells one after another in one namespace (fresh by default); fail on the first that breaks."""
    ns = fresh_namespace() if ns is None else ns
    for _, where, source in cells:
        before = set(ns)
        try:
            exec(compile(source, f"<{where}>", "exec"), ns)
        except Exception as e:  # noqa: BLE001 - any error is a cell that does not paste
            pytest.fail(f"{where} does not run when pasted after the earlier finished cells: {e!r}")
        for name in set(ns) - before:
            fn = ns[name]
            if isinstance(fn, types.FunctionType) and fn.__module__ == "pasted":
                missing = global_names(fn.__code__) - set(ns) - set(dir(builtins))
                assert not missing, f"{where}: {name} uses {sorted(missing)}, defined by no earlier finished cell"
    return ns


def helpers_globals() -> dict:
    """Every top-level name of every helpers module (functions, classes, constants)."""
    found = {}
    for info in pkgutil.iter_modules(helpers.__path__):
        if info.name != "__main__":
            found.update(vars(importlib.import_module(f"helpers.{info.name}")))
    return found


def earlier_namespace(sources: list[str]) -> dict:
    """What the given finished cells define, taken from helpers/ (which the sync test keeps identical to
    them) and their own import lines: so that one notebook can be checked on its own."""
    known, ns = helpers_globals(), fresh_namespace()
    for src in sources:
        for node in ast.parse(src).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in known:
                ns[node.name] = known[node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for name in {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)} & set(known):
                    ns[name] = known[name]
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                exec(compile(ast.Module([node], []), "<import>", "exec"), ns)
    return ns


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_finished_cells_paste_after_the_earlier_notebooks(path):
    """One notebook at a time, so that each notebook's failure is reported as its own."""
    cells = finished_cells()
    ns = earlier_namespace([src for nb, _, src in cells if nb < path.name])
    paste_cells([c for c in cells if c[0] == path.name], ns)


def test_every_finished_cell_pastes_in_course_order():
    cells = finished_cells()
    assert len({nb for nb, _, _ in cells}) == len(NOTEBOOKS)
    paste_cells(cells)


def test_pasted_functions_run_a_forward_pass(tiny):
    weights, params, tokenizer = tiny
    ns = paste_cells(finished_cells())
    assert ns["forward"] is not helpers.forward
    tokens = tokenizer.encode(helpers.COURSE_PROMPT, bos=True, eos=False)
    pasted = ns["forward"](weights, params, tokens)
    assert torch.equal(pasted, helpers.forward(weights, params, tokens))
    assert tokenizer.decode([int(pasted[-1].argmax())]) == "42"


def test_paste_test_can_fail():
    """A cell using a name no earlier cell defines is caught (as 10's cell once used helpers.COURSE_PROMPT)."""
    cells = [("a", "ok", MARKER + "\ndef f(x):\n    return torch.zeros(x)\n"),
             ("b", "broken", MARKER + "\ndef g(x):\n    return Path(x)\n")]
    with pytest.raises(AssertionError, match=r"broken: g uses \['Path'\]"):
        paste_cells(cells)
    with pytest.raises(pytest.fail.Exception, match="broken"):
        paste_cells([("b", "broken", MARKER + "\nprint(weights)\n")])


def test_each_layer_function_needs_only_torch_and_math():
    """layers.py promises each function can be pasted with torch, math and the other layer functions."""
    allowed = {name for name, obj in vars(layers).items() if inspect.isfunction(obj)} | {"torch", "math"}
    for name, fn in vars(layers).items():
        if inspect.isfunction(fn) and fn.__module__ == layers.__name__:
            missing = global_names(fn.__code__) - allowed - set(dir(builtins))
            assert not missing, f"layers.{name} uses {missing}"
