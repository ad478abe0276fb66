"""`python -m helpers`: greedy by default, streamed output, seeded sampling, --chat, and one-line errors."""
import io
import os
import subprocess
import sys

import pytest
import torch

from checkpoints import SHAPES, make_checkpoint
from helpers.devices import mps_available
from helpers.tiny import ensure_tiny

SEEDED = ["--prompt", "once upon a time", "--max-new-tokens", "12", "--temperature", "0.8", "--top-p", "0.9",
          "--seed", "3"]  # the command of the "done when" line


def run_cli(*args, cwd=None):
    """Run the CLI in a fresh interpreter on the tiny model, from any folder. LLAMA3_DIR names the tiny
    model: unset, a machine with the 8B downloaded would run the 8B, and tests always use the tiny model."""
    env = {**os.environ, "LLAMA3_DIR": str(ensure_tiny())}
    return subprocess.run([sys.executable, "-m", "helpers", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("args", [[], ["--max-new-tokens", "1"]], ids=["no_flags", "one_token"])
def test_default_is_greedy_and_prints_42(args, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42\n"
    assert result.stderr == "[model: tiny, computing in float32 on cpu]\n"  # small model: the exact mode


def test_seeded_sampling_prints_the_same_text_twice():
    first, second = run_cli(*SEEDED), run_cli(*SEEDED)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.strip()
    assert first.stdout == second.stdout


def test_the_seed_reaches_the_sampler():
    hot = ["--prompt", "the", "--max-new-tokens", "4", "--temperature", "3"]
    a, b = run_cli(*hot, "--seed", "1"), run_cli(*hot, "--seed", "2")
    assert a.returncode == b.returncode == 0, a.stderr + b.stderr
    assert a.stdout != b.stdout


def test_chat_wraps_the_prompt_in_the_chat_template(tiny):
    from helpers.generate import encode_dialog, generate

    weights, params, tokenizer = tiny
    result = run_cli("--chat", "--prompt", "what is the capital of france?", "--max-new-tokens", "4")
    assert result.returncode == 0, result.stderr
    tokens = encode_dialog(tokenizer, [{"role": "user", "content": "what is the capital of france?"}])
    expected = tokenizer.decode(generate(weights, params, tokens, 4, stop_tokens=tokenizer.stop_tokens))
    assert result.stdout == expected + "\n"


def test_output_is_streamed_token_by_token(monkeypatch, tiny_dir):
    from helpers.__main__ import main

    monkeypatch.setenv("LLAMA3_DIR", str(tiny_dir))

    writes = []

    class Recorder(io.StringIO):
        def write(self, text):
            writes.append(text)
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", Recorder())
    assert main(["--prompt", "once upon a time", "--max-new-tokens", "12"]) == 0
    pieces = [w for w in writes if w.strip()]
    assert len(pieces) >= 6  # one write per token, not one at the end
    assert "".join(writes).startswith(" there was a little llama")


@pytest.fixture(scope="module")
def short_context_model(tmp_path_factory):
    """A random checkpoint with the real vocabulary whose params.json says "max_seq_len": 16."""
    params = {**SHAPES["mha_no_kv_key"], "max_seq_len": 16}
    return make_checkpoint(tmp_path_factory.mktemp("short") / "m", params, vocab_size=128256)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf")
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        ("empty_prompt", "prompt is empty"),
        ("no_new_tokens", "--max-new-tokens must be at least 1"),
        ("unknown_dir", "does not exist"),
        ("hf_folder", "Hugging Face-format folder"),
        ("prompt_beyond_context", "context holds 16"),
        ("negative_temperature", "temperature is -1.0"),
        ("top_p_above_one", "top_p is 1.5"),
        ("absent_gpu", "--device asks for cuda, but this torch"),
        ("absent_mps", "--device asks for mps, but this torch sees no Apple MPS device"),
        ("unknown_device", "Unknown device 'tpu' in --device: use auto, cpu, cuda, cuda:N or mps"),
    ],
)
def test_errors_are_one_line_and_exit_2(case, message, tmp_path, short_context_model, hf_folder):
    if (case == "absent_gpu" and torch.cuda.is_available()) or (case == "absent_mps" and mps_available()):
        pytest.skip("this machine has that device")
    args = {
        "empty_prompt": ["--prompt", ""],
        "no_new_tokens": ["--max-new-tokens", "0"],
        "unknown_dir": ["--model-dir", str(tmp_path / "nowhere")],
        "hf_folder": ["--model-dir", str(hf_folder)],
        "prompt_beyond_context": ["--model-dir", str(short_context_model), "--prompt", "once upon a time " * 8],
        "negative_temperature": ["--temperature", "-1"],
        "top_p_above_one": ["--top-p", "1.5"],
        "absent_gpu": ["--device", "cuda"],
        "absent_mps": ["--device", "mps"],
        "unknown_device": ["--device", "tpu"],
    }[case]
    result = run_cli(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr


def test_dtype_can_be_chosen():
    result = run_cli("--prompt", "once upon a time", "--dtype", "bfloat16", "--max-new-tokens", "4")
    assert result.returncode == 0 and result.stderr == "[model: tiny, computing in bfloat16 on cpu]\n"
    result = run_cli("--dtype", "float64")
    assert result.returncode == 2 and result.stderr.startswith("error: Unknown compute dtype 'float64'")
