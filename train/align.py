r"""Word alignments from attention: what `--mode=align` and `--mode=translate --align` print.

    aligner = Aligner(modes.load_trained(config, workdir))
    aligner.align([("forty two then five", "zweiundvierzig dann fünf")])   # [[(0, 0), (1, 0), (2, 1), (3, 2)]]
    pharaoh([(0, 0), (1, 0)])                                              # "0-0 1-0"

Attention was introduced as a soft alignment (Bahdanau et al. 2014, Fig. 3); fairseq's
`--print-alignment` and Marian's `--alignment` turn it into word links the same way:

1. **Weights.** The model reads the source and the target teacher-forced, as in training
   (`train.attention_pass`): row t of an attention map is where the model looks while it predicts
   target piece t. The Transformer's cross-attention of decoder layer `align.layer` (default -1, the
   last), averaged over the heads `align.heads` (default (): all of them); the attention RNN's one
   alignment (a single layer and head). The plain RNN has no attention to align with.
2. **Pieces to words.** Words are the source and target split at spaces, as SentencePiece splits
   them: a piece that starts with "▁" starts a word. The weight of target word j on source word i
   is the mean, over j's pieces, of the sum (`align.subwords="sum"`: the attention mass on the
   word) or the max ("max") of their weights on i's pieces. The eos row and column are dropped.
3. **Links.** "target" links each target word to the source word of largest weight (one link per
   target word, as fairseq and Marian print them); "source" links each source word to the target
   word that weighs it most; "union" (`align.method`'s default: the lowest or nearly lowest AER of
   every attention in docs/alignment.md, where one word often aligns to several) and "intersection"
   combine the two.
   Written in the Pharaoh format: `i-j` pairs of 0-based source-target word indices, sorted,
   space-separated.

`alignment_error_rate` is Och & Ney's (2003) AER against sure and possible gold links.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from train.attention_pass import attention_pass
from train.errors import UserError
from train.translation import Translator

__all__ = ["SUBWORDS", "METHODS", "ALIGN_KINDS", "Aligner", "word_index", "word_weights", "links", "pharaoh",
           "alignment_error_rate"]

_log = logging.getLogger(__name__)
SUBWORDS = ("sum", "max")
METHODS = ("target", "source", "union", "intersection")
# The attention a family aligns with: the Transformer's cross-attention, the attention RNN's alignment.
ALIGN_KINDS = ("cross", "alignment")
WORD_START = "\u2581"  # SentencePiece's "▁"


def word_index(pieces: Sequence[str]) -> np.ndarray:
    """[P] the word each piece belongs to (0-based): a piece starting with "▁" starts a word."""
    starts = np.array([p.startswith(WORD_START) for p in pieces], bool)
    if starts.size:
        starts[0] = True  # a text never starts inside a word
    return np.cumsum(starts) - 1


def word_weights(weights: np.ndarray, source_words: np.ndarray, target_words: np.ndarray,
                 subwords: str = "sum") -> np.ndarray:
    """Piece weights [T, S] -> word weights [J, I] (target words x source words).

    Args:
      weights: [T, S] attention of the target pieces (rows) on the source pieces, eos excluded.
      source_words: [S] `word_index` of the source pieces; target_words: [T] of the target pieces.
      subwords: "sum" or "max" over a source word's pieces; the target pieces of a word are averaged.
    """
    if subwords not in SUBWORDS:
        raise UserError(f"align.subwords: got {subwords!r}, expected one of {list(SUBWORDS)}")
    n_source, n_target = int(source_words.max(initial=-1)) + 1, int(target_words.max(initial=-1)) + 1
    by_source = np.zeros((weights.shape[0], n_source), np.float64)                   # [T, I]
    reduce = np.add if subwords == "sum" else np.maximum
    reduce.at(by_source, (slice(None), source_words), weights)
    out = np.zeros((n_target, n_source), np.float64)                                 # [J, I]
    np.add.at(out, target_words, by_source)
    return out / np.maximum(np.bincount(target_words, minlength=n_target), 1)[:, None]


def links(word_weights_: np.ndarray, method: str = "target") -> list[tuple[int, int]]:
    """[J, I] word weights -> sorted (source i, target j) links.

    method: "target": each target word links to its heaviest source word (one link per target word,
      as fairseq and Marian print them); "source": each source word to the target word that weighs
      it most (one link per source word); "union" / "intersection" of the two.
    """
    if method not in METHODS:
        raise UserError(f"align.method: got {method!r}, expected one of {list(METHODS)}")
    if word_weights_.size == 0:
        return []
    by_target = {(int(i), j) for j, i in enumerate(np.argmax(word_weights_, axis=1))}
    by_source = {(i, int(j)) for i, j in enumerate(np.argmax(word_weights_, axis=0))}
    return sorted({"target": by_target, "source": by_source, "union": by_target | by_source,
                   "intersection": by_target & by_source}[method])


def pharaoh(pairs: Iterable[tuple[int, int]]) -> str:
    """[(i, j), ...] -> "i-j i-j ..." (Pharaoh format)."""
    return " ".join(f"{i}-{j}" for i, j in pairs)


def alignment_error_rate(predicted: Sequence[Iterable[tuple[int, int]]], sure: Sequence[Iterable[tuple[int, int]]],
                         possible: Sequence[Iterable[tuple[int, int]]] | None = None) -> float:
    """AER = 1 - (|A ∩ S| + |A ∩ P|) / (|A| + |S|) over a corpus (Och & Ney 2003), P ⊇ S (default P = S).

    Each argument holds one set of (source, target) links per sentence.
    """
    if len(predicted) != len(sure) or (possible is not None and len(possible) != len(sure)):
        raise ValueError(f"predicted, sure, possible: got {len(predicted)}, {len(sure)}, "
                         f"{None if possible is None else len(possible)} sentences, expected equal counts")
    hits_sure = hits_possible = size_a = size_s = 0
    for k, (a, s) in enumerate(zip(predicted, sure)):
        a, s = set(a), set(s)
        p = s if possible is None else set(possible[k]) | s
        hits_sure += len(a & s)
        hits_possible += len(a & p)
        size_a += len(a)
        size_s += len(s)
    if size_a + size_s == 0:
        return 0.0
    return 1.0 - (hits_sure + hits_possible) / (size_a + size_s)


class Aligner:
    """Word alignments of (source, target) pairs from a trained model's attention.

    Args:
      trained: a `train.modes.Trained`.
      align_config: `config.align` (layer, heads, subwords); default the run's.
      translator: the `Translator` whose batching is used (default one for `trained`).
    """

    def __init__(self, trained: Any, align_config: ml_collections.ConfigDict | None = None,
                 translator: Translator | None = None):
        self.trained = trained
        self.settings = align_config if align_config is not None else trained.config.align
        self.translator = translator or Translator(trained)
        self._attention = attention_pass(trained.model)
        probe = jnp.zeros((1, 2), jnp.int32)
        shapes = jax.eval_shape(self._attention, trained.params, probe, probe)
        self.kind = next((k for k in ALIGN_KINDS if k in shapes), None)
        model = trained.config.model
        if self.kind is None:
            raise UserError(f"align: the {model.family} model (model.attention={model.get('attention', 'none')!r}) "
                            "has no attention to align with; train an attention model (e.g. "
                            "train/configs/rnn_bahdanau.py or transformer.py)")
        self.layers, _, self.heads = shapes[self.kind].shape[:3]
        self.layer, self.head_list = self._selection()
        if self.settings.subwords not in SUBWORDS:
            raise UserError(f"align.subwords: got {self.settings.subwords!r}, expected one of {list(SUBWORDS)}")
        if self.settings.method not in METHODS:
            raise UserError(f"align.method: got {self.settings.method!r}, expected one of {list(METHODS)}")
        _log.info("Word alignments from %s", self.describe())

    def _selection(self) -> tuple[int, list[int]]:
        layer = int(self.settings.layer)
        if layer >= self.layers:
            raise UserError(f"align.layer: got {layer}, expected at most {self.layers - 1} (the model's "
                            f"{self.kind} attention has {self.layers} layer(s); negative counts from the last)")
        layer = max(layer, -self.layers)  # -2, the penultimate, is the only layer of a one-layer model
        heads = [int(h) for h in self.settings.heads] or list(range(self.heads))
        bad = [h for h in heads if not 0 <= h < self.heads]
        if bad:
            raise UserError(f"align.heads: got {tuple(self.settings.heads)}, expected heads 0 to {self.heads - 1} "
                            "(empty: all)")
        return layer % self.layers, heads

    def maps(self, pairs: Sequence[tuple[str, str] | None]) -> list[np.ndarray | None]:
        """Every layer's and head's attention of each pair: [L, N, T, S] over its target and source
        pieces, eos included (None for a None pair)."""
        pad = self.trained.model.config.pad_id

        def run(batch):
            weights = np.asarray(jax.device_get(self._attention(self.trained.params, batch["inputs"],
                                                                batch["targets"])[self.kind]), np.float32)
            lengths = zip(np.sum(batch["targets"] != pad, axis=1), np.sum(batch["inputs"] != pad, axis=1))
            return [weights[:, b, :, :t, :s] for b, (t, s) in enumerate(lengths)]  # B x [L, N, T, S]
        return self.translator.map_pairs(pairs, run)

    def words(self, pair: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
        """`word_index` of the source and of the target pieces of a pair (eos excluded)."""
        tok = self.trained.tokenizers
        return tuple(word_index([side.id_to_piece(i) for i in side.encode(text, add_eos=False)])
                     for side, text in ((tok.source, pair[0]), (tok.target, pair[1])))

    def word_weights(self, maps: np.ndarray, source_words: np.ndarray, target_words: np.ndarray,
                     layer: int | None = None, heads: Sequence[int] | None = None) -> np.ndarray:
        """[J, I] word weights from a pair's `maps` [L, N, T, S] and `words`, at `layer` over `heads`
        (default the configured ones)."""
        layer = self.layer if layer is None else layer
        heads = self.head_list if heads is None else list(heads)
        weights = maps[layer][heads].mean(axis=0)[:len(target_words), :len(source_words)]  # [T, S], eos dropped
        return word_weights(weights, source_words, target_words, self.settings.subwords)

    def align(self, pairs: Sequence[tuple[str, str] | None]) -> list[list[tuple[int, int]] | None]:
        """The (source word, target word) links of each pair (None for a None pair)."""
        return [None if pair is None else links(self.word_weights(m, *self.words(pair)), self.settings.method)
                for pair, m in zip(pairs, self.maps(pairs))]

    def describe(self) -> str:
        """Which attention is used, for the log: e.g. "cross-attention of decoder layer 2 of 2, heads 0-3 averaged"."""
        how = f"subword weights by {self.settings.subwords}, links by {self.settings.method} word"
        if self.kind == "alignment":
            return f"the RNN's attention, {how}"
        heads = "all heads" if len(self.head_list) == self.heads else f"heads {self.head_list}"
        return f"cross-attention of decoder layer {self.layer} (0-based, of {self.layers}), {heads} averaged, {how}"
