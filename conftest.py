"""Loaded first by pytest: the suite always runs on the tiny model, trained before any test or notebook."""
import os

# Tests always use the tiny model, even on a machine that has the 8B: reproducible everywhere.
os.environ.pop("LLAMA3_DIR", None)


def pytest_sessionstart(session):
    # Train (or load) the tiny model up front, so no notebook cell shows a training progress bar.
    from helpers.tiny import ensure_tiny

    ensure_tiny()
