"""Attention heatmaps as PNG files (matplotlib's Agg canvas, no display needed).

Source tokens run along the x axis, target tokens along the y axis, as in the
alignment figures of Bahdanau et al. 2015 (fig. 3). Transformer cross-attention
gets one panel per head; RNN alignments get a single panel.

The figure is built with `matplotlib.figure.Figure` and `FigureCanvasAgg`
directly, so plotting never touches pyplot's global state or the backend of an
interactive session.
"""

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["plot_attention"]


def plot_attention(
    weights: np.ndarray,
    source_tokens: Sequence[str],
    target_tokens: Sequence[str],
    path: str,
    title: str = "",
) -> str:
    """Writes an attention heatmap to `path` (PNG).

    Args:
      weights: [T, S] alignment, or [N, T, S] one map per head. Extra rows or
        columns beyond the token lists (padding) are cropped.
      source_tokens: S' <= S source token strings (x axis).
      target_tokens: T' <= T target token strings (y axis).
      path: output file name.
      title: figure title.

    Returns:
      `path`.
    """
    weights = np.asarray(weights, np.float32)
    if weights.ndim == 2:
        weights = weights[None]                                             # [1, T, S]
    if weights.ndim != 3:
        raise ValueError(f"weights: got shape {weights.shape}, expected [T, S] or [N, T, S]")
    num_t, num_s = len(target_tokens), len(source_tokens)
    if num_t > weights.shape[1] or num_s > weights.shape[2]:
        raise ValueError(
            f"weights: got shape {weights.shape}, expected at least [N, {num_t}, {num_s}] for the token lists"
        )
    weights = weights[:, :num_t, :num_s]                                    # [N, T', S']
    heads = weights.shape[0]
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    cell = 0.35
    width = max(3.0, cols * (1.5 + cell * num_s))
    height = max(2.5, rows * (1.2 + cell * num_t))
    # Imported here: matplotlib costs every launch 0.4 s, and only heatmaps need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    for h in range(heads):
        ax = fig.add_subplot(rows, cols, h + 1)
        ax.imshow(weights[h], cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        ax.set_xticks(range(num_s))
        ax.set_xticklabels(source_tokens, rotation=90, fontsize=8)
        ax.set_yticks(range(num_t))
        ax.set_yticklabels(target_tokens, fontsize=8)
        if heads > 1:
            ax.set_title(f"head {h}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path
