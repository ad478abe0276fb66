"""Solutions to the exercises of 09_all_layers.ipynb."""
import torch

from helpers import attention, causal_mask, feed_forward, precompute_freqs_cis, rms_norm, rope_scaling


def transformer_block(x, weights, layer, params, freqs_cis, mask):
    p = f"layers.{layer}."
    n_kv_heads = params.get("n_kv_heads") or params["n_heads"]
    normed = rms_norm(x, weights[p + "attention_norm.weight"], params["norm_eps"])
    h = x + attention(normed, weights[p + "attention.wq.weight"], weights[p + "attention.wk.weight"],
                      weights[p + "attention.wv.weight"], weights[p + "attention.wo.weight"],
                      freqs_cis, mask, params["n_heads"], n_kv_heads)
    normed = rms_norm(h, weights[p + "ffn_norm.weight"], params["norm_eps"])
    return h + feed_forward(normed, weights[p + "feed_forward.w1.weight"], weights[p + "feed_forward.w2.weight"],
                            weights[p + "feed_forward.w3.weight"])


def forward(weights, params, tokens):
    tokens = torch.tensor(tokens)
    T = len(tokens)
    head_dim = params["dim"] // params["n_heads"]
    freqs_cis = precompute_freqs_cis(head_dim, T, params["rope_theta"], rope_scaling(params))
    mask = causal_mask(T)
    h = weights["tok_embeddings.weight"][tokens].float()
    for layer in range(params["n_layers"]):
        h = transformer_block(h, weights, layer, params, freqs_cis, mask)
    h = rms_norm(h, weights["norm.weight"].float(), params["norm_eps"])
    output = weights["output.weight"] if "output.weight" in weights else weights["tok_embeddings.weight"]
    return (h @ output.float().T).float()
