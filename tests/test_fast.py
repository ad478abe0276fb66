"""helpers.fast: the compute dtype (argument, LLAMA3_DTYPE, measured), converting weights once, exact vs fast mode."""
import pytest
import torch

from helpers import LlamaError, cast_weights, choose_mode, pick_dtype
from helpers import fast

BF16, F32 = torch.bfloat16, torch.float32


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv("LLAMA3_DTYPE", raising=False)


def fake_probe(monkeypatch, bf16: float, f32: float) -> list:
    """Replace the GEMM probe with fixed GFLOP/s; -> the list of dtypes it was asked about."""
    asked = []

    def gemm_gflops(dtype, *args, **kwargs):
        asked.append(dtype)
        return {BF16: bf16, F32: f32}[dtype]

    monkeypatch.setattr(fast, "gemm_gflops", gemm_gflops)
    return asked


def no_probe(monkeypatch):
    def gemm_gflops(*args, **kwargs):
        raise AssertionError("the probe ran although the dtype was given")

    monkeypatch.setattr(fast, "gemm_gflops", gemm_gflops)


# --- pick_dtype ----------------------------------------------------------------------------------

@pytest.mark.parametrize("given, expected", [(BF16, BF16), (F32, F32), ("bfloat16", BF16), ("bf16", BF16),
                                             ("BFloat16", BF16), ("float32", F32), ("fp32", F32), ("FP32", F32)])
def test_pick_dtype_explicit(monkeypatch, given, expected):
    no_probe(monkeypatch)
    assert pick_dtype(given) is expected
    monkeypatch.setenv("LLAMA3_DTYPE", "float32" if expected is BF16 else "bfloat16")
    assert pick_dtype(given) is expected  # the argument wins over the environment


@pytest.mark.parametrize("env, expected", [("bfloat16", BF16), ("bf16", BF16), ("float32", F32), ("FP32", F32)])
def test_pick_dtype_from_env(monkeypatch, env, expected):
    no_probe(monkeypatch)
    monkeypatch.setenv("LLAMA3_DTYPE", env)
    assert pick_dtype() is expected
    assert pick_dtype(None) is expected


@pytest.mark.parametrize("bf16, f32, expected", [
    (168.0, 27.0, BF16),  # this machine's avx512_bf16: bf16 6x faster
    (15.0, 10.0, BF16),  # exactly 1.5x: bf16
    (14.9, 10.0, F32),  # just under 1.5x: not worth bf16's rounding
    (5.0, 27.0, F32),  # a CPU without fast bf16 (emulated): float32
])
@pytest.mark.parametrize("how", ["default", "auto", "env auto"])
def test_pick_dtype_auto_measures(monkeypatch, bf16, f32, expected, how):
    asked = fake_probe(monkeypatch, bf16, f32)
    if how == "env auto":
        monkeypatch.setenv("LLAMA3_DTYPE", "auto")
    assert pick_dtype("auto" if how == "auto" else None) is expected
    assert set(asked) == {BF16, F32}


@pytest.mark.parametrize("name", ["half", "int8", "", "bfloat"])
def test_pick_dtype_unknown_name(monkeypatch, name):
    no_probe(monkeypatch)
    with pytest.raises(LlamaError, match=f"Unknown compute dtype {name!r}: use bfloat16, float16, float32 or auto"):
        pick_dtype(name)
    monkeypatch.setenv("LLAMA3_DTYPE", name or "?")
    with pytest.raises(LlamaError, match="Unknown compute dtype"):
        pick_dtype()


@pytest.mark.parametrize("name", ["float16", "fp16"])
def test_pick_dtype_float16_by_name(monkeypatch, name):
    no_probe(monkeypatch)
    assert pick_dtype(name) is torch.float16


def test_probe_measures_something():
    assert fast.gemm_gflops(F32, rows=4, dim=64, reps=3) > 0
    assert fast.gemm_gflops(BF16, rows=4, dim=64, reps=3) > 0


# --- cast_weights ---------------------------------------------------------------------------------

def checkpoint(dtype=BF16, tied=False, vocab=50, dim=8) -> dict:
    g = torch.Generator().manual_seed(0)
    w = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g).to(dtype),
         "layers.0.attention.wq.weight": torch.randn(dim, dim, generator=g).to(dtype),
         "layers.0.attention_norm.weight": torch.randn(dim, generator=g).to(dtype),
         "norm.weight": torch.randn(dim, generator=g).to(dtype),
         "output.weight": torch.randn(vocab, dim, generator=g).to(dtype)}
    if tied:
        del w["output.weight"]
    return w


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("dtype", [BF16, F32])
def test_cast_weights_shares_tensors_already_in_the_dtype(dtype, tied):
    """Meta's bf16 checkpoint in bf16 mode (or a float32 one in float32 mode): nothing is copied."""
    w = checkpoint(dtype, tied)
    cast = cast_weights(w, dtype)
    assert cast.keys() == w.keys()
    assert all(cast[k] is w[k] for k in w)


def test_cast_weights_converts_once_and_keeps_the_untied_embedding_as_stored():
    w = checkpoint(BF16)
    before = {k: v.clone() for k, v in w.items()}
    cast = cast_weights(w, F32)
    assert cast["tok_embeddings.weight"] is w["tok_embeddings.weight"]  # forward converts the rows it picks
    assert cast["tok_embeddings.weight"].dtype == BF16
    for k in w.keys() - {"tok_embeddings.weight"}:
        assert cast[k].dtype == F32 and torch.equal(cast[k], w[k].float())
    assert all(w[k].dtype == BF16 and torch.equal(w[k], before[k]) for k in w)  # the input dict is untouched


def test_cast_weights_converts_a_tied_embedding():
    """3.2 1B/3B: no output.weight, the embedding table is also the output layer, a matrix product each step."""
    w = checkpoint(BF16, tied=True)
    cast = cast_weights(w, F32)
    assert "output.weight" not in cast
    assert all(v.dtype == F32 for v in cast.values())


def test_cast_weights_mixed_dtypes():
    w = {**checkpoint(BF16), "norm.weight": torch.ones(8)}  # float32 norm gains among bf16 matrices
    cast = cast_weights(w, F32)
    assert cast["norm.weight"] is w["norm.weight"]
    cast = cast_weights(w, BF16)
    assert cast["norm.weight"].dtype == BF16 and cast["output.weight"] is w["output.weight"]


# --- choose_mode ----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def stay_on_meta(monkeypatch):
    """The fake checkpoints below live on the meta device: choose_mode's device is meta (tests/test_devices.py
    tests the real choice)."""
    monkeypatch.setattr(fast, "pick_device", lambda device=None, source=None: torch.device("meta"))


def sized(n_bytes: int) -> dict:
    """A 'checkpoint' of exactly n_bytes in bf16, on the meta device (shapes only, no memory)."""
    assert n_bytes % 2 == 0
    return {"tok_embeddings.weight": torch.empty(n_bytes // 2 - 8, dtype=BF16, device="meta"),
            "norm.weight": torch.empty(4, dtype=BF16, device="meta"),
            "output.weight": torch.empty(4, dtype=BF16, device="meta")}


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_choose_mode_small_checkpoint_is_exact(monkeypatch, dtype):
    """Just under the default 1 GB: float32 whatever this CPU is fast at (the probe does not even run)."""
    no_probe(monkeypatch)
    w = sized(999_999_998)
    cast, chosen, fused = choose_mode(w, dtype)
    assert chosen is F32 and fused is False  # the exact mode: the full score matrix
    assert cast["norm.weight"].dtype == F32 and cast["output.weight"].dtype == F32
    assert cast["tok_embeddings.weight"] is w["tok_embeddings.weight"]  # untied: stays as stored


@pytest.mark.parametrize("probe, expected", [((168.0, 27.0), BF16), ((5.0, 27.0), F32)])
@pytest.mark.parametrize("dtype", [None, "auto"])
def test_choose_mode_big_checkpoint_measures(monkeypatch, probe, expected, dtype):
    """Just over the default 1 GB: the measured fast dtype."""
    asked = fake_probe(monkeypatch, *probe)
    w = sized(1_000_000_002)
    cast, chosen, fused = choose_mode(w, dtype)
    assert chosen is expected and asked and fused is True  # the fast mode: torch's fused attention
    assert cast["output.weight"].dtype == expected
    if expected is BF16:
        assert all(cast[k] is w[k] for k in w)  # bf16 mode on a bf16 checkpoint copies nothing


def test_choose_mode_threshold_is_the_argument(monkeypatch):
    fake_probe(monkeypatch, 168.0, 27.0)
    w = sized(2000)  # 2e-6 GB
    assert choose_mode(w, exact_below_gb=2.002e-6)[1:] == (F32, False)
    assert choose_mode(w, exact_below_gb=1.998e-6)[1:] == (BF16, True)


@pytest.mark.parametrize("n_bytes", [2000, 1_000_000_002])
@pytest.mark.parametrize("env, expected", [("bfloat16", BF16), ("float32", F32)])
def test_llama3_dtype_overrides_the_size_rule(monkeypatch, n_bytes, env, expected):
    no_probe(monkeypatch)
    monkeypatch.setenv("LLAMA3_DTYPE", env)
    cast, chosen, fused = choose_mode(sized(n_bytes))
    assert chosen is expected and fused is True and cast["output.weight"].dtype == expected


@pytest.mark.parametrize("given", [BF16, "bfloat16", F32, "float32"])
def test_choose_mode_explicit_dtype_wins(monkeypatch, given):
    no_probe(monkeypatch)
    monkeypatch.setenv("LLAMA3_DTYPE", "float32" if given in (BF16, "bfloat16") else "bfloat16")
    expected = pick_dtype(given)
    for n_bytes in (2000, 1_000_000_002):
        assert choose_mode(sized(n_bytes), given)[1:] == (expected, True)  # a dtype asked for: the fast mode


# --- memory: a copy that does not fit --------------------------------------------------------------

def test_a_measured_dtype_that_does_not_fit_gives_way_to_the_stored_one(monkeypatch):
    """An 8B on a 24 GB GPU-like device (meta here: choose_mode keeps weights as stored in another compute dtype on a
    CPU only, tests/test_stored.py): the probe may prefer float32, whose copy (32 GB) cannot fit; bf16 is taken."""
    fake_probe(monkeypatch, 5.0, 27.0)  # float32 measured faster
    w = sized(2_000_000)  # 2 MB of bf16: 4 MB in float32 (tied: the table is the output layer, so it converts too)
    del w["output.weight"]
    monkeypatch.setattr(fast, "memory_available", lambda device: 3_000_000)
    cast, chosen, fused = choose_mode(w, exact_below_gb=0.0)
    assert chosen is BF16 and fused and all(cast[k] is w[k] for k in w)
    monkeypatch.setattr(fast, "memory_available", lambda device: 5_000_000)  # fits: the measured choice stands
    assert choose_mode(w, exact_below_gb=0.0)[1] is F32


def test_a_dtype_asked_for_that_does_not_fit_is_one_sentence(monkeypatch):
    no_probe(monkeypatch)
    monkeypatch.setattr(fast, "memory_available", lambda device: 3_000_000_000)
    w = sized(2_000_000_000)
    del w["output.weight"]  # tied: 4 GB in float32
    with pytest.raises(LlamaError, match=r"The weights in float32 on meta need 4.0 GB but 3.0 GB is free: choose a smaller"):
        choose_mode(w, "float32")


def test_copy_bytes_counts_only_new_tensors():
    w = sized(2000)
    assert fast.copy_bytes(w, BF16, torch.device("meta")) == 0  # same dtype, same device: shared
    # float32: every tensor but the untied embedding table, 4 bytes per element
    assert fast.copy_bytes(w, F32, torch.device("meta")) == 4 * (4 + 4)
    assert fast.copy_bytes(w, BF16, torch.device("cpu")) == 2000  # moved: all of it


@pytest.mark.parametrize("env, expected", [("bfloat16", BF16), ("float32", F32)])
def test_auto_defers_to_llama3_dtype(monkeypatch, env, expected):
    """`--dtype auto` (the command line's default) is no dtype asked for: $LLAMA3_DTYPE still decides, and the
    probe does not run. (Before: "auto" went to the probe and its answer was taken as asked for.)"""
    no_probe(monkeypatch)
    monkeypatch.setenv("LLAMA3_DTYPE", env)
    assert choose_mode(sized(1_000_000_002), "auto")[1] is expected
