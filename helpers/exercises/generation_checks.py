"""Checkers for notebooks 09–11: the whole forward pass, the context length, the cached decode loop, the chat template."""
from __future__ import annotations

import functools

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import layers
from ..generate import encode_dialog, generate, new_kv_cache
from ..model import forward, rope_scaling, transformer_block
from ..tokenizer import load_tokenizer
from ..weights import context_length
from .core import outcome, run_checks, wrapping
from .model_checks import BF16_WEIGHTS, SMALL, _block_variant, as_bf16, small_model

# --- 09 the whole forward pass ---------------------------------------------------------------------------


def _forward_variant(final_norm=True, output="output", scaled=True, kv_key="get", last=False, final_eps=None,
                     cast="x"):
    """The course's forward (no cache) with one known mistake switched on. cast: "x" converts each stored tensor to
    float32 as it is used (right), "none" uses them as stored (a block without .to(x.dtype), the output table as
    it is), "blocks" the same in the blocks only (the output table converted), "bf16" leaves the embedding rows in
    the stored dtype (every block then computes in it)."""
    block = _block_variant(cast="none") if cast in ("none", "blocks") else transformer_block

    def fwd(weights, params, tokens):
        tokens = torch.as_tensor(tokens, dtype=torch.long).reshape(-1)
        t, head_dim = len(tokens), params["dim"] // params["n_heads"]
        scaling = rope_scaling(params) if scaled else None
        freqs_cis = layers.precompute_freqs_cis(head_dim, t, params["rope_theta"], scaling)
        if kv_key == "index":
            params["n_kv_heads"]  # noqa: B018 - a learner's KeyError when params.json leaves it out
        h = weights["tok_embeddings.weight"][tokens]
        h = h if cast == "bf16" else h.float()
        for layer in range(params["n_layers"]):
            h = block(h, weights, layer, params, freqs_cis, layers.causal_mask(t))
        h = h[-1:] if last else h
        eps = params["norm_eps"] if final_eps is None else final_eps
        h = layers.rms_norm(h, weights["norm.weight"].to(h.dtype), eps) if final_norm else h
        if output == "embedding":
            table = weights["tok_embeddings.weight"]
        elif output == "required":
            table = weights["output.weight"]
        else:
            table = weights.get("output.weight", weights["tok_embeddings.weight"])
        return (h @ (table if cast == "none" else table.to(h.dtype)).T).float()
    return fwd


def check_forward(fn) -> bool:
    """fn(weights, params, tokens) -> float32 logits [T, vocab] like helpers.forward (no cache), on small random
    models: grouped-query, without n_kv_heads in params, tied output, Llama 3.1's scaled RoPE, and weights stored
    in bf16 as the course's checkpoints are (the course's forward computes in float32 whatever they are stored in)."""
    weights, params = small_model(19)
    tied = {k: v for k, v in weights.items() if k != "output.weight"}
    mha = {k: v for k, v in SMALL.items() if k != "n_kv_heads"}  # as many KV heads as query heads
    mha_weights = {k: torch.cat([v, v]) if ".wk." in k or ".wv." in k else v for k, v in small_model(20)[0].items()}
    scaled = {**params, "use_scaled_rope": True, "rope_theta": 500000.0}
    cases = [("the small model, prompt [1, 2, 3, 4, 5]", (weights, params, [1, 2, 3, 4, 5])),
             ("the small model, one token", (weights, params, [7])),
             ("output tied to the embedding (no output.weight)", (tied, params, [3, 1, 4, 1, 5])),
             ("params without n_kv_heads (one KV head per query head)", (mha_weights, mha, [2, 7, 1, 8])),
             ("use_scaled_rope (Llama 3.1), rope_theta 500000, 12 tokens", (weights, scaled, list(range(3, 15)))),
             ("norm_eps 0.1 (a hard-coded eps shows)", (weights, {**params, "norm_eps": 0.1}, [4, 2, 6, 9])),
             # last: a learner's other mistakes show on the float32 models first
             ("weights stored in bf16 (as the course's checkpoints)", (as_bf16(weights), params, [1, 2, 3, 4, 5])),
             ("weights stored in bf16, output tied to the embedding", (as_bf16(tied), params, [3, 1, 4])),
             # one token: a block that leaves the weights in bf16 multiplies in bf16 there (helpers.linear_stored)
             ("weights stored in bf16, one token", (as_bf16(weights), params, [7]))]
    mistakes = [
        (BF16_WEIGHTS.removesuffix(".") + ": in every block, the final norm and the output layer, and the "
         "embedding rows to float32 (.float()).", _forward_variant(cast="none")),
        (BF16_WEIGHTS.removesuffix(".") + ": in every block (left in bf16, one token is multiplied in bf16).",
         _forward_variant(cast="blocks")),
        ("computed in bf16? The embedding rows are stored in bf16 too: convert them to float32 (.float()), so that "
         "every block computes in float32 (it converts each weight to x's dtype as it uses it).",
         _forward_variant(cast="bf16")),
        ("the final norm skipped? h goes through rms_norm(h, norm.weight, norm_eps) before the output layer.",
         _forward_variant(final_norm=False)),
        ("the embedding table used as the output layer? Only a checkpoint without output.weight ties them.",
         _forward_variant(output="embedding")),
        ("output.weight required? Llama 3.2 1B and 3B leave it out and reuse tok_embeddings.weight.",
         _forward_variant(output="required")),
        ("params['n_kv_heads'] read directly? params.json may leave it out: params.get('n_kv_heads') or n_heads.",
         _forward_variant(kv_key="index")),
        ("use_scaled_rope ignored? Pass rope_scaling(params) to precompute_freqs_cis.", _forward_variant(scaled=False)),
        ("only the last row returned? forward gives one row of logits per token: [T, vocab].", _forward_variant(last=True)),
        *[("norm_eps hard-coded? Read it from params['norm_eps'] (every rms_norm: the blocks' and the final one).",
           wrong) for eps in (1e-5, 1e-6)
          for wrong in (lambda w, p, t, eps=eps: forward(w, {**p, "norm_eps": eps}, t), _forward_variant(final_eps=eps))],
    ]
    return run_checks("forward", outcome(fn), outcome(forward), cases, [(h, outcome(w)) for h, w in mistakes],
                      dtype_hint="return float32 logits (.float())")


# --- 10 the context length -------------------------------------------------------------------------------

def check_context_length(fn) -> bool:
    """fn(params) -> int like helpers.context_length: max_seq_len when params give one, else 8192 for Llama 3 and
    128 · 1024 for the models with use_scaled_rope (3.1, 3.2)."""
    llama3 = {"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, "rope_theta": 500000.0}
    cases = [("Llama 3 8B's params (no use_scaled_rope key)", (llama3,)),
             ("Llama 3.1 8B's params (use_scaled_rope true)", ({**llama3, "use_scaled_rope": True},)),
             ("params with max_seq_len 512", ({**llama3, "max_seq_len": 512},)),
             ("params with max_seq_len 0 (not set)", ({**llama3, "max_seq_len": 0},)),
             ("use_scaled_rope and max_seq_len 2048", ({**llama3, "use_scaled_rope": True, "max_seq_len": 2048},)),
             ("use_scaled_rope false", ({**llama3, "use_scaled_rope": False},))]
    mistakes = [
        ("max_seq_len ignored? When params.json gives one, it wins.",
         lambda p: 131072 if p.get("use_scaled_rope") else 8192),
        ("use_scaled_rope ignored? Llama 3.1 and 3.2 were trained to 128K tokens: 128 · 1024 = 131072.",
         lambda p: p.get("max_seq_len") or 8192),
        ("max_seq_len 0 returned? 0 means not set, like a missing key: if params.get('max_seq_len'): …",
         lambda p: p["max_seq_len"] if "max_seq_len" in p else (131072 if p.get("use_scaled_rope") else 8192)),
        ("128,000 instead of 128 · 1024 = 131,072?", lambda p: p.get("max_seq_len") or (128000 if p.get("use_scaled_rope") else 8192)),
        ("params['max_seq_len'] read directly? Meta's params.json has no such key: params.get('max_seq_len').",
         lambda p: p["max_seq_len"]),
        ("params['use_scaled_rope'] read directly? Llama 3's params.json has no such key: params.get(...).",
         lambda p: p.get("max_seq_len") or (131072 if p["use_scaled_rope"] else 8192)),
    ]
    return run_checks("context_length", outcome(fn), outcome(context_length), cases,
                      [(h, outcome(w)) for h, w in mistakes])


# --- 11 the decode loop with a KV cache ------------------------------------------------------------------

def _generate_variant(advance="len", cache_len=None, row=-1, keep_stop=False, keep_prompt=False):
    """A greedy decode loop over a KV cache, with one known mistake switched on."""
    def gen(weights, params, prompt_tokens, max_new_tokens, *, stop_tokens=(), **_):
        prompt = list(prompt_tokens)
        size = cache_len(len(prompt), max_new_tokens) if cache_len else len(prompt) + max_new_tokens
        caches = new_kv_cache(params, size)
        out, tokens, start_pos = [], prompt, 0
        for _ in range(max_new_tokens):
            next_token = int(forward(weights, params, tokens, start_pos, caches)[row].argmax())
            if next_token in stop_tokens and not keep_stop:
                break
            out.append(next_token)
            if next_token in stop_tokens:
                break
            start_pos += {"len": len(tokens), "one": 1, "none": 0}[advance]
            tokens = [next_token]
        return prompt + out if keep_prompt else out
    return gen


class _TableReads(TorchDispatchMode):
    """While active, counts the rows read from one embedding table (`table[ids]`, F.embedding, index_select,
    `table[i]`): one per token position a forward pass computes, whichever forward the learner's code calls."""

    _LOOKUPS = {torch.ops.aten.index, torch.ops.aten.embedding, torch.ops.aten.index_select, torch.ops.aten.select}

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.storage, self.width, self.rows = table.untyped_storage().data_ptr(), table.shape[-1], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        packet = func.overloadpacket
        if packet in self._LOOKUPS and isinstance(out, torch.Tensor) and out.numel():
            source = args[0]  # the table comes first in each, embedding(weight, ids) too
            axis = args[1] if packet in (torch.ops.aten.select, torch.ops.aten.index_select) else 0
            if (isinstance(source, torch.Tensor) and source.dim() == 2 and axis % 2 == 0 and out.shape[-1] == self.width
                    and source.untyped_storage().data_ptr() == self.storage):
                self.rows.append(out.numel() // self.width)
        return out


NO_CACHE = ("each step re-runs the whole sequence: keep a KV cache (new_kv_cache) and feed only the new token at "
            "start_pos (forward(weights, params, [next_token], start_pos, caches)).")


def check_generate(fn) -> bool:
    """fn(weights, params, prompt_tokens, max_new_tokens, stop_tokens=...) -> new ids like helpers.generate with
    temperature 0 (greedy): the prompt once (prefill), then one token per step through a KV cache. Besides the ids,
    it counts the token positions the model computed (rows read from the embedding table): re-running the whole
    sequence at each step (helpers.greedy_decode, notebook 10) gives the same ids but no cache."""
    weights, params = small_model(18)
    free_run = generate(weights, params, [1, 2, 3], 6, stop_tokens=())
    stop = free_run[3]
    cases = [("prompt [1, 2, 3], 6 new tokens", (weights, params, [1, 2, 3], 6, ())),
             (f"prompt [1, 2, 3], stop token {stop}", (weights, params, [1, 2, 3], 6, (stop,))),
             ("prompt [9], 3 new tokens", (weights, params, [9], 3, ())),
             ("prompt [7, 8, 9, 10, 11], 5 new tokens", (weights, params, [7, 8, 9, 10, 11], 5, ()))]
    mistakes = [
        ("start_pos not advanced? After the prefill it is len(prompt), then one more per step: each new token "
         "writes its key and value at its own position.", _generate_variant(advance="none")),
        ("start_pos advanced by 1 after the prefill? The prefill put len(prompt) tokens into the cache.",
         _generate_variant(advance="one")),
        ("the cache too short? It needs room for the prompt and every new token: len(prompt) + max_new_tokens.",
         _generate_variant(cache_len=lambda t, n: t)),
        ("the prefill's first row used? The next token comes from the last row of the logits.", _generate_variant(row=0)),
        ("the stop token kept? Stop before it.", _generate_variant(keep_stop=True)),
        ("the prompt returned too? Return only the new ids.", _generate_variant(keep_prompt=True)),
    ]

    def call(f):
        return outcome(wrapping(f, lambda w, p, prompt, n, stops: f(w, p, prompt, n, stop_tokens=stops)))

    runs = []  # (the ids fn returned, the rows it read per lookup), one per case, in the order run_checks runs them
    learner = call(fn)

    def spied(*args):
        with _TableReads(weights["tok_embeddings.weight"]) as reads:
            result = learner(*args)
        runs.append((result, reads.rows))
        return result

    def cached():
        """None when no case computed a position twice, else what the positions show."""
        for (label, (_, _, prompt, n, _)), (new, rows) in zip(cases, runs):
            steps = len(new) if len(new) == n else len(new) + 1  # a stop token is found by one more step
            needed = len(prompt) + max(steps - 1, 0)  # the prompt once, then the newest token at each step
            if sum(rows) > needed:
                shown = " + ".join(map(str, rows[:6])) + (" + …" if len(rows) > 6 else "")
                return (f"returns the right ids, but on {label} the model computed {sum(rows)} token positions "
                        f"({shown}) where a KV cache needs {needed} (the prompt once, then one token per step): "
                        f"{NO_CACHE}")
        return None

    return run_checks("generate", wrapping(learner, spied), call(generate), cases, [(h, call(w)) for h, w in mistakes],
                      verify=cached)


# --- 11 the chat template --------------------------------------------------------------------------------

@functools.cache
def _tokenizer():
    return load_tokenizer()


def _dialog_variant(bos=True, eot="<|eot_id|>", newlines=True, strip=False, assistant=True):
    """encode_dialog with one known mistake switched on."""
    def encode(tokenizer, messages):
        special = tokenizer.special_tokens

        def header(role):
            return ([special["<|start_header_id|>"]] + tokenizer.encode(role, bos=False, eos=False)
                    + [special["<|end_header_id|>"]] + (tokenizer.encode("\n\n", bos=False, eos=False) if newlines else []))
        ids = [special["<|begin_of_text|>"]] if bos else []
        for m in messages:
            content = m["content"].strip() if strip else m["content"]
            ids += header(m["role"]) + tokenizer.encode(content, bos=False, eos=False) + ([special[eot]] if eot else [])
        return ids + (header("assistant") if assistant else [])
    return encode


def check_encode_dialog(fn) -> bool:
    """fn(tokenizer, messages) -> ids like helpers.encode_dialog (Meta's ChatFormat.encode_dialog_prompt, text only)."""
    tokenizer = _tokenizer()
    dialogs = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "You are a helpful llama."}, {"role": "user", "content": "Hi!"}],
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "  two plus two?\n"},
         {"role": "assistant", "content": "4"}, {"role": "user", "content": "and times three?"}],
    ]
    cases = [(f"{len(d)} message(s): {', '.join(m['role'] for m in d)}", (tokenizer, d)) for d in dialogs]
    mistakes = [
        ("no <|begin_of_text|> first? The dialog starts with it, once.", _dialog_variant(bos=False)),
        ("the assistant's header missing at the end? It tells the model that the reply comes next.",
         _dialog_variant(assistant=False)),
        ("no \"\\n\\n\" after <|end_header_id|>? Every header ends with two newlines.", _dialog_variant(newlines=False)),
        ("messages not closed by <|eot_id|>? Each message ends with it (end of turn).", _dialog_variant(eot=None)),
        ("<|end_of_text|> after each message? A message ends with <|eot_id|>.", _dialog_variant(eot="<|end_of_text|>")),
        ("the content stripped? llama_models' ChatFormat encodes it as given (the older meta-llama/llama3 code "
         "stripped it).", _dialog_variant(strip=True)),
    ]
    return run_checks("encode_dialog", outcome(fn), outcome(encode_dialog), cases, [(h, outcome(w)) for h, w in mistakes])
