"""The data section of a training config: every field `make_datasets` reads, commented."""

from __future__ import annotations

import ml_collections

TSV = "tsv"  # config.data.dataset for a user's own corpus (`train.data.corpus`)

__all__ = ["default_data_config"]


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults for `config.data`: English -> German number words, bucketed batches.

    Experiment configs embed it (`config.data = default_data_config()`) and override fields.
    """
    c = ml_collections.ConfigDict()
    # --- What to read -------------------------------------------------------------------------
    # "number_words/<tiny|small|medium|long>" (embedded, built offline), "number_lists/<short|long>"
    # (embedded: sequences of numbers, sources up to ~60 words), "tsv" (your files below),
    # or any TFDS translation dataset name, e.g. "wmt14_translate/de-en", "wmt_t2t_translate/de-en",
    # "ted_hrlr_translate/pt_to_en" (downloaded once, prepared as array_record).
    c.dataset = "number_words/medium"
    c.source_lang = "en"  # feature key of the source side (number_words: en, de, fr); tsv: unused
    c.target_lang = "de"  # feature key of the target side; tsv: unused (column 2 is the target)
    c.data_dir = ""  # TFDS data dir holding prepared datasets; "" = TFDS default ($TFDS_DATA_DIR)
    c.train_split = "train"  # TFDS split to train on (slices like "train[:90%]" work)
    # splits for eval/decoding, the first one is validation (in-loop evals, best checkpoint);
    # () = what the dataset has: "validation", then "test" if it exists (tsv: test_file below)
    c.eval_splits = ()
    c.eval_max_examples = 0  # first N pairs of each eval split (0 = all); for fast in-loop evals
    # --- Your own corpus (dataset = "tsv"): a TSV (source<TAB>target) or two aligned text files -
    c.train_file = ""  # TSV of training pairs
    c.train_source_file = ""  # or: source side, one sentence per line ...
    c.train_target_file = ""  # ... aligned with this target side
    c.eval_file = ""  # optional TSV of validation pairs
    c.eval_source_file = ""  # or optional aligned validation files
    c.eval_target_file = ""
    c.eval_holdout = 0  # without eval files: training pairs held out as "validation"
    # tsv: lines with a side longer than this many characters are skipped and counted, like other
    # unusable lines (a sentence is ~100; one huge line would stall vocabulary training); 0 = no limit
    c.max_line_chars = 2000
    c.test_file = ""  # optional TSV of test pairs (the "test" split, scored after training)
    c.test_source_file = ""  # or optional aligned test files
    c.test_target_file = ""
    # --- Vocabulary (SentencePiece, saved in <workdir>/vocab, reused on resume) ---------------
    c.vocab_size = 256  # pieces per vocabulary incl. pad/unk/bos/eos (a soft upper bound)
    c.vocab_model_type = "unigram"  # "unigram" or "bpe"
    c.shared_vocab = True  # one vocabulary for both sides, or one per side
    c.vocab_max_sentences = 100_000  # sentences per side sampled (evenly) to train it
    c.character_coverage = 1.0  # SentencePiece character coverage (0.9995 for large alphabets)
    # Subword regularization (Kudo 2018), unigram vocabularies: each training sentence is segmented
    # by a sample from its `subword_nbest` best segmentations x, P(x) ~ P_unigram(x)^subword_alpha;
    # evaluation and translation always use the best one. 0 = off (the best segmentation everywhere)
    c.subword_alpha = 0.0
    c.subword_nbest = 64  # l, the segmentations sampled from (Kudo 2018: l = 64, alpha = 0.1)
    # --- Lengths (in tokens, eos included) ----------------------------------------------------
    c.max_source_length = 32  # longer sources are filtered out or truncated
    c.max_target_length = 32  # longer targets are filtered out or truncated
    c.length_policy = "filter"  # training pairs that are too long: "filter" or "truncate"
    # --- Batches (static shapes) ------------------------------------------------------------
    c.tokens_per_batch = 2048  # token budget per side per batch: rows = budget // bucket length
    c.batch_size = 0  # > 0: this many rows in every batch instead of the token budget
    c.batch_size_multiple = 1  # rows are a multiple of this (set to the local device count)
    c.bucket_lengths = ()  # ascending bucket lengths; () = 8, 12, 16, 24, ... up to max length
    c.bucket_pool_size = 8192  # pairs bucketed/packed together (larger: fuller, slower restore)
    c.packing = False  # pack several pairs per row (segmentation/position keys; Transformer)
    c.pack_length = 0  # packed row length; 0 = max(max_source_length, max_target_length)
    c.eval_batch_size = 128  # rows of eval batches (length-sorted, padded with zero rows)
    # --- Order and speed -----------------------------------------------------------------------
    c.seed = 0  # shuffling, bucket-batch order and packing; each epoch is reshuffled
    c.num_epochs = 0  # passes over the training data; 0 = repeat forever
    c.read_chunk_size = 256  # pairs read and tokenized together (one batched array_record read)
    c.read_threads = 1  # grain threads reading and tokenizing chunks (0: in the main thread)
    c.prefetch_chunks = 8  # chunks read ahead
    c.prefetch_batches = 2  # batches a background thread prepares ahead (0: none)
    return c
