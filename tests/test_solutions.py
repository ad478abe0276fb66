"""The solutions in notebooks/solutions/ pass their checkers, and every exercise of a notebook has a solution there.

An exercise is a check cell `helpers.exercises.check_<name>(<name>)` at the end of a notebook (after a stub cell
that raises NotImplementedError); its solution is the function <name> in notebooks/solutions/<notebook>.py.
"""
import importlib.util
import inspect
import re
from pathlib import Path

import nbformat
import pytest

from helpers import exercises

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("[0-9][0-9]_*.py"))
CHECK = re.compile(r"helpers\.exercises\.check_(\w+)\((\w+)\)")


def load(path: Path):
    spec = importlib.util.spec_from_file_location(f"solution_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solved(path: Path) -> dict:
    """{name: function} of the functions a solution file defines that have a checker."""
    module = load(path)
    return {name: fn for name, fn in vars(module).items()
            if inspect.isfunction(fn) and fn.__module__ == module.__name__ and hasattr(exercises, f"check_{name}")}


def exercise_names(notebook: Path) -> list[str]:
    nb = nbformat.read(notebook, as_version=4)
    return [m.group(1) for c in nb.cells if c.cell_type == "code" for m in CHECK.finditer(c.source)]


CASES = [(path, name) for path in SOLUTIONS for name in solved(path)]


@pytest.mark.parametrize("path, name", CASES, ids=[f"{p.stem}-{n}" for p, n in CASES])
def test_solution_passes_its_checker(capsys, path, name):
    ok = getattr(exercises, f"check_{name}")(solved(path)[name])
    out = capsys.readouterr().out
    assert ok is True and out.startswith("✓"), out


@pytest.mark.parametrize("path", SOLUTIONS, ids=[p.stem for p in SOLUTIONS])
def test_every_function_of_a_solution_file_is_checked(path):
    module = load(path)
    public = {n for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__}
    assert public == set(solved(path)), f"{path.name}: functions without a checker: {public - set(solved(path))}"
    assert (NOTEBOOKS / f"{path.stem}.ipynb").is_file(), f"{path.name} belongs to no notebook"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")), ids=lambda p: p.stem)
def test_every_exercise_has_a_solution(notebook):
    names = exercise_names(notebook)
    if not names:
        pytest.skip(f"{notebook.name} has no exercises")
    solution = NOTEBOOKS / "solutions" / f"{notebook.stem}.py"
    assert solution.is_file(), f"{notebook.name} has exercises {names} but no {solution.name}"
    assert set(names) <= set(solved(solution)), f"{solution.name} lacks {set(names) - set(solved(solution))}"


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS.glob("[01][0-9]_*.ipynb"))[:11], ids=lambda p: p.stem)
def test_each_core_notebook_ends_with_two_to_four_exercises(notebook):
    names = exercise_names(notebook)
    assert 2 <= len(names) <= 4 and len(set(names)) == len(names), f"{notebook.name}: exercises {names}"


def test_exercises_are_the_last_cells_and_stubs_are_untouched():
    """A stub named like a finished function must come after every other cell that uses that name, and must not be
    taken for a finished cell; the stub raises NotImplementedError (strict nbval stores the fixed 'not done' line)."""
    for notebook in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        cells = nbformat.read(notebook, as_version=4).cells
        checks = [i for i, c in enumerate(cells) if c.cell_type == "code" and CHECK.search(c.source)]
        if not checks:
            continue
        first_stub = checks[0] - 1
        for i in checks:
            stub = cells[i - 1]
            assert stub.cell_type == "code" and "raise NotImplementedError" in stub.source, f"{notebook.name} cell {i - 1}"
            assert not stub.source.startswith("# Finished function"), f"{notebook.name} cell {i - 1}"
            name = CHECK.search(cells[i].source).group(2)
            assert re.search(rf"^def {name}\(", stub.source, re.M), f"{notebook.name} cell {i - 1} does not define {name}"
            assert exercises.NOT_DONE in "".join(o.get("text", "") for o in cells[i].outputs), f"{notebook.name} cell {i}"
        later_code = [c for c in cells[first_stub:] if c.cell_type == "code"]
        assert all(CHECK.search(c.source) or "raise NotImplementedError" in c.source for c in later_code), (
            f"{notebook.name}: a code cell after the first exercise is neither a stub nor a check")
