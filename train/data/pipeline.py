"""`make_datasets`: config -> tokenizers, a checkpointable training stream and eval sets.

Training stream (grain, all numpy, no TensorFlow):

    record indices [index::count] (this process) -> per-epoch permutation -> chunks of
    `read_chunk_size` -> batched array_record read + tokenize + length policy (grain threads)
    -> pools of `bucket_pool_size` pairs -> bucket batches | packed rows -> prefetch thread

Eval sets are small and kept in memory: the raw (source, target) text pairs for BLEU and exact
match, and their tokenized, length-sorted batches.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence

import grain
import ml_collections
import numpy as np

from train.data import batching
from train.data import catalog
from train.data import corpus
from train.data import eval_batching
from train.data.config import TSV
from jaxattn.tokens import UNK_ID
from train.data.tokenizer import MODEL_TYPES, Tokenizers, load_or_train_tokenizers
from train.errors import UserError

__all__ = ["Datasets", "EvalSet", "make_datasets", "load_dataset"]

_log = logging.getLogger(__name__)
_CHUNK = 256  # pairs read together for the vocabulary and eval sets


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One eval split, in memory.

    Attributes:
        pairs: (source_text, target_text) per example; the references for BLEU / exact match.
        batches: `eval_batching.EvalBatch`es (batch, example_index): the model batch {"inputs": [B, L],
            "targets": [B, L] int32} and beside it example_index [B] int32; row r of a batch is
            pairs[example_index[r]], or an all-zero padding row if example_index[r] == -1.
    """

    pairs: list[tuple[str, str]]
    batches: list[eval_batching.EvalBatch]


@dataclasses.dataclass(frozen=True)
class Datasets:
    """What `make_datasets` returns.

    Attributes:
        train: `iter(train)` is a grain DatasetIterator of numpy batches (`train.data` docstring format) with
            `get_state() -> dict` (JSON-serialisable), `set_state(dict)` and `close()` (stops the prefetch
            thread; grain 0.2.18 prints an ignored AttributeError if an iterator lives on until
            interpreter shutdown, closed or not, so close it and let it go when done).
        eval: {split: EvalSet} in `eval_splits` order (the first is validation).
        tokenizers: source/target SentencePiece tokenizers (`.source is .target` when shared).
        batch_shapes: every [rows, L] shape a training batch can have (for AOT compiles/logging).
        num_train_examples: training pairs of this process's slice (before the length policy).
        timings: seconds spent preparing the data ("data") and the vocabulary ("vocabulary").
        long_pairs: {split: (pairs over the length limits, pairs counted)} (process 0 only).
    """

    train: grain.IterDataset
    eval: dict[str, EvalSet]
    tokenizers: Tokenizers
    batch_shapes: tuple[tuple[int, int], ...]
    num_train_examples: int
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    long_pairs: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)


def _files(*paths: str) -> tuple[str, ...]:
    return tuple(p for p in paths if p)


def eval_splits(config: ml_collections.ConfigDict, available: Sequence[str]) -> tuple[str, ...]:
    """`config.eval_splits`, or when it is () what the dataset has: validation, then test."""
    if config.eval_splits:
        return tuple(config.eval_splits)
    if not available:  # split list unknown (e.g. under tfds.testing.mock_data): the usual two
        return ("validation", "test")
    splits = tuple(s for s in ("validation", "test") if s in available)
    if "validation" not in splits:
        hint = ("set data.eval_file (or eval_source_file/eval_target_file) or data.eval_holdout"
                if config.dataset == TSV else "set data.eval_splits, e.g. to a slice of the training split")
        raise UserError(f"eval_splits: dataset {config.dataset!r} has no 'validation' split (it has "
                        f"{list(available)}); {hint}")
    return splits


def load_dataset(config: ml_collections.ConfigDict, splits: Sequence[str] | None = None
                 ) -> tuple[dict[str, Sequence[Mapping]], str, str, str]:
    """Prepares `config.dataset` and opens `splits`.

    Args:
        config: `config.data`.
        splits: the splits to open; None = the training split and `eval_splits(config, ...)`.

    Returns:
        ({split: random-access source of records}, source key, target key, dataset id).
    """
    data_dir = config.data_dir or None
    if config.dataset == TSV:
        train = _files(config.train_file) or _files(config.train_source_file,
                                                    config.train_target_file)
        evals = _files(config.eval_file) or _files(config.eval_source_file, config.eval_target_file)
        if config.train_file and (config.train_source_file or config.train_target_file):
            raise UserError("train_file: set either train_file or train_source/target_file, not both")
        if not train:
            raise UserError("train_file: dataset 'tsv' needs train_file or train_source_file and "
                            "train_target_file")
        tests = _files(config.test_file) or _files(config.test_source_file, config.test_target_file)
        builder = catalog.prepare(lambda: corpus.corpus_builder(train, evals, config.eval_holdout, data_dir, tests,
                                                                config.max_line_chars))
        source_key, target_key = "source", "target"
    else:
        builder = catalog.prepare_builder(config.dataset, data_dir)
        source_key, target_key = config.source_lang, config.target_lang
        keys = catalog.feature_keys(builder)
        for arg, key in (("source_lang", source_key), ("target_lang", target_key)):
            if key not in keys:
                raise UserError(f"{arg}: got {key!r}, expected one of {keys} for {config.dataset}")
        if source_key == target_key:
            raise UserError(f"source_lang, target_lang: both {source_key!r}, expected two languages")
    config_name = builder.builder_config.name.split("_test_")[0] if builder.builder_config else ""
    dataset_id = f"{builder.name}/{config_name}"  # what the vocabulary is bound to (not the test files)
    dataset_id += f":{source_key}->{target_key}"
    if splits is None:
        splits = [config.train_split, *eval_splits(config, list(builder.info.splits.keys()))]
    return catalog.split_sources(builder, splits), source_key, target_key, dataset_id


class _Encode:
    """(source_text, target_text) -> {"inputs": [S], "targets": [T]} int32 eos-ended, or None.

    With `alpha` > 0 both sides are segmented by a sample (`Tokenizer.sample_encode`) drawn by the
    `rng` given with each pair; without one, or with alpha 0, by the best segmentation.
    """

    def __init__(self, tokenizers: Tokenizers, max_source_length: int, max_target_length: int,
                 policy: str, alpha: float = 0.0, nbest: int = 0):
        self._tok = tokenizers
        self._max = (max_source_length, max_target_length)
        self._policy = policy
        self._alpha, self._nbest = alpha, nbest

    def _ids(self, tokenizer, text: str, rng: np.random.Generator | None) -> np.ndarray:
        if rng is None or not self._alpha:
            return tokenizer.encode(text)
        return tokenizer.sample_encode(text, alpha=self._alpha, nbest=self._nbest, rng=rng)

    def __call__(self, pair: tuple[str, str], rng: np.random.Generator | None = None
                 ) -> dict[str, np.ndarray] | None:
        inputs = batching.fit_length(self._ids(self._tok.source, pair[0], rng), self._max[0], self._policy)
        targets = batching.fit_length(self._ids(self._tok.target, pair[1], rng), self._max[1], self._policy)
        if inputs is None or targets is None:
            return None
        return {"inputs": inputs, "targets": targets}


class _ShuffledChunk:
    """Chunk k -> record indices: epoch k // chunks_per_epoch, shuffled by (seed, epoch).

    One vectorised permutation per epoch instead of per-index shuffle lookups; the chunks of an
    epoch partition this process's records exactly once.
    """

    def __init__(self, records: np.ndarray, chunk_size: int, seed: int):
        self._records = records  # [n] record indices of this process
        self._chunk = chunk_size
        self._seed = seed
        self.chunks_per_epoch = max(1, -(-len(records) // chunk_size))
        self._cache: dict[int, np.ndarray] = {}  # the last two epochs (read threads may straddle)
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._cache:
                self._cache = {e: p for e, p in self._cache.items() if e == epoch - 1}
                self._cache[epoch] = np.random.default_rng([self._seed, epoch]).permutation(
                    len(self._records))  # [n]
            return self._cache[epoch]

    def __call__(self, k: int, _) -> tuple[int, np.ndarray]:
        """(k, [C] record indices of chunk k)."""
        epoch, c = divmod(k, self.chunks_per_epoch)
        return k, self._records[self._permutation(epoch)[c * self._chunk:(c + 1) * self._chunk]]


class _ReadEncodeChunk:
    """(k, [C] record indices) -> list of encoded examples (too-long pairs dropped by the policy).

    Sampled segmentations are drawn by a generator seeded with (seed, k): chunk k is segmented the
    same way whichever read thread makes it and whenever (a resumed run), and differently in each epoch.
    """

    def __init__(self, reader: catalog.PairReader, encode: _Encode, seed: int):
        self._reader = reader
        self._encode = encode
        self._seed = seed

    def __call__(self, chunk: tuple[int, np.ndarray]) -> list[dict[str, np.ndarray]]:
        k, indices = chunk
        rng = np.random.default_rng([self._seed, k, 1])  # the 1 keeps it apart from the shuffle's streams
        examples = (self._encode(pair, rng) for pair in self._reader.read(indices))
        return [e for e in examples if e is not None]


def _sample_texts(reader: catalog.PairReader, side: int, limit: int) -> list[str]:
    n = len(reader)
    index = np.arange(n) if n <= limit else np.linspace(0, n - 1, limit).astype(np.int64)
    return [pair[side] for start in range(0, len(index), _CHUNK)
            for pair in reader.read(index[start:start + _CHUNK])]


_LENGTH_SAMPLE = 100_000  # training pairs whose lengths are counted at start-up (evenly spaced)


def _long_pairs(pairs: Sequence[tuple[str, str]], tokenizers: Tokenizers,
                config: ml_collections.ConfigDict, unknown: np.ndarray | None = None) -> tuple[int, int, int]:
    """(pairs with a source over max_source_length, a target over max_target_length, either).

    `unknown` [2, 2], if given, gets (<unk> tokens, tokens) of the sources and of the targets added.
    """
    source_long = target_long = either = 0
    for source, target in pairs:
        source_ids, target_ids = tokenizers.source.encode(source), tokenizers.target.encode(target)
        s = len(source_ids) > config.max_source_length
        t = len(target_ids) > config.max_target_length
        source_long, target_long, either = source_long + s, target_long + t, either + (s or t)
        if unknown is not None:  # eos is not a text token
            unknown += [[np.count_nonzero(source_ids == UNK_ID), len(source_ids) - 1],
                        [np.count_nonzero(target_ids == UNK_ID), len(target_ids) - 1]]
    return source_long, target_long, either


def _log_lengths(config: ml_collections.ConfigDict, tokenizers: Tokenizers, train_reader: catalog.PairReader,
                 evals: Mapping[str, EvalSet], vocab_from: str = "") -> dict[str, tuple[int, int]]:
    """Logs how many pairs of each split the length limits filter or truncate (and, for a vocabulary
    made from other data, `vocab_from`, how many training tokens it cannot represent).

    Returns:
        {split: (pairs over a limit, pairs counted)}; the training split is counted on an evenly
        spaced sample of at most `_LENGTH_SAMPLE` pairs.
    """
    n = len(train_reader)
    index = np.arange(n) if n <= _LENGTH_SAMPLE else np.linspace(0, n - 1, _LENGTH_SAMPLE).astype(np.int64)
    train_pairs = [pair for start in range(0, len(index), _CHUNK)
                   for pair in train_reader.read(index[start:start + _CHUNK])]
    unknown = np.zeros((2, 2), np.int64) if vocab_from else None  # [side, (<unk>, tokens)]
    counts = {config.train_split: (_long_pairs(train_pairs, tokenizers, config, unknown), len(train_pairs))}
    if unknown is not None:
        (su, st), (tu, tt) = unknown.tolist()
        _log.info("Vocabulary from %s on %d training pairs: <unk> is %d of %d source tokens (%.2f%%) and %d of %d "
                  "target tokens (%.2f%%)%s", vocab_from, len(train_pairs), su, st, 100 * su / max(st, 1), tu, tt,
                  100 * tu / max(tt, 1), "" if su + tu == 0 else
                  " (characters it has no piece for are lost; a run from scratch trains a vocabulary of this data)")
    for split, e in evals.items():  # eval truncates sources only: references are scored whole
        source_long = _long_pairs(e.pairs, tokenizers, config)[0]
        counts[split] = ((source_long, 0, source_long), len(e.pairs))
    limits = f"max_source_length={config.max_source_length}, max_target_length={config.max_target_length}"
    for split, ((source_long, target_long, either), total) in counts.items():
        if not either:
            continue
        if split == config.train_split:
            what = ("filtered out (data.length_policy='filter')" if config.length_policy == "filter"
                    else "truncated (data.length_policy='truncate')")
            sample = f" (counted on {total:,} of {n:,} pairs)" if total < n else ""
        else:
            what, sample = "sources truncated (evaluation keeps every pair; references are scored whole)", ""
        _log.info("Lengths, %s: %d of %d pairs (%.1f%%) exceed %s (%d sources, %d targets): %s%s; "
                  "raise data.max_source_length / data.max_target_length to keep them",
                  split, either, total, 100 * either / max(total, 1), limits, source_long, target_long, what,
                  sample)
    return {split: (c[0][2], c[1]) for split, c in counts.items()}


def _validate(config: ml_collections.ConfigDict) -> None:
    if config.length_policy not in batching.LENGTH_POLICIES:
        raise UserError(f"length_policy: got {config.length_policy!r}, expected one of "
                        f"{batching.LENGTH_POLICIES}")
    for field in ("max_source_length", "max_target_length", "batch_size_multiple",
                  "bucket_pool_size", "eval_batch_size", "read_chunk_size", "vocab_max_sentences"):
        if config[field] < 1:
            raise UserError(f"{field}: got {config[field]}, expected >= 1")
    for field in ("read_threads", "prefetch_chunks", "prefetch_batches"):
        if config[field] < 0:
            raise UserError(f"{field}: got {config[field]}, expected >= 0")
    if config.vocab_model_type not in MODEL_TYPES:
        raise UserError(f"vocab_model_type: got {config.vocab_model_type!r}, expected one of "
                        f"{MODEL_TYPES}")
    if config.subword_alpha < 0:
        raise UserError(f"subword_alpha: got {config.subword_alpha}, expected >= 0 (0 = off)")
    if config.subword_alpha > 0 and config.vocab_model_type != "unigram":
        raise UserError(f"subword_alpha: sampled segmentations need a unigram vocabulary, got "
                        f"vocab_model_type={config.vocab_model_type!r}; set data.vocab_model_type='unigram' or "
                        "data.subword_alpha=0")
    if config.subword_alpha > 0 and config.subword_nbest < 2:
        raise UserError(f"subword_nbest: got {config.subword_nbest}, expected >= 2 segmentations to sample from")
    if config.batch_size <= 0 and config.tokens_per_batch <= 0:
        raise UserError("tokens_per_batch: got <= 0 with batch_size <= 0, expected one positive")


def _train_stream(config: ml_collections.ConfigDict, reader: catalog.PairReader, encode: _Encode,
                  lengths: Sequence[int], process_index: int, process_count: int
                  ) -> tuple[grain.IterDataset, tuple[tuple[int, int], ...], int]:
    """The training IterDataset, its batch shapes and this process's number of pairs."""
    # Records are read in chunks of consecutive shuffled indices: one batched random read each.
    records = np.arange(len(reader))[process_index::process_count]  # [n] this process's slice
    if not len(records):
        raise UserError(f"process_count: {process_count} processes for {len(reader)} training "
                        f"pairs leave process {process_index} without data")
    shuffled = _ShuffledChunk(records, config.read_chunk_size, config.seed)
    chunks = (grain.MapDataset.range(shuffled.chunks_per_epoch).repeat(config.num_epochs or None)
              .map_with_index(shuffled).map(_ReadEncodeChunk(reader, encode, config.seed)))
    it = chunks.to_iter_dataset(grain.ReadOptions(
        num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_chunks))
    max_length = max(config.max_source_length, config.max_target_length)
    if config.packing:
        pack_length = config.pack_length or max_length
        if pack_length < max_length:
            raise UserError(f"pack_length: got {pack_length}, expected >= {max_length} (max length)")
        rows = batching.rows_per_batch(pack_length, config.tokens_per_batch, config.batch_size,
                                       config.batch_size_multiple)
        train = batching.PackBatchIterDataset(it, length=pack_length, rows=rows,
                                              pool_size=config.bucket_pool_size, seed=config.seed)
        shapes = ((rows, pack_length),)
    else:
        rows = [batching.rows_per_batch(length, config.tokens_per_batch, config.batch_size,
                                        config.batch_size_multiple) for length in lengths]
        train = batching.BucketBatchIterDataset(it, lengths=lengths, rows=rows,
                                                pool_size=config.bucket_pool_size, seed=config.seed)
        shapes = tuple(zip(rows, lengths))
    if config.prefetch_batches:
        # A background thread runs bucketing/packing ahead, so filling a pool never stalls a step. Its
        # state is the one after the last batch taken, so a restored iterator goes on exactly there.
        train = grain.experimental.ThreadPrefetchIterDataset(train, prefetch_buffer_size=config.prefetch_batches)
    return train, shapes, len(records)


def _eval_set(config: ml_collections.ConfigDict, reader: catalog.PairReader, encode: _Encode,
              lengths: Sequence[int]) -> EvalSet:
    count = len(reader)
    if config.eval_max_examples > 0:
        count = min(count, config.eval_max_examples)
    pairs = [pair for start in range(0, count, _CHUNK)
             for pair in reader.read(range(start, min(count, start + _CHUNK)))]
    examples = [encode(pair) for pair in pairs]
    return EvalSet(pairs, eval_batching.eval_batches(examples, lengths=lengths,
                                                batch_size=config.eval_batch_size))


def make_datasets(config: ml_collections.ConfigDict, workdir: str, *,
                  process_index: int | None = None, process_count: int | None = None,
                  tokenizers: Tokenizers | None = None, vocab_from: str = "") -> Datasets:
    """Builds or loads data and vocabulary; returns the training stream and eval sets.

    Args:
        config: `config.data` (fields in `default_data_config`).
        workdir: run directory; the vocabulary is kept in `<workdir>/vocab/`.
        process_index: this host's index (default `jax.process_index()`).
        process_count: number of hosts (default `jax.process_count()`).
        tokenizers: a vocabulary made elsewhere (a fine-tuning run's parent's, `vocab_from`) instead of
            the one trained on this data; the <unk> tokens it makes of the training data are logged.

    Returns:
        `Datasets`; see its docstring and the `train.data` docstring for the batch format.
    """
    _validate(config)
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        process_index, process_count = shard.shard_index, shard.shard_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index: got {process_index}, expected in [0, {process_count})")
    max_length = max(config.max_source_length, config.max_target_length)
    lengths = tuple(config.bucket_lengths) or eval_batching.default_bucket_lengths(max_length)
    if list(lengths) != sorted(set(lengths)) or lengths[0] < 1 or lengths[-1] < max_length:
        raise UserError(f"bucket_lengths: got {lengths}, expected ascending, last >= {max_length}")

    tick = time.time()
    sources, source_key, target_key, dataset_id = load_dataset(config)
    eval_names = [split for split in sources if split != config.train_split]
    readers = {split: catalog.PairReader(source, source_key, target_key)
               for split, source in sources.items()}
    train_reader = readers[config.train_split]
    limit = config.vocab_max_sentences
    timings = {"data": time.time() - tick}
    tick = time.time()
    tokenizers = tokenizers or load_or_train_tokenizers(
        os.path.join(workdir, "vocab"), shared=config.shared_vocab, vocab_size=config.vocab_size,
        model_type=config.vocab_model_type, character_coverage=config.character_coverage,
        dataset_id=dataset_id,
        source_texts=lambda: _sample_texts(train_reader, 0, limit),
        target_texts=lambda: _sample_texts(train_reader, 1, limit))
    timings["vocabulary"] = time.time() - tick
    tick = time.time()

    encode = _Encode(tokenizers, config.max_source_length, config.max_target_length,
                     config.length_policy, config.subword_alpha, config.subword_nbest)
    train, shapes, num_train = _train_stream(config, train_reader, encode, lengths, process_index,
                                             process_count)
    # Eval never drops a pair: over-long sources are truncated, references stay whole text.
    eval_encode = _Encode(tokenizers, config.max_source_length, config.max_target_length,
                          "truncate")
    evals = {split: _eval_set(config, readers[split], eval_encode, lengths)
             for split in eval_names}
    long_pairs = _log_lengths(config, tokenizers, train_reader, evals, vocab_from) if process_index == 0 else {}
    over, counted = long_pairs.get(config.train_split, (0, 0))
    if config.length_policy == "filter" and 0 < over == counted == len(train_reader):
        # Every pair would be filtered out: the repeating training stream would search forever.
        raise UserError(f"max_source_length, max_target_length: all {counted} training pairs are longer than "
                        f"{config.max_source_length} / {config.max_target_length} tokens, nothing is left to "
                        "train on; raise them or set data.length_policy='truncate'")
    timings["data"] += time.time() - tick
    _log.info("Data %s: %d training pairs on process %d/%d, batch shapes %s, V=%d/%d", dataset_id,
              num_train, process_index, process_count, shapes, tokenizers.source.vocab_size,
              tokenizers.target.vocab_size)
    return Datasets(train=train, eval=evals, tokenizers=tokenizers, batch_shapes=shapes,
                    num_train_examples=num_train, timings=timings, long_pairs=long_pairs)
