"""Each exercise checker accepts the course's function and rejects typical wrong ones with the right hint.

The wrong versions here are written the way a learner would write them (not copied from the checkers' own
mistake table), so a hint is proven to recognise the mistake, not one particular spelling of it.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import helpers
from helpers import exercises as ex
from helpers.decode import greedy_decode
from helpers.exercises.core import _differs
from helpers.generate import new_kv_cache, sample_top_p

import exercise_mistakes  # the checkers of notebooks 01, 02, 03, 05, 06, 09, 10, 11 added for issue 16


def verdict(capsys, check, fn):
    ok = check(fn)
    return ok, capsys.readouterr().out


def stub(*args, **kwargs):
    raise NotImplementedError


# --- the right functions pass; stubs print the fixed line -----------------------------------------------

REFERENCES = [
    (ex.check_rms_norm, helpers.rms_norm), (ex.check_repeat_kv, helpers.repeat_kv),
    (ex.check_precompute_freqs_cis, helpers.precompute_freqs_cis), (ex.check_apply_rotary_emb, helpers.apply_rotary_emb),
    (ex.check_causal_mask, helpers.causal_mask), (ex.check_attention, helpers.attention),
    (ex.check_ffn_hidden_dim, helpers.ffn_hidden_dim), (ex.check_feed_forward, helpers.feed_forward),
    (ex.check_transformer_block, helpers.transformer_block), (ex.check_greedy_decode, greedy_decode),
    (ex.check_new_kv_cache, new_kv_cache), (ex.check_sample_top_p, sample_top_p),
    *exercise_mistakes.REFERENCES,
]
IDS = [c.__name__ for c, _ in REFERENCES]


@pytest.mark.parametrize("check, reference", REFERENCES, ids=IDS)
def test_accepts_the_course_function(capsys, check, reference):
    ok, out = verdict(capsys, check, reference)
    assert ok and out.startswith("✓"), out


@pytest.mark.parametrize("check, reference", REFERENCES, ids=IDS)
def test_an_untouched_stub_prints_the_fixed_line(capsys, check, reference):
    ok, out = verdict(capsys, check, stub)
    assert not ok and out.strip().endswith(ex.NOT_DONE)


def test_a_finished_function_calling_another_stub_names_that_stub(capsys):
    def transformer_block(*args):  # the notebook's stub of another exercise, not written yet
        raise NotImplementedError

    def forward(weights, params, tokens):  # written, but calls that stub
        h = weights["tok_embeddings.weight"][torch.as_tensor(tokens)]
        return transformer_block(h, weights, 0, params, None, None)

    ok, out = verdict(capsys, ex.check_forward, forward)
    assert not ok and ex.NOT_DONE not in out, out
    assert out.startswith("✗ forward called transformer_block, which is still a stub") and "helpers.transformer_block" in out, out
    ok, out = verdict(capsys, ex.check_sample_top_p, lambda probs, p, generator: transformer_block())
    assert not ok and "called transformer_block" in out, out


@pytest.mark.parametrize("check, right", exercise_mistakes.ACCEPTED,
                         ids=[f"{c.__name__}-{r.__name__}" for c, r in exercise_mistakes.ACCEPTED])
def test_accepts_other_correct_versions(capsys, check, right):
    ok, out = verdict(capsys, check, right)
    assert ok and out.startswith("✓"), out


def test_a_result_the_course_returns_as_an_int_must_be_an_int():
    assert _differs(14336, 14336) is None
    for got, expected in ((14336.0, 14336), (torch.tensor(14336), 14336), (True, 1)):  # each == expected, none an int
        assert _differs(got, expected).endswith("not an int"), got


def test_every_checker_is_tested():
    assert {n for n in dir(ex) if n.startswith("check_")} == set(IDS)


# --- wrong functions, as learners write them, each with the hint it must get ----------------------------

def rms_eps_outside(x, weight, eps):
    x32 = x.float()
    return (x32 / (torch.sqrt((x32 ** 2).mean(dim=-1, keepdim=True)) + eps)).to(x.dtype) * weight


def rms_layernorm(x, weight, eps):
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps).to(x.dtype) * weight


def rms_no_gain(x, weight, eps):
    x32 = x.float()
    return (x32 / torch.sqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def rms_no_cast_back(x, weight, eps):
    x32 = x.float()
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def kv_tiled(x, n_rep):
    return torch.cat([x] * n_rep, dim=1)


def kv_wrong_axis(x, n_rep):
    return x.repeat_interleave(n_rep, dim=0)


def kv_wrong_axis2(x, n_rep):
    return torch.cat([x] * n_rep, dim=-1)


def rope_half_split(x, freqs_cis):
    d = x.shape[-1]
    cos = torch.cat([freqs_cis.real, freqs_cis.real], -1)[:, None, :]
    sin = torch.cat([freqs_cis.imag, freqs_cis.imag], -1)[:, None, :]
    rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)


def rope_conjugate(x, freqs_cis):
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * torch.conj(freqs_cis)[:, None, :]).flatten(-2).to(x.dtype)


def rope_float_out(x, freqs_cis):
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(xc * freqs_cis[:, None, :]).flatten(-2)


def freqs_exponent_by_one(head_dim, end, theta):
    j = torch.arange(head_dim // 2, dtype=torch.float32)
    freqs = theta ** (-j / head_dim)
    return torch.polar(torch.ones(end, head_dim // 2), torch.arange(end)[:, None].float() * freqs)


def freqs_from_one(head_dim, end, theta):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    m = torch.arange(1, end + 1).float()
    return torch.polar(torch.ones(end, head_dim // 2), torch.outer(m, freqs))


def freqs_cos_sin(head_dim, end, theta):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(end).float(), freqs)
    return torch.cos(angles)


def mask_zero(seqlen, start_pos=0):
    return torch.zeros(seqlen, start_pos + seqlen).masked_fill(
        torch.ones(seqlen, start_pos + seqlen, dtype=torch.bool).triu(start_pos + 1), 0.0)


def mask_diagonal(seqlen, start_pos=0):
    m = torch.full((seqlen, start_pos + seqlen), float("-inf"))
    return torch.triu(m, diagonal=start_pos)


def mask_no_cache(seqlen, start_pos=0):
    return torch.full((seqlen, seqlen), float("-inf")).triu(1)


def mask_ones(seqlen, start_pos=0):
    return torch.tril(torch.ones(seqlen, start_pos + seqlen), diagonal=start_pos)


def make_attention(rotate_v=False, tile=False, scale_dim=False, zero_fill=False):
    def attn(x, wq, wk, wv, wo, freqs_cis, mask, n_heads, n_kv_heads):
        T, head_dim = x.shape[0], wq.shape[0] // n_heads
        q = helpers.apply_rotary_emb((x @ wq.T).reshape(T, n_heads, head_dim), freqs_cis)
        k = helpers.apply_rotary_emb((x @ wk.T).reshape(T, n_kv_heads, head_dim), freqs_cis)
        v = (x @ wv.T).reshape(T, n_kv_heads, head_dim)
        if rotate_v:
            v = helpers.apply_rotary_emb(v, freqs_cis)
        outs = []
        for h in range(n_heads):
            kv = h % n_kv_heads if tile else h // (n_heads // n_kv_heads)
            s = q[:, h] @ k[:, kv].T / math.sqrt(x.shape[1] if scale_dim else head_dim)
            s = s.masked_fill(mask == float("-inf"), 0.0) if zero_fill else s + mask
            outs.append(torch.softmax(s, dim=-1) @ v[:, kv])
        return torch.cat(outs, dim=-1) @ wo.T
    return attn


def ffn_swapped(x, w1, w2, w3):
    return (F.silu(x @ w3.T) * (x @ w1.T)) @ w2.T


def ffn_sigmoid(x, w1, w2, w3):
    return (torch.sigmoid(x @ w1.T) * (x @ w3.T)) @ w2.T


def ffn_gelu(x, w1, w2, w3):
    return (F.gelu(x @ w1.T) * (x @ w3.T)) @ w2.T


def hidden_round_down(dim, multiple_of, mult):
    h = int(2 * 4 * dim / 3)
    h = int(mult * h) if mult else h
    return (h // multiple_of) * multiple_of


def hidden_no_mult(dim, multiple_of, mult):
    h = int(8 * dim / 3)
    return multiple_of * math.ceil(h / multiple_of)


def hidden_no_two_thirds(dim, multiple_of, mult):
    h = 4 * dim
    h = int(mult * h) if mult else h
    return multiple_of * math.ceil(h / multiple_of)


def make_block(residual_normed=False, no_residual=False, parallel=False):
    def block(x, weights, layer, params, freqs_cis, mask):
        p = f"layers.{layer}."
        n_kv = params.get("n_kv_heads") or params["n_heads"]
        a_in = helpers.rms_norm(x, weights[p + "attention_norm.weight"], params["norm_eps"])
        a = helpers.attention(a_in, *(weights[p + f"attention.{n}.weight"] for n in ("wq", "wk", "wv", "wo")),
                              freqs_cis, mask, params["n_heads"], n_kv)
        h = a if no_residual else (a_in + a if residual_normed else x + a)
        f_in = helpers.rms_norm(x if parallel else h, weights[p + "ffn_norm.weight"], params["norm_eps"])
        f = helpers.feed_forward(f_in, *(weights[p + f"feed_forward.{n}.weight"] for n in ("w1", "w2", "w3")))
        return f if no_residual else h + f
    return block


def greedy_with_prompt(weights, params, tokens, max_new_tokens, stop_tokens=()):
    seq = list(tokens)
    for _ in range(max_new_tokens):
        t = helpers.forward(weights, params, seq)[-1].argmax().item()
        if t in stop_tokens:
            break
        seq.append(t)
    return seq


def greedy_keeps_stop(weights, params, tokens, max_new_tokens, stop_tokens=()):
    out = []
    for _ in range(max_new_tokens):
        t = helpers.forward(weights, params, list(tokens) + out)[-1].argmax().item()
        out.append(t)
        if t in stop_tokens:
            break
    return out


def greedy_first_row(weights, params, tokens, max_new_tokens, stop_tokens=()):
    out = []
    for _ in range(max_new_tokens):
        t = helpers.forward(weights, params, list(tokens) + out)[0].argmax().item()
        if t in stop_tokens:
            break
        out.append(t)
    return out


def cache_by_heads(params, max_seq_len, dtype=torch.float32):
    hd = params["dim"] // params["n_heads"]
    return [(torch.zeros(max_seq_len, params["n_heads"], hd, dtype=dtype),
             torch.zeros(max_seq_len, params["n_heads"], hd, dtype=dtype)) for _ in range(params["n_layers"])]


def top_p_hf_rule(probs, p, generator=None):
    s, idx = torch.sort(probs, descending=True)
    keep = torch.cumsum(s, -1) - s < p  # HF / Holtzman: stop once the mass reaches p
    s = s * keep
    return idx[torch.multinomial(s / s.sum(), 1, generator=generator)]


def top_p_sorted_position(probs, p, generator=None):
    s, _ = torch.sort(probs, descending=True)
    s = s * ~(torch.cumsum(s, -1) - s > p)
    return torch.multinomial(s, 1, generator=generator)


def top_p_no_cut(probs, p, generator=None):
    return torch.multinomial(probs, 1, generator=generator)


def top_p_no_generator(probs, p, generator=None):
    s, idx = torch.sort(probs, descending=True)
    s = s * ~(torch.cumsum(s, -1) - s > p)
    return idx[torch.multinomial(s, 1)]


WRONG = [
    (ex.check_rms_norm, rms_eps_outside, "eps outside the square root"),
    (ex.check_rms_norm, rms_layernorm, "That is LayerNorm"),
    (ex.check_rms_norm, rms_no_gain, "gain `weight` not applied"),
    (ex.check_rms_norm, rms_no_cast_back, "cast the result back"),
    (ex.check_repeat_kv, kv_tiled, "h % n_kv instead of h // n_rep"),
    (ex.check_repeat_kv, kv_wrong_axis, "its shape is"),
    (ex.check_repeat_kv, kv_wrong_axis2, "its shape is"),
    (ex.check_apply_rotary_emb, rope_half_split, "rotate_half"),
    (ex.check_apply_rotary_emb, rope_conjugate, "rotated the wrong way"),
    (ex.check_apply_rotary_emb, rope_float_out, "cast the result back"),
    (ex.check_precompute_freqs_cis, freqs_exponent_by_one, "steps by 2 per pair"),
    (ex.check_precompute_freqs_cis, freqs_from_one, "positions start at 0"),
    (ex.check_precompute_freqs_cis, freqs_cos_sin, "torch.complex64"),
    (ex.check_causal_mask, mask_zero, "masked with 0 instead of −inf"),
    (ex.check_causal_mask, mask_diagonal, "the diagonal masked"),
    (ex.check_causal_mask, mask_no_cache, "cached positions left out"),
    (ex.check_causal_mask, mask_ones, "a 0/1 mask"),
    (ex.check_attention, make_attention(rotate_v=True), "rotated v as well"),
    (ex.check_attention, make_attention(tile=True), "h % n_kv instead of h // n_rep"),
    (ex.check_attention, make_attention(scale_dim=True), "√dim instead of √head_dim"),
    (ex.check_attention, make_attention(zero_fill=True), "masked with 0 instead of −inf"),
    (ex.check_ffn_hidden_dim, hidden_round_down, "rounded down"),
    (ex.check_ffn_hidden_dim, hidden_no_mult, "ffn_dim_multiplier left out"),
    (ex.check_ffn_hidden_dim, hidden_no_two_thirds, "the ⅔ forgotten"),
    (ex.check_feed_forward, ffn_swapped, "w1 is the gate"),
    (ex.check_feed_forward, ffn_sigmoid, "sigmoid instead of silu"),
    (ex.check_feed_forward, ffn_gelu, "GELU instead of silu"),
    (ex.check_transformer_block, make_block(residual_normed=True), "un-normalised x"),
    (ex.check_transformer_block, make_block(no_residual=True), "no residual connections"),
    (ex.check_transformer_block, make_block(parallel=True), "fed from x instead of h"),
    (ex.check_greedy_decode, greedy_with_prompt, "the prompt returned too"),
    (ex.check_greedy_decode, greedy_keeps_stop, "the stop token kept"),
    (ex.check_greedy_decode, greedy_first_row, "the last row"),
    (ex.check_new_kv_cache, cache_by_heads, "sized by n_heads"),
    (ex.check_sample_top_p, top_p_hf_rule, "≥ p rule"),
    (ex.check_sample_top_p, top_p_sorted_position, "positions in the sorted order"),
    (ex.check_sample_top_p, top_p_no_cut, "Nothing was cut off"),
    (ex.check_sample_top_p, top_p_no_generator, "same seed gave different draws"),
    *exercise_mistakes.WRONG,
]


@pytest.mark.parametrize("check, wrong, hint", WRONG, ids=[f"{c.__name__}-{w.__name__}" for c, w, _ in WRONG])
def test_rejects_a_typical_mistake_with_its_hint(capsys, check, wrong, hint):
    ok, out = verdict(capsys, check, wrong)
    assert ok is False
    assert out.startswith("✗") and hint in out, out


def test_each_checker_names_at_least_three_mistakes():
    counts = {}
    for check, _, _ in WRONG:
        counts[check.__name__] = counts.get(check.__name__, 0) + 1
    thin = {name: n for name, n in counts.items() if n < 3}
    assert not thin, f"checkers proven against fewer than three mistakes: {thin}"
