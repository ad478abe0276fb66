"""After `python download_weights.py`, pytest still runs every notebook on the tiny model.

A random checkpoint of another shape is planted where download_weights.py puts the 8B
(weights/Meta-Llama-3-8B/original/). Without the suite's guard (conftest.py sets LLAMA3_DIR=tiny, which
nbval's kernels inherit) the notebooks would pick it up and every stored shape would differ.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import make_checkpoint
from helpers.weights import META_FILES, REAL_8B_DIR

ROOT = Path(__file__).resolve().parent.parent
# Not the tiny model's shape: a notebook run on it prints other shapes, so strict nbval would fail.
PLANTED = {"dim": 64, "n_layers": 1, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32,
           "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0}


@pytest.fixture(scope="module")
def planted_8b():
    """A random checkpoint in weights/Meta-Llama-3-8B/original/, removed afterwards (a real download is kept)."""
    if all((REAL_8B_DIR / f).is_file() for f in META_FILES):
        yield REAL_8B_DIR  # a real 8B is already there: the test runs against it as it is
        return
    if REAL_8B_DIR.exists():
        pytest.skip(f"{REAL_8B_DIR} holds a partial download: not touching it")
    make_checkpoint(REAL_8B_DIR, PLANTED, vocab_size=128256, seed=7)
    try:
        yield REAL_8B_DIR
    finally:
        shutil.rmtree(REAL_8B_DIR.parent)


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("LLAMA3_DIR", "LLAMA3_DTYPE")}


def test_without_the_guard_the_download_is_picked(planted_8b):
    """The negative control: outside pytest, with LLAMA3_DIR unset, the planted folder is what runs."""
    code = "import helpers; print(helpers.default_model_dir(verbose=False))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env(),
                         cwd=ROOT / "notebooks", timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).resolve() == planted_8b.resolve()


@pytest.mark.parametrize("notebook", ["02_embed.ipynb", "03_rmsnorm.ipynb"])
def test_notebooks_still_run_on_the_tiny_model(planted_8b, notebook):
    """Strict nbval on a notebook, in a fresh pytest started as the README's command starts it."""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"notebooks/{notebook}"],
                         capture_output=True, text=True, env=clean_env(), cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
