"""Generating text: a KV cache, temperature and nucleus (top-p) sampling, the decode loop, the chat template.

Names follow Meta's `llama_models/llama3/generation.py` and `chat_format.py`. The loop feeds the prompt
once (prefill), then one token per step: each step's keys and values are kept in the cache, so a step
computes only the new token. Shapes: L = max_seq_len of the cache, KV = n_kv_heads, D = head_dim.
"""
from __future__ import annotations

import codecs
import functools
from collections.abc import Iterable, Iterator

import torch

from .errors import LlamaError
from .model import forward
from .tokenizer import load_tokenizer
from .weights import context_length

ROLES = ("system", "user", "assistant")


@functools.cache
def default_stop_tokens() -> tuple[int, ...]:
    """<|end_of_text|>, <|eom_id|>, <|eot_id|>: the same ids for every Llama 3 tokenizer (read once)."""
    return tuple(load_tokenizer().stop_tokens)


def new_kv_cache(params: dict, max_seq_len: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> list:
    """-> one (cache_k, cache_v) per layer, each zeros [L, KV, D] on `device`: sized by n_kv_heads, not n_heads,
    because the query heads of a group share one key and one value head (GQA)."""
    n_kv_heads = params.get("n_kv_heads") or params["n_heads"]
    head_dim = params["dim"] // params["n_heads"]
    shape = (max_seq_len, n_kv_heads, head_dim)
    return [(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(params["n_layers"])]


def sample_top_p(probs: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """probs: [vocab] or [B, vocab] -> [1] or [B, 1] token ids. Nucleus sampling exactly as Meta's:
    keep the most likely tokens while the mass *before* each one is at most p, renormalise, draw one.
    (Holtzman et al. and HF keep them while it is below p: the two differ only when it equals p.)"""
    probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
    probs_sum = torch.cumsum(probs_sort, dim=-1)
    mask = probs_sum - probs_sort > p  # the mass of the more likely tokens already exceeds p
    probs_sort[mask] = 0.0
    probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
    next_token = torch.multinomial(probs_sort, num_samples=1, generator=generator)
    return torch.gather(probs_idx, -1, next_token)


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """logits: [vocab] -> the next token id: the argmax when temperature is 0, else top-p sampling
    from softmax(logits / temperature) (a low temperature sharpens the distribution, a high one flattens it)."""
    if temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(sample_top_p(probs, top_p, generator))


def check_generation(weights: dict, params: dict, prompt_tokens, max_new_tokens: int,
                     temperature: float, top_p: float) -> tuple[list[int], int]:
    """-> (prompt as a list of ids, max_new_tokens clamped to the context); LlamaError on bad input."""
    prompt = torch.as_tensor(prompt_tokens, dtype=torch.long, device="cpu").reshape(-1).tolist()  # ids, on the host
    vocab = weights["tok_embeddings.weight"].shape[0]
    limit = context_length(params)
    if not prompt:
        raise LlamaError("The prompt is empty: give at least one token (e.g. <|begin_of_text|>).")
    if not all(0 <= t < vocab for t in prompt):
        raise LlamaError(f"The prompt holds a token id outside the model's vocabulary of {vocab}: check the tokenizer.")
    if len(prompt) >= limit:
        raise LlamaError(f"The prompt is {len(prompt)} tokens but the model's context holds {limit}: shorten it.")
    if max_new_tokens < 0:
        raise LlamaError(f"max_new_tokens is {max_new_tokens}: it must be 0 or more.")
    if not temperature >= 0:
        raise LlamaError(f"temperature is {temperature}: it must be 0 (greedy) or more.")
    if not 0 <= top_p <= 1:
        raise LlamaError(f"top_p is {top_p}: it must be between 0 and 1.")
    return prompt, min(max_new_tokens, limit - len(prompt))


def generate_stream(
    weights: dict,
    params: dict,
    prompt_tokens,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_tokens: Iterable[int] | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    fused: bool = False,
) -> Iterator[int]:
    """Yield the new token ids one by one (the prompt's are not repeated); stop before any stop token.

    Arguments are checked at the call (LlamaError). Prompt + new tokens never exceed the context:
    max_new_tokens is clamped to context_length(params) - len(prompt), as Meta's generation does.
    stop_tokens: default <|end_of_text|>, <|eom_id|>, <|eot_id|>; [] never stops early. With a seed,
    sampling draws from its own torch.Generator (never the global RNG): same seed, same tokens.
    dtype and fused: the mode, as helpers.choose_mode returns it (float32 and False: the exact mode)."""
    prompt, max_new_tokens = check_generation(weights, params, prompt_tokens, max_new_tokens, temperature, top_p)
    if stop_tokens is None:
        stop_tokens = default_stop_tokens()
    generator = None  # greedy draws nothing
    if temperature > 0:
        generator = torch.Generator(device=weights["tok_embeddings.weight"].device)  # draws where the logits are
        if seed is None:
            generator.seed()  # fresh randomness, from the OS
        else:
            generator.manual_seed(seed)
    return _decode(weights, params, prompt, max_new_tokens, temperature, top_p, set(stop_tokens), generator, dtype,
                   fused)


def _decode(weights, params, prompt, max_new_tokens, temperature, top_p, stop_tokens, generator, dtype, fused):
    """The decode loop of generate_stream, once its arguments are checked."""
    caches = new_kv_cache(params, len(prompt) + max_new_tokens, dtype, weights["tok_embeddings.weight"].device)
    tokens, start_pos = prompt, 0  # first the whole prompt (prefill), then one token at a time
    buffers = {}  # where weights stored in another dtype are converted, step after step (model.converted)
    for _ in range(max_new_tokens):
        with torch.inference_mode():  # only around the compute: a generator must not leak the mode to its caller
            logits = forward(weights, params, tokens, start_pos, caches, dtype, True, fused, buffers)[-1]
            next_token = sample_next(logits, temperature, top_p, generator)
        if next_token in stop_tokens:
            return
        yield next_token
        start_pos += len(tokens)  # those tokens' keys and values are in the cache now
        tokens = [next_token]


def generate(
    weights: dict,
    params: dict,
    prompt_tokens,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop_tokens: Iterable[int] | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float32,
    fused: bool = False,
) -> list[int]:
    """-> the new token ids only, greedy when temperature is 0 (see generate_stream for the rules)."""
    return list(generate_stream(weights, params, prompt_tokens, max_new_tokens, temperature=temperature,
                                top_p=top_p, stop_tokens=stop_tokens, seed=seed, dtype=dtype, fused=fused))


def stream_text(tokenizer, token_ids: Iterable[int]) -> Iterator[str]:
    """Yield the text of token ids as they arrive, whole characters only: a token may hold part of a
    UTF-8 character, and its bytes wait for the rest (U+FFFD only for bytes that never complete one)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in token_ids:
        text = decoder.decode(tokenizer.token_bytes(token))
        if text:
            yield text
    text = decoder.decode(b"", final=True)
    if text:
        yield text


def encode_header(tokenizer, role: str) -> list[int]:
    """-> ids of <|start_header_id|>role<|end_header_id|> followed by two newlines."""
    return ([tokenizer.special_tokens["<|start_header_id|>"]] + tokenizer.encode(role, bos=False, eos=False)
            + [tokenizer.special_tokens["<|end_header_id|>"]] + tokenizer.encode("\n\n", bos=False, eos=False))


def encode_dialog(tokenizer, messages: list[dict]) -> list[int]:
    """[{"role": "system"|"user"|"assistant", "content": str}, ...] -> ids, as llama_models'
    ChatFormat.encode_dialog_prompt for text messages: <|begin_of_text|>, each message as header +
    content (as given: not stripped) + <|eot_id|>, then the assistant's header, so that the model's next
    tokens are the reply."""
    tokens = [tokenizer.special_tokens["<|begin_of_text|>"]]
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise LlamaError(f"Message {i} has role {role!r}: a role is one of {', '.join(ROLES)}.")
        if not isinstance(message.get("content"), str):
            raise LlamaError(f"Message {i} has no text content: give {{'role': {role!r}, 'content': '...'}}.")
        tokens += encode_header(tokenizer, role) + tokenizer.encode(message["content"], bos=False, eos=False)
        tokens.append(tokenizer.special_tokens["<|eot_id|>"])
    return tokens + encode_header(tokenizer, "assistant")
