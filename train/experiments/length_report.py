"""Scores by source length, and their plot, tables and files (the length experiment's report).

Bahdanau et al. (2014, Fig. 2) plot BLEU against sentence length: the encoder-decoder
whose decoder sees the source only through one fixed vector (eq. 1-2, the c of
p(y_t | y_<t, c)) degrades as sentences grow, while attention's per-step context
c_i = sum_j alpha_ij h_j (eq. 5-6) holds up. This module turns a run's predictions file
(`<workdir>/samples/<split>_step<N>.jsonl`, one JSON object per example with `source`,
`reference`, `hypothesis`, `exact`) into per-bucket corpus scores
(`train.evaluation.corpus_scores`: sacrebleu BLEU and chrF, exact match) and draws them.

A bucket is `(low, high)` in source words, both inclusive; `high=None` is open-ended.
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from train import evaluation

__all__ = [
    "Bucket",
    "bucket_label",
    "check_buckets",
    "source_length",
    "read_predictions",
    "kept_reading",
    "bucket_scores",
    "plot_length_curves",
    "markdown_tables",
    "markdown_report",
    "write_report",
]

Bucket = tuple[int, int | None]


def bucket_label(bucket: Bucket) -> str:
    """"1-6", "7-8" or "15+" (open-ended)."""
    low, high = bucket
    if high is None:
        return f"{low}+"
    return f"{low}" if low == high else f"{low}-{high}"


def check_buckets(buckets: Sequence[Bucket]) -> None:
    """Raises ValueError unless the buckets tile [1, inf): from 1, contiguous, last open-ended."""
    if not buckets:
        raise ValueError("buckets: got (), expected at least one (low, high) bucket")
    expected_low = 1
    for i, (low, high) in enumerate(buckets):
        if low != expected_low:
            raise ValueError(f"buckets: bucket {i} starts at {low}, expected {expected_low} "
                             "(contiguous from 1 word)")
        last = i == len(buckets) - 1
        if last and high is not None:
            raise ValueError(f"buckets: last bucket is ({low}, {high}), expected ({low}, None) "
                             "(open-ended, so every source falls in a bucket)")
        if not last and (high is None or high < low):
            raise ValueError(f"buckets: bucket {i} is ({low}, {high}), expected low <= high")
        expected_low = None if high is None else high + 1


def source_length(source: str) -> int:
    """Length of a source sentence in whitespace-separated words."""
    return len(source.split())


def read_predictions(path: str) -> list[dict[str, Any]]:
    """The rows of a predictions JSONL file (`train.evaluation.write_predictions`)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _bucket_index(length: int, buckets: Sequence[Bucket]) -> int:
    for i, (low, high) in enumerate(buckets):
        if length >= low and (high is None or length <= high):
            return i
    raise ValueError(f"source length: got {length} words, expected one covered by the buckets {buckets}")


def bucket_scores(rows: Sequence[Mapping[str, Any]], buckets: Sequence[Bucket]) -> list[dict[str, Any]]:
    """Corpus BLEU, chrF and exact match of the rows in each source-length bucket.

    Args:
      rows: predictions, each with `source`, `reference` and `hypothesis` text.
      buckets: (low, high) source-word ranges (see `check_buckets`).

    Returns:
      One dict per bucket: `label`, `low`, `high`, `count`, and `bleu`, `chrf` (0-100),
      `exact_match` (0-1); the scores are None for an empty bucket.
    """
    check_buckets(buckets)
    members: list[list[Mapping[str, Any]]] = [[] for _ in buckets]
    for row in rows:
        members[_bucket_index(source_length(row["source"]), buckets)].append(row)
    out = []
    for bucket, group in zip(buckets, members):
        scores: dict[str, Any] = {"bleu": None, "chrf": None, "exact_match": None}
        if group:
            scores = evaluation.corpus_scores([r["hypothesis"] for r in group], [r["reference"] for r in group])
        out.append({"label": bucket_label(bucket), "low": bucket[0], "high": bucket[1], "count": len(group),
                    **scores})
    return out


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def plot_length_curves(results: Mapping[str, Mapping[str, Any]], path: str, title: str) -> str:
    """BLEU, chrF and exact match against source length, one panel each, one line per model (PNG).

    chrF is drawn next to BLEU because word BLEU is erratic where references are a few words
    long (German number words are 1-3 compounds: no reference 4-grams, and a single wrong
    3- or 4-word hypothesis decides the higher-order precisions of a bucket).

    Args:
      results: {model: {"label": legend text, "buckets": `bucket_scores` output}}; every
        model must use the same buckets.
      path: output PNG file.
      title: figure title.

    Returns:
      `path`.
    """
    if not results:
        raise ValueError("results: got no models, expected at least one")
    labels = [b["label"] for b in next(iter(results.values()))["buckets"]]
    for model, result in results.items():
        got = [b["label"] for b in result["buckets"]]
        if got != labels:
            raise ValueError(f"results[{model!r}]: got buckets {got}, expected {labels} (same for every model)")
    x = list(range(len(labels)))
    fig = Figure(figsize=(15, 4.2))
    FigureCanvasAgg(fig)
    top = 100.0
    panels = (("bleu", "BLEU", 1.0), ("chrf", "chrF", 1.0), ("exact_match", "exact match (%)", 100.0))
    for i, (key, ylabel, scale) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for result in results.values():
            ax.plot(x, [scale * _nan(b[key]) for b in result["buckets"]], marker="o", label=result["label"])
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_xlabel("source length (English words)")
        ax.set_ylabel(ylabel)
        values = [scale * b[key] for r in results.values() for b in r["buckets"] if b[key] is not None]
        # From 0 unless every point is above 50; then from the tens below the lowest point,
        # so that differences near the top stay visible (the tick labels show the cut).
        bottom = 0.0 if not values or min(values) < 50.0 else 10.0 * math.floor(min(values) / 10.0)
        ax.set_ylim(bottom, top + 0.03 * (top - bottom))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _cell(value: float | None, scale: float = 1.0) -> str:
    return "-" if value is None else f"{scale * value:.1f}"


def markdown_tables(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Overall scores per model, then BLEU / exact match / chrF per bucket, as markdown tables.

    Args:
      results: {model: {"label", "parameters", "wall_time_s", "overall": {count, bleu, chrf,
        exact_match}, "buckets": `bucket_scores` output}}.
    """
    lines = ["| model | parameters | wall time (s) | test pairs | BLEU | chrF | exact match (%) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for result in results.values():
        o = result["overall"]
        lines.append(f"| {result['label']} | {result['parameters']:,} | {result['wall_time_s']:.0f} | "
                     f"{o['count']:,} | {_cell(o['bleu'])} | {_cell(o['chrf'])} | "
                     f"{_cell(o['exact_match'], 100.0)} |")
    first = next(iter(results.values()))["buckets"]
    header = "| source words | " + " | ".join(b["label"] for b in first) + " |"
    rule = "|---|" + "---:|" * len(first)
    counts = "| test pairs | " + " | ".join(f"{b['count']:,}" for b in first) + " |"
    for key, name, scale in (("bleu", "BLEU", 1.0), ("exact_match", "Exact match (%)", 100.0),
                             ("chrf", "chrF", 1.0)):
        lines += ["", f"{name} by source length:", "", header, rule, counts]
        for result in results.values():
            cells = " | ".join(_cell(b[key], scale) for b in result["buckets"])
            lines.append(f"| {result['label']} | {cells} |")
    return "\n".join(lines) + "\n"


def markdown_report(report: Mapping[str, Any], png_name: str, reading: str = "") -> str:
    """The experiment's markdown record: command, machine, budget, wall times, figure, tables.

    Args:
      report: what `train.experiments.length.run_experiment` returns.
      png_name: the figure's file name, relative to the markdown file.
      reading: text appended at the end (the human reading of the curves).
    """
    models = report["models"]
    per_model = "; ".join(f"{r['label']} {r['wall_time_s']:.0f} s" for r in models.values())
    loads = [x for r in models.values() for x in r["load_average_start_end"]]
    attention_rnns = [r["parameters"] for m, r in models.items() if m in ("bahdanau", "luong")]
    lines = []
    for m, r in models.items():
        line = f"  - {r['label']}: `{r['config_file']}`"
        if m == "plain":
            line += (f" with hidden_size {r['model_config']['hidden_size']} and decoder_hidden_size "
                     f"{r['model_config']['decoder_hidden_size']}")
            if attention_rnns and r["parameters"] >= max(attention_rnns):
                line += ", so that it has no fewer parameters than the attention RNNs"
        lines.append(line)
    text = f"""# Length experiment: BLEU, chrF and exact match against source length

The analogue of Bahdanau et al. 2014, Fig. 2, on {report['dataset']}, {report['split']} split.
Generated by `python -m train.experiments.length`; every number below is in the JSON next to this file.

- Command: `{report['command']}`
- Date: {report['date']}
- Machine: {report['machine']}; 1-minute load average {min(loads)} to {max(loads)} at the model starts and ends (other jobs shared the machine)
- Budget: {report['steps']} training steps per model; the same vocabulary and the same batches in the same order for every model; greedy decoding
- Wall time per model (data, compilation, training, in-loop and final evaluation): {per_model}; total {report['total_wall_time_s']:.0f} s
- Models (each its family's config file with the experiment's data overrides):
{chr(10).join(lines)}

![BLEU, chrF and exact match against source length]({png_name})

{markdown_tables(models)}"""
    return text + (f"\n{reading}" if reading else "")


def write_report(report: Mapping[str, Any], output: str) -> None:
    """Writes `<output>.png`, `<output>.json` and `<output>.md` (creating the directory).

    Text from a "## Reading" heading on in an existing `<output>.md` is kept.
    """
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    title = f"{report['dataset']}, {report['split']}: {report['steps']} training steps per model"
    plot_length_curves(report["models"], f"{output}.png", title)
    with open(f"{output}.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    md_path = f"{output}.md"
    reading = kept_reading(md_path)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown_report(report, os.path.basename(f"{output}.png"), reading))


def kept_reading(md_path: str) -> str:
    """The text from a "## Reading" heading on in an existing report (a human's reading, kept
    across re-runs), or ""."""
    if not os.path.exists(md_path):
        return ""
    with open(md_path, encoding="utf-8") as f:
        text = f.read()
    start = text.find("\n## Reading")
    return text[start + 1:] if start >= 0 else ""
