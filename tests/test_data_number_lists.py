"""The embedded number-lists TFDS builder: text, determinism, disjoint splits, lengths, pipeline."""
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from train import data
from train.data import number_lists as nl
from train.data import number_words as nw

SPLITS = ("train", "validation", "test")


def _records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    builder = nl.NumberLists(config="short", data_dir=str(tmp_path_factory.mktemp("tfds")))
    builder.download_and_prepare(file_format="array_record")
    return builder


def test_separator_and_reordering():
    assert nl.numbers_to_words([21, 5], "de") == "einundzwanzig dann fünf"
    assert nl.numbers_to_words([21, 5], "en") == "twenty one then five"
    assert nl.numbers_to_words([21, 5], "fr") == "vingt et un puis cinq"
    assert nl.numbers_to_words([345], "de") == nw.number_to_words(345, "de")  # one number: no separator
    cache = {}
    assert nl.numbers_to_words([7, 7, 7], "en", cache=cache) == "seven then seven then seven"
    assert cache == {(7, "en"): "seven"}


def test_builds_and_reads_without_tensorflow(short):
    assert "tensorflow" not in sys.modules
    source = tfds.data_source("number_lists/short", split="train", data_dir=short.data_dir_root)
    assert len(source) == 300
    record = source[0]
    assert set(record) == {"en", "de", "fr", "numbers"}
    assert isinstance(record["en"], bytes) and record["numbers"].dtype == np.int64


def test_text_is_the_numbers_written_out(short):
    for record in _records(short, "test"):
        numbers = record["numbers"].tolist()
        assert 1 <= len(numbers) <= 3 and all(0 <= n < 1000 for n in numbers)
        for lang in ("en", "de", "fr"):
            text = record[lang].decode()
            assert text == nl.numbers_to_words(numbers, lang)
            assert text.count(f" {nl.SEPARATORS[lang]} ") == len(numbers) - 1
            assert "," not in text and "-" not in text


def test_deterministic_and_seeded():
    config = nl.NumberListsConfig(name="t", low=0, high=500, min_count=1, max_count=4, num_train=200,
                                  num_validation=20, num_test=30, seed=5)
    first, again = nl.sample_split_sequences(config), nl.sample_split_sequences(config)
    assert first == again
    other = nl.sample_split_sequences(nl.NumberListsConfig(**{**config.__dict__, "seed": 6}))
    assert other["train"] != first["train"]


def test_splits_disjoint_and_sized(short):
    seqs = {s: [tuple(r["numbers"].tolist()) for r in _records(short, s)] for s in SPLITS}
    assert [len(seqs[s]) for s in SPLITS] == [300, 50, 50]
    every = [q for s in SPLITS for q in seqs[s]]
    assert len(set(every)) == len(every)  # no sequence twice, within or across splits
    assert not set(seqs["test"]) & set(seqs["train"])


def test_lengths_spread_uniformly_over_counts():
    config = nl.NumberListsConfig(name="t", low=0, high=10**4, min_count=1, max_count=8, num_train=1600,
                                  num_validation=100, num_test=300, seed=1)
    sequences = [q for split in nl.sample_split_sequences(config).values() for q in split]
    counts = np.bincount([len(q) for q in sequences], minlength=9)[1:]       # [8]
    assert counts.min() >= 180 and counts.sum() == 2000  # ~250 each
    words = np.array([len(nl.numbers_to_words(q, "en").split()) for q in sequences[:300]])
    assert words.min() <= 4 and words.max() >= 45  # from a few words to Bahdanau's Fig. 2 range


def test_too_many_examples_is_one_line_error():
    config = nl.NumberListsConfig(name="t", low=0, high=10, min_count=1, max_count=2, num_train=100,
                                  num_validation=5, num_test=5)
    with pytest.raises(ValueError, match="distinct 1-number sequences"):
        nl.sample_split_sequences(config)
    with pytest.raises(ValueError, match="min_count"):
        nl.sample_split_sequences(nl.NumberListsConfig(name="t", min_count=3, max_count=2))
    with pytest.raises(ValueError, match="numbers: got an empty"):
        nl.numbers_to_words([], "en")
    with pytest.raises(ValueError, match="lang"):
        nl.numbers_to_words([1], "xx")


def test_make_datasets_reads_it(short, tmp_path):
    c = data.default_data_config()
    c.update(dataset="number_lists/short", data_dir=str(short.data_dir_root), vocab_size=96,
             max_source_length=40, max_target_length=40, tokens_per_batch=320, bucket_lengths=(20, 40),
             read_chunk_size=32, bucket_pool_size=64, eval_batch_size=16, num_epochs=1, read_threads=0,
             prefetch_batches=0)
    ds = data.make_datasets(c, str(tmp_path))
    rows = 0
    for batch in ds.train:
        assert batch["inputs"].shape[1] in (20, 40) and batch["targets"].dtype == np.int32
        rows += int((batch["targets"] != 0).any(axis=1).sum())
    assert rows == 300  # one epoch, nothing filtered
    test = ds.eval["test"]
    assert len(test.pairs) == 50
    first = _records(short, "test")[0]
    assert test.pairs[0] == (first["en"].decode(), first["de"].decode())
    assert " dann " in " ".join(ref for _, ref in test.pairs)
