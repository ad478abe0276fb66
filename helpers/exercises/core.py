"""The machinery of every checker: run a learner's function and the course's on the same inputs, compare, name the mistake.

Each returns True when `fn` is right. When it is not, it prints which input went wrong and, when the result
matches a mistake learners often make, names that mistake ("eps outside the square root?"); then it returns
False. A function that still raises NotImplementedError (an untouched stub) prints one fixed line; a finished
function that calls another exercise's untouched stub is told which stub it called.
Inputs come from a fixed seed, so a check prints the same on every run.
"""
from __future__ import annotations

import inspect
import math

import torch

NOT_DONE = "not done yet: write the function in the cell above, run that cell, then run this one again."


def wrapping(fn, wrapper):
    """wrapper, marked as a wrapper of the learner's fn (inspect.unwrap finds fn): a stub is then told apart
    from a finished function that calls another exercise's stub."""
    wrapper.__wrapped__ = fn
    return wrapper


def not_done(name: str, fn, error: NotImplementedError) -> str:
    """The line for a NotImplementedError: NOT_DONE when fn's own code raised it (the untouched stub), else the
    name of the stub fn called (a finished function calling another exercise that is not written yet)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = getattr(inspect.unwrap(fn), "__code__", None)
    if tb is None or code is None or tb.tb_frame.f_code is code:
        return f"{name}: {NOT_DONE}"
    func = tb.tb_frame.f_code.co_name
    return (f"✗ {name} called {func}, which is still a stub: finish that exercise first "
            f"or call helpers.{func}")


def clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


class Raised:
    """What a call ended with when it raised: equal to another Raised of the same exception class."""

    def __init__(self, error: Exception):
        self.name, self.message = type(error).__name__, str(error).splitlines()[0][:100] if str(error) else ""

    def __eq__(self, other):
        return isinstance(other, Raised) and other.name == self.name

    def __repr__(self):
        return f"{self.name} ({self.message})" if self.message else self.name


def outcome(fn):
    """fn, wrapped so that an exception (other than NotImplementedError) is returned as a Raised, to compare:
    for functions whose contract includes raising (a wrong params.json must raise LlamaError)."""
    def call(*args):
        try:
            return fn(*args)
        except NotImplementedError:
            raise
        except Exception as e:  # noqa: BLE001 - the learner's code may raise anything
            return Raised(e)
    return wrapping(fn, call)


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + " …" + text[-3:]


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    return _short(value)


def _is_int(value) -> bool:
    """An int, and not a bool (True == 1, but a size is not a truth value)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _differs_plain(got, expected) -> str | None:
    """None when got == expected for values that are not tensors (lists, dicts, numbers, errors), else why not.
    Where the course's function returns an int, only an int agrees (not 14336.0, a 0-d tensor or a bool)."""
    if isinstance(expected, Raised) or isinstance(got, Raised):
        if got == expected:
            return None
        if isinstance(got, Raised):
            wanted = f"raises {expected.name}" if isinstance(expected, Raised) else f"returns {_describe(expected)}"
            return f"it raised {got!r} where the course's function {wanted}"
        return f"it returned {_describe(got)} where the course's function raises {expected.name}"
    if _is_int(expected) and not _is_int(got):  # 14336.0 == 14336 and True == 1, but neither is an int
        return f"it returned {_short(got)}, a {type(got).__name__}, not an int"
    if isinstance(expected, (list, tuple, dict, str)) and not isinstance(got, type(expected)):
        return f"it returned a {type(got).__name__}, not a {type(expected).__name__}"
    if isinstance(expected, dict):
        problems = [f"key {k!r} missing" for k in expected if k not in got][:3]
        problems += [f"key {k!r} should not be there" for k in got if k not in expected][:3]
        problems += [f"{k!r}: {_short(got[k], 60)} instead of {_short(expected[k], 60)}"
                     for k in expected if k in got and _differs(got[k], expected[k])][:3]
        return "; ".join(problems) if problems else None
    if isinstance(expected, list):  # a list of 0-d tensors equals a list of ints, but it is not one
        odd = next((i for i, (a, b) in enumerate(zip(got, expected)) if type(a) is not type(b)), None)
        if odd is not None:
            fix = ": int(t) or t.item()" if isinstance(got[odd], torch.Tensor) else ""
            return (f"its element {odd} is a {type(got[odd]).__name__}; the course's function returns a list of "
                    f"{type(expected[odd]).__name__}{fix}")
    if isinstance(expected, list) and got != expected:
        at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        return (f"it returned {_short(got)}, expected {_short(expected)} (they differ from index {at} on: "
                f"{_short(got[at:at + 3], 60)} instead of {_short(expected[at:at + 3], 60)})")
    try:
        same = bool(got == expected)
    except Exception:  # noqa: BLE001 - e.g. a tensor of many elements compared with a number
        same = False
    return None if same else f"it returned {_short(got)}, expected {_short(expected)}"


CAST_BACK = "cast the result back (.type_as(x))"


def _differs(got, expected, bf16_tol: dict | None = None, dtype_hint: str = CAST_BACK) -> str | None:
    """None when `got` equals `expected` (tensors: same shape and dtype, close values), else why not.
    bf16_tol: the tolerance for bf16 results, when a checker needs a stricter one than the default 2e-2;
    dtype_hint: what to do when the dtype is wrong (the default assumes an input x whose dtype the result keeps)."""
    if isinstance(got, Raised) or isinstance(expected, Raised):
        return _differs_plain(got, expected)
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"it returned a {type(got).__name__}, not a tensor"
        if got.shape != expected.shape:
            return f"its shape is {list(got.shape)}, expected {list(expected.shape)}"
        if got.dtype != expected.dtype:
            if expected.is_complex() and got.is_complex():
                return (f"it returned {got.dtype} where {expected.dtype} was expected: angles in float32, "
                        f"or .to({expected.dtype})")
            if expected.is_complex():
                return f"it returned {got.dtype} where {expected.dtype} was expected: make complex numbers (torch.polar)"
            return f"it returned {got.dtype} where {expected.dtype} was expected: {dtype_hint}"
        if expected.is_complex() or expected.dtype == torch.float32:
            tol = dict(rtol=1e-4, atol=1e-5)
        else:
            tol = bf16_tol or dict(rtol=2e-2, atol=2e-2)  # bf16 keeps 8 significant bits; the order of operations may differ
        same_inf = torch.equal(torch.isinf(got), torch.isinf(expected)) if expected.is_floating_point() else True
        if same_inf and torch.allclose(got, expected, equal_nan=False, **tol):
            return None
        has_inf = expected.is_floating_point() or expected.is_complex()
        finite = torch.isfinite(got) & torch.isfinite(expected) if has_inf else None
        err = (got - expected)[finite].abs().max().item() if finite is not None and finite.any() else float("nan")
        return f"its values differ (largest difference {err:.3g})" if same_inf else "its -inf entries are in other places"
    return _differs_plain(got, expected)


_FAILED = object()  # what _call returns once it has printed why the learner's function failed


def _call(name: str, fn, label: str, args):
    """fn(*args) on fresh copies; on an exception, print the one-line verdict and return _FAILED."""
    try:
        return fn(*clone(args))
    except NotImplementedError as e:
        print(not_done(name, fn, e))
    except Exception as e:  # noqa: BLE001 - the learner's code may raise anything
        print(f"✗ {name} raised {type(e).__name__} ({e}) on {label}.")
    return _FAILED


def run_checks(name: str, fn, reference, cases, mistakes=(), bf16_tol: dict | None = None,
               dtype_hint: str = CAST_BACK, verify=None) -> bool:
    """cases: [(label, args)]; mistakes: [(hint, wrong_fn)]. Prints one verdict; True when every case agrees.
    bf16_tol: a stricter tolerance for comparing bf16 results with the reference (mistakes still match loosely);
    dtype_hint: the advice when the result has the wrong dtype; verify: called once every case agrees, for what
    the results cannot show (how fn computed them): None when all is well, else the problem, printed after
    "✗ name "."""
    for label, args in cases:
        expected = reference(*clone(args))
        got = _call(name, fn, label, args)
        if got is _FAILED:
            return False
        problem = _differs(got, expected, bf16_tol, dtype_hint)
        if problem is None:
            continue
        for hint, wrong in mistakes:
            if _agrees(got, wrong, args):
                print(f"✗ {name} is wrong on {label}: {problem}. It looks like this mistake: {hint}")
                return False
        print(f"✗ {name} is wrong on {label}: {problem}.")
        return False
    problem = verify() if verify is not None else None
    if problem:
        print(f"✗ {name} {problem}")
        return False
    print(f"✓ {name} agrees with the course's function on all {len(cases)} inputs.")
    return True


def _agrees(got, wrong, args) -> bool:
    try:
        return _differs(got, wrong(*clone(args))) is None
    except Exception:  # noqa: BLE001 - a mistake that cannot run on this input is not the one
        return False


def run_checks_all(name: str, fn, reference, cases, mistakes=()) -> bool:
    """Like run_checks, but `fn` runs on every case first, and the hint is the mistake that reproduces all of its
    wrong answers and agrees with it on the most cases. For checkers whose wrong answers look alike case by case
    (two different mistakes both make a valid checkpoint raise): the pattern over all cases tells them apart.
    mistakes may also be a function of fn's results (one per case) that returns that list: for a hint that names
    what the results show (which tensors went unchecked)."""
    results = []
    for label, args in cases:
        results.append(_call(name, fn, label, args))
        if results[-1] is _FAILED:
            return False
    if callable(mistakes):
        mistakes = mistakes(results)
    problems = [(i, _differs(got, reference(*clone(args)))) for i, (got, (_, args)) in enumerate(zip(results, cases))]
    wrong_at = [(i, problem) for i, problem in problems if problem is not None]
    if not wrong_at:
        print(f"✓ {name} agrees with the course's function on all {len(cases)} inputs.")
        return True
    first, problem = wrong_at[0]
    best, best_score = None, -1
    for hint, wrong in mistakes:
        agree = [_agrees(got, wrong, args) for got, (_, args) in zip(results, cases)]
        if all(agree[i] for i, _ in wrong_at) and sum(agree) > best_score:
            best, best_score = hint, sum(agree)
    more = f" (and on {len(wrong_at) - 1} more of the {len(cases)} inputs)" if len(wrong_at) > 1 else ""
    looks = f" It looks like this mistake: {best}" if best else ""
    print(f"✗ {name} is wrong on {cases[first][0]}: {problem}{more}.{looks}")
    return False


def randn(*shape, g, scale=1.0, dtype=torch.float32):
    """Seeded normal noise of `shape`, times `scale`, in `dtype`."""
    return (torch.randn(*shape, generator=g) * scale).to(dtype)
