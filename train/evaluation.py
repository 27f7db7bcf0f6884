"""Evaluation: teacher-forced loss, decoding, BLEU / chrF / exact match, samples, heatmaps.

BLEU (Papineni et al. 2002, with sacrebleu's effective order) and chrF
(Popovic 2015) are sacrebleu's corpus scores on detokenised text (the SentencePiece decode of the hypothesis against
the raw reference), so they are comparable with published numbers. Exact match
is the share of hypotheses equal to their reference after whitespace
normalisation.
"""

import functools
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import sacrebleu

from jaxattn import decoding
from jaxattn.models import collect_attention_weights
from train import heatmaps, losses

__all__ = [
    "make_decode_fn",
    "corpus_scores",
    "eval_loss",
    "decode_eval_set",
    "attention_maps",
    "write_samples",
    "write_heatmaps",
]

_log = logging.getLogger(__name__)


def make_decode_fn(
    model: nn.Module, decode_config: Any, out_sharding: Any = None
) -> Callable[[Any, Any], jax.Array]:
    """A jitted `fn(params, inputs [B, S]) -> tokens [B, T']` for `decode_config.strategy`.

    `out_sharding` (e.g. replicated over the mesh) keeps the tokens readable on
    every host of a multi-host run.
    """
    cfg = model.config
    common = dict(max_len=decode_config.max_length, bos_id=cfg.bos_id, eos_id=cfg.eos_id)
    strategies = {
        "greedy": functools.partial(decoding.greedy_decode, model, **common),
        "beam": functools.partial(
            decoding.beam_search, model, beam_size=decode_config.beam_size, alpha=decode_config.alpha, **common
        ),
    }
    decode = strategies[decode_config.strategy]
    return jax.jit(lambda params, inputs: decode(params, inputs), out_shardings=out_sharding)


def is_exact(hypothesis: str, reference: str) -> bool:
    """Exact match up to whitespace: the one definition behind every exact-match figure."""
    return hypothesis.split() == reference.split()


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """sacrebleu corpus BLEU and chrF (0-100) and exact match (0-1)."""
    if len(hypotheses) != len(references):
        raise ValueError(f"hypotheses: got {len(hypotheses)}, expected {len(references)} (one per reference)")
    if not hypotheses:
        return {"bleu": 0.0, "chrf": 0.0, "exact_match": 0.0}
    exact = np.mean([is_exact(h, r) for h, r in zip(hypotheses, references)])
    # effective_order: n-gram orders absent from the whole corpus are left out of the
    # geometric mean. Identical to standard BLEU whenever 4-grams exist; without it a
    # corpus of one-word sentences (German number compounds) scores 0 even when perfect.
    bleu = sacrebleu.metrics.BLEU(effective_order=True)
    return {
        "bleu": float(bleu.corpus_score(list(hypotheses), [list(references)]).score),
        "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score),
        "exact_match": float(exact),
    }


def _model_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in batch.items() if k != "example_index"}


def eval_loss(
    eval_fn: Callable[..., Any], params: Any, batches: Sequence[dict[str, np.ndarray]], parallel: Any
) -> dict[str, float]:
    """Summed teacher-forced metrics over `batches` (see `train.steps.eval_step`)."""
    totals = None
    for batch in batches:
        sums = parallel.fetch(eval_fn(params, parallel.put_batch(_model_batch(batch))))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return totals


def decode_eval_set(
    decode_fn: Callable[[Any, Any], jax.Array],
    params: Any,
    eval_set: Any,
    tokenizers: Any,
    max_examples: int = 0,
) -> list[dict[str, Any]]:
    """Decodes (the first `max_examples` of) an eval split.

    Returns:
      One dict per example, in dataset order: `index`, `source`, `reference`,
      `hypothesis` (text), `inputs` and `tokens` (int ids, padding stripped).
    """
    rows = []
    for batch in eval_set.batches:
        index = batch["example_index"]
        keep = (index >= 0) & ((index < max_examples) if max_examples > 0 else True)
        if not keep.any():
            continue
        tokens = np.asarray(jax.device_get(decode_fn(params, batch["inputs"])))  # [B, T']
        for r in np.nonzero(keep)[0]:
            source, reference = eval_set.pairs[int(index[r])]
            rows.append({
                "index": int(index[r]),
                "source": source,
                "reference": reference,
                "hypothesis": tokenizers.target.decode(tokens[r]),
                "inputs": batch["inputs"][r][batch["inputs"][r] != losses.PAD_ID],
                "tokens": _until_eos(tokens[r], losses.PAD_ID),
            })
    rows.sort(key=lambda row: row["index"])
    return rows


def _until_eos(ids: np.ndarray, pad_id: int, eos_id: int = 3) -> np.ndarray:
    ids = ids[ids != pad_id]
    ends = np.nonzero(ids == eos_id)[0]
    return ids[: ends[0] + 1] if ends.size else ids


def attention_maps(family: str, capture_model: nn.Module, params: Any, inputs: np.ndarray,
                   targets: np.ndarray) -> np.ndarray | None:
    """Attention of a teacher-forced pass over (inputs, targets), for plotting.

    Args:
      family: "transformer" or "rnn".
      capture_model: the model built with `capture_attention=True`.
      params: model parameters.
      inputs: [B, S] source ids.
      targets: [B, T] target ids (here: the decoded hypotheses).

    Returns:
      Transformer: [B, N, T, S] cross-attention of the last decoder layer;
      RNN: [B, 1, T, S] alignments; None for a model without attention.
    """
    _, state = jax.jit(
        lambda p, x, y: capture_model.apply({"params": p}, x, y, train=False, mutable=["intermediates"])
    )(params, inputs, targets)
    intermediates = state.get("intermediates", {})
    if family == "transformer":
        cross = collect_attention_weights(intermediates).get("cross")
        return None if cross is None else np.asarray(cross[-1])            # [B, N, T, S]
    if "alignment" not in intermediates:
        return None
    return np.asarray(intermediates["alignment"][0])[:, None]              # [B, 1, T, S]


def write_samples(path: str, rows: Sequence[dict[str, Any]], limit: int) -> list[str]:
    """Writes `source / reference / hypothesis` triples; returns the lines of the first `limit`."""
    lines = []
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            mark = "=" if is_exact(row["hypothesis"], row["reference"]) else "x"
            line = f"[{mark}] {row['source']}  =>  {row['hypothesis']}   (reference: {row['reference']})"
            f.write(line + "\n")
            if len(lines) < limit:
                lines.append(line)
    return lines


def write_predictions(path: str, rows: Sequence[dict[str, Any]]) -> str:
    """Writes every decoded example as one JSON line (`index`, `source`, `reference`, `hypothesis`, `exact`)."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            record = {key: row[key] for key in ("index", "source", "reference", "hypothesis")}
            record["exact"] = is_exact(row["hypothesis"], row["reference"])
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def write_heatmaps(
    directory: str,
    family: str,
    capture_model: nn.Module,
    params: Any,
    rows: Sequence[dict[str, Any]],
    tokenizers: Any,
    count: int,
) -> list[str]:
    """Plots the attention of the first `count` decoded examples; returns the PNG paths."""
    rows = [r for r in rows[:count] if len(r["tokens"])]
    if not rows:
        return []
    src_len = max(len(r["inputs"]) for r in rows)
    tgt_len = max(len(r["tokens"]) for r in rows)
    inputs = np.zeros((len(rows), src_len), np.int32)                       # [B, S]
    targets = np.zeros((len(rows), tgt_len), np.int32)                      # [B, T]
    for i, r in enumerate(rows):
        inputs[i, : len(r["inputs"])] = r["inputs"]
        targets[i, : len(r["tokens"])] = r["tokens"]
    weights = attention_maps(family, capture_model, params, inputs, targets)
    if weights is None:
        return []
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, r in enumerate(rows):
        src = [tokenizers.source.id_to_piece(t) for t in r["inputs"]]
        tgt = [tokenizers.target.id_to_piece(t) for t in r["tokens"]]
        path = os.path.join(directory, f"attention_{r['index']:05d}.png")
        paths.append(heatmaps.plot_attention(weights[i], src, tgt, path, title=f"{r['source']} -> {r['hypothesis']}"))
    return paths
