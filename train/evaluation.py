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
import jax.numpy as jnp
import numpy as np
import sacrebleu

from jaxattn import decoding
from jaxattn.tokens import EOS_ID, PAD_ID
from train import heatmaps
from train.data.eval_batching import EvalBatch
from train.data.tokenizer import pad_rows

__all__ = [
    "decode_lengths",
    "make_decode_fn",
    "corpus_scores",
    "eval_loss",
    "decode_eval_set",
    "attention_maps",
    "until_eos",
    "write_samples",
    "write_heatmaps",
]

_log = logging.getLogger(__name__)


def decode_lengths(source_lengths: Any, decode_config: Any) -> Any:
    """The most tokens (eos included) decoded for sources of `source_lengths` tokens (eos included).

    min(floor(a * S + b), max_length), at least 1, with a, b, max_length =
    `decode_config.max_length_a`, `.max_length_b`, `.max_length` (fairseq's max-len-a/b, per
    sentence): an int or [B] ints (NumPy or JAX) -> the same shape, int32.
    """
    xp = jnp if isinstance(source_lengths, jax.Array) else np  # traced rows, or a static width
    a, b = (xp.float32(decode_config.max_length_a), xp.float32(decode_config.max_length_b))
    limit = xp.floor(a * xp.asarray(source_lengths, xp.float32) + b)
    return xp.clip(limit, 1, decode_config.max_length).astype(xp.int32)


# Below any real log-probability: beam_search fills n-best slots it could not fill with -1e9.
_EMPTY_SLOT = -1.0e8


def _within_limits(seqs: jax.Array, scores: jax.Array, limits: jax.Array, *, eos_id: int,
                   pad_id: int) -> tuple[jax.Array, jax.Array]:
    """Per row, the hypotheses that end within the row's limit first, the others cut at it.

    Args:
      seqs: [B, k, T'] hypotheses, best first.
      scores: [B, k] their scores.
      limits: [B] most tokens per row (eos included), <= T'.
      eos_id, pad_id: the model's special ids.

    Returns:
      (seqs [B, k, T'] reordered and padded from each row's limit on, scores [B, k] with -inf for
      the cut hypotheses: a search bounded by the row's limit would not have found them).
    """
    steps = seqs.shape[-1]
    is_eos = seqs == eos_id                                                  # [B, k, T']
    length = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1) + 1, steps)    # [B, k]
    fits = (length <= limits[:, None]) & (scores > _EMPTY_SLOT)              # [B, k]
    order = jnp.argsort(~fits, axis=1, stable=True)                          # [B, k]
    seqs = jnp.take_along_axis(seqs, order[:, :, None], axis=1)              # [B, k, T']
    scores = jnp.where(jnp.take_along_axis(fits, order, axis=1),
                       jnp.take_along_axis(scores, order, axis=1), -jnp.inf)  # [B, k]
    keep = jnp.arange(steps)[None, None, :] < limits[:, None, None]           # [B, 1, T']
    return jnp.where(keep, seqs, pad_id), scores


def make_decode_fn(
    model: nn.Module, decode_config: Any, out_sharding: Any = None, *, return_all: bool = False
) -> Callable[[Any, Any], Any]:
    """A jitted `fn(params, inputs [B, S]) -> tokens [B, T']` for `decode_config.strategy`.

    Each row yields at most `decode_lengths(its source tokens)` tokens. The search runs to the
    bound of the padded width S (so one compilation per input shape; T' = that bound) and each
    row is then cut at its own: exact for greedy search; beam search returns, per row, its best
    hypothesis that ends within the row's bound, else its best cut at it.

    Args:
      model: the Flax model (its config gives the special ids).
      decode_config: `config.decode` (strategy, beam_size, alpha, max_length, max_length_a/b).
      out_sharding: e.g. replicated over the mesh, to keep the tokens readable on every host of a
        multi-host run.
      return_all: beam search only: return (tokens [B, k, T'], scores [B, k]) best first, scores
        log P / lp(length) as `jaxattn.decoding.beam_search` ranks them (-inf for a hypothesis
        cut at its row's bound).
    """
    cfg = model.config
    ids = dict(bos_id=cfg.bos_id, eos_id=cfg.eos_id)
    beam = functools.partial(decoding.beam_search, model, beam_size=decode_config.beam_size,
                             alpha=decode_config.alpha, return_all=True, **ids)
    strategies = {  # (params, inputs, max_len) -> (tokens [B, k, T'], scores [B, k])
        "greedy": lambda params, inputs, max_len: (
            decoding.greedy_decode(model, params, inputs, max_len=max_len, **ids)[:, None],
            jnp.zeros((inputs.shape[0], 1), jnp.float32)),
        "beam": lambda params, inputs, max_len: beam(params, inputs, max_len=max_len),
    }
    if return_all and decode_config.strategy != "beam":
        raise ValueError(f"return_all: needs decode_config.strategy 'beam', got {decode_config.strategy!r}")
    search = strategies[decode_config.strategy]

    def decode(params, inputs):
        limits = decode_lengths(jnp.sum(inputs != cfg.pad_id, axis=1), decode_config)  # [B]
        seqs, scores = search(params, inputs, int(decode_lengths(inputs.shape[1], decode_config)))
        seqs, scores = _within_limits(seqs, scores, limits, eos_id=cfg.eos_id,
                                      pad_id=cfg.pad_id)  # [B, k, T'], [B, k]
        return (seqs, scores) if return_all else seqs[:, 0]

    return jax.jit(decode, out_shardings=out_sharding)


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


def eval_loss(
    eval_fn: Callable[..., Any], params: Any, batches: Sequence[EvalBatch], parallel: Any
) -> dict[str, float]:
    """Summed teacher-forced metrics over `batches` (see `train.steps.eval_step`)."""
    totals = None
    for batch, _ in batches:
        sums = parallel.fetch(eval_fn(params, parallel.put_batch(batch)))
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
      `hypothesis` (text), `inputs` and `tokens` (int ids, padding stripped, `tokens`
      cut after its first <eos>; pad and <eos> are the vocabulary's, `jaxattn.tokens`).
    """
    rows = []
    for batch, index in eval_set.batches:
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
                "inputs": batch["inputs"][r][batch["inputs"][r] != PAD_ID],
                "tokens": until_eos(tokens[r], pad_id=PAD_ID, eos_id=EOS_ID),
            })
    rows.sort(key=lambda row: row["index"])
    return rows


def until_eos(ids: np.ndarray, *, pad_id: int, eos_id: int) -> np.ndarray:
    """A decoded row's ids up to and including its first eos (padding dropped)."""
    ids = ids[ids != pad_id]
    ends = np.nonzero(ids == eos_id)[0]
    return ids[: ends[0] + 1] if ends.size else ids


def attention_maps(capture_model: nn.Module, params: Any, inputs: np.ndarray,
                   targets: np.ndarray) -> np.ndarray | None:
    """Attention of a teacher-forced pass over (inputs, targets), for plotting.

    Args:
      capture_model: the model built with `capture_attention=True`.
      params: model parameters.
      inputs: [B, S] source ids.
      targets: [B, T] target ids (here: the decoded hypotheses).

    Returns:
      [B, N, T, S] weights, as the model's `attention_map` picks them (Transformer: the last
      decoder layer's cross-attention; RNN: its alignments, N = 1); None for a model without
      attention.
    """
    _, state = jax.jit(
        lambda p, x, y: capture_model.apply({"params": p}, x, y, train=False, mutable=["intermediates"])
    )(params, inputs, targets)
    weights = capture_model.attention_map(state.get("intermediates", {}))
    return None if weights is None else np.asarray(weights)               # [B, N, T, S]


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
    inputs = pad_rows([r["inputs"] for r in rows])                          # [B, S]
    targets = pad_rows([r["tokens"] for r in rows])                         # [B, T]
    weights = attention_maps(capture_model, params, inputs, targets)
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
