"""Solutions to the exercises of 11_generate.ipynb."""
import torch

from helpers import forward, new_kv_cache


def sample_top_p(probs, p, generator=None):
    sorted_probs, order = torch.sort(probs, descending=True)
    before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # the mass of the more likely tokens
    sorted_probs = torch.where(before > p, torch.zeros_like(sorted_probs), sorted_probs)
    choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
    return order[choice]


def generate(weights, params, prompt_tokens, max_new_tokens, stop_tokens=()):
    prompt = list(prompt_tokens)
    caches = new_kv_cache(params, len(prompt) + max_new_tokens)
    new, fed, start_pos = [], prompt, 0
    for _ in range(max_new_tokens):
        logits = forward(weights, params, fed, start_pos, caches)  # only the tokens not yet in the cache
        next_id = int(logits[-1].argmax())
        if next_id in stop_tokens:
            break
        new.append(next_id)
        start_pos += len(fed)
        fed = [next_id]
    return new


def encode_dialog(tokenizer, messages):
    def header(role):
        return ([tokenizer.special_tokens["<|start_header_id|>"]] + tokenizer.encode(role, bos=False, eos=False)
                + [tokenizer.special_tokens["<|end_header_id|>"]] + tokenizer.encode("\n\n", bos=False, eos=False))

    ids = [tokenizer.special_tokens["<|begin_of_text|>"]]
    for message in messages:
        ids += header(message["role"]) + tokenizer.encode(message["content"], bos=False, eos=False)
        ids.append(tokenizer.special_tokens["<|eot_id|>"])
    return ids + header("assistant")
