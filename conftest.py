"""Loaded first by pytest: the suite always runs on the tiny model, trained before any test or notebook."""
import os

# Tests always use the tiny model, even on a machine that has downloaded the 8B into weights/ or set
# LLAMA3_DIR: reproducible everywhere. nbval's kernels inherit this environment, so the notebooks do too.
os.environ["LLAMA3_DIR"] = "tiny"
# The compute dtype is chosen by the code under test, not by the machine's environment.
os.environ.pop("LLAMA3_DTYPE", None)
# The stored outputs were made on the CPU: a machine with a GPU runs the suite there too (the GPU's own check is
# `python tests/device_check.py`).
os.environ["LLAMA3_DEVICE"] = "cpu"


def pytest_sessionstart(session):
    # Train (or load) the tiny model up front, so no notebook cell shows a training progress bar.
    from helpers.tiny import ensure_tiny

    ensure_tiny()
