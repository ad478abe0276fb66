"""download_weights.py, run as a command against a fake Hub on 127.0.0.1 (tests/fake_hub.py).

Nothing here reaches the internet: HF_ENDPOINT points at the fake Hub, HF_HOME at a temporary folder (so no
real login leaks in), proxies are switched off. The fake repos hold a tiny valid Meta-format checkpoint in
original/ (full 128,256-token vocabulary, so the real tokenizer fits it) and Hugging Face-format files beside it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoints import make_checkpoint, random_weights
from fake_hub import GRANTED_TOKEN, PENDING_TOKEN, FakeHub, Repo
from helpers.shards import save_shards

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "download_weights.py"
REPO = "meta-llama/Meta-Llama-3-8B"  # what `python download_weights.py` fetches by default
CKPT = "original/consolidated.00.pth"
# Small, but with the real vocabulary: the checkpoint is ~16 MB, more than one 10 MiB download chunk,
# so a cut connection leaves a partial file to resume from.
PARAMS = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "multiple_of": 32, "ffn_dim_multiplier": 1.3,
          "norm_eps": 1e-5, "rope_theta": 500000.0}
HF_FORMAT = {  # beside original/ in every real repo; must never be downloaded
    "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
    "generation_config.json": b"{}",
    "model-00001-of-00002.safetensors": b"\0" * 5000,
    "model-00002-of-00002.safetensors": b"\0" * 3000,
    "model.safetensors.index.json": b"{}",
    "tokenizer.json": b"{}",
    "README.md": b"# fake",
}
PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> dict[str, bytes]:
    """{repo path: bytes} of a tiny valid Meta-format folder."""
    folder = make_checkpoint(tmp_path_factory.mktemp("source"), PARAMS, vocab_size=128256, seed=3, tied=True)
    return {f"original/{p.name}": p.read_bytes() for p in folder.iterdir()}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, original) -> dict[str, bytes]:
    """{name: bytes} of a tiny valid checkpoint cut into 2 shards as Meta cuts the 70B (consolidated.00/01.pth)."""
    folder = tmp_path_factory.mktemp("sharded")
    params = json.loads(original["original/params.json"])
    weights = random_weights(params, params["vocab_size"], seed=4)
    save_shards({k: v.to(torch.bfloat16) for k, v in weights.items()}, params, 2, folder)
    return {"params.json": original["original/params.json"], "tokenizer.model": original["original/tokenizer.model"],
            **{p.name: p.read_bytes() for p in folder.glob("consolidated.*.pth")}}


@pytest.fixture(scope="module")
def hub_server(original, sharded):
    params = json.loads(original["original/params.json"])
    wrong = {**original, "original/params.json": json.dumps({**params, "n_kv_heads": 4}).encode()}
    gap = {f"original/{n}": b for n, b in sharded.items() if n != "consolidated.00.pth"}  # 00 missing on the Hub
    repos = {
        REPO: Repo({**original, **HF_FORMAT}, gated=True),
        "test-org/wrong-params": Repo({**wrong, **HF_FORMAT}),
        "test-org/huge": Repo({**original, **HF_FORMAT}, advertised_size={CKPT: 10**15}),  # a petabyte
        "test-org/sharded-70b": Repo({**{f"original/{n}": b for n, b in sharded.items()}, **HF_FORMAT}),
        "test-org/sharded-gap": Repo({**gap, **HF_FORMAT}),
        "test-org/sharded-huge": Repo({**{f"original/{n}": b for n, b in sharded.items()}, **HF_FORMAT},
                                      advertised_size={"original/consolidated.01.pth": 10**14}),
        # The 405B's repos keep two cuts of the checkpoint side by side: original/mp16/ and original/mp8/.
        "meta-llama/Llama-3.1-405B": Repo({**{f"original/mp16/{n}": b for n, b in sharded.items()},
                                           "original/mp8/params.json": b"{}", "original/mp8/consolidated.00.pth": b"x",
                                           "original/mp8/tokenizer.model": b"x", **HF_FORMAT}),
        "test-org/hf-format-only": Repo(dict(HF_FORMAT)),
    }
    with FakeHub(repos) as hub:
        yield hub


@pytest.fixture
def hub(hub_server):
    hub_server.reset()
    yield hub_server
    hub_server.release.set()  # never leave a server thread hanging


def command(hub: FakeHub, tmp_path: Path, args, token=None, endpoint=None):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE")) and k.lower() not in PROXY_VARS and k != "LLAMA3_DIR"}
    env.update(HF_ENDPOINT=endpoint or hub.endpoint, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1",
               NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", PYTHONUNBUFFERED="1")
    if token:
        env["HF_TOKEN"] = token
    return [sys.executable, str(SCRIPT), *args], env


def run(hub, tmp_path, *args, token=None, endpoint=None) -> subprocess.CompletedProcess:
    cmd, env = command(hub, tmp_path, args, token, endpoint)
    r = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def download(hub, tmp_path, *args, token=GRANTED_TOKEN):
    return run(hub, tmp_path, *args, "--dir", str(tmp_path / "model"), token=token)


def files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def file_requests(hub) -> list:
    """Requests for file contents (resolve or CDN), as opposed to API calls."""
    return [r for r in hub.log if "/resolve/" in r.path or r.path.startswith("/cdn/")]


@pytest.fixture(scope="module")
def first_download(hub_server, tmp_path_factory):
    """One successful download (shared by two tests: each run loads torch to verify, which takes seconds)."""
    tmp_path = tmp_path_factory.mktemp("first")
    hub_server.reset()
    result = download(hub_server, tmp_path)
    return result, tmp_path, list(hub_server.log)


def test_success_fetches_only_original_and_prints_llama3_dir(first_download, original):
    r, tmp_path, log = first_download
    assert r.returncode == 0, r.stderr
    orig_dir = tmp_path / "model" / "original"
    assert files_under(orig_dir) == {p.removeprefix("original/"): b for p, b in original.items()}  # byte-identical
    assert f"LLAMA3_DIR={orig_dir}" in r.stdout.splitlines()
    assert "OK: 2 layers, dim 64" in r.stdout  # verified: params.json, checkpoint shapes, tokenizer
    # Nothing outside original/ was asked for, nor written: not in DIR, not in the huggingface_hub cache.
    resolved = [q.path.split("/resolve/")[1].split("/", 1)[1] for q in log if "/resolve/" in q.path]
    assert sorted(set(resolved)) == sorted(original), resolved
    assert {p.name for p in (tmp_path / "model").iterdir()} == {"original", ".cache"}
    assert not (tmp_path / "hf_home" / "hub").exists()
    # The token went to the Hub, never to the CDN, and appears nowhere in the output or on disk.
    assert any(q.auth for q in log if "/resolve/" in q.path)
    assert any(q.path.startswith("/cdn/") for q in log) and not any(q.auth for q in log if q.path.startswith("/cdn/"))
    assert GRANTED_TOKEN not in r.stdout + r.stderr
    assert not [p for p, b in files_under(tmp_path).items() if GRANTED_TOKEN.encode() in b]


def test_second_run_is_a_quick_noop(first_download, hub):
    _, tmp_path, _ = first_download
    orig_dir = tmp_path / "model" / "original"
    before = {p.name: p.stat().st_mtime_ns for p in orig_dir.iterdir()}
    r = download(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Nothing to download" in r.stdout and f"LLAMA3_DIR={orig_dir}" in r.stdout
    assert file_requests(hub) == []  # one API call, no file transferred, nothing rewritten
    assert {p.name: p.stat().st_mtime_ns for p in orig_dir.iterdir()} == before


def test_files_from_elsewhere_are_checked_by_checksum_not_refetched(hub, tmp_path, original):
    # e.g. fetched earlier with `hf download --local-dir`: no record of ours, so the checksums decide.
    orig_dir = tmp_path / "model" / "original"
    orig_dir.mkdir(parents=True)
    for path, data in original.items():
        (tmp_path / "model" / path).write_bytes(data)
    wrong = bytearray(original["original/tokenizer.model"])
    wrong[100] ^= 1  # same size, one bit off
    (orig_dir / "tokenizer.model").write_bytes(bytes(wrong))
    r = download(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert {q.path.rsplit("/", 1)[-1] for q in file_requests(hub) if "/resolve/" in q.path} == {"tokenizer.model"}
    assert files_under(orig_dir) == {p.removeprefix("original/"): b for p, b in original.items()}


def test_no_token_explains_gating_and_login(hub, tmp_path):
    r = download(hub, tmp_path, token=None)
    assert r.returncode == 1
    for words in ("gated", "hf auth login", "HF_TOKEN", f"{hub.endpoint}/{REPO}", "/settings/tokens", "license"):
        assert words in r.stderr, words
    assert not (tmp_path / "model").exists()


def test_token_without_access_403(hub, tmp_path):
    r = download(hub, tmp_path, token=PENDING_TOKEN)
    assert r.returncode == 1
    assert "has not been granted access" in r.stderr and f"request it on {hub.endpoint}/{REPO}" in r.stderr
    assert any(r.path.endswith("params.json") for r in hub.log)  # the Hub said 403: this is not a guess
    assert PENDING_TOKEN not in r.stdout + r.stderr
    assert not (tmp_path / "model" / "original").exists()


def test_invalid_token_is_named_as_such(hub, tmp_path):
    r = download(hub, tmp_path, token="hf_revoked_or_mistyped")
    assert r.returncode == 1
    assert "rejected your Hugging Face token" in r.stderr and "hf_revoked" not in r.stderr


@pytest.mark.parametrize("model, words", [("nobody/no-such-model", "There is no model nobody/no-such-model"),
                                          ("9b", "Unknown model '9b'")])
def test_unknown_repo_or_short_name(hub, tmp_path, model, words):
    r = run(hub, tmp_path, model, "--dir", str(tmp_path / "model"), token=GRANTED_TOKEN)
    assert r.returncode == 1 and words in r.stderr and "--list" in r.stderr


def test_hub_unreachable_says_rerun_resumes(hub, tmp_path):
    r = run(hub, tmp_path, "--dir", str(tmp_path / "model"), token=GRANTED_TOKEN, endpoint="http://127.0.0.1:9")
    assert r.returncode == 1
    assert "connection to the Hub failed" in r.stderr and "resumes where it stopped" in r.stderr


def test_cut_connection_then_rerun_resumes_byte_identical(hub, tmp_path, original):
    size = len(original[CKPT])
    hub.cut_at = size - 4096  # the line drops near the end of the checkpoint, and stays down
    r = download(hub, tmp_path)
    assert r.returncode == 1 and "run the same command again" in r.stderr and "resumes" in r.stderr
    orig_dir = tmp_path / "model" / "original"
    assert not (orig_dir / "consolidated.00.pth").exists()  # never a partial file where the notebooks look
    partial = list((tmp_path / "model" / ".cache").rglob("consolidated.00.pth.*.part"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < size
    kept = partial[0].stat().st_size

    hub.reset()  # the line is back
    r = download(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "resuming at" in r.stdout
    assert [r.range for r in hub.log if r.path.startswith("/cdn/") and r.method == "GET"] == [f"bytes={kept}-"]
    assert files_under(orig_dir) == {p.removeprefix("original/"): b for p, b in original.items()}
    assert not list((tmp_path / "model").rglob("*.part"))


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_then_rerun_completes(hub, tmp_path, original):
    hub.stall_at = len(original[CKPT]) // 2  # the transfer hangs half-way: the learner presses Ctrl-C
    cmd, env = command(hub, tmp_path, ["--dir", str(tmp_path / "model")], GRANTED_TOKEN)
    # A terminal's Ctrl-C reaches a foreground process; a test run started in the background (`cmd &` in a script)
    # passes SIGINT on *ignored*, and Python then never raises KeyboardInterrupt: give the child the terminal's default.
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert hub.stalled.wait(60)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        hub.release.set()
    assert proc.returncode == 130 and "Interrupted" in err and "resumes" in err and "Traceback" not in err
    assert not (tmp_path / "model" / "original" / "consolidated.00.pth").exists()

    hub.reset()
    r = download(hub, tmp_path)
    assert r.returncode == 0, r.stderr
    assert files_under(tmp_path / "model" / "original")["consolidated.00.pth"] == original[CKPT]


def test_disk_space_refused_before_downloading(hub, tmp_path):
    r = run(hub, tmp_path, "test-org/huge", "--dir", str(tmp_path / "model"))
    assert r.returncode == 1
    assert "Not enough disk space" in r.stderr and "1000000.0 GB" in r.stderr
    assert file_requests(hub) == [] and not (tmp_path / "model").exists()


def test_verification_catches_params_that_disagree_with_the_checkpoint(hub, tmp_path):
    r = run(hub, tmp_path, "test-org/wrong-params", "--dir", str(tmp_path / "model"))
    assert r.returncode == 1
    assert "do not check out" in r.stderr and "come from different models" in r.stderr
    assert "LLAMA3_DIR=" not in r.stdout


def test_corrupted_transfer_is_caught_and_discarded(hub, tmp_path):
    hub.corrupt = True  # the bytes that arrive are not the ones the Hub's sha256 describes
    r = download(hub, tmp_path)
    assert r.returncode == 1 and "arrived corrupted" in r.stderr
    assert not (tmp_path / "model" / "original" / "consolidated.00.pth").exists()
    assert not list((tmp_path / "model").rglob("*.part"))


def test_sharded_checkpoint_downloads_every_shard_and_verifies(hub, tmp_path, sharded):
    r = run(hub, tmp_path, "test-org/sharded-70b", "--dir", str(tmp_path / "model"))
    assert r.returncode == 0, r.stderr
    orig_dir = tmp_path / "model" / "original"
    assert files_under(orig_dir) == sharded  # both shards, byte-identical
    assert "(2 shards," in r.stdout  # the listing: every shard with its size, before downloading
    for name in ("consolidated.00.pth", "consolidated.01.pth"):
        line = next(line for line in r.stdout.splitlines() if f"original/{name}" in line)
        assert f"{len(sharded[name]) / 1e6:.1f} MB" in line and "to download" in line
    assert "OK: 2 layers, dim 64" in r.stdout and "in 2 shards" in r.stdout  # every shard checked
    assert f"torchrun --nproc-per-node 2 -m helpers --model-dir {orig_dir}" in r.stdout


def test_the_405b_cut_comes_from_its_own_subfolder(hub, tmp_path, sharded):
    r = run(hub, tmp_path, "3.1-405b", "--dir", str(tmp_path / "model"), token=GRANTED_TOKEN)
    assert r.returncode == 0, r.stderr
    assert files_under(tmp_path / "model" / "original") == sharded  # from original/mp16/, landed in original/
    resolved = {q.path.split("/resolve/")[1].split("/", 1)[1] for q in hub.log if "/resolve/" in q.path}
    assert resolved == {f"original/mp16/{n}" for n in sharded}  # nothing from original/mp8/


def test_incomplete_shards_on_the_hub_stop_before_downloading(hub, tmp_path):
    r = run(hub, tmp_path, "test-org/sharded-gap", "--dir", str(tmp_path / "model"))
    assert r.returncode == 1 and "with gaps" in r.stderr and "nothing was downloaded" in r.stderr
    assert file_requests(hub) == []


def test_disk_space_for_all_shards_is_checked_first(hub, tmp_path):
    r = run(hub, tmp_path, "test-org/sharded-huge", "--dir", str(tmp_path / "model"))
    assert r.returncode == 1 and "Not enough disk space" in r.stderr and "100000.0 GB" in r.stderr
    assert file_requests(hub) == [] and not (tmp_path / "model").exists()


def test_repo_without_original_folder(hub, tmp_path):
    r = run(hub, tmp_path, "test-org/hf-format-only", "--dir", str(tmp_path / "model"))
    assert r.returncode == 1 and "no original/ folder" in r.stderr
    assert file_requests(hub) == []


def test_a_folder_holding_another_model_is_left_alone(hub, tmp_path):
    state = tmp_path / "model" / ".cache" / "download_weights" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"repo_id": "meta-llama/Llama-3.2-1B", "files": {}}))
    r = download(hub, tmp_path)
    assert r.returncode == 1 and "already holds meta-llama/Llama-3.2-1B" in r.stderr
    assert file_requests(hub) == []


def test_list_needs_no_network(hub, tmp_path):
    r = run(hub, tmp_path, "--list")
    assert r.returncode == 0 and hub.log == []
    for repo in ("meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Llama-3.1-8B",
                 "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct",
                 "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-3B-Instruct"):
        assert repo in r.stdout
    assert "approximate" in r.stdout and "16.1 GB" in r.stdout
    for repo, shards in (("meta-llama/Meta-Llama-3-70B ", "8 shards of ~17.6 GB"),
                         ("meta-llama/Llama-3.1-70B-Instruct", "8 shards"), ("meta-llama/Llama-3.3-70B-Instruct", "8 shards"),
                         ("meta-llama/Llama-3.1-405B ", "16 shards of ~51.3 GB in original/mp16/")):
        line = next(line for line in r.stdout.splitlines() if repo in line)
        assert shards in line and ("141.1 GB" in line or "820.2 GB" in line), line


def test_names_and_default_folder_match_the_notebooks():
    spec = importlib.util.spec_from_file_location("download_weights", SCRIPT)
    dw = sys.modules["download_weights"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dw)
    from helpers.weights import REAL_8B_DIR, WEIGHTS_DIR

    assert dw.WEIGHTS_DIR == WEIGHTS_DIR
    assert dw.resolve_model(dw.DEFAULT_MODEL) == REPO
    assert dw.default_dir(REPO) / "original" == REAL_8B_DIR  # where default_model_dir() looks for the 8B
    assert dw.resolve_model("3.2-1B-Instruct") == "meta-llama/Llama-3.2-1B-Instruct"
    assert dw.resolve_model("Llama-3.1-8B") == "meta-llama/Llama-3.1-8B"
    assert dw.resolve_model("someone/own-llama") == "someone/own-llama"
    assert dw.resolve("3.1-405b-mp8").folder == "original/mp8"
    assert dw.default_dir("meta-llama/Llama-3.1-405B", dw.resolve("3.1-405b-mp8").suffix).name == "Llama-3.1-405B-mp8"
