"""The device rule: one place chooses the device (helpers.devices.pick_device); every other function computes where
its tensors are. Proven on this CPU-only machine with PyTorch's meta device (shapes without data), both ways:
weights on meta give meta logits, and with meta as torch's *default* device, weights on the CPU still compute on
the CPU, so nothing inside makes a tensor on a fixed or default device."""
import pytest
import torch

import helpers
from helpers import LlamaError, forward, generate, layers, load_model, new_kv_cache
from helpers.devices import pick_device
from helpers.fast import cast_weights, choose_mode

META = torch.device("meta")
SHAPES = ["gqa4", "mqa", "mha_no_kv_key", "gqa2_scaled"]  # GQA ratios 4, n_heads, 1, 2 (scaled RoPE)


@pytest.fixture(autouse=True)
def auto_device(monkeypatch):
    monkeypatch.delenv("LLAMA3_DEVICE", raising=False)  # conftest sets cpu for the notebooks


def fake_gpus(monkeypatch, cuda: int = 0, mps: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(helpers.devices, "mps_available", lambda: mps)


# --- choosing the device -------------------------------------------------------------------------

@pytest.mark.parametrize("cuda, mps, expected", [(0, False, "cpu"), (0, True, "mps"), (1, True, "cuda"), (2, False, "cuda")])
def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    fake_gpus(monkeypatch, cuda, mps)
    assert pick_device().type == expected
    assert pick_device("auto").type == expected
    monkeypatch.setenv("LLAMA3_DEVICE", "AUTO")
    assert pick_device().type == expected


@pytest.mark.parametrize("given", ["cpu", "cuda", "cuda:1", "mps"])
def test_a_present_device_is_taken(monkeypatch, given):
    fake_gpus(monkeypatch, cuda=2, mps=True)
    assert pick_device(given) == torch.device(given)
    monkeypatch.setenv("LLAMA3_DEVICE", given)
    assert pick_device() == torch.device(given)
    assert pick_device("cpu") == torch.device("cpu")  # the argument wins over the environment


@pytest.mark.parametrize("given, cuda, mps, message", [
    ("cuda", 0, True, "asks for cuda, but this torch .* sees no CUDA GPU: use cpu or auto"),
    ("cuda:0", 0, False, "asks for cuda:0, but this torch"),
    ("cuda:2", 2, False, "asks for cuda:2, but this machine has 2 CUDA GPU\\(s\\), numbered from 0"),
    ("mps", 1, False, "asks for mps, but this torch sees no Apple MPS device"),
    ("tpu", 1, True, "Unknown device 'tpu' in .*: use auto, cpu, cuda, cuda:N or mps"),
    ("cuda:x", 1, True, "Unknown device 'cuda:x'"),
])
def test_an_absent_or_unknown_device_is_one_sentence(monkeypatch, given, cuda, mps, message):
    fake_gpus(monkeypatch, cuda, mps)
    with pytest.raises(LlamaError, match=message):
        pick_device(given)
    monkeypatch.setenv("LLAMA3_DEVICE", given)
    with pytest.raises(LlamaError, match="LLAMA3_DEVICE asks for|in LLAMA3_DEVICE"):
        pick_device()


def test_the_gpu_dtype_is_metas_rule(monkeypatch):
    """llama_models/llama3/generation.py: bf16 where the GPU supports it, else float16; the CPU measures."""
    native = {"including_emulation": False}  # emulated bf16 (a T4, a V100) is slow: those get float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kw: kw == native or "emulated")
    assert helpers.pick_dtype(None, torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert helpers.pick_dtype("auto", torch.device("cuda")) is torch.float16
    assert helpers.pick_dtype("float32", torch.device("cuda")) is torch.float32  # asked for: taken


# --- the device follows the weights ------------------------------------------------------------------

def on_meta(weights):
    return cast_weights(weights, None, META)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_on_meta_weights_gives_meta_logits(checkpoints, shape, dtype):
    weights, params = load_model(checkpoints[shape])
    vocab = weights["tok_embeddings.weight"].shape[0]
    meta_weights = on_meta(weights)
    logits = forward(meta_weights, params, [1, 2, 3, 4, 5], dtype=dtype)
    assert logits.device == META and logits.shape == (5, vocab) and logits.dtype == torch.float32
    caches = new_kv_cache(params, 8, dtype, META)
    assert all(k.device == META and v.device == META for k, v in caches)
    forward(meta_weights, params, [1, 2, 3], 0, caches, dtype)
    step = forward(meta_weights, params, [4], 3, caches, dtype, last_only=True)
    assert step.device == META and step.shape == (1, vocab)


def test_forward_on_meta_with_real_valued_rope(monkeypatch, tiny):
    weights, params, _ = tiny
    monkeypatch.setattr(helpers.model, "complex_supported", lambda device: False)
    assert forward(on_meta(weights), params, [1, 2, 3]).device == META


def test_nothing_is_made_on_the_default_device(tiny):
    """With meta as torch's default device, a tensor made without device= would land on meta and the CPU
    computation would fail: it does not, and the numbers are those of a normal run."""
    weights, params, tokenizer = tiny
    tokens = tokenizer.encode(helpers.COURSE_PROMPT, bos=True, eos=False)
    expected_logits = forward(weights, params, tokens)
    expected = generate(weights, params, tokens, 4, temperature=0.8, top_p=0.9, seed=3, stop_tokens=[])
    torch.set_default_device("meta")
    try:
        logits = forward(weights, params, tokens)
        sampled = generate(weights, params, tokens, 4, temperature=0.8, top_p=0.9, seed=3, stop_tokens=[])
    finally:
        torch.set_default_device(None)
    assert logits.device.type == "cpu" and torch.equal(logits, expected_logits)
    assert sampled == expected


def test_choose_mode_moves_to_the_chosen_device(tiny):
    weights, _, _ = tiny
    moved, dtype, _ = choose_mode(weights, "bfloat16", device=META)
    assert dtype is torch.bfloat16 and all(t.device == META for t in moved.values())
    stored = weights["norm.weight"].dtype
    same = choose_mode(weights, stored, device="cpu")[0]
    assert all(same[k] is weights[k] for k in weights)  # already there, already in that dtype: nothing copied


def test_load_model_onto_a_device_in_a_dtype(tiny_dir):
    weights, _ = load_model(tiny_dir)
    moved, _ = load_model(tiny_dir, device=META, dtype=torch.bfloat16)
    assert set(moved) == set(weights)
    assert all(t.device == META and t.dtype == torch.bfloat16 for k, t in moved.items()
               if k != "tok_embeddings.weight")
    with pytest.raises(LlamaError, match="Unknown device"):
        load_model(tiny_dir, device="gpu")


# --- RoPE without complex numbers (Apple MPS) ---------------------------------------------------------

@pytest.mark.parametrize("head_dim, theta, scaled", [(16, 10000.0, False), (128, 500000.0, False), (64, 500000.0, True)])
def test_real_rope_is_the_complex_rotation(head_dim, theta, scaled):
    scaling = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192} if scaled else None
    end = 300
    complex_freqs = layers.precompute_freqs_cis(head_dim, end, theta, scaling)
    real_freqs = layers.precompute_freqs_cis(head_dim, end, theta, scaling, real=True)
    assert real_freqs.shape == (end, head_dim // 2, 2) and not real_freqs.is_complex()
    # The same angles: cos and sin agree with torch.polar's to float32 rounding (one unit in the last place).
    assert torch.allclose(real_freqs, torch.view_as_real(complex_freqs), rtol=0, atol=1.2e-7)
    x = torch.randn(end, 3, head_dim, generator=torch.Generator().manual_seed(head_dim))
    # With the very same cos and sin, the written-out rotation is the complex product, bit for bit.
    assert torch.equal(layers.apply_rotary_emb(x, torch.view_as_real(complex_freqs)), layers.apply_rotary_emb(x, complex_freqs))
    assert torch.allclose(layers.apply_rotary_emb(x, real_freqs), layers.apply_rotary_emb(x, complex_freqs), rtol=0, atol=1e-5)
    # A wrong rotation (the sine's sign flipped: rotating backwards) is caught.
    flipped = torch.stack([real_freqs[..., 0], -real_freqs[..., 1]], dim=-1)
    assert not torch.allclose(layers.apply_rotary_emb(x, flipped), layers.apply_rotary_emb(x, complex_freqs), atol=1e-3)
    bf16 = x.to(torch.bfloat16)
    assert layers.apply_rotary_emb(bf16, real_freqs).dtype == torch.bfloat16


def test_forward_with_real_rope_equals_complex(monkeypatch, checkpoints):
    weights, params = load_model(checkpoints["gqa2_scaled"])
    tokens = list(range(3, 40))
    expected = forward(weights, params, tokens)
    monkeypatch.setattr(helpers.model, "complex_supported", lambda device: False)
    got = forward(weights, params, tokens)
    assert (got - expected).abs().max() <= 1e-5
    assert torch.equal(got.argmax(-1), expected.argmax(-1))


def test_complex_supported_is_a_probe(monkeypatch):
    assert layers.complex_supported("cpu") and layers.complex_supported(META)

    def no_complex(*args, **kwargs):
        raise RuntimeError("view_as_complex is not supported on this device")

    monkeypatch.setattr(torch, "view_as_complex", no_complex)
    assert not layers.complex_supported("cpu")


# --- the notebooks' banner ------------------------------------------------------------------------------

def test_the_banner_names_device_and_dtype(monkeypatch):
    from helpers import fast

    monkeypatch.setattr(fast, "pick_device", lambda device=None: torch.device("cpu"))
    assert fast.mode_banner(66_000_000) == "Compute: float32 (the exact mode) on cpu, every cell"
    monkeypatch.setattr(fast, "gemm_gflops", lambda dtype, **kw: 5.0 if dtype is torch.bfloat16 else 27.0)
    monkeypatch.setattr(fast, "memory_available", lambda device: 20e9)
    stored = "loops and demonstrations in float32 on the stored bfloat16 weights (one-token products in bfloat16) on cpu"
    monkeypatch.setattr(fast, "gemv_seconds", lambda dtype, **kw: 2.0 if dtype is torch.bfloat16 else 1.0)
    assert "loops and demonstrations in float32 on cpu" in fast.mode_banner(2_470_000_000)  # a float32 copy
    monkeypatch.setattr(fast, "gemv_seconds", lambda dtype, **kw: 1.0 if dtype is torch.bfloat16 else 2.0)
    assert stored in fast.mode_banner(2_470_000_000)  # bf16 matrix-vector products faster: the weights as stored
    # the 8B's float32 copy (32 GB) does not fit in 20 GB: float32 on the stored weights, as choose_mode does
    monkeypatch.setattr(fast, "gemv_seconds", lambda dtype, **kw: 2.0 if dtype is torch.bfloat16 else 1.0)
    assert stored in fast.mode_banner(16_060_000_000)
    monkeypatch.setenv("LLAMA3_DTYPE", "float32")  # asked for, and it does not fit: said, as choose_mode refuses it
    assert "float32 (which does not fit in memory: helpers.choose_mode will refuse it)" in fast.mode_banner(16_060_000_000)
    monkeypatch.delenv("LLAMA3_DTYPE")
    # a CPU fast at bf16 computes on the stored bf16 weights: nothing is copied, so any free memory will do
    monkeypatch.setattr(fast, "gemm_gflops", lambda dtype, **kw: 168.0 if dtype is torch.bfloat16 else 27.0)
    monkeypatch.setattr(fast, "memory_available", lambda device: 1e9)
    assert "loops and demonstrations in bfloat16 on cpu (the fast mode" in fast.mode_banner(16_060_000_000)
    monkeypatch.setattr(fast, "pick_device", lambda device=None: torch.device("meta"))
    assert fast.mode_banner(66_000_000).endswith("step-by-step cells on the CPU, loops and demonstrations on meta")
