"""Wrong versions of the functions of notebooks 01, 02, 03, 04/07, 05, 06, 08, 09, 10 and 11, written the way a learner
would write them (loops, other spellings, other torch calls), not copied from the checkers' own mistake tables.
tests/test_exercises.py runs each through its checker and expects the named hint."""
import base64
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

import helpers
from helpers import LlamaError
from helpers import exercises as ex
from helpers.decode import greedy_decode
from helpers.generate import encode_dialog, generate, new_kv_cache
from helpers.tokenizer import bpe_encode, load_bpe_ranks, split_long_runs
from helpers.weights import PARAM_DEFAULTS, check_weights, load_params


# --- 03 RMSNorm in bf16: wrong all in bf16, right in float32 whichever way the gain is applied -----------------

def rms_all_bf16(x, weight, eps):
    return x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps) * weight


def rms_gain_before_cast(x, weight, eps):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rms_torch_functional(x, weight, eps):
    return F.rms_norm(x.float(), x.shape[-1:], eps=eps).type_as(x) * weight


# --- 01 ----------------------------------------------------------------------------------------------------

def ranks_as_text(path):
    ranks = {}
    with open(path) as f:
        for line in f:
            tok, rank = line.split()
            ranks[base64.b64decode(tok).decode("utf-8")] = int(rank)
    return ranks


def ranks_as_str(path):
    out = {}
    for line in Path(path).read_text().splitlines():
        if line:
            t, r = line.split(" ")
            out[base64.b64decode(t)] = r
    return out


def ranks_by_line_number(path):
    return {base64.b64decode(line.split()[0]): i for i, line in enumerate(open(path)) if line.strip()}


def ranks_split_newlines(path):
    ranks = {}
    for line in open(path).read().split("\n"):
        t, r = line.split()
        ranks[base64.b64decode(t)] = int(r)
    return ranks


def _merge_loop(piece, ranks, better):
    parts = [bytes([b]) for b in piece]
    while True:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and (best is None or better(r, best[0])):
                best = (r, i)
        if best is None:
            return parts
        i = best[1]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]


def bpe_no_lookup(piece, ranks):
    return [ranks[p] for p in _merge_loop(piece, ranks, lambda r, b: r < b)]


def bpe_highest_rank(piece, ranks):
    if piece in ranks:
        return [ranks[piece]]
    return [ranks[p] for p in _merge_loop(piece, ranks, lambda r, b: r > b)]


def bpe_rightmost_on_tie(piece, ranks):
    if piece in ranks:
        return [ranks[piece]]
    return [ranks[p] for p in _merge_loop(piece, ranks, lambda r, b: r <= b)]


def bpe_returns_bytes(piece, ranks):
    return [piece] if piece in ranks else _merge_loop(piece, ranks, lambda r, b: r < b)


def _runs(text, max_run, longer):
    start, count, prev = 0, 0, None
    for i, ch in enumerate(text):
        kind = ch.isspace()
        count = count + 1 if kind == prev else 1
        prev = kind
        if longer(count, max_run):
            yield text[start:i]
            start, count = i, 1
    yield text[start:]


def split_cuts_at_max(text, max_run=25_000):
    yield from _runs(text, max_run, lambda c, m: c >= m)


def split_fixed_chunks(text, max_run=25_000):
    for i in range(0, len(text), max_run):
        yield text[i : i + max_run]


def split_forgets_tail(text, max_run=25_000):
    pieces = list(_runs(text, max_run, lambda c, m: c > m))
    return pieces[:-1]


def split_only_words(text, max_run=25_000):
    start, count = 0, 0
    for i, ch in enumerate(text):
        count = 0 if ch.isspace() else count + 1
        if count > max_run:
            yield text[start:i]
            start, count = i, 1
    yield text[start:]


# --- 02 ----------------------------------------------------------------------------------------------------

def params_no_defaults(model_dir):
    p = json.loads((Path(model_dir) / "params.json").read_text())
    for key in ("dim", "n_layers", "n_heads", "rope_theta"):
        if key not in p:
            raise LlamaError(f"no {key}")
    return p


def params_defaults_last(model_dir):
    with open(Path(model_dir) / "params.json") as f:
        p = json.load(f)
    if "rope_theta" not in p:
        raise LlamaError("no rope_theta")
    p.update(PARAM_DEFAULTS)
    return p


def params_no_error(model_dir):
    with open(Path(model_dir) / "params.json") as f:
        return {**PARAM_DEFAULTS, **json.load(f)}


def params_kv_equals_heads(model_dir):
    p = load_params(model_dir)
    p["n_kv_heads"] = p["n_kv_heads"] or p["n_heads"]
    return p


def params_only_theta(model_dir):  # the one key the notebook's example leaves out, and no other
    p = json.loads((Path(model_dir) / "params.json").read_text())
    if "rope_theta" not in p:
        raise LlamaError("params.json has no rope_theta")
    return {**PARAM_DEFAULTS, **p}


def params_forgets_n_layers(model_dir):
    with open(Path(model_dir) / "params.json") as f:
        p = json.load(f)
    if "dim" not in p or "n_heads" not in p or "rope_theta" not in p:
        raise LlamaError("not a Llama 3 params.json")
    return {**PARAM_DEFAULTS, **p}


def _shape_check(weights, params, n_kv, hidden, layers, need_output=False):
    dim, n_heads = params["dim"], params["n_heads"]
    head_dim = dim // n_heads
    if need_output and "output.weight" not in weights:
        raise LlamaError("no output.weight")
    vocab = weights["tok_embeddings.weight"].shape[0]
    if tuple(weights["norm.weight"].shape) != (dim,) or weights["tok_embeddings.weight"].shape[1] != dim:
        raise LlamaError("norm or embedding")
    if "output.weight" in weights and tuple(weights["output.weight"].shape) != (vocab, dim):
        raise LlamaError("output.weight")
    for i in layers:
        for name, shape in [("attention.wq", (n_heads * head_dim, dim)), ("attention.wk", (n_kv * head_dim, dim)),
                            ("attention.wv", (n_kv * head_dim, dim)), ("attention.wo", (dim, n_heads * head_dim)),
                            ("feed_forward.w1", (hidden, dim)), ("feed_forward.w3", (hidden, dim)),
                            ("feed_forward.w2", (dim, hidden)), ("attention_norm", (dim,)), ("ffn_norm", (dim,))]:
            key = f"layers.{i}.{name}.weight"
            if key not in weights or tuple(weights[key].shape) != shape:
                raise LlamaError(f"{key} has the wrong shape")
    if params.get("vocab_size", -1) not in (-1, vocab):
        raise LlamaError("vocab")


def weights_kv_by_heads(weights, params):
    hidden = helpers.ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    _shape_check(weights, params, params["n_heads"], hidden, range(params["n_layers"]))


def weights_need_output(weights, params):
    hidden = helpers.ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    _shape_check(weights, params, n_kv, hidden, range(params["n_layers"]), need_output=True)


def weights_hidden_8_thirds(weights, params):
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    _shape_check(weights, params, n_kv, int(8 * params["dim"] / 3), range(params["n_layers"]))


def weights_first_layer_only(weights, params):
    hidden = helpers.ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    _shape_check(weights, params, params.get("n_kv_heads") or params["n_heads"], hidden, [0])


def weights_partial(weights, params):  # the three checks a first draft makes
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    hidden = helpers.ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    for i in range(params["n_layers"]):
        if weights.get(f"layers.{i}.attention.wk.weight") is None or \
                weights[f"layers.{i}.attention.wk.weight"].shape[0] != n_kv * params["dim"] // params["n_heads"]:
            raise LlamaError(f"layer {i}: wk")
        if f"layers.{i}.feed_forward.w1.weight" not in weights or \
                weights[f"layers.{i}.feed_forward.w1.weight"].shape[0] != hidden:
            raise LlamaError(f"layer {i}: w1")
    if params.get("vocab_size", -1) not in (-1, len(weights["tok_embeddings.weight"])):
        raise LlamaError("vocab_size")


def _shapes_but(weights, params, leave_out=(), embedding_width=True):
    """A full check written as a table, with some rows of the table forgotten."""
    dim, n_heads = params["dim"], params["n_heads"]
    n_kv, head_dim = params.get("n_kv_heads") or n_heads, dim // n_heads
    hidden = helpers.ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    vocab = weights["tok_embeddings.weight"].shape[0]
    if embedding_width and weights["tok_embeddings.weight"].shape[1] != dim:
        raise LlamaError("tok_embeddings")
    table = {"norm.weight": (dim,), "output.weight": (vocab, dim)}
    for i in range(params["n_layers"]):
        table.update({f"layers.{i}.attention.wq.weight": (n_heads * head_dim, dim),
                      f"layers.{i}.attention.wk.weight": (n_kv * head_dim, dim),
                      f"layers.{i}.attention.wv.weight": (n_kv * head_dim, dim),
                      f"layers.{i}.attention.wo.weight": (dim, n_heads * head_dim),
                      f"layers.{i}.feed_forward.w1.weight": (hidden, dim),
                      f"layers.{i}.feed_forward.w2.weight": (dim, hidden),
                      f"layers.{i}.feed_forward.w3.weight": (hidden, dim),
                      f"layers.{i}.attention_norm.weight": (dim,), f"layers.{i}.ffn_norm.weight": (dim,)})
    for key, shape in table.items():
        if (key == "output.weight" and key not in weights) or any(key.endswith(f".{n}.weight") for n in leave_out):
            continue
        if key not in weights or tuple(weights[key].shape) != shape:
            raise LlamaError(f"{key}: {shape} expected")
    if params.get("vocab_size", -1) not in (-1, vocab):
        raise LlamaError("vocab_size")


def weights_skips_wq(weights, params):
    _shapes_but(weights, params, leave_out=("wq",))


def weights_skips_five(weights, params):  # the review's example: it passed all 15 inputs of the old checker
    _shapes_but(weights, params, leave_out=("wq", "wv", "w1", "attention_norm"), embedding_width=False)


def weights_layers_only(weights, params):  # every layer checked, nothing outside the layers
    dim, n_heads = params["dim"], params["n_heads"]
    kv_rows = (params.get("n_kv_heads") or n_heads) * (dim // n_heads)
    hidden = helpers.ffn_hidden_dim(dim, params["multiple_of"], params.get("ffn_dim_multiplier"))
    for i in range(params["n_layers"]):
        layer = {"attention.wq": (dim, dim), "attention.wk": (kv_rows, dim), "attention.wv": (kv_rows, dim),
                 "attention.wo": (dim, dim), "feed_forward.w1": (hidden, dim), "feed_forward.w2": (dim, hidden),
                 "feed_forward.w3": (hidden, dim), "attention_norm": (dim,), "ffn_norm": (dim,)}
        for name, shape in layer.items():
            w = weights.get(f"layers.{i}.{name}.weight")
            if w is None or tuple(w.shape) != shape:
                raise LlamaError(f"layer {i}: {name}")
    if params.get("vocab_size", -1) not in (-1, weights["tok_embeddings.weight"].shape[0]):
        raise LlamaError("vocab_size")


def weights_vocab_indexed(weights, params):
    hidden = helpers.ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    _shape_check(weights, {**params, "vocab_size": -1}, params.get("n_kv_heads") or params["n_heads"], hidden,
                 range(params["n_layers"]))
    if params["vocab_size"] != weights["tok_embeddings.weight"].shape[0] and params["vocab_size"] != -1:
        raise LlamaError("vocab_size")


def weights_vocab_minus_one_rejected(weights, params):
    hidden = helpers.ffn_hidden_dim(params["dim"], params["multiple_of"], params.get("ffn_dim_multiplier"))
    _shape_check(weights, {**params, "vocab_size": -1}, params.get("n_kv_heads") or params["n_heads"], hidden,
                 range(params["n_layers"]))
    if "vocab_size" in params and params["vocab_size"] != weights["tok_embeddings.weight"].shape[0]:
        raise LlamaError("vocab_size")


# --- 03 ----------------------------------------------------------------------------------------------------

def ln_unbiased(x, eps):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps)


def ln_std_plus_eps(x, eps):
    return (x - x.mean(dim=-1, keepdim=True)) / (x.std(dim=-1, keepdim=True, unbiased=False) + eps)


def ln_no_centering(x, eps):
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)


# --- 04 / 07 -----------------------------------------------------------------------------------------------

def linear_no_transpose(x, w):
    return torch.matmul(x, w)


def linear_w_first(x, w):
    return torch.matmul(w, x.T)


def linear_float(x, w):
    return F.linear(x.float(), w.float())


def linear_vector_for_one(x, w):
    return w @ x[0] if x.shape[0] == 1 else x @ w.T


# --- 05 ----------------------------------------------------------------------------------------------------

def scaling_like_meta(freqs, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    scale_factor, low, high, old = 8, 1, 4, 8192  # Meta's apply_scaling, constants and all
    new = []
    for f in freqs.tolist():
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            new.append(f)
        elif wavelen > old / low:
            new.append(f / scale_factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            new.append((1 - smooth) * f / scale_factor + smooth * f)
    return torch.tensor(new, dtype=freqs.dtype)


def scaling_divide_all(freqs, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    return freqs / factor


def scaling_no_two_pi(freqs, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    wavelen = 1 / freqs
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    out = torch.where(wavelen > original_max_position_embeddings / low_freq_factor, freqs / factor, freqs)
    middle = (wavelen >= original_max_position_embeddings / high_freq_factor) & (
        wavelen <= original_max_position_embeddings / low_freq_factor)
    return torch.where(middle, (1 - smooth) * freqs / factor + smooth * freqs, out)


def scaling_blend_swapped(freqs, factor, low_freq_factor, high_freq_factor, original_max_position_embeddings):
    wavelen = 2 * math.pi / freqs
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    out = torch.where(wavelen > original_max_position_embeddings / low_freq_factor, freqs / factor, freqs)
    middle = (wavelen >= original_max_position_embeddings / high_freq_factor) & (
        wavelen <= original_max_position_embeddings / low_freq_factor)
    return torch.where(middle, smooth * freqs / factor + (1 - smooth) * freqs, out)


# --- 06 ----------------------------------------------------------------------------------------------------

def sdpa_no_scale(q, k, v, attn_mask):
    return torch.softmax(q @ k.T + attn_mask, dim=-1) @ v


def sdpa_zero_mask(q, k, v, attn_mask):
    scores = q @ k.transpose(0, 1) / math.sqrt(q.shape[1])
    scores[attn_mask == float("-inf")] = 0
    return F.softmax(scores, dim=1) @ v


def sdpa_softmax_columns(q, k, v, attn_mask):
    w = F.softmax(q @ k.T / q.shape[-1] ** 0.5 + attn_mask, dim=0)
    return w @ v


def sdpa_by_head_dim(q, k, v, attn_mask):
    return torch.softmax((q @ k.T) / q.shape[-1] + attn_mask, dim=-1) @ v


# --- 09 ----------------------------------------------------------------------------------------------------

def _my_forward(weights, params, tokens, final_norm=True, out_key=None, scaling=True, last=False):
    tokens = torch.tensor(tokens)
    head_dim = params["dim"] // params["n_heads"]
    freqs = helpers.precompute_freqs_cis(head_dim, len(tokens), params["rope_theta"],
                                         helpers.rope_scaling(params) if scaling else None)
    mask = helpers.causal_mask(len(tokens))
    x = weights["tok_embeddings.weight"][tokens].float()
    for i in range(params["n_layers"]):
        x = helpers.transformer_block(x, weights, i, params, freqs, mask)
    if last:
        x = x[-1:]
    if final_norm:
        x = helpers.rms_norm(x, weights["norm.weight"], params["norm_eps"])
    out = weights[out_key] if out_key else weights.get("output.weight", weights["tok_embeddings.weight"])
    return x @ out.T


def forward_no_final_norm(weights, params, tokens):
    return _my_forward(weights, params, tokens, final_norm=False)


def forward_needs_output(weights, params, tokens):
    return _my_forward(weights, params, tokens, out_key="output.weight")


def forward_no_scaling(weights, params, tokens):
    return _my_forward(weights, params, tokens, scaling=False)


def forward_last_row(weights, params, tokens):
    return _my_forward(weights, params, tokens, last=True)


# --- 09 with the course's checkpoints' bf16 weights: compute in float32 -------------------------------------------

def block_stored_weights(x, weights, layer, params, freqs_cis, mask):  # the tensors used as stored
    def w(name):
        return weights[f"layers.{layer}.{name}.weight"]
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    h = x + helpers.attention(helpers.rms_norm(x, w("attention_norm"), params["norm_eps"]), w("attention.wq"),
                              w("attention.wk"), w("attention.wv"), w("attention.wo"), freqs_cis, mask,
                              params["n_heads"], n_kv)
    return h + helpers.feed_forward(helpers.rms_norm(h, w("ffn_norm"), params["norm_eps"]), w("feed_forward.w1"),
                                    w("feed_forward.w2"), w("feed_forward.w3"))


def block_in_weights_dtype(x, weights, layer, params, freqs_cis, mask):  # x converted to the weights' dtype
    x16 = x.to(weights[f"layers.{layer}.attention.wq.weight"].dtype)
    return block_stored_weights(x16, weights, layer, params, freqs_cis, mask).to(x.dtype)


def block_float_weights(x, weights, layer, params, freqs_cis, mask):  # right: every tensor .float() (x is float32)
    w = {k: v.float() for k, v in weights.items() if k.startswith(f"layers.{layer}.")}
    return block_stored_weights(x, w, layer, params, freqs_cis, mask)


def _bf16_forward(weights, params, tokens, block, embed_float=True):
    tokens = torch.as_tensor(tokens)
    head_dim = params["dim"] // params["n_heads"]
    freqs = helpers.precompute_freqs_cis(head_dim, len(tokens), params["rope_theta"], helpers.rope_scaling(params))
    x = weights["tok_embeddings.weight"][tokens]
    x = x.float() if embed_float else x
    for i in range(params["n_layers"]):
        x = block(x, weights, i, params, freqs, helpers.causal_mask(len(tokens)))
    x = helpers.rms_norm(x, weights["norm.weight"], params["norm_eps"])
    out = weights["output.weight"] if "output.weight" in weights else weights["tok_embeddings.weight"]
    return (x @ out.to(x.dtype).T).float()


def forward_own_block_stored(weights, params, tokens):  # the notebook's own block, which uses the tensors as stored
    return _bf16_forward(weights, params, tokens, block_stored_weights)


def forward_output_as_stored(weights, params, tokens):  # the blocks convert, the output layer does not
    x = weights["tok_embeddings.weight"][torch.as_tensor(tokens)].float()
    head_dim = params["dim"] // params["n_heads"]
    freqs = helpers.precompute_freqs_cis(head_dim, len(tokens), params["rope_theta"], helpers.rope_scaling(params))
    for i in range(params["n_layers"]):
        x = helpers.transformer_block(x, weights, i, params, freqs, helpers.causal_mask(len(tokens)))
    x = helpers.rms_norm(x, weights["norm.weight"], params["norm_eps"])
    return x @ weights.get("output.weight", weights["tok_embeddings.weight"]).T


def forward_embedding_as_stored(weights, params, tokens):  # the rows stay bf16: every block computes in bf16
    return _bf16_forward(weights, params, tokens, helpers.transformer_block, embed_float=False)


def forward_converts_once(weights, params, tokens):  # right: the whole model converted to float32 first
    return _bf16_forward({k: v.float() for k, v in weights.items()}, params, tokens, helpers.transformer_block)


# --- 10 ----------------------------------------------------------------------------------------------------

def ctx_ignores_max_seq_len(params):
    return 128 * 1024 if params.get("use_scaled_rope") else 8192


def ctx_128000(params):
    if params.get("max_seq_len"):
        return params["max_seq_len"]
    return 128_000 if params.get("use_scaled_rope", False) else 8192


def ctx_reads_key(params):
    return params["max_seq_len"] or 8192


# --- 11 ----------------------------------------------------------------------------------------------------

def _my_generate(weights, params, prompt, n, stop_tokens, step=lambda pos, fed: pos + len(fed), room=None,
                 keep_stop=False, with_prompt=False):
    caches = new_kv_cache(params, room if room is not None else len(prompt) + n)
    pos, fed, new = 0, list(prompt), []
    for _ in range(n):
        nxt = helpers.forward(weights, params, fed, pos, caches)[-1].argmax().item()
        if nxt in stop_tokens and not keep_stop:
            break
        new.append(nxt)
        if nxt in stop_tokens:
            break
        pos, fed = step(pos, fed), [nxt]
    return list(prompt) + new if with_prompt else new


def gen_pos_stays(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):
    return _my_generate(weights, params, prompt_tokens, max_new_tokens, stop_tokens, step=lambda pos, fed: pos)


def gen_pos_plus_one(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):
    return _my_generate(weights, params, prompt_tokens, max_new_tokens, stop_tokens, step=lambda pos, fed: pos + 1)


def gen_small_cache(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):
    return _my_generate(weights, params, prompt_tokens, max_new_tokens, stop_tokens, room=len(prompt_tokens))


def gen_keeps_stop(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):
    return _my_generate(weights, params, prompt_tokens, max_new_tokens, stop_tokens, keep_stop=True)


def gen_greedy_wrapper(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):
    return greedy_decode(weights, params, prompt_tokens, max_new_tokens, stop_tokens)  # notebook 10's loop, no cache


def gen_refeeds_all(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):  # a cache, but the whole text fed
    caches = new_kv_cache(params, len(prompt_tokens) + max_new_tokens)
    ids = list(prompt_tokens)
    for _ in range(max_new_tokens):
        nxt = int(helpers.forward(weights, params, ids, 0, caches)[-1].argmax())
        if nxt in stop_tokens:
            break
        ids.append(nxt)
    return ids[len(prompt_tokens):]


def gen_prefill_one_by_one(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):  # right: slower prefill
    caches = new_kv_cache(params, len(prompt_tokens) + max_new_tokens)
    for pos, t in enumerate(prompt_tokens):
        logits = helpers.forward(weights, params, [t], pos, caches)
    out, pos = [], len(prompt_tokens)
    for _ in range(max_new_tokens):
        nxt = logits[-1].argmax().item()
        if nxt in stop_tokens:
            break
        out.append(nxt)
        if len(out) == max_new_tokens:
            break
        logits = helpers.forward(weights, params, [nxt], pos, caches)
        pos += 1
    return out


def dialog_no_bos(tokenizer, messages):
    return encode_dialog(tokenizer, messages)[1:]


def dialog_no_reply_header(tokenizer, messages):
    ids = [tokenizer.bos_id]
    for m in messages:
        ids += [tokenizer.special_tokens["<|start_header_id|>"], *tokenizer.encode(m["role"], bos=False, eos=False),
                tokenizer.special_tokens["<|end_header_id|>"], *tokenizer.encode("\n\n", bos=False, eos=False),
                *tokenizer.encode(m["content"], bos=False, eos=False), tokenizer.eot_id]
    return ids


def dialog_strips(tokenizer, messages):
    return encode_dialog(tokenizer, [{**m, "content": m["content"].strip()} for m in messages])


def dialog_eos(tokenizer, messages):
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|end_of_text|>" for m in messages)
    return tokenizer.encode(text + "<|start_header_id|>assistant<|end_header_id|>\n\n", bos=False, eos=False,
                            allowed_special="all")


def sdpa_torch(q, k, v, attn_mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)


def layer_norm_torch(x, eps):
    return F.layer_norm(x, x.shape[-1:], eps=eps)


# --- 04/11 the KV cache --------------------------------------------------------------------------------------

def cache_one_pair_repeated(params, max_seq_len, dtype=torch.float32):
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    z = torch.zeros(max_seq_len, n_kv, params["dim"] // params["n_heads"], dtype=dtype)
    return [(z, z)] * params["n_layers"]


def cache_pair_list_repeated(params, max_seq_len, dtype=torch.float32):
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    shape = (max_seq_len, n_kv, params["dim"] // params["n_heads"])
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype))] * params["n_layers"]


def cache_ignores_dtype(params, max_seq_len, dtype=torch.float32):
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    head_dim = params["dim"] // params["n_heads"]
    return [(torch.zeros(max_seq_len, n_kv, head_dim), torch.zeros(max_seq_len, n_kv, head_dim))
            for _ in range(params["n_layers"])]


def cache_default_bf16(params, max_seq_len, dtype=torch.bfloat16):  # the model's dtype as the default
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    shape = (max_seq_len, n_kv, params["dim"] // params["n_heads"])
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(params["n_layers"])]


def cache_no_default_dtype(params, max_seq_len, dtype):
    n_kv = params.get("n_kv_heads") or params["n_heads"]
    shape = (max_seq_len, n_kv, params["dim"] // params["n_heads"])
    return [(torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)) for _ in range(params["n_layers"])]


# --- dtypes: each checker's own advice ------------------------------------------------------------------------

def freqs_float64_angles(head_dim, end, theta):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(end, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def freqs_off_by_a_bit(head_dim, end, theta):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    return torch.polar(torch.ones(end, head_dim // 2), torch.outer(torch.arange(end).float() * 1.01, freqs))


def mask_bool(seqlen, start_pos=0):
    return torch.ones(seqlen, start_pos + seqlen, dtype=torch.bool).triu(start_pos + 1)


def forward_bf16_logits(weights, params, tokens):
    return helpers.forward(weights, params, tokens).to(torch.bfloat16)


# --- finding-6 cases: eps, element types, max_seq_len 0, top-left causal mask -------------------------------------

def block_eps_fixed(x, weights, layer, params, freqs_cis, mask):
    return helpers.transformer_block(x, weights, layer, {**params, "norm_eps": 1e-6}, freqs_cis, mask)


def forward_eps_fixed(weights, params, tokens):
    h = weights["tok_embeddings.weight"][torch.as_tensor(tokens)].float()
    head_dim = params["dim"] // params["n_heads"]
    freqs = helpers.precompute_freqs_cis(head_dim, len(tokens), params["rope_theta"], helpers.rope_scaling(params))
    for i in range(params["n_layers"]):
        h = helpers.transformer_block(h, weights, i, params, freqs, helpers.causal_mask(len(tokens)))
    h = helpers.rms_norm(h, weights["norm.weight"], 1e-5)  # the 8B's value, written in
    return (h @ weights.get("output.weight", weights["tok_embeddings.weight"]).T).float()


def greedy_tensor_ids(weights, params, tokens, max_new_tokens, stop_tokens=()):
    out = []
    for _ in range(max_new_tokens):
        t = helpers.forward(weights, params, list(tokens) + [int(o) for o in out])[-1].argmax()
        if int(t) in stop_tokens:
            break
        out.append(t)
    return out


def ctx_zero_kept(params):
    if "max_seq_len" in params:
        return params["max_seq_len"]
    return 131072 if params.get("use_scaled_rope") else 8192


def sdpa_is_causal(q, k, v, attn_mask):
    out = F.scaled_dot_product_attention(q.float()[None], k.float()[None], v.float()[None], is_causal=True)
    return out[0].to(q.dtype)


# --- 06 and 08 after the second review: Hugging Face's finite fill, Meta's order of ⅔ and multiplier, an int ------

def mask_finfo_min(seqlen, start_pos=0):  # the fill notebook 06 shows from Hugging Face
    future = torch.ones(seqlen, start_pos + seqlen, dtype=torch.bool).triu(start_pos + 1)
    return torch.zeros(seqlen, start_pos + seqlen).masked_fill(future, torch.finfo(torch.float32).min)


def mask_triu_offset(seqlen, start_pos=0):  # right: one triu with the diagonal moved by start_pos
    return torch.full((seqlen, start_pos + seqlen), float("-inf")).triu(start_pos + 1)


def hidden_multiplier_first(dim, multiple_of, mult):
    hidden = 4 * dim
    if mult is not None:
        hidden = int(mult * hidden)
    hidden = int(2 * hidden / 3)
    return multiple_of * math.ceil(hidden / multiple_of)


def hidden_truncated_once(dim, multiple_of, mult):  # ⅔ and multiplier in Meta's order, but int() only at the end
    hidden = 2 * 4 * dim / 3
    if mult is not None:
        hidden = mult * hidden
    return multiple_of * math.ceil(int(hidden) / multiple_of)


def hidden_float(dim, multiple_of, mult):
    hidden = int(2 * 4 * dim / 3)
    if mult is not None:
        hidden = int(mult * hidden)
    return torch.ceil(torch.tensor(hidden / multiple_of)).item() * multiple_of  # .item() of a float tensor: a float


def hidden_tensor(dim, multiple_of, mult):
    hidden = int(2 * 4 * dim / 3)
    if mult is not None:
        hidden = int(mult * hidden)
    return torch.tensor(hidden + multiple_of - 1) // multiple_of * multiple_of


def hidden_ceil(dim, multiple_of, mult):  # right: math.ceil returns an int
    hidden = int(8 * dim / 3)
    if mult:
        hidden = int(mult * hidden)
    return math.ceil(hidden / multiple_of) * multiple_of


BF16_WEIGHTS = ("the weights are stored in bf16: convert each one to x's dtype (float32) as you use it, as "
                "helpers.transformer_block does")
NO_CACHE = "each step re-runs the whole sequence: keep a KV cache (new_kv_cache) and feed only the new token at start_pos"

REFERENCES = [
    (ex.check_load_bpe_ranks, load_bpe_ranks), (ex.check_bpe_encode, bpe_encode), (ex.check_split_long_runs, split_long_runs),
    (ex.check_load_params, load_params), (ex.check_check_weights, check_weights), (ex.check_layer_norm, layer_norm_torch),
    (ex.check_linear, helpers.linear), (ex.check_apply_rope_scaling, helpers.apply_rope_scaling),
    (ex.check_scaled_dot_product_attention, sdpa_torch), (ex.check_forward, helpers.forward),
    (ex.check_context_length, helpers.context_length), (ex.check_generate, generate), (ex.check_encode_dialog, encode_dialog),
]

ACCEPTED = [(ex.check_rms_norm, rms_gain_before_cast), (ex.check_rms_norm, rms_torch_functional),
            (ex.check_causal_mask, mask_triu_offset), (ex.check_ffn_hidden_dim, hidden_ceil),
            (ex.check_transformer_block, block_float_weights), (ex.check_forward, forward_converts_once),
            (ex.check_generate, gen_prefill_one_by_one)]

WRONG = [
    (ex.check_rms_norm, rms_all_bf16, "normalised in bf16"),
    (ex.check_load_bpe_ranks, ranks_as_text, "tokens kept as text"),
    (ex.check_load_bpe_ranks, ranks_as_str, "ranks kept as strings"),
    (ex.check_load_bpe_ranks, ranks_by_line_number, "rank taken from the line number"),
    (ex.check_load_bpe_ranks, ranks_split_newlines, "empty last line"),
    (ex.check_bpe_encode, bpe_no_lookup, "no whole-piece lookup first"),
    (ex.check_bpe_encode, bpe_highest_rank, "highest rank instead of the lowest"),
    (ex.check_bpe_encode, bpe_rightmost_on_tie, "rightmost of two equal pairs"),
    (ex.check_bpe_encode, bpe_returns_bytes, "returned the byte strings"),
    (ex.check_split_long_runs, split_cuts_at_max, "exactly max_run"),
    (ex.check_split_long_runs, split_fixed_chunks, "cut every max_run characters"),
    (ex.check_split_long_runs, split_forgets_tail, "after the last cut left out"),
    (ex.check_split_long_runs, split_only_words, "whitespace runs not cut"),
    (ex.check_load_params, params_no_defaults, "optional keys missing"),
    (ex.check_load_params, params_defaults_last, "defaults overwrote the file's values"),
    (ex.check_load_params, params_no_error, "no LlamaError"),
    (ex.check_load_params, params_kv_equals_heads, "n_kv_heads filled in as n_heads"),
    (ex.check_load_params, params_only_theta, "no LlamaError for a params.json without dim, n_layers or n_heads?"),
    (ex.check_load_params, params_forgets_n_layers, "no LlamaError for a params.json without n_layers?"),
    (ex.check_check_weights, weights_kv_by_heads, "wk/wv sized by n_heads"),
    (ex.check_check_weights, weights_need_output, "output.weight required"),
    (ex.check_check_weights, weights_hidden_8_thirds, "feed-forward size"),
    (ex.check_check_weights, weights_first_layer_only, "only some layers checked"),
    (ex.check_check_weights, weights_partial, "only some tensors checked"),
    (ex.check_check_weights, weights_skips_wq, "only some tensors checked? wq went unchecked."),
    (ex.check_check_weights, weights_skips_five,
     "only some tensors checked? wq, wv, w1, attention_norm and the width of tok_embeddings went unchecked."),
    (ex.check_check_weights, weights_layers_only,
     "only some tensors checked? norm.weight, the width of tok_embeddings and output.weight went unchecked."),
    (ex.check_check_weights, weights_vocab_indexed, "params['vocab_size'] read directly"),
    (ex.check_check_weights, weights_vocab_minus_one_rejected, "vocab_size -1 rejected"),
    (ex.check_new_kv_cache, cache_one_pair_repeated, "`[…] * n_layers` repeats the same tensors"),
    (ex.check_new_kv_cache, cache_pair_list_repeated, "make a new pair per layer"),
    (ex.check_new_kv_cache, cache_no_default_dtype, "no dtype given"),
    (ex.check_new_kv_cache, cache_ignores_dtype, "torch.bfloat16 was expected: make the tensors with dtype=dtype "
                                                 "(default torch.float32)"),
    (ex.check_new_kv_cache, cache_default_bf16, "torch.float32 was expected: make the tensors with dtype=dtype "
                                                "(default torch.float32)"),
    (ex.check_precompute_freqs_cis, freqs_float64_angles, "angles in float32, or .to(torch.complex64)"),
    (ex.check_precompute_freqs_cis, freqs_off_by_a_bit, "largest difference 0."),
    (ex.check_causal_mask, mask_bool, "float 0/−inf, not a bool"),
    (ex.check_causal_mask, mask_finfo_min, "Hugging Face's fill) instead of −inf? It gives the same softmax "
                                           "weights, but Meta's mask uses float('-inf')"),
    (ex.check_ffn_hidden_dim, hidden_multiplier_first, "Meta's order (FeedForward.__init__ in "
                                                       "llama_models/llama3/model.py): hidden_dim = int(2 * hidden_dim / 3)"),
    (ex.check_ffn_hidden_dim, hidden_truncated_once, "ffn_dim_multiplier applied before the ⅔ was taken and truncated"),
    (ex.check_ffn_hidden_dim, hidden_float, "a float, not an int. It looks like this mistake: a float or a tensor? "
                                            "Return an int (the rounding makes a whole number: use integer arithmetic)"),
    (ex.check_ffn_hidden_dim, hidden_tensor, "a Tensor, not an int. It looks like this mistake: a float or a tensor? "
                                             "Return an int (the rounding makes a whole number: use integer arithmetic)"),
    (ex.check_forward, forward_bf16_logits, "return float32 logits (.float())"),
    (ex.check_transformer_block, block_eps_fixed, "norm_eps hard-coded"),
    (ex.check_forward, forward_eps_fixed, "norm_eps hard-coded"),
    (ex.check_greedy_decode, greedy_tensor_ids, "is a Tensor; the course's function returns a list of int"),
    (ex.check_context_length, ctx_zero_kept, "max_seq_len 0 returned"),
    (ex.check_scaled_dot_product_attention, sdpa_is_causal, "is_causal=True / triu(1) is top-left aligned"),
    (ex.check_layer_norm, ln_unbiased, "divided by n − 1"),
    (ex.check_layer_norm, ln_std_plus_eps, "eps outside the square root"),
    (ex.check_layer_norm, ln_no_centering, "Then it is RMSNorm"),
    (ex.check_linear, linear_no_transpose, "instead of w.T"),
    (ex.check_linear, linear_w_first, "the result transposed"),
    (ex.check_linear, linear_float, "not cast back"),
    (ex.check_linear, linear_vector_for_one, "squeezed away"),
    (ex.check_apply_rope_scaling, scaling_like_meta, "factor fixed at 8"),
    (ex.check_apply_rope_scaling, scaling_divide_all, "every frequency divided"),
    (ex.check_apply_rope_scaling, scaling_no_two_pi, "1 / freq"),
    (ex.check_apply_rope_scaling, scaling_blend_swapped, "blend turned around"),
    (ex.check_scaled_dot_product_attention, sdpa_no_scale, "not divided by √head_dim"),
    (ex.check_scaled_dot_product_attention, sdpa_zero_mask, "instead of −inf"),
    (ex.check_scaled_dot_product_attention, sdpa_softmax_columns, "softmax over the queries"),
    (ex.check_scaled_dot_product_attention, sdpa_by_head_dim, "head_dim instead of √head_dim"),
    (ex.check_forward, forward_no_final_norm, "final norm skipped"),
    (ex.check_forward, forward_needs_output, "output.weight required"),
    (ex.check_forward, forward_no_scaling, "use_scaled_rope ignored"),
    (ex.check_forward, forward_last_row, "only the last row"),
    (ex.check_context_length, ctx_ignores_max_seq_len, "max_seq_len ignored"),
    (ex.check_context_length, ctx_128000, "128,000 instead of"),
    (ex.check_context_length, ctx_reads_key, "read directly"),
    (ex.check_generate, gen_pos_stays, "start_pos not advanced"),
    (ex.check_generate, gen_pos_plus_one, "advanced by 1 after the prefill"),
    (ex.check_generate, gen_small_cache, "cache too short"),
    (ex.check_generate, gen_keeps_stop, "stop token kept"),
    (ex.check_generate, gen_greedy_wrapper, NO_CACHE),
    (ex.check_generate, gen_refeeds_all, NO_CACHE),
    (ex.check_transformer_block, block_stored_weights, BF16_WEIGHTS),
    (ex.check_transformer_block, block_in_weights_dtype, "computed in bf16?"),
    (ex.check_forward, forward_own_block_stored, BF16_WEIGHTS),
    (ex.check_forward, forward_output_as_stored, BF16_WEIGHTS),
    (ex.check_forward, forward_embedding_as_stored, "computed in bf16? The embedding rows are stored in bf16 too"),
    (ex.check_encode_dialog, dialog_no_bos, "no <|begin_of_text|>"),
    (ex.check_encode_dialog, dialog_no_reply_header, "assistant's header missing"),
    (ex.check_encode_dialog, dialog_strips, "content stripped"),
    (ex.check_encode_dialog, dialog_eos, "<|end_of_text|> after each message"),
]
