"""Translation and scoring as a tool: what `--mode=translate` and `--mode=score` run.

    trained = modes.load_trained(config, workdir)
    translator = Translator(trained)
    translator.translate(["forty two", "", "seven"])       # ["zweiundvierzig", "", "sieben"]
    translator.nbest(["forty two"], k=3)                   # [[Hypothesis(text, score), ...]]
    translator.score([("forty two", "zweiundvierzig")])    # [Score(total, mean)]

Sentences are encoded, sorted by token length and cut into batches of `batch_size` rows (default
`data.eval_batch_size`), each padded to one of the run's bucket lengths (`data.bucket_lengths`,
then multiples of the longest for longer sentences), so that few shapes compile; results come
back in input order. A blank (or whitespace-only) sentence gives an empty translation and is not
decoded. Decoding is the evaluator's (`train.evaluation.make_decode_fn`: per sentence at most
min(a * S + b, max_length) tokens), so a sentence translates as it does in `--mode=eval`.

Scores are natural-log probabilities under the model (teacher forced, eos included). N-best
scores are beam search's: log P(y|x) / lp(y), the GNMT length penalty with `decode.alpha`.

The command-line side (`read_lines`, `parse_pairs`, `nbest_lines`, `write_lines`) keeps one
output line per input line: the line formats are in the README ("Evaluate and translate").
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxattn.decoding.steppers import unwrap_nnx
from train import evaluation
from train.data import eval_batching
from train.errors import UserError

__all__ = ["Hypothesis", "Score", "Translator", "sequence_log_probs", "read_lines", "parse_pairs",
           "nbest_lines", "score_lines", "check_output_file", "write_lines"]

_log = logging.getLogger(__name__)
_NO_TARGET = np.zeros((0,), np.int32)  # translation examples have only a source side


class Hypothesis(NamedTuple):
    """One n-best entry: detokenised text and beam score (-inf: none within the length limit)."""

    text: str
    score: float


class Score(NamedTuple):
    """log P(target | source): summed over the target tokens (eos included), and per token."""

    total: float
    mean: float


def sequence_log_probs(model: Any, params: Any, inputs: jax.Array, targets: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced log-probability of each target row.

    Args:
      model: the Flax model.
      params: its parameters.
      inputs: [B, S] source ids, padded with `model.config.pad_id`.
      targets: [B, T] target ids, eos-ended, padded likewise.

    Returns:
      ([B] summed log-probabilities of the non-pad target tokens, [B] their number).
    """
    logits = model.apply({"params": params}, inputs, targets, train=False)           # [B, T, V]
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)              # [B, T, V]
    token = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]      # [B, T]
    real = targets != model.config.pad_id                                            # [B, T]
    return jnp.sum(jnp.where(real, token, 0.0), axis=1), jnp.sum(real, axis=1)       # [B], [B]


def _bucket_lengths(data_config: ml_collections.ConfigDict, longest: int) -> tuple[int, ...]:
    """The run's bucket lengths, then multiples of the longest one up to `longest`."""
    max_length = max(data_config.max_source_length, data_config.max_target_length)
    lengths = tuple(data_config.bucket_lengths) or eval_batching.default_bucket_lengths(max_length)
    return lengths + tuple(range(2 * lengths[-1], longest + lengths[-1], lengths[-1]))


class Translator:
    """Batched, length-sorted translation and scoring with a trained model.

    Args:
      trained: a `train.modes.Trained` (config, model, params, tokenizers); its model may be a
        `jaxattn.nnx.Model` (params None).
      batch_size: rows per batch; 0 = `config.data.eval_batch_size`.
      progress: a tqdm bar on stderr while batches run (tqdm hides it when stderr is no
        terminal; never shown for a single batch).
      row_sizes: the batch heights a batch may have (each is padded to the smallest that holds
        it; the largest replaces `batch_size`): a server compiles these few shapes up front.
        None: powers of two up to `batch_size`.
    """

    def __init__(self, trained: Any, batch_size: int = 0, progress: bool = False,
                 row_sizes: Sequence[int] | None = None):
        if batch_size < 0:
            raise UserError(f"batch_size: got {batch_size}, expected >= 0 (0 = data.eval_batch_size)")
        if row_sizes is not None and (not row_sizes or min(row_sizes) < 1):
            raise UserError(f"row_sizes: got {tuple(row_sizes)}, expected batch heights >= 1")
        self.trained, self.config = trained, trained.config
        # An NNX model (`train.nnx_weights.load`) holds its weights: decode its Linen module with them.
        self._model, self._params = unwrap_nnx(trained.model, trained.params)
        self._tokenizers = trained.tokenizers
        self._row_sizes = tuple(sorted(set(row_sizes))) if row_sizes is not None else None
        self._batch_size = self._row_sizes[-1] if self._row_sizes else batch_size or self.config.data.eval_batch_size
        self._progress = progress
        self._decoders: dict[tuple, Callable] = {}

    def decode_config(self, **overrides: Any) -> ml_collections.ConfigDict:
        """The run's `config.decode` with `overrides` (decode-time fields: strategy, beam_size, ...)."""
        decode_config = ml_collections.ConfigDict(self.config.decode.to_dict())
        decode_config.update(overrides)
        return decode_config

    def _decoder(self, decode_config: ml_collections.ConfigDict, return_all: bool = False) -> Callable:
        """One compiled decode function per decode settings (kept: a server sees the same few)."""
        key = (tuple(sorted(decode_config.to_dict().items())), return_all)
        if key not in self._decoders:
            self._decoders[key] = evaluation.make_decode_fn(self._model, decode_config, return_all=return_all)
        return self._decoders[key]

    @functools.cached_property
    def _score(self) -> Callable[[Any, Any, Any], tuple[jax.Array, jax.Array]]:
        return jax.jit(functools.partial(sequence_log_probs, self._model))

    def translate(self, sentences: Sequence[str], decode_config: ml_collections.ConfigDict | None = None
                  ) -> list[str]:
        """Translations of `sentences` with `decode_config` (default `config.decode`), in order ("" for
        a blank sentence)."""
        text = self._tokenizers.target.decode
        return ["" if row is None else text(row) for row in self.decode_rows(sentences, decode_config)]

    def decode_rows(self, sentences: Sequence[str], decode_config: ml_collections.ConfigDict | None = None
                    ) -> list[np.ndarray | None]:
        """The decoded ids [T'] of each sentence (padded after its eos; None for a blank sentence)."""
        decode = self._decoder(decode_config or self.config.decode)

        def run(batch):
            return list(np.asarray(decode(self._params, batch["inputs"])))            # B x [T']
        return self._map_sources(sentences, run, blank=None)

    def nbest(self, sentences: Sequence[str], k: int, decode_config: ml_collections.ConfigDict | None = None
              ) -> list[list[Hypothesis]]:
        """The `k` best beam-search hypotheses of each sentence, best first.

        Beam search with beam size max(k, `decode.beam_size`) whatever `decode.strategy` says,
        and the run's alpha and length limits (or those of `decode_config`). Hypotheses that do
        not end within the sentence's length limit come last, cut at the limit, with score -inf;
        so do empty ones where the search finished fewer than k, and the k of a blank sentence.
        """
        if k < 1:
            raise UserError(f"nbest: got {k}, expected >= 1")
        decode_config = ml_collections.ConfigDict((decode_config or self.config.decode).to_dict())
        decode_config.update(strategy="beam", beam_size=max(k, decode_config.beam_size))
        decode = self._decoder(decode_config, return_all=True)
        text = self._tokenizers.target.decode

        def run(batch):
            seqs, scores = jax.device_get(decode(self._params, batch["inputs"]))    # [B, k', T'], [B, k']
            return [[Hypothesis(text(s), float(c)) for s, c in zip(row_seqs[:k], row_scores[:k])]
                    for row_seqs, row_scores in zip(seqs, scores)]
        return self._map_sources(sentences, run, blank=[Hypothesis("", -math.inf)] * k)

    def score(self, pairs: Sequence[tuple[str, str] | None]) -> list[Score | None]:
        """log P(target | source) of each (source, target) pair, in order (None for None)."""
        def run(batch):
            total, count = jax.device_get(self._score(self._params, batch["inputs"], batch["targets"]))
            return [Score(float(t), float(t) / max(int(n), 1)) for t, n in zip(total, count)]  # n = 0: padding row
        return self.map_pairs(pairs, run)

    def map_pairs(self, pairs: Sequence[tuple[str, str] | None], run: Callable[[dict], Sequence[Any]]) -> list:
        """`run(batch)` over the encoded (source, target) pairs, batched as scoring batches them
        (`batch["inputs"]` [B, L], `batch["targets"]` [B, L], eos-ended, 0-padded): one result per
        pair, in order, None for a None pair."""
        tok = self._tokenizers
        keep = [i for i, pair in enumerate(pairs) if pair is not None]
        examples = [{"inputs": tok.source.encode(pairs[i][0]), "targets": tok.target.encode(pairs[i][1])}
                    for i in keep]
        out: list[Any] = [None] * len(pairs)
        for i, result in zip(keep, self._map(examples, run)):
            out[i] = result
        return out

    def _map_sources(self, sentences: Sequence[str], run: Callable, blank: Any) -> list:
        keep = [i for i, s in enumerate(sentences) if s.strip()]
        encode = self._tokenizers.source.encode
        examples = [{"inputs": encode(sentences[i]), "targets": _NO_TARGET} for i in keep]
        longer = sum(len(e["inputs"]) > self.config.data.max_source_length for e in examples)
        if longer:
            _log.warning("%d of %d sentences are longer than the model was trained on "
                         "(data.max_source_length=%d tokens); they are translated whole", longer,
                         len(examples), self.config.data.max_source_length)
        out = [blank] * len(sentences)
        for i, result in zip(keep, self._map(examples, run)):
            out[i] = result
        return out

    def compile_shape(self, rows: int, length: int) -> None:
        """Runs translation (the run's decode settings) and scoring once on a [rows, length] batch, so
        that requests of that shape find them compiled (a server does this before the first)."""
        batch = np.full((rows, length), self._model.config.eos_id, np.int32)       # only the shape counts
        jax.block_until_ready(self._decoder(self.config.decode)(self._params, batch))
        jax.block_until_ready(self._score(self._params, batch, batch))

    def rows_for(self, count: int) -> int:
        """The batch height for `count` examples: no more rows than needed (a few sentences stay
        a small batch): the smallest row size that holds them, else a power of two above."""
        if self._row_sizes:
            return next((r for r in self._row_sizes if r >= count), self._row_sizes[-1])
        return min(self._batch_size, 1 << (count - 1).bit_length())

    def lengths_for(self, longest: int) -> tuple[int, ...]:
        """The padded lengths a batch whose longest row has `longest` tokens may get."""
        return _bucket_lengths(self.config.data, longest)

    def _map(self, examples: list[dict[str, np.ndarray]], run: Callable) -> list:
        """`run(batch)` over length-sorted batches of `examples`; one result per example, in order.

        Each length bucket is batched on its own (a batch is as short as its longest row, and a
        decode runs until its longest row ends), its batch height `rows_for` its size."""
        if not examples:
            return []
        sizes = [max(len(e["inputs"]), len(e["targets"])) for e in examples]
        lengths = self.lengths_for(max(sizes))
        buckets: dict[int, list[int]] = {}
        for i, size in enumerate(sizes):
            buckets.setdefault(int(np.searchsorted(lengths, size)), []).append(i)
        batches = []
        for members in buckets.values():
            for batch, index in eval_batching.eval_batches([examples[i] for i in members], lengths=lengths,
                                                      batch_size=self.rows_for(len(members))):
                batches.append((batch, np.where(index >= 0, np.asarray(members)[np.maximum(index, 0)], -1)))
        out: list[Any] = [None] * len(examples)
        show = self._progress and len(batches) > 1
        with tqdm.tqdm(total=len(examples), unit="sentence", file=sys.stderr,
                       disable=None if show else True, dynamic_ncols=True) as bar:
            for batch, index in batches:                                            # index: [B]
                for r, result in enumerate(run(batch)):
                    if index[r] >= 0:
                        out[index[r]] = result
                bar.update(int(np.sum(index >= 0)))
        return out


# --- The command line's input and output -------------------------------------------------------


def _split_lines(text: str) -> list[str]:
    """Lines split at "\\n" only (not at the other characters `str.splitlines` breaks at)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def read_lines(input_file: str) -> list[str]:
    """The lines of `input_file` (UTF-8), or of stdin for ""."""
    if not input_file:
        return _split_lines(sys.stdin.read())
    try:
        with open(input_file, encoding="utf-8", newline="") as f:
            return _split_lines(f.read())
    except FileNotFoundError:
        raise UserError(f"--input_file: {input_file!r} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"--input_file: {input_file!r} is a directory, expected a text file") from None
    except UnicodeDecodeError as e:
        raise UserError(f"--input_file: {input_file!r} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def parse_pairs(lines: Iterable[str], where: str) -> list[tuple[str, str] | None]:
    """`source<TAB>target` lines -> pairs (None for a blank line); `where` names the input in errors."""
    pairs: list[tuple[str, str] | None] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            pairs.append(None)
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise UserError(f"{where} line {number}: got {len(fields)} tab-separated field(s), expected "
                            f"2 (source<TAB>target): {line[:60]!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def nbest_lines(nbest: Sequence[Sequence[Hypothesis]]) -> list[str]:
    """`i<TAB>rank<TAB>score<TAB>translation` lines: i the 0-based input line, rank 1 the best."""
    return [f"{i}\t{rank}\t{h.score:.6f}\t{h.text}"
            for i, hypotheses in enumerate(nbest) for rank, h in enumerate(hypotheses, 1)]


def score_lines(scores: Sequence[Score | None]) -> list[str]:
    """`total<TAB>mean` lines (a blank line for None)."""
    return ["" if s is None else f"{s.total:.6f}\t{s.mean:.6f}" for s in scores]


def check_output_file(output_file: str) -> None:
    """Refuses an output path that cannot be written, before any work is done."""
    if not output_file:
        return
    directory = os.path.dirname(os.path.abspath(output_file))
    if os.path.isdir(output_file):
        raise UserError(f"--output_file: {output_file!r} is a directory, expected a file path")
    if not os.path.isdir(directory):
        raise UserError(f"--output_file: directory {directory!r} does not exist")


def write_lines(lines: Sequence[str], output_file: str) -> None:
    """Writes `lines` to stdout, or to `output_file` through a temporary file renamed at the end.

    An existing `output_file` is replaced only once every line is written: a failed run leaves it
    as it was and no partial file behind.
    """
    if not output_file:
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()
        return
    check_output_file(output_file)
    tmp = f"{output_file}.tmp-{os.getpid()}"
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            f.writelines(f"{line}\n" for line in lines)
        os.replace(tmp, output_file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
