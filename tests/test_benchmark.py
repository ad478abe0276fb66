"""A smoke run of tests/benchmark.py on the tiny shape: it runs, compares with Hugging Face, reports JSON.

(The real measurement is `python tests/benchmark.py --shape llama-3.2-1b`; it is not part of the test run.)"""
import inspect
import json
import subprocess
import sys
from pathlib import Path

from helpers.layers import linear_converting

BENCHMARK = Path(__file__).parent / "benchmark.py"


def test_benchmark_smoke_run_on_tiny_shape():
    out = subprocess.run([sys.executable, str(BENCHMARK), "--shape", "tiny", "--reps", "1", "--new-tokens", "4",
                          "--other-weights"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("helpers (fast") for line in lines)  # the readable table
    result = json.loads(lines[-1])
    for key in ("prefill_speedup_vs_hf", "decode_speedup_vs_hf", "decode_fraction_of_bandwidth_bound",
                "peak_rss_gb", "checkpoint_gb", "helpers", "hf", "read_bandwidth_gb_s"):
        assert key in result, key
    assert result["prefill_speedup_vs_hf"] > 0 and result["peak_rss_gb"] > 0
    assert 0 < result["matvec_floor_s"] < 1 / result["helpers"]["decode_tok_s"]  # the floor is part of a step
    assert any(line.startswith("1.1x the faster Hugging Face decode needs a step of ") for line in lines)
    # the same greedy tokens from both implementations, in the faster setting each
    assert any(result["same_tokens_as_hf"].values())
    # --other-weights: the second helpers row holds the weights the other way, in the same dtype
    if result["helpers"]["dtype"] != "bfloat16":  # else there is no other way (the checkpoint's own dtype)
        assert {result["helpers"]["weights"], result["helpers_other"]["weights"]} == {"stored", "copy"}
        assert result["helpers_other"]["dtype"] == result["helpers"]["dtype"]


def test_decode_profile_smoke_run_on_tiny_shape():
    """tests/decode_profile.py (where a decode step's time goes) runs and names the matrix-vector kernel's share."""
    out = subprocess.run([sys.executable, str(Path(__file__).parent / "decode_profile.py"), "--shape", "tiny",
                          "--steps", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("matrix-vector kernel: ") and last.endswith("% of the profiled steps' time"), last
    floor = [line for line in out.stdout.splitlines() if line.startswith("its matrix-vector products alone: ")]
    assert len(floor) == 1 and " ms (median of 5 rounds, every weight once), " in floor[0], out.stdout
    assert float(floor[0].split(": ")[1].split(" ms")[0]) > 0, floor[0]  # a floor that timed nothing fails
    bad = subprocess.run([sys.executable, str(Path(__file__).parent / "decode_profile.py"), "--steps", "0"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--steps 0: give a whole number of at least 1." in bad.stderr


def test_operand_order_smoke_run_on_tiny_shape():
    """tests/operand_order.py times linear_converting's two orders of operands (few_tokens 0 and above T)."""
    script = str(Path(__file__).parent / "operand_order.py")
    out = subprocess.run([sys.executable, script, "--shape", "tiny", "--tokens", "2", "5", "--reps", "1"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    few_tokens = inspect.signature(linear_converting).parameters["few_tokens"].default
    assert out.stdout.splitlines()[0].endswith(f"helpers uses the left order under {few_tokens} tokens"), out.stdout
    rows = [line.split() for line in out.stdout.splitlines()[2:]]
    assert [r[0] for r in rows] == ["2", "5"] and all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows), out.stdout
    bad = subprocess.run([sys.executable, script, "--tokens", "1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "--tokens 1: give prompt lengths of at least 2" in bad.stderr
