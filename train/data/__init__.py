"""Translation data for jaxattn, TensorFlow-free: TFDS array_record sources batched by grain.

Token ids (fixed for every vocabulary, `jaxattn.tokens`, re-exported here): pad = 0, unk = 1,
bos (<sos>) = 2, eos = 3.
Sources and targets end with eos and carry no bos (the models shift targets right themselves).

Datasets (``config.data.dataset``):
  * ``"number_words/<tiny|small|medium|long>"``: the embedded English/German/French number
    words (`NumberWords`), built offline in seconds and cached in the TFDS data dir.
  * ``"number_lists/<short|long>"``: sequences of 1 to 8 numbers joined by "then" / "dann" /
    "puis" (`NumberLists`): sources of up to ~60 words, for length experiments.
  * ``"tsv"``: your own corpus, a TSV file or two aligned text files (`corpus_builder`).
  * any TFDS translation dataset: ``"wmt14_translate/de-en"``, ``"ted_hrlr_translate/pt_to_en"``.
  ``source_lang`` / ``target_lang`` pick the direction.

Use from the trainer::

    from train import data

    config.data = data.default_data_config()          # in the experiment config
    ds = data.make_datasets(config.data, workdir)       # builds/loads data + vocabulary
    vocab_size = ds.tokenizers.target.vocab_size        # == source's when shared
    train_iter = iter(ds.train)                         # grain DatasetIterator
    batch = next(train_iter)                            # dict of numpy int32 arrays
    state = train_iter.get_state()                      # JSON-serialisable dict: save it ...
    train_iter.set_state(state)                         # ... and restore it on resume
    train_iter.close()                                  # when done: stops its prefetch thread
    stored_fingerprint = ds.tokenizers.fingerprint()    # save with the checkpoint ...
    ds.tokenizers.check(stored_fingerprint)             # ... and check it on restore
    toks = data.load_tokenizers(f"{workdir}/vocab", shared=True)  # translate-only runs
    test = ds.eval["test"]                              # EvalSet: pairs + batches
    for batch, example_index in test.batches:           # EvalBatch: model batch + row origins
        tokens = ...                                    # [B, T'] decoded from batch["inputs"]
        hyps = ds.tokenizers.target.decode_batch(tokens)
        for row, i in enumerate(example_index):
            if i >= 0:                                  # -1 marks an all-zero padding row
                source, reference = test.pairs[i]       # raw text; hypothesis = hyps[row]

Training batches (the format every model takes as is, `model.apply(variables, **batch)`; each key
is the model argument it feeds, see `jaxattn.models`): "inputs" [B, S] and "targets" [B, T] int32,
0-padded, eos-ended; with ``packing=True`` also "inputs_segmentation"/"targets_segmentation"
(1..n per pair, 0 = pad) and "inputs_positions"/"targets_positions" (0-based, restarting per
pair). Shapes come from a small fixed set (`Datasets.batch_shapes`); rows that are all zero
are padding (mask loss by targets != 0). The iterator state is a plain JSON-able dict of ints: store it with Orbax via
`grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)` (or as JSON next to
the checkpoint). Each process reads only its slice
(``[jax.process_index()::jax.process_count()]``) of the training split; hosts then draw their
bucket shapes independently, so multi-host training wants ``packing=True`` or a single bucket
length (one shape everywhere). Every host gets the whole eval sets.
"""

import importlib

from jaxattn.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID

# Each name is imported from its module on first use (PEP 562), so that what only translates --
# the vocabulary and in-memory batches -- starts without grain and TFDS (0.7 s of imports).
_HOME = {
    "BucketBatchIterDataset": "batching", "PackBatchIterDataset": "batching",
    "EvalBatch": "eval_batching", "default_bucket_lengths": "eval_batching", "eval_batches": "eval_batching",
    "default_data_config": "config",
    "ParallelCorpus": "corpus", "corpus_builder": "corpus",
    "NumberLists": "number_lists", "NumberListsConfig": "number_lists", "numbers_to_words": "number_lists",
    "NumberWords": "number_words", "NumberWordsConfig": "number_words", "number_to_words": "number_words",
    "Datasets": "pipeline", "EvalSet": "pipeline", "load_dataset": "pipeline", "make_datasets": "pipeline",
    "Tokenizer": "tokenizer", "Tokenizers": "tokenizer", "load_tokenizers": "tokenizer",
    "train_sentencepiece": "tokenizer",
}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID",
    "BucketBatchIterDataset", "Datasets", "EvalBatch", "EvalSet", "NumberLists", "NumberListsConfig", "NumberWords",
    "NumberWordsConfig",
    "PackBatchIterDataset", "ParallelCorpus", "Tokenizer", "Tokenizers",
    "corpus_builder", "default_bucket_lengths", "default_data_config", "eval_batches",
    "load_dataset", "load_tokenizers", "make_datasets", "number_to_words", "numbers_to_words", "train_sentencepiece",
]
