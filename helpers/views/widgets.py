"""The live views: one function per view builds an ipywidgets box (sliders, a picture, a caption), so a notebook
cell stays one line. Each slider move recomputes with the pure functions of compute.py and redraws with
figures.py. Needs a running kernel (JupyterLab); the notebooks keep a static figure next to each view."""
from __future__ import annotations

import html
import io

import torch

from . import compute, figures


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()


def _view(sliders: list, draw) -> "ipywidgets.VBox":  # noqa: F821 - imported lazily
    """A box: the sliders, a picture and a caption; draw(*values) -> (Figure, caption html), rerun on every move."""
    import ipywidgets as widgets

    image, caption = widgets.Image(format="png"), widgets.HTML()

    def update(_=None):
        fig, text = draw(*(s.value for s in sliders))
        image.value, caption.value = _png(fig), text

    for s in sliders:
        s.observe(update, "value")
    update()
    return widgets.VBox([widgets.HBox(sliders), caption, image], layout=widgets.Layout(align_items="flex-start"))


def _slider(description: str, value, low, high, step=None):
    import ipywidgets as widgets

    kind = widgets.IntSlider if isinstance(value, int) else widgets.FloatSlider
    extra = {} if step is None else {"step": step}
    return kind(value=value, min=low, max=high, description=description, continuous_update=False,
                style={"description_width": "initial"}, **extra)


def attention_explorer(weights: dict, params: dict, tokenizer, tokens):
    """Layer and head sliders over attention_probs: who each token of the prompt looks at."""
    labels = [figures.token_label(tokenizer, t) for t in tokens]
    n_heads = params["n_heads"]
    n_rep = n_heads // (params.get("n_kv_heads") or n_heads)
    cache: dict[int, torch.Tensor] = {}

    def draw(layer, head):
        if layer not in cache:
            cache[layer] = compute.attention_probs(weights, params, tokens, layer)
        probs = cache[layer][head]
        top = probs[-1].topk(min(3, len(labels)))
        looks = ", ".join(f"{html.escape(labels[j])} {p:.2f}" for p, j in zip(top.values.tolist(), top.indices.tolist()))
        text = (f"<b>layer {layer}, head {head}</b> (shares KV head {head // n_rep}). "
                f"The last token {html.escape(labels[-1])!s} attends most to: {looks}")
        return figures.attention_figure(probs, labels, f"layer {layer}, head {head}"), text

    return _view([_slider("layer", 0, 0, params["n_layers"] - 1), _slider("head", 0, 0, n_heads - 1)], draw)


def logit_lens_view(weights: dict, params: dict, tokenizer, tokens, k: int = 5, lens: tuple | None = None):
    """A position slider over logit_lens: the top k tokens after 0, 1, …, L blocks, for the chosen token.
    `lens`: logit_lens's (ids, probs) if already computed (a big model's lens takes a whole forward pass)."""
    ids, probs = lens if lens is not None else compute.logit_lens(weights, params, tokens, k)
    labels = [figures.token_label(tokenizer, t) for t in tokens]

    def draw(position):
        rows = "".join(
            f"<tr><td>{layer} block{'' if layer == 1 else 's'} done</td>" + "".join(
                f"<td>{html.escape(figures.token_label(tokenizer, i))} <small>{p:.2f}</small></td>"
                for i, p in zip(ids[layer, position].tolist(), probs[layer, position].tolist())) + "</tr>"
            for layer in range(ids.shape[0]))
        text = (f"<b>after token {position}, {html.escape(labels[position])}</b>: the {k} most likely next tokens"
                f"<table class='logit-lens'>{rows}</table>")
        return figures.logit_lens_figure(ids[:, : position + 1], probs[:, : position + 1], labels[: position + 1],
                                         tokenizer), text

    return _view([_slider("position", len(labels) - 1, 0, len(labels) - 1)], draw)


def rope_view(q: torch.Tensor, k: torch.Tensor, theta: float, positions: int = 16):
    """Query position m, key position n and pair sliders over rope_scores: the score depends on m − n only."""
    scores = compute.rope_scores(q, k, positions, theta)

    def draw(m, n, pair):
        same = [(m2, m2 - (m - n)) for m2 in range(positions) if 0 <= m2 - (m - n) < positions and m2 != m][:2]
        also = "; ".join(f"m = {a}, n = {b}: {scores[a, b]:.4f}" for a, b in same)
        text = (f"<b>m = {m}, n = {n}, m − n = {m - n}</b>: score {scores[m, n]:.4f}"
                + (f" — the same distance elsewhere: {also}" if also else ""))
        return figures.rope_figure(q, k, theta, positions, m, n, pair), text

    sliders = [_slider("query position m", 5, 0, positions - 1), _slider("key position n", 2, 0, positions - 1),
               _slider("pair", 0, 0, q.shape[-1] // 2 - 1)]
    return _view(sliders, draw)


def sampling_view(logits: torch.Tensor, tokenizer, k: int = 12):
    """Temperature and top-p sliders over nucleus_distribution (Meta's rule), for one row of logits [V]."""
    top_ids = logits.float().topk(k).indices
    labels = [figures.token_label(tokenizer, i) for i in top_ids.tolist()]

    def draw(temperature, top_p):
        nucleus = compute.nucleus_distribution(logits, temperature, top_p)
        plain = compute.nucleus_distribution(logits, temperature, 1.0)
        kept = int((nucleus > 0).sum())
        text = (f"<b>temperature {temperature:.2f}, top_p {top_p:.2f}</b>: {kept} token{'s' * (kept != 1)} can be drawn; "
                f"the most likely has probability {float(nucleus.max()):.3f}"
                + (" (temperature 0 is greedy: always the argmax)" if temperature == 0 else ""))
        title = f"the {k} most likely tokens"
        return figures.sampling_figure(plain[top_ids], nucleus[top_ids], labels, title), text

    return _view([_slider("temperature", 0.6, 0.0, 2.0, 0.05), _slider("top_p", 0.9, 0.0, 1.0, 0.01)], draw)


def generation_view(weights: dict, params: dict, tokenizer, tokens, max_new_tokens: int = 8, k: int = 5,
                    stop_tokens=(), dtype: torch.dtype = torch.float32, fused: bool = False):
    """A step slider over decode_steps: what each step feeds, what the cache already holds, what it chooses
    (`dtype`, `fused`: the mode, as helpers.choose_mode returns it)."""
    steps = compute.decode_steps(weights, params, tokens, max_new_tokens, k, stop_tokens, dtype, fused)
    ids = list(tokens) + [s["token"] for s in steps]
    labels = [figures.token_label(tokenizer, t) for t in ids]

    def draw(step):
        s = steps[step - 1]
        so_far = html.escape(tokenizer.decode(ids[len(tokens): len(tokens) + step - 1]))
        top = ", ".join(f"{html.escape(figures.token_label(tokenizer, i))} {p:.2f}" for i, p in zip(s["top_ids"], s["top_probs"]))
        text = (f"<b>step {step}</b>: start_pos {s['start_pos']}, fed {len(s['fed'])} token(s), the cache then holds "
                f"{s['cached']} positions. Chosen: <b>{html.escape(labels[s['cached']])}</b> (top {k}: {top})<br>"
                f"text so far: …{so_far}<b>{html.escape(tokenizer.decode([s['token']]))}</b>")
        return figures.decode_figure(steps, labels, upto=step), text

    return _view([_slider("step", 1, 1, len(steps))], draw)
