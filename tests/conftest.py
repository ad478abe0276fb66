"""Shared fixtures: the tiny model (trained once per machine) and random checkpoints of odd shapes."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/checkpoints.py

@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: a second thread only adds synchronisation (10x slower on a busy machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_dir():
    from helpers.tiny import ensure_tiny

    return ensure_tiny()


@pytest.fixture(scope="session")
def tiny(tiny_dir):
    from helpers import load_model, load_tokenizer

    weights, params = load_model(tiny_dir)
    return weights, params, load_tokenizer(tiny_dir)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """{shape name: folder} for every shape in checkpoints.SHAPES."""
    from checkpoints import SHAPES, make_checkpoint

    root = tmp_path_factory.mktemp("ckpt")
    return {name: make_checkpoint(root / name, params, seed=i) for i, (name, params) in enumerate(SHAPES.items())}
