"""Solutions to the exercises of 09_all_layers.ipynb."""
import torch

from helpers import attention, causal_mask, feed_forward, precompute_freqs_cis, rms_norm, rope_scaling


def transformer_block(x, weights, layer, params, freqs_cis, mask):
    def w(name):  # this layer's stored tensor (bf16 in the course's checkpoints), in x's dtype
        return weights[f"layers.{layer}.{name}.weight"].to(x.dtype)

    n_kv_heads = params.get("n_kv_heads") or params["n_heads"]
    normed = rms_norm(x, w("attention_norm"), params["norm_eps"])
    h = x + attention(normed, w("attention.wq"), w("attention.wk"), w("attention.wv"), w("attention.wo"),
                      freqs_cis, mask, params["n_heads"], n_kv_heads)
    normed = rms_norm(h, w("ffn_norm"), params["norm_eps"])
    return h + feed_forward(normed, w("feed_forward.w1"), w("feed_forward.w2"), w("feed_forward.w3"))


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
