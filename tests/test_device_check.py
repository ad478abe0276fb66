"""tests/device_check.py, the GPU's acceptance check, run here on the CPU (the device this machine has)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import device_check  # noqa: E402

SCRIPT = Path(__file__).parent / "device_check.py"


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_passes_on_this_machine():
    result = run("--device", "cpu", "--shape", "mini", "--new-tokens", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("device: cpu") and lines[-2] == "PASS"
    report = json.loads(lines[-1])
    assert report["exact_max_diff"] <= device_check.EXACT_TOLERANCE and report["fast_agreement"] >= 0.9
    assert report["decode_tok_s"] > 0 and 0 < report["bandwidth_fraction"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_an_absent_device_is_one_line():
    result = run("--device", "cuda")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --device asks for cuda") and len(result.stderr.splitlines()) == 1


def test_a_device_that_computes_wrong_fails(monkeypatch):
    """A device whose float32 forward is off (here: the CPU with one weight perturbed) is reported as FAIL."""
    real_choose = device_check.choose_mode

    def broken(weights, dtype=None, exact_below_gb=1.0, device=None):
        moved, chosen, fused = real_choose(weights, dtype, exact_below_gb, device)
        moved = dict(moved)
        moved["norm.weight"] = moved["norm.weight"] * 1.01
        return moved, chosen, fused

    monkeypatch.setattr(device_check, "choose_mode", broken)
    report = device_check.check(torch.device("cpu"), "mini", 2)
    assert not report["passed"] and report["exact_max_diff"] > device_check.EXACT_TOLERANCE
