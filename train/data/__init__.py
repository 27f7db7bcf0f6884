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

from jaxattn.tokens import BOS_ID
from jaxattn.tokens import EOS_ID
from jaxattn.tokens import PAD_ID
from jaxattn.tokens import UNK_ID
from train.data.batching import BucketBatchIterDataset
from train.data.batching import default_bucket_lengths
from train.data.batching import EvalBatch
from train.data.batching import eval_batches
from train.data.batching import PackBatchIterDataset
from train.data.config import default_data_config
from train.data.corpus import ParallelCorpus
from train.data.corpus import corpus_builder
from train.data.number_lists import NumberLists
from train.data.number_lists import NumberListsConfig
from train.data.number_lists import numbers_to_words
from train.data.number_words import NumberWords
from train.data.number_words import NumberWordsConfig
from train.data.number_words import number_to_words
from train.data.pipeline import Datasets
from train.data.pipeline import EvalSet
from train.data.pipeline import load_dataset
from train.data.pipeline import make_datasets
from train.data.tokenizer import load_tokenizers
from train.data.tokenizer import Tokenizer
from train.data.tokenizer import Tokenizers
from train.data.tokenizer import train_sentencepiece

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "UNK_ID",
    "BucketBatchIterDataset", "Datasets", "EvalBatch", "EvalSet", "NumberLists", "NumberListsConfig", "NumberWords",
    "NumberWordsConfig",
    "PackBatchIterDataset", "ParallelCorpus", "Tokenizer", "Tokenizers",
    "corpus_builder", "default_bucket_lengths", "default_data_config", "eval_batches",
    "load_dataset", "load_tokenizers", "make_datasets", "number_to_words", "numbers_to_words", "train_sentencepiece",
]
