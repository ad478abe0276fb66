"""helpers.generate: the KV cache, greedy decoding vs Meta's reference, sampling, the chat template, bad input."""
import pytest
import torch

from helpers import LlamaError, forward, load_model, load_tokenizer
from helpers.generate import (
    encode_dialog,
    generate,
    generate_stream,
    new_kv_cache,
    sample_top_p,
    stream_text,
)
from helpers.reference import meta_transformer

SHAPES = ["gqa4", "mqa", "mha_no_kv_key", "gqa2_scaled"]  # GQA ratios 4, n_heads, 1, 2
N_NEW = 24


def random_prompt(vocab: int, length: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: tiny models run faster on one thread


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def models(checkpoints):
    """{shape: (weights, params, prompt)} for the random checkpoints (vocab 512: no stop token exists)."""
    out = {}
    for i, shape in enumerate(SHAPES):
        weights, params = load_model(checkpoints[shape])
        out[shape] = weights, params, random_prompt(weights["tok_embeddings.weight"].shape[0], 5 + 3 * i, i)
    return out


# --- the KV cache ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
def test_kv_cache_is_sized_by_n_kv_heads(models, shape):
    _, params, _ = models[shape]
    n_kv_heads = params.get("n_kv_heads") or params["n_heads"]
    caches = new_kv_cache(params, 37)
    assert len(caches) == params["n_layers"]
    for cache_k, cache_v in caches:
        assert cache_k.shape == cache_v.shape == (37, n_kv_heads, params["dim"] // params["n_heads"])
        assert cache_k.dtype == torch.float32 and not cache_k.any()
        assert cache_k.data_ptr() != cache_v.data_ptr()
    assert new_kv_cache(params, 5, torch.bfloat16)[0][0].dtype == torch.bfloat16


# --- greedy decoding: Meta's reference, and the cache changes nothing --------------------------------

def meta_greedy(weights, params, prompt, n):
    """Meta's incremental decoding: Transformer.forward(prompt, 0), then one token at a time at start_pos."""
    model = meta_transformer(weights, params, max_seq_len=len(prompt) + n)
    logits = model(torch.tensor([prompt]), 0)
    new = []
    for _ in range(n):
        new.append(int(logits[0, -1].argmax()))
        logits = model(torch.tensor([new[-1:]]), len(prompt) + len(new) - 1)
    return new


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_equals_meta_incremental_decoding(models, shape):
    weights, params, prompt = models[shape]
    ours = generate(weights, params, prompt, N_NEW, stop_tokens=[])
    assert len(ours) == N_NEW
    assert ours == meta_greedy(weights, params, prompt, N_NEW)


@pytest.mark.parametrize("shape", SHAPES)
def test_cached_equals_uncached(models, shape):
    """Every cached step's logits equal the last row of a full forward pass over all tokens so far."""
    weights, params, prompt = models[shape]
    ours = generate(weights, params, prompt, N_NEW, stop_tokens=[])
    caches = new_kv_cache(params, len(prompt) + N_NEW)
    tokens, start_pos, seen = prompt, 0, list(prompt)
    for expected in ours:
        cached = forward(weights, params, tokens, start_pos, caches)[-1]
        uncached = forward(weights, params, seen)[-1]
        # measured max |Δ| 1.5e-6 of the largest logit (one-token steps take the matrix-vector kernel)
        assert ((cached - uncached).abs().max() / uncached.abs().max()).item() <= 1e-5
        assert int(uncached.argmax()) == expected
        start_pos, tokens = start_pos + len(tokens), [expected]
        seen.append(expected)


def test_tiny_model_answers_42_and_stops(tiny):
    """Wiring (prompt -> cached decode -> stop tokens -> text), not maths: the tiny model was trained by the
    code under test (see tests/test_tiny.py). The maths is the comparison with Meta's decoding above."""
    weights, params, tokenizer = tiny
    from helpers import COURSE_PROMPT

    prompt = tokenizer.encode(COURSE_PROMPT, bos=True, eos=False)
    answer = generate(weights, params, prompt, 32)  # default stop tokens: the tokenizer's three
    assert tokenizer.decode(answer) == "42"
    assert generate(weights, params, prompt, 32, stop_tokens=tokenizer.stop_tokens) == answer
    unstopped = generate(weights, params, prompt, len(answer) + 2, stop_tokens=[])
    assert unstopped[: len(answer)] == answer and unstopped[len(answer)] == tokenizer.eos_id


def test_stops_at_any_stop_token(models):
    weights, params, prompt = models["mqa"]
    full = generate(weights, params, prompt, N_NEW, stop_tokens=[])
    k = next(i for i in range(3, N_NEW) if full[i] not in full[:i])  # a token first produced at step k
    assert generate(weights, params, prompt, N_NEW, stop_tokens=[full[k]]) == full[:k]
    assert generate(weights, params, prompt, N_NEW, stop_tokens=(full[k], full[0])) == []  # the earliest wins
    assert list(generate_stream(weights, params, prompt, N_NEW, stop_tokens={full[k]})) == full[:k]


# --- sampling ------------------------------------------------------------------------------------

def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(models):
    weights, params, prompt = models["gqa4"]
    kwargs = dict(temperature=0.9, top_p=0.95, stop_tokens=[])
    torch.manual_seed(123)
    expected_global = torch.rand(3)
    torch.manual_seed(123)
    a = generate(weights, params, prompt, N_NEW, seed=3, **kwargs)
    assert torch.equal(torch.rand(3), expected_global)  # sampling never touched the global RNG
    assert generate(weights, params, prompt, N_NEW, seed=3, **kwargs) == a
    assert generate(weights, params, prompt, N_NEW, seed=4, **kwargs) != a
    unseeded = generate(weights, params, prompt, N_NEW, **kwargs)
    assert len(unseeded) == N_NEW


def meta_function(filename: str, name: str):
    """A function from Meta's installed llama3 source, without importing its module: generation.py
    imports the multimodal model, which needs torchvision, and the course does not install it."""
    import ast
    import importlib.util
    from pathlib import Path

    path = Path(importlib.util.find_spec("llama_models.llama3").origin).parent / filename
    node = next(n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef) and n.name == name)
    namespace = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), str(path), "exec"), namespace)
    return namespace[name]


def test_sample_top_p_equals_metas():
    """Same distribution, same seed: Meta's sample_top_p (global RNG) and ours (a Generator) agree."""
    meta_sample_top_p = meta_function("generation.py", "sample_top_p")
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        probs = torch.softmax(torch.randn(2, 300, generator=g) * 3, dim=-1)
        p = [0.0, 0.3, 0.9, 1.0][seed % 4]
        with torch.random.fork_rng():  # Meta's draws from the global RNG: leave it as other tests found it
            torch.manual_seed(seed)
            meta = meta_sample_top_p(probs.clone(), p)
        ours = sample_top_p(probs.clone(), p, torch.Generator().manual_seed(seed))
        assert torch.equal(ours, meta)
        assert sample_top_p(probs[0], p, torch.Generator().manual_seed(seed)).shape == (1,)


@pytest.mark.parametrize(
    "p, nucleus",
    [
        (0.0, {1}),  # only the most likely token: greedy
        (0.4, {1}),  # 0.5 alone already exceeds 0.4
        (0.7, {1, 3}),  # 0.5 + 0.25 = 0.75 > 0.7
        (0.75, {1, 3, 2}),  # Meta keeps a token while the mass before it is <= p: 0.75 is not > 0.75
        (0.9, {1, 3, 2, 0}),  # mass before token 4 is 0.953125 > 0.9
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_exactly_the_nucleus(p, nucleus):
    # hand-made, exactly representable, no ties, in no particular order.
    # Sorted: 0.5 (id 1), 0.25 (3), 0.125 (2), 0.078125 (0), 0.046875 (4); mass before each: 0, .5, .75, .875, .953125
    probs = torch.tensor([0.078125, 0.5, 0.125, 0.25, 0.046875])
    before = probs.clone()
    draws = torch.cat([sample_top_p(probs, p, torch.Generator().manual_seed(s)) for s in range(3)]
                      + [sample_top_p(probs.expand(4000, 5), p, torch.Generator().manual_seed(7)).flatten()])
    assert torch.equal(probs, before)  # the caller's distribution is not modified
    assert set(draws.tolist()) == nucleus
    kept = torch.tensor(sorted(nucleus))
    expected = probs[kept] / probs[kept].sum()  # renormalised over the nucleus
    freq = torch.stack([(draws == t).float().mean() for t in kept])
    torch.testing.assert_close(freq, expected, atol=0.03, rtol=0)


@pytest.mark.parametrize("shape", ["gqa4", "gqa2_scaled"])
def test_temperature_to_zero_and_top_p_to_zero_equal_greedy(models, shape):
    weights, params, prompt = models[shape]
    greedy = generate(weights, params, prompt, N_NEW, stop_tokens=[])
    assert generate(weights, params, prompt, N_NEW, temperature=1e-4, stop_tokens=[], seed=0) == greedy
    assert generate(weights, params, prompt, N_NEW, temperature=1.0, top_p=0.0, stop_tokens=[], seed=0) == greedy


def record_dtypes(monkeypatch) -> dict:
    """Wrap forward (as generation calls it) and the functions forward calls; record the dtypes they receive."""
    import importlib
    import inspect

    # the modules themselves: `helpers.generate` as an attribute is the function re-exported by helpers
    gen_module, model_module = importlib.import_module("helpers.generate"), importlib.import_module("helpers.model")
    seen = {"forward": [], "cache": [], "logits": [], "block": [], "attention": [], "feed_forward": []}
    real = {"forward": gen_module.forward, "transformer_block": model_module.transformer_block,
            "attention": model_module.attention, "feed_forward": model_module.feed_forward}

    def forward(*args, **kwargs):
        bound = inspect.signature(real["forward"]).bind(*args, **kwargs)
        bound.apply_defaults()
        seen["forward"].append(bound.arguments["dtype"])
        seen["cache"] += [t.dtype for pair in bound.arguments["caches"] or [] for t in pair]
        logits = real["forward"](*args, **kwargs)
        seen["logits"].append(logits.dtype)
        return logits

    def transformer_block(x, *args, **kwargs):
        seen["block"].append(x.dtype)
        return real["transformer_block"](x, *args, **kwargs)

    def attention(x, wq, wk, wv, wo, *args, **kwargs):
        seen["attention"] += [x.dtype, wq.dtype, wk.dtype, wv.dtype, wo.dtype]
        return real["attention"](x, wq, wk, wv, wo, *args, **kwargs)

    def feed_forward(x, w1, w2, w3):
        seen["feed_forward"] += [x.dtype, w1.dtype, w2.dtype, w3.dtype]
        return real["feed_forward"](x, w1, w2, w3)

    monkeypatch.setattr(gen_module, "forward", forward)
    monkeypatch.setattr(model_module, "transformer_block", transformer_block)
    monkeypatch.setattr(model_module, "attention", attention)
    monkeypatch.setattr(model_module, "feed_forward", feed_forward)
    return seen


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("how", ["generate", "generate_stream"])
def test_generation_computes_in_its_dtype(models, monkeypatch, dtype, how):
    """What forward and the layers actually receive: the compute dtype, whatever the stored weights' dtype
    (bf16 here); the KV cache is kept in it too; logits come back in float32."""
    weights, params, prompt = models["gqa4"]
    seen = record_dtypes(monkeypatch)
    if how == "generate":
        new = generate(weights, params, prompt, 5, stop_tokens=[], dtype=dtype)
    else:
        new = list(generate_stream(weights, params, prompt, 5, stop_tokens=[], dtype=dtype))
    assert len(new) == 5
    assert seen["forward"] == [dtype] * 5  # the prompt once, then one call per new token but the last
    assert len(seen["block"]) == 5 * params["n_layers"] and set(seen["block"]) == {dtype}
    assert set(seen["attention"]) == set(seen["feed_forward"]) == {dtype}
    assert seen["cache"] and set(seen["cache"]) == {dtype}
    assert set(seen["logits"]) == {torch.float32}


def test_dtype_changes_the_numbers(models):
    """bf16 really computes in bf16: its logits differ from float32's by bf16-sized rounding, not by nothing."""
    weights, params, prompt = models["gqa4"]
    exact = forward(weights, params, prompt)
    fast = forward(weights, params, prompt, dtype=torch.bfloat16)
    err = ((fast - exact).abs().max() / exact.abs().max()).item()
    assert 1e-4 < err < 0.1  # measured 1.3e-2 of the largest logit


# --- the chat template ---------------------------------------------------------------------------

DIALOGS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant. Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy? 🦙 café\n\nThanks"},
    ],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "text that looks special: <|eot_id|><|start_header_id|>"},
        {"role": "assistant", "content": "  spaces  "},
    ],
    [],
]


@pytest.mark.parametrize("messages", DIALOGS, ids=["user", "multi_turn_system", "special_text", "empty"])
def test_chat_encoding_equals_metas(messages, tokenizer):
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer

    meta = ChatFormat(MetaTokenizer.get_instance()).encode_dialog_prompt([RawMessage(**m) for m in messages])
    ours = encode_dialog(tokenizer, messages)
    assert ours == meta.tokens
    assert ours[0] == tokenizer.bos_id and ours.count(tokenizer.eot_id) == len(messages)
    assert tokenizer.decode(ours).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


@pytest.mark.parametrize(
    "message, match",
    [
        ({"role": "bot", "content": "hi"}, "role 'bot'"),
        ({"role": "tool", "content": "hi"}, "role 'tool'"),
        ({"content": "hi"}, "role None"),
        ({"role": "user", "content": None}, "no text content"),
        ({"role": "user"}, "no text content"),
        ("just a string", "role None"),
    ],
)
def test_chat_bad_messages(message, match, tokenizer):
    messages = [{"role": "system", "content": "be brief"}, message]
    with pytest.raises(LlamaError, match=r"Message 1 has " + match):
        encode_dialog(tokenizer, messages)


# --- streaming text ------------------------------------------------------------------------------

def test_stream_text_prints_whole_characters_only(tokenizer):
    ids = tokenizer.encode("llamas 🦙🦙 in Perú, 日本語 too", bos=False, eos=False)
    assert any(tokenizer.decode([i]).endswith("\ufffd") for i in ids)  # some token holds part of a character
    pieces = list(stream_text(tokenizer, ids))
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in piece for piece in pieces)
    cut = next(n for n in range(1, len(ids)) if tokenizer.decode(ids[:n]).endswith("\ufffd"))
    assert "".join(stream_text(tokenizer, ids[:cut])) == tokenizer.decode(ids[:cut])  # the rest is flushed at the end


# --- bad input and the context limit -------------------------------------------------------------

def test_bad_input_is_a_clear_error_at_the_call(models):
    weights, params, prompt = models["gqa4"]
    vocab = weights["tok_embeddings.weight"].shape[0]
    cases = [  # (prompt, max_new_tokens, keyword arguments, the error says)
        ([], 4, {}, "prompt is empty"),
        ([1, vocab], 4, {}, "outside the model's vocabulary"),
        ([-1, 2], 4, {}, "outside the model's vocabulary"),
        (prompt, -1, {}, "max_new_tokens is -1"),
        (prompt, 4, {"temperature": -0.5}, "temperature is -0.5"),
        (prompt, 4, {"temperature": float("nan")}, "temperature is nan"),
        (prompt, 4, {"top_p": 1.5}, "top_p is 1.5"),
        (prompt, 4, {"top_p": -0.1}, "top_p is -0.1"),
    ]
    for tokens, max_new_tokens, kwargs, match in cases:
        with pytest.raises(LlamaError, match=match):  # raised by the call itself, before any iteration
            generate_stream(weights, params, tokens, max_new_tokens, stop_tokens=[], **kwargs)
    assert generate(weights, params, prompt, 0, stop_tokens=[]) == []


def test_max_new_tokens_is_clamped_to_the_context(models):
    """Documented behaviour: prompt + new tokens <= context_length(params); a full prompt is an error."""
    weights, params, _ = models["gqa4"]
    params = {**params, "max_seq_len": 16}
    vocab = weights["tok_embeddings.weight"].shape[0]
    new = generate(weights, params, random_prompt(vocab, 10, 0), 100, stop_tokens=[])
    assert len(new) == 6
    assert new == generate(weights, {**params, "max_seq_len": 64}, random_prompt(vocab, 10, 0), 6, stop_tokens=[])
    assert len(generate(weights, params, random_prompt(vocab, 15, 0), 100, stop_tokens=[])) == 1
    for length in (16, 40):
        with pytest.raises(LlamaError, match=f"prompt is {length} tokens but the model's context holds 16"):
            generate_stream(weights, params, random_prompt(vocab, length, 0), 1, stop_tokens=[])
