"""Every notebook's "finished function" cells are identical to the functions in helpers/."""
import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import nbformat
import pytest

import helpers

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
MARKER = "# Finished function"


def helpers_functions() -> dict:
    """{name: source} of every top-level function and class defined in a helpers module."""
    found = {}
    for info in pkgutil.iter_modules(helpers.__path__):
        module = importlib.import_module(f"helpers.{info.name}")
        for name, obj in vars(module).items():
            obj = inspect.unwrap(obj) if callable(obj) else obj  # see through decorators such as functools.cache
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and obj.__module__ == module.__name__:
                found[name] = inspect.getsource(obj)
    return found


def finished_cells(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code" and c.source.startswith(MARKER)]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_finished_functions_match_helpers(path):
    cells = finished_cells(path)
    assert cells, f"{path.name} has no cell starting with {MARKER!r}"
    known = helpers_functions()
    for source in cells:
        defs = [n for n in ast.parse(source).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert defs, f"{path.name}: a finished-function cell defines nothing"
        for node in defs:
            assert node.name in known, f"{path.name}: {node.name} is not a function in helpers/"
            start = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            cell_src = "\n".join(source.splitlines()[start - 1 : node.end_lineno])
            assert cell_src.strip() == known[node.name].strip(), f"{path.name}: {node.name} differs from helpers/"


def test_sync_test_can_fail(tmp_path):
    """A notebook whose finished function drifted from helpers/ is caught."""
    nb = nbformat.v4.new_notebook()
    drifted = inspect.getsource(helpers.rms_norm).replace("rsqrt", "sqrt")
    nb.cells = [nbformat.v4.new_code_cell(MARKER + "\n" + drifted)]
    path = tmp_path / "99_drift.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="differs"):
        test_finished_functions_match_helpers(path)
