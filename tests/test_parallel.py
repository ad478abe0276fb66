"""Tensor parallelism (helpers.parallel, helpers.shards, helpers.launch): Meta's cut, resharding, real processes.

Random multi-shard checkpoints of odd shapes, with the 70B's 8 query heads per KV head. The pure rules are
tested in this process; the forward pass runs on 1, 2 and 4 real processes (gloo over loopback), and must equal
the merged single-process forward within 1e-5 in float32 and Meta's reference Transformer run under fairscale at
the same world size. Each process group is started once per world size, for every checkpoint at once.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from checkpoints import make_sharded_checkpoint, random_weights
from helpers import LlamaError, forward
from helpers.launch import start_ranks
from helpers.layers import attention, feed_forward, precompute_freqs_cis, causal_mask
from helpers.parallel import (kv_heads_of_rank, map_mp_rank, merge_weights, rank_range, shard_dim, split_weights,
                              world_size_fits)
from helpers.parallel_reference import run_check
from helpers.shards import load_rank_weights, load_sharded_model, save_shards
from helpers.tiny import ensure_tiny

# The 70B's head ratio (64 query heads, 8 KV heads) in miniature. "vocab" is the real one in the first (so the
# CLI's tokenizer fits it); "shards" is the number of files, cut as Meta cuts the 70B.
SHAPES = {
    # first: big enough that each process's memory growth is measurable against its piece (~105 MB in bf16), and
    # measured first in a fresh process (memory freed later stays with the process and would be reused)
    "gqa8_wide": ({"dim": 1024, "n_layers": 4, "n_heads": 32, "n_kv_heads": 4, "multiple_of": 256,
                   "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "rope_theta": 500000.0}, 4096, 4, False),
    "gqa8_real_vocab": ({"dim": 64, "n_layers": 2, "n_heads": 16, "n_kv_heads": 2, "multiple_of": 32,
                         "ffn_dim_multiplier": 1.3, "norm_eps": 1e-5, "rope_theta": 500000.0}, 128256, 2, False),
    "gqa8_scaled_tied": ({"dim": 192, "n_layers": 2, "n_heads": 32, "n_kv_heads": 4, "multiple_of": 32,
                          "ffn_dim_multiplier": 1.1, "norm_eps": 1e-6, "rope_theta": 10000.0, "use_scaled_rope": True,
                          "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 8192}}, 1000, 4, True),
}
TOKENS = [1, 17, 999, 3, 500, 42, 7]  # in every vocabulary here


@pytest.fixture(scope="module")
def sharded(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharded")
    return {name: make_sharded_checkpoint(root / name, params, shards, vocab, seed=i, tied=tied)
            for i, (name, (params, vocab, shards, tied)) in enumerate(SHAPES.items())}


@pytest.fixture(scope="module")
def merged(sharded) -> dict:
    """{name: merged single-process float32 logits}, and the tiny model's (a single file, split by the ranks)."""
    out = {name: forward(*load_sharded_model(folder), TOKENS) for name, folder in sharded.items()}
    from helpers import load_model

    out["tiny"] = forward(*load_model(ensure_tiny()), TOKENS)
    return out


# --- the rules, in this process --------------------------------------------------------------------------

def test_meta_cuts_each_weight_along_the_dimension_fairscale_splits():
    assert {shard_dim(f"layers.3.{n}.weight") for n in ("attention.wq", "attention.wk", "attention.wv",
                                                         "feed_forward.w1", "feed_forward.w3")} == {0}
    assert shard_dim("output.weight") == shard_dim("tok_embeddings.weight") == 0  # VocabParallelEmbedding: rows
    assert shard_dim("layers.0.attention.wo.weight") == shard_dim("layers.0.feed_forward.w2.weight") == 1
    assert shard_dim("layers.0.attention_norm.weight") is shard_dim("norm.weight") is None


def test_the_same_rules_as_meta_resharding_code():
    """llama_models.checkpoint's key lists and map_mp_rank give the same answers as ours."""
    import re

    from llama_models import checkpoint as meta

    weights = random_weights(SHAPES["gqa8_real_vocab"][0], 256, 0)
    column, row = re.compile("|".join(meta._WEIGHT_COLUMN_KEY)), re.compile("|".join(meta._WEIGHT_ROW_KEY))
    for name in weights:
        expected = 1 if row.search(name) else 0 if column.search(name) else None
        assert shard_dim(name) == expected, name
    for old, new in [(8, 1), (8, 2), (8, 8), (8, 16), (1, 4), (2, 4), (4, 2)]:
        for rank in range(new):
            assert map_mp_rank(old, new, rank) == meta.map_mp_rank(old, new, rank)


def test_split_then_merge_gives_the_weights_back():
    params, vocab, _, _ = SHAPES["gqa8_scaled_tied"]
    weights = random_weights(params, vocab, 0)
    for world in (1, 2, 4):
        merged_back = merge_weights([split_weights(weights, params, world, r) for r in range(world)])
        assert all(torch.equal(merged_back[k], weights[k]) for k in weights)


def test_more_ranks_than_kv_heads_replicate_the_kv_head_their_queries_use():
    n_heads, n_kv, world = 16, 2, 8  # the 70B (64 / 8) on 16 GPUs, in miniature
    n_rep = n_heads // n_kv
    for rank in range(world):
        queries = range(rank * n_heads // world, (rank + 1) * n_heads // world)
        assert list(kv_heads_of_rank(n_heads, n_kv, world, rank)) == sorted({q // n_rep for q in queries})


def test_meta_reshard_tiles_kv_heads_when_a_file_holds_several():
    """Noticed while checking: llama_models 0.3.0's reshard_mp repeats wk/wv with `.repeat` (tiling), which gives
    rank r KV head r % n_kv; the right one is the KV head of its query heads (ours). They agree when each file holds
    one KV head (Meta's own 70B files at 16 ranks), and disagree for a file with 2 KV heads on 4 ranks."""
    from llama_models.checkpoint import reshard_mp

    params = {"dim": 8, "n_heads": 4, "n_kv_heads": 2}  # head_dim 2
    wk = torch.arange(2.0).repeat_interleave(2)[:, None].expand(4, 8).contiguous()  # row value = KV head id
    meta = [int(reshard_mp([{"layers.0.attention.wk.weight": wk}], 4, r, 2)["layers.0.attention.wk.weight"][0, 0])
            for r in range(4)]
    ours = [int(split_weights({"layers.0.attention.wk.weight": wk}, params, 4, r)["layers.0.attention.wk.weight"][0, 0])
            for r in range(4)]
    assert ours == [0, 0, 1, 1] and meta == [0, 1, 0, 1]
    one_per_file = [reshard_mp([{"k.attention.wk.weight": wk[2 * f: 2 * f + 2]}], 2, r, 2)["k.attention.wk.weight"]
                    for f in range(2) for r in range(2)]
    assert [int(t[0, 0]) for t in one_per_file] == [0, 0, 1, 1]


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_each_rank_reads_exactly_its_piece_from_the_files(sharded, world):
    """Resharding on load (fewer ranks than files: several files; more: part of one) == cutting the merged weights."""
    folder = sharded["gqa8_real_vocab"]  # 2 files, 2 KV heads: 8 ranks split each file in 4 and replicate KV heads
    weights, params = load_sharded_model(folder)
    for rank in range(world):
        piece, _ = load_rank_weights(folder, params, world, rank)
        expected = split_weights(weights, params, world, rank)
        assert piece.keys() == expected.keys()
        assert all(torch.equal(piece[k], expected[k]) for k in expected), rank


def test_one_all_reduce_after_wo_and_one_after_w2_is_all_a_layer_needs():
    """In one process: the ranks' partial outputs of attention and feed_forward sum to the full ones."""
    params, vocab, _, _ = SHAPES["gqa8_scaled_tied"]
    w = random_weights(params, vocab, 3)
    x = torch.randn(5, params["dim"], generator=torch.Generator().manual_seed(0))
    head_dim = params["dim"] // params["n_heads"]
    freqs, mask = precompute_freqs_cis(head_dim, 5, params["rope_theta"]), causal_mask(5)
    names = ["attention.wq", "attention.wk", "attention.wv", "attention.wo"]
    full = attention(x, *(w[f"layers.0.{n}.weight"] for n in names), freqs, mask, params["n_heads"], params["n_kv_heads"])
    ffn = [f"layers.0.feed_forward.{n}.weight" for n in ("w1", "w2", "w3")]
    for world in (2, 4, 8):  # 8 ranks > 4 KV heads: replicated
        pieces = [split_weights(w, params, world, r) for r in range(world)]
        parts = [attention(x, *(p[f"layers.0.{n}.weight"] for n in names), freqs, mask, params["n_heads"] // world,
                           p["layers.0.attention.wk.weight"].shape[0] // head_dim) for p in pieces]
        assert torch.allclose(sum(parts), full, atol=1e-5)
        assert not torch.allclose(parts[0], full, atol=1e-2)  # one rank's part alone is not the answer
        assert torch.allclose(sum(feed_forward(x, *(p[n] for n in ffn)) for p in pieces),
                              feed_forward(x, *(w[n] for n in ffn)), atol=1e-5)


def test_world_sizes_that_fit():
    params, vocab, shards, _ = SHAPES["gqa8_real_vocab"]
    assert [n for n in range(1, 17) if world_size_fits(params, vocab, shards, n)] == [1, 2, 4, 8, 16]
    assert not world_size_fits(params, vocab, 8, 3) and not world_size_fits(params, 1001, 1, 2)


# --- across processes ------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=[1, 2, 4], ids=lambda w: f"world{w}")
def across(request, sharded):
    """One process group per world size runs the check on every checkpoint (and the tiny model)."""
    folders = [*sharded.values(), ensure_tiny()]
    start = time.monotonic()
    results = run_check(folders, TOKENS, request.param, meta=True, timeout=600)
    return request.param, dict(zip([*sharded, "tiny"], results)), time.monotonic() - start


def test_parallel_forward_equals_one_process(across, merged):
    world, results, _ = across
    for name, r in results.items():
        assert r["world_size"] == world
        assert torch.allclose(r["helpers"], merged[name], atol=1e-5, rtol=1e-5), (name, world)


def test_parallel_forward_equals_meta_at_the_same_world_size(across):
    world, results, _ = across
    for name, r in results.items():
        if name == "tiny" and world == 4:  # 1 file with 2 KV heads on 4 ranks: Meta's loader tiles them (see above)
            assert not torch.allclose(r["meta"], r["helpers"], atol=1e-2)
            continue
        assert torch.allclose(r["helpers"], r["meta"], atol=1e-5, rtol=1e-5), (name, world)


def test_each_rank_holds_about_its_piece_of_the_weights(across, sharded):
    """Peak memory growth of each process, measured around loading and a forward pass in the stored bf16."""
    world, results, _ = across
    total = sum(p.stat().st_size for p in sharded["gqa8_wide"].glob("consolidated.*.pth"))
    for r in results["gqa8_wide"]["rss"]:
        growth, piece = r["peak"] - r["before"], r["piece_bytes"]
        assert abs(piece - total / world) < 0.02 * total  # its piece is its share
        files = 4 // world  # files this rank merges (4 shards): one file's pages are mapped at a time
        assert 0.5 * piece < growth < piece * (1 + (1 / files if files > 1 else 0) + 0.1) + 24e6, (world, growth, piece)


# --- the command line, under torchrun ---------------------------------------------------------------------

def cli_in_this_process(*args) -> str:
    from helpers.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        assert main(list(args)) == 0
    return out.getvalue()


def torchrun(world: int, *args, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo"} if sys.platform == "linux" else dict(os.environ)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(world),
           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "helpers", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("world, model, sampling", [
    (4, "gqa8_real_vocab", []),
    # Sampling draws from the softmax: logits that differ in their last bits (the ranks sum in another order) can
    # move a draw across a token's boundary where many tokens are about equally likely, as with random weights.
    # The tiny model's distributions are peaked, as a trained model's are.
    (2, "tiny", ["--temperature", "0.8", "--top-p", "0.9", "--seed", "3"]),
], ids=["greedy_4_ranks", "seeded_2_ranks_tiny"])
def test_torchrun_prints_the_same_text_as_one_process(sharded, world, model, sampling):
    folder = ensure_tiny() if model == "tiny" else sharded[model]
    args = ["--model-dir", str(folder), "--prompt", "once upon a time", "--max-new-tokens", "8", *sampling]
    single = cli_in_this_process(*args)
    result = torchrun(world, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert single.strip() and result.stdout == single  # rank 0 alone printed, the same text
    assert result.stderr.count(f"tensor-parallel on {world} processes, computing in float32]") == 1


# --- bad input: one clear line from rank 0, every rank stops --------------------------------------------------

def broken_copy(src: Path, dst: Path, how: str, other: Path | None = None) -> Path:
    shutil.copytree(src, dst)
    if how == "missing":
        (dst / "consolidated.03.pth").unlink()
    elif how == "extra":
        shutil.copyfile(dst / "consolidated.01.pth", dst / "consolidated.02.pth")
    elif how == "other_model":
        shutil.copyfile(other / "consolidated.01.pth", dst / "consolidated.01.pth")
    elif how == "truncated":
        data = (dst / "consolidated.01.pth").read_bytes()
        (dst / "consolidated.01.pth").write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("case, world, message", [
    ("missing", 2, "consolidated.00.pth holds 1/4 of the model but"),
    ("extra", 2, "consolidated.02.pth do not belong to this model"),
    ("other_model", 2, "different models"),
    ("world_3", 3, "3 processes cannot share this checkpoint's 2 shard(s), 16 query heads and 2 KV heads evenly: "
                   "start 1, 2, 4, 8, 16 processes"),
    ("truncated", 2, "rank 1: "),
])
def test_bad_input_stops_every_rank_with_one_line(sharded, tmp_path, case, world, message):
    real = sharded["gqa8_real_vocab"]
    folder = {"missing": lambda: broken_copy(sharded["gqa8_scaled_tied"], tmp_path / "m", "missing"),
              "extra": lambda: broken_copy(real, tmp_path / "m", "extra"),
              "other_model": lambda: broken_copy(real, tmp_path / "m", "other_model", other=twin(real, tmp_path)),
              "world_3": lambda: real,
              "truncated": lambda: broken_copy(real, tmp_path / "m", "truncated")}[case]()
    start = time.monotonic()
    ranks = start_ranks(world, ["-m", "helpers", "--model-dir", str(folder), "--max-new-tokens", "2"], timeout=300,
                        env={"LLAMA3_DIST_TIMEOUT": "60"})
    assert time.monotonic() - start < 240  # nobody waited for the timeout
    assert all(r.returncode == 2 for r in ranks), [(r.returncode, r.stderr[-500:]) for r in ranks]
    assert all(r.stdout == "" for r in ranks) and all(r.stderr == "" for r in ranks[1:])
    assert len(ranks[0].stderr.splitlines()) == 1 and ranks[0].stderr.startswith("error: "), ranks[0].stderr
    assert message in ranks[0].stderr
    if case == "truncated":
        assert "consolidated.01.pth is truncated or corrupt" in ranks[0].stderr


def twin(folder: Path, tmp_path: Path) -> Path:
    """The same shapes, other weights: a different model that no shape check can tell apart."""
    params = json.loads((folder / "params.json").read_text())
    vocab = params.pop("vocab_size")
    return make_sharded_checkpoint(tmp_path / "twin", params, 2, vocab, seed=99)


def test_a_rank_that_never_comes_is_a_timeout_not_a_hang(sharded):
    """Rank 1 of 2 never starts: rank 0 gives up after LLAMA3_DIST_TIMEOUT seconds with one line, exit 1."""
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": "0", "LLAMA3_DIST_TIMEOUT": "3"}
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "helpers", "--model-dir", str(sharded["gqa8_real_vocab"])],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and time.monotonic() - start < 100
    assert len(r.stderr.splitlines()) == 1 and "lost contact with the other processes" in r.stderr, r.stderr


@pytest.mark.parametrize("case, message", [
    ("gap", "lacks consolidated.01.pth of its 3 shards"),
    ("missing", "consolidated.03.pth missing"),
    ("extra", "consolidated.02.pth do not belong"),
    ("other_shape", "consolidated.01.pth does not fit params.json"),
    ("other_model", "differ in their norm weights"),
    ("truncated", "consolidated.01.pth is truncated or corrupt"),
])
def test_bad_shards_in_one_process(sharded, tmp_path, case, message):
    real = sharded["gqa8_real_vocab"]
    if case == "gap":
        folder = broken_copy(real, tmp_path / "m", "extra")
        (folder / "consolidated.01.pth").unlink()
    elif case == "missing":
        folder = broken_copy(sharded["gqa8_scaled_tied"], tmp_path / "m", "missing")
    elif case == "other_shape":  # cut in 2 as well, but another model's shapes
        params, vocab, _, _ = SHAPES["gqa8_scaled_tied"]
        other = make_sharded_checkpoint(tmp_path / "other", params, 2, vocab)
        folder = broken_copy(real, tmp_path / "m", "other_model", other=other)
    elif case == "other_model":
        folder = broken_copy(real, tmp_path / "m", "other_model", other=twin(real, tmp_path))
    else:
        folder = broken_copy(real, tmp_path / "m", case)
    with pytest.raises(LlamaError, match=message.replace(".", r"\.")):
        load_sharded_model(folder)


def test_save_shards_refuses_a_cut_through_a_kv_head(tmp_path):
    params, vocab, _, _ = SHAPES["gqa8_real_vocab"]
    with pytest.raises(LlamaError, match="2 KV heads cannot be cut into 4 shards"):
        save_shards(random_weights(params, 64, 0), params, 4, tmp_path)


def test_rank_range_of_the_vocabulary():
    params = SHAPES["gqa8_real_vocab"][0]
    assert [rank_range("tok_embeddings.weight", (128256, 64), params, 8, r) for r in (0, 7)] == [(0, 16032),
                                                                                                 (112224, 128256)]


@pytest.mark.parametrize("free_gb, local, stored, expected", [
    (40.0, 2, torch.bfloat16, torch.float32),  # both ranks here: 16 GB stored, 32 GB in float32 ≤ 0.9 × 40
    (20.0, 2, torch.bfloat16, torch.bfloat16),  # both ranks here: 32 GB > 18: the stored dtype
    (20.0, 1, torch.bfloat16, torch.float32),  # one rank per machine: this machine's half, 16 GB ≤ 18
    (20.0, 2, torch.float16, torch.float16),  # a float16 checkpoint gives way to float16
    (20.0, 2, torch.float32, torch.float32),  # stored in float32: nothing to convert
])
def test_the_ranks_dtype_gives_way_to_the_stored_one_when_their_copies_do_not_fit(monkeypatch, free_gb, local, stored,
                                                                                    expected):
    import torch.distributed as dist

    import helpers.launch as launch

    if dist.is_initialized():
        pytest.skip("a process group is already running in this process")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(launch, "pick_dtype", lambda choice: torch.float32)  # this CPU's probe, fixed
        monkeypatch.setattr(launch, "memory_available", lambda device: free_gb * 1e9)
        monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)  # rank 0 of 2 (one process runs here)
        monkeypatch.delenv("LLAMA3_DTYPE", raising=False)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))
        assert launch.agree_on_dtype("auto", int(16e9), stored=stored) == expected
        assert launch.agree_on_dtype("float32", int(16e9), stored=stored) == torch.float32  # asked for: kept
        assert launch.agree_on_dtype("auto", int(0.5e9), stored=stored) == torch.float32  # small: the exact mode
    finally:
        dist.destroy_process_group()
