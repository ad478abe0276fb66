"""Static matplotlib figures of the live views: what the notebooks show where no kernel runs, and what each widget
redraws when a slider moves. Built as `matplotlib.figure.Figure` (not through pyplot), so a widget's figure is
never also displayed under the cell; a notebook shows one by leaving it as a cell's last value."""
from __future__ import annotations

import io

from matplotlib.figure import Figure as _MplFigure
from matplotlib.ticker import MaxNLocator

from .compute import rope_scores, rotate_pair


class Figure(_MplFigure):
    """A matplotlib Figure that also shows itself as a cell's last value before pyplot has drawn anything (the inline
    backend registers its own display for figures only then)."""

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", bbox_inches="tight")
        return buffer.getvalue()


SHORT_NAMES = {"<|begin_of_text|>": "<bos>", "<|end_of_text|>": "<eos>", "<|eot_id|>": "<eot>"}


def token_label(tokenizer, token_id: int) -> str:
    """A short readable label: spaces as ␣, newlines as ↵, special tokens by a short name (<|eot_id|> -> <eot>)."""
    text = tokenizer.decode([int(token_id)])
    if text.startswith("<|") and text.endswith("|>"):
        return SHORT_NAMES.get(text, text[2:-2])
    return text.replace(" ", "␣").replace("\n", "↵") or "∅"


def attention_figure(probs, labels: list[str], title: str = "") -> Figure:
    """probs: [T, T] (one head) or [H, T, T] (a grid of all heads) -> a heatmap: row = query token, column = key."""
    grid = probs[None] if probs.dim() == 2 else probs
    n = grid.shape[0]
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    size = 4.2 if n == 1 else 2.6
    fig = Figure(figsize=(size * cols, size * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(grid[i].detach().float().cpu().numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        if n > 1:
            ax.set_title(f"head {i}", fontsize=9)
    fig.suptitle(title or "attention weights (row: query token, column: key token)", fontsize=10)
    return fig


def logit_lens_figure(ids, probs, labels: list[str], tokenizer) -> Figure:
    """ids, probs: [L + 1, T, k] (logit_lens) -> a table, blocks done × position: each cell names the top token
    the lens reads there, coloured by its probability."""
    top_ids, top_p = ids[..., 0].cpu(), probs[..., 0].float().cpu()
    n_layers, seqlen = top_ids.shape
    fig = Figure(figsize=(max(6.0, 0.75 * seqlen), 0.5 * n_layers + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(top_p.numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for layer in range(n_layers):
        for t in range(seqlen):
            ax.text(t, layer, token_label(tokenizer, top_ids[layer, t]), ha="center", va="center", fontsize=7,
                    color="white" if top_p[layer, t] > 0.6 else "black")
    ax.set_xticks(range(seqlen), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(n_layers), [f"{i} block{'' if i == 1 else 's'} done" for i in range(n_layers)], fontsize=7)
    ax.set_xlabel("input token (each column predicts the token after it)")
    fig.colorbar(image, ax=ax, label="probability of the top token")
    return fig


def rope_figure(q, k, theta: float, positions: int = 16, m: int | None = None, n: int | None = None,
                pair: int = 0) -> Figure:
    """q, k: [D] -> left: the scores (R_m q)·(R_n k) for all m, n < positions (equal along each diagonal);
    right: pair `pair` of q at position m and of k at position n as arrows in the plane (when m, n are given)."""
    scores = rope_scores(q, k, positions, theta).cpu()
    fig = Figure(figsize=(9.0 if m is not None else 4.8, 4.0), layout="constrained")
    axes = fig.subplots(1, 2 if m is not None else 1, squeeze=False)[0]
    image = axes[0].imshow(scores.numpy(), cmap="coolwarm")
    axes[0].set_xlabel("key position n")
    axes[0].set_ylabel("query position m")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # positions are whole numbers
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("score (R_m q)·(R_n k): constant along diagonals", fontsize=9)
    fig.colorbar(image, ax=axes[0], shrink=0.8)
    if m is not None:
        axes[0].plot([n], [m], marker="s", markersize=12, markerfacecolor="none", markeredgecolor="black")
        for vec, pos, color, name in [(q, m, "tab:blue", "q"), (k, n, "tab:red", "k")]:
            x, y = rotate_pair(vec, pair, pos, theta)
            x0, y0 = rotate_pair(vec, pair, 0, theta)
            axes[1].annotate("", (x, y), (0, 0), arrowprops=dict(arrowstyle="->", color=color, lw=2))
            axes[1].plot([x0], [y0], "o", color=color, alpha=0.3)
            axes[1].text(x, y, f" {name} at {pos}", color=color)
        lim = 1.2 * max(float(q[2 * pair: 2 * pair + 2].norm()), float(k[2 * pair: 2 * pair + 2].norm()), 1e-6)
        axes[1].set_xlim(-lim, lim)
        axes[1].set_ylim(-lim, lim)
        axes[1].set_aspect("equal")
        axes[1].axhline(0, color="gray", lw=0.5)
        axes[1].axvline(0, color="gray", lw=0.5)
        axes[1].set_title(f"pair {pair}: dimensions {2 * pair}, {2 * pair + 1} (faint dot: position 0)", fontsize=9)
    return fig


def sampling_figure(probs, nucleus, labels: list[str], title: str = "") -> Figure:
    """probs, nucleus: [k] for the k most likely tokens -> bars: after temperature (light), after the top-p cut (dark)."""
    fig = Figure(figsize=(max(6.0, 0.5 * len(labels)), 3.4), layout="constrained")
    ax = fig.subplots()
    xs = range(len(labels))
    ax.bar(xs, probs.float().cpu().numpy(), color="tab:blue", alpha=0.3, label="softmax(logits / temperature)")
    ax.bar(xs, nucleus.float().cpu().numpy(), color="tab:blue", width=0.5, label="after top-p: what is drawn from")
    ax.set_xticks(list(xs), labels, rotation=60, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("probability")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    return fig


def decode_figure(steps: list[dict], labels: list[str], upto: int | None = None) -> Figure:
    """steps: decode_steps' list -> one row per step over the positions: cached (grey), fed this step (blue), the
    token it chose (orange, at the next position). labels: the prompt's and the new tokens' labels."""
    upto = len(steps) if upto is None else upto
    total = steps[-1]["cached"] + 1
    fig = Figure(figsize=(max(6.0, 0.45 * total), 0.42 * len(steps) + 1.6), layout="constrained")
    ax = fig.subplots()
    for row, step in enumerate(steps[:upto]):
        for pos in range(step["cached"] + 1):
            fed = pos >= step["start_pos"] and pos < step["cached"]
            color = "tab:orange" if pos == step["cached"] else "tab:blue" if fed else "lightgray"
            ax.add_patch(_box(pos, row, color))
            ax.text(pos + 0.5, row + 0.5, labels[pos] if pos < len(labels) else "", ha="center", va="center", fontsize=6)
    ax.set_xlim(0, total)
    ax.set_ylim(len(steps), 0)
    ax.set_yticks([i + 0.5 for i in range(len(steps))], [f"step {i + 1}" for i in range(len(steps))], fontsize=7)
    ax.set_xlabel("position (grey: read from the KV cache, blue: fed and computed this step, orange: chosen)")
    ax.set_xticks([])
    return fig


def _box(x: int, y: int, color: str):
    from matplotlib.patches import Rectangle

    return Rectangle((x + 0.05, y + 0.08), 0.9, 0.84, color=color)
