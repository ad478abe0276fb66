"""The machinery of every checker: run a learner's function and the course's on the same inputs, compare, name the mistake.

Each returns True when `fn` is right. When it is not, it prints which input went wrong and, when the result
matches a mistake learners often make, names that mistake ("eps outside the square root?"); then it returns
False. A function that still raises NotImplementedError (an untouched stub) prints one fixed line.
Inputs come from a fixed seed, so a check prints the same on every run.
"""
from __future__ import annotations

import math

import torch

NOT_DONE = "not done yet: write the function in the cell above, run that cell, then run this one again."


def clone(args):
    return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)


def _differs(got, expected) -> str | None:
    """None when `got` equals `expected` (tensors: same shape and dtype, close values), else why not."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"it returned a {type(got).__name__}, not a tensor"
        if got.shape != expected.shape:
            return f"its shape is {list(got.shape)}, expected {list(expected.shape)}"
        if got.dtype != expected.dtype:
            if expected.is_complex():
                return f"it returned {got.dtype} where {expected.dtype} was expected: make complex numbers (torch.polar)"
            return f"it returned {got.dtype} where {expected.dtype} was expected: cast the result back (.type_as(x))"
        if expected.is_complex() or expected.dtype == torch.float32:
            tol = dict(rtol=1e-4, atol=1e-5)
        else:
            tol = dict(rtol=2e-2, atol=2e-2)  # bf16 keeps 8 significant bits; the order of operations may differ
        same_inf = torch.equal(torch.isinf(got), torch.isinf(expected)) if expected.is_floating_point() else True
        if same_inf and torch.allclose(got, expected, equal_nan=False, **tol):
            return None
        finite = torch.isfinite(got) & torch.isfinite(expected) if expected.is_floating_point() else None
        err = (got - expected)[finite].abs().max().item() if finite is not None and finite.any() else float("nan")
        return f"its values differ (largest difference {err:.3g})" if same_inf else "its -inf entries are in other places"
    return None if got == expected else f"it returned {got!r}, expected {expected!r}"


def run_checks(name: str, fn, reference, cases, mistakes=()) -> bool:
    """cases: [(label, args)]; mistakes: [(hint, wrong_fn)]. Prints one verdict; True when every case agrees."""
    for label, args in cases:
        expected = reference(*clone(args))
        try:
            got = fn(*clone(args))
        except NotImplementedError:
            print(f"{name}: {NOT_DONE}")
            return False
        except Exception as e:  # noqa: BLE001 - the learner's code may raise anything
            print(f"✗ {name} raised {type(e).__name__} ({e}) on {label}.")
            return False
        problem = _differs(got, expected)
        if problem is None:
            continue
        for hint, wrong in mistakes:
            try:
                if _differs(got, wrong(*clone(args))) is None:
                    print(f"✗ {name} is wrong on {label}: {problem}. It looks like this mistake: {hint}")
                    return False
            except Exception:  # noqa: BLE001 - a mistake that cannot run on this input is not the one
                pass
        print(f"✗ {name} is wrong on {label}: {problem}.")
        return False
    print(f"✓ {name} agrees with the course's function on all {len(cases)} inputs.")
    return True


def randn(*shape, g, scale=1.0, dtype=torch.float32):
    """Seeded normal noise of `shape`, times `scale`, in `dtype`."""
    return (torch.randn(*shape, generator=g) * scale).to(dtype)
