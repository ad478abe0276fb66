#!/usr/bin/env python
"""How long each notebook takes, top to bottom, on a random checkpoint of a real model's shape.

    python tests/time_notebooks.py --shape llama-3-8b [--notebooks 09 10] [--timeout 1800]
    python tests/time_notebooks.py --model-dir weights/Meta-Llama-3-8B/original   # any Meta-format folder

Builds the random checkpoint once (tests/benchmark.py's build_checkpoint, cached in tests/.cache/), then runs
each notebook in a fresh `python3` kernel, one at a time, from notebooks/ as the working directory, with
LLAMA3_DIR pointing at the checkpoint, LLAMA3_DTYPE unset (each notebook chooses its own modes) and this
checkout's helpers first on PYTHONPATH. The notebooks are executed in memory, never written back.
Prints a table (seconds, pass/fail, the three slowest cells, any printed line with False in it: a check
that did not hold), then, as its last line, one JSON object.
Exit status: 0 all passed, 1 some notebook failed, 2 a usage error (unknown shape or notebook, missing
checkpoint, no room to build it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark import CACHE, SHAPES, build_checkpoint  # noqa: E402


class UsageError(Exception):
    """Something the user can fix; its message is one sentence."""


def checkpoint_gb(shape: str) -> float:
    """Size of the bf16 checkpoint build_checkpoint writes for this shape."""
    p = SHAPES[shape]
    sys.path.insert(0, str(ROOT))
    from helpers import ffn_hidden_dim

    dim, kv_dim = p["dim"], p["dim"] // p["n_heads"] * p["n_kv_heads"]
    hidden = ffn_hidden_dim(dim, p["multiple_of"], p.get("ffn_dim_multiplier"))
    per_layer = 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * hidden + 2 * dim
    tables = (1 if p.get("tied") else 2) * p["vocab_size"] * dim
    return 2 * (p["n_layers"] * per_layer + tables + dim) / 1e9


def model_folder(args) -> Path:
    """The folder to time: --model-dir as given, or the shape's random checkpoint, built if missing."""
    if args.model_dir:
        folder = args.model_dir.expanduser().resolve()
        missing = [f for f in ("params.json", "consolidated.00.pth", "tokenizer.model") if not (folder / f).is_file()]
        if missing:
            raise UsageError(f"{folder} is not a Meta-format checkpoint folder: {', '.join(missing)} missing.")
        return folder
    if args.shape not in SHAPES:
        raise UsageError(f"No shape {args.shape!r}: choose one of {', '.join(SHAPES)}.")
    if args.shape != "tiny" and not (CACHE / args.shape / "consolidated.00.pth").is_file():
        need, free = checkpoint_gb(args.shape), shutil.disk_usage(CACHE.parent).free / 1e9
        if free < need + 1:
            raise UsageError(f"Building the {args.shape} checkpoint needs {need:.1f} GB in {CACHE}, "
                             f"but only {free:.1f} GB are free: free some space or pass --model-dir.")
        print(f"building the random {args.shape} checkpoint ({need:.1f} GB) in {CACHE} ...", flush=True)
    try:
        return build_checkpoint(args.shape)
    except OSError as e:
        raise UsageError(f"Could not build the {args.shape} checkpoint in {CACHE}: {e.strerror or e}.") from e


def pick_notebooks(prefixes: list[str] | None) -> list[Path]:
    """notebooks/NN_*.ipynb for each NN asked for (all of them by default), in order."""
    every = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not prefixes:
        return every
    chosen = []
    for prefix in prefixes:
        match = [nb for nb in every if nb.name.startswith(prefix.zfill(2) + "_") or nb.stem == prefix]
        if prefix.endswith(".ipynb") and Path(prefix).is_file():  # any other notebook, still run from notebooks/
            match = [Path(prefix).resolve()]
        if not match:
            raise UsageError(f"No notebook {prefix!r} in {NOTEBOOKS}: give numbers such as 09 10, or a path.")
        chosen += match
    return chosen


def cell_seconds(cell) -> float | None:
    """Seconds between the kernel receiving the cell and replying, from nbclient's recorded timestamps."""
    ex = cell.get("metadata", {}).get("execution", {})
    start, end = ex.get("iopub.execute_input") or ex.get("iopub.status.busy"), ex.get("shell.execute_reply")
    if not (start and end):
        return None
    parse = datetime.datetime.fromisoformat
    return (parse(end) - parse(start)).total_seconds()


def first_line(cell) -> str:
    lines = [line for line in cell.source.splitlines() if line.strip() and not line.startswith("# NBVAL")]
    return lines[0].strip()[:60] if lines else ""


def run_notebook(path: Path, env: dict, timeout: float, keep: Path | None = None) -> dict:
    """Execute one notebook in memory; -> seconds, ok, error, per-cell seconds, slowest three cells."""
    nb = nbformat.read(path, as_version=4)
    deadline = time.perf_counter() + timeout
    current = {"index": None}

    def on_cell_start(cell, cell_index):
        current["index"] = cell_index

    client = NotebookClient(nb, kernel_name="python3", record_timing=True, resources={"metadata": {"path": str(NOTEBOOKS)}},
                            timeout_func=lambda cell: max(1, int(deadline - time.perf_counter())),
                            on_cell_start=on_cell_start)
    error = None
    start = time.perf_counter()
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        error = f"{e.ename}: {(str(e.evalue).strip().splitlines() or [''])[-1]}"
    except CellTimeoutError:
        error = f"over the {timeout:.0f} s timeout"
    except DeadKernelError:
        error = "the kernel died (out of memory?)"
    except Exception as e:  # e.g. the kernel would not start: report it and go on with the next notebook
        error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[-1]}"
    seconds = time.perf_counter() - start
    if keep:  # the executed copy, with its outputs, for reading afterwards (never over the original)
        keep.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, keep / path.name)
    cells = {i: s for i, c in enumerate(nb.cells) if c.cell_type == "code" and (s := cell_seconds(c)) is not None}
    slowest = sorted(cells, key=cells.get, reverse=True)[:3]
    # A check cell whose line ends in False ran, but its check did not hold (or it shows a mistake being caught):
    # listed for a reader to judge, not counted as a failure.
    falses = [{"cell": i, "line": line.strip()[:100]} for i, c in enumerate(nb.cells) if c.cell_type == "code"
              for out in c.get("outputs", []) if out.get("name") == "stdout"
              for line in out.get("text", "").splitlines() if line.rstrip().endswith("False")]
    return {"seconds": round(seconds, 1), "ok": error is None,
            "error": None if error is None else {"cell": current["index"], "message": error, "first_line":
                                                 "" if current["index"] is None else first_line(nb.cells[current["index"]])},
            "slowest": [{"cell": i, "seconds": round(cells[i], 1), "first_line": first_line(nb.cells[i])} for i in slowest],
            "cell_seconds": {str(i): round(s, 2) for i, s in cells.items()}, "prints_false": falses}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llama-3.2-1b", help=f"one of {', '.join(SHAPES)} (default llama-3.2-1b)")
    ap.add_argument("--model-dir", type=Path, help="time this Meta-format folder instead of a random checkpoint")
    ap.add_argument("--notebooks", nargs="+", metavar="NN", help="which notebooks, by number or path (default: all)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per notebook (default 1800)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="also save each executed notebook, outputs and all, in DIR")
    args = ap.parse_args(argv)
    try:
        notebooks = pick_notebooks(args.notebooks)
        if args.keep and args.keep.resolve() in {nb.parent for nb in notebooks}:
            raise UsageError(f"--keep {args.keep} would overwrite the notebooks themselves: give another folder.")
        folder = model_folder(args)
    except UsageError as e:
        print(f"time_notebooks: {e}", file=sys.stderr)
        return 2

    env = {k: v for k, v in os.environ.items() if k != "LLAMA3_DTYPE"}
    env["LLAMA3_DIR"] = str(folder)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    size = (folder / "consolidated.00.pth").stat().st_size / 1e9
    name = "--model-dir" if args.model_dir else args.shape
    print(f"{name}: {folder} ({size:.1f} GB), {len(notebooks)} notebook(s), timeout {args.timeout:.0f} s each", flush=True)
    print(f"{'notebook':36s} {'seconds':>8s}  result  (1-min load average after it, {os.cpu_count()} cores)", flush=True)
    results = {}
    for path in notebooks:
        r = results[path.stem] = run_notebook(path, env, args.timeout, args.keep)
        verdict = "pass" if r["ok"] else f"FAIL in cell {r['error']['cell']} ({r['error']['first_line']}): {r['error']['message']}"
        r["load_after"] = round(os.getloadavg()[0], 1)  # other work on the machine slows the notebooks down
        print(f"{path.stem:36s} {r['seconds']:8.1f}  {verdict}  (load {r['load_after']})")
        for c in r["slowest"]:
            print(f"    {c['seconds']:7.1f} s  cell {c['cell']:<3d} {c['first_line']}")
        for f in r["prints_false"]:
            print(f"    prints False: cell {f['cell']:<3d} {f['line']}")
        sys.stdout.flush()
    total = sum(r["seconds"] for r in results.values())
    failed = [n for n, r in results.items() if not r["ok"]]
    print(f"{'total':36s} {total:8.1f}  {len(results) - len(failed)} passed, {len(failed)} failed")
    print(json.dumps({"shape": None if args.model_dir else args.shape, "model_dir": str(folder), "checkpoint_gb": round(size, 2),
                      "timeout_s": args.timeout, "total_seconds": round(total, 1), "failed": failed, "notebooks": results}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
