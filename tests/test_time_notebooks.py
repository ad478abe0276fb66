"""tests/time_notebooks.py on the tiny shape: it times a real notebook, reports a failing one as failed, and runs
the kernel on this checkout's helpers with LLAMA3_DIR set and LLAMA3_DTYPE unset.

(The real measurement is `python tests/time_notebooks.py --shape llama-3-8b`; it is not part of the test run.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat

SCRIPT = Path(__file__).parent / "time_notebooks.py"
ROOT = Path(__file__).resolve().parent.parent


def run(*args, **env):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})


def test_times_a_notebook_on_the_tiny_shape():
    out = run("--shape", "tiny", "--notebooks", "02")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert any(line.startswith("02_embed") and line.split()[2] == "pass" for line in lines)
    result = json.loads(lines[-1])
    nb = result["notebooks"]["02_embed"]
    assert result["failed"] == [] and nb["ok"] and nb["seconds"] > 0 and len(nb["slowest"]) == 3
    assert nb["slowest"][0]["seconds"] >= nb["slowest"][-1]["seconds"]


def test_a_raising_cell_fails_the_notebook(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import os, helpers\n"
                                  f"assert helpers.__file__.startswith({str(ROOT)!r}), helpers.__file__\n"
                                  "assert os.environ['LLAMA3_DIR'] and 'LLAMA3_DTYPE' not in os.environ\n"
                                  "assert os.getcwd().endswith('notebooks')"),
        nbformat.v4.new_code_cell("print('a check that did not hold:', 1 == 2)"),
        nbformat.v4.new_code_cell("x = 1\nraise ValueError('first line\\nboom')"),
        nbformat.v4.new_code_cell("print('never run')"),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / "raises.ipynb"
    nbformat.write(nb, path)
    before = path.read_text()
    out = run("--shape", "tiny", "--notebooks", str(path), LLAMA3_DTYPE="float32")
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "FAIL in cell 2 (x = 1): ValueError: boom" in out.stdout
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["failed"] == ["raises"]
    assert result["notebooks"]["raises"]["error"] == {"cell": 2, "message": "ValueError: boom", "first_line": "x = 1"}
    assert result["notebooks"]["raises"]["prints_false"] == [{"cell": 1, "line": "a check that did not hold: False"}]
    assert path.read_text() == before  # executed in memory, never written back


def test_user_errors_are_one_sentence_and_exit_2(tmp_path):
    for args, words in ((["--shape", "llama-9"], "No shape 'llama-9'"), (["--notebooks", "99"], "No notebook '99'"),
                        (["--model-dir", str(tmp_path)], "params.json, consolidated.00.pth, tokenizer.model missing")):
        out = run(*args)
        assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
