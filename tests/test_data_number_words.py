"""The embedded number-words TFDS builder: determinism, disjoint splits, caching, no TF."""
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from train.data import number_words as nw


def _build(data_dir, config="tiny"):
    builder = nw.NumberWords(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(file_format="array_record")
    return builder


def _records(builder, split):
    source = builder.as_data_source(split=split)
    return [source[i] for i in range(len(source))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("tfds"))


def test_builds_and_reads_without_tensorflow(tiny):
    assert "tensorflow" not in sys.modules
    source = tfds.data_source("number_words/tiny", split="train", data_dir=tiny.data_dir_root)
    assert len(source) == 300
    record = source[0]
    assert set(record) == {"en", "de", "fr", "number"}
    assert isinstance(record["en"], bytes)


def test_deterministic_across_builds(tiny, tmp_path):
    other = _build(tmp_path)
    for split in ("train", "validation", "test"):
        assert _records(tiny, split) == _records(other, split)


def test_splits_disjoint_by_number_and_sized(tiny):
    numbers = {s: {int(r["number"]) for r in _records(tiny, s)} for s in ("train", "validation",
                                                                          "test")}
    assert [len(numbers[s]) for s in ("train", "validation", "test")] == [300, 50, 50]
    assert not numbers["train"] & numbers["validation"]
    assert not numbers["train"] & numbers["test"]
    assert not numbers["validation"] & numbers["test"]
    assert all(0 <= n < 1000 for s in numbers.values() for n in s)


def test_text_matches_num2words_normalised(tiny):
    for record in _records(tiny, "test")[:20]:
        n = int(record["number"])
        assert record["en"].decode() == nw.number_to_words(n, "en")
        assert record["de"].decode() == nw.number_to_words(n, "de")
    assert nw.number_to_words(345, "en") == "three hundred and forty five"
    assert nw.number_to_words(345, "de") == "dreihundertfünfundvierzig"
    assert nw.number_to_words(45678, "en") == "forty five thousand six hundred and seventy eight"


def test_cached_not_rebuilt(tiny, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")
    monkeypatch.setattr(nw.NumberWords, "_generate_examples", fail)
    again = nw.NumberWords(config="tiny", data_dir=tiny.data_dir_root)
    again.download_and_prepare(file_format="array_record")
    assert len(again.as_data_source(split="train")) == 300


def test_digits_sampling_spreads_lengths():
    config = nw.NumberWordsConfig(name="t", low=0, high=10**9, num_train=900, num_validation=50,
                                  num_test=50, sampling="digits", seed=3)
    numbers = nw.sample_split_numbers(config)
    everything = np.concatenate(list(numbers.values()))
    assert len(set(everything.tolist())) == 1000
    digits = np.bincount([len(str(n)) for n in everything.tolist()], minlength=10)[1:]
    assert digits[0] == 10  # only 10 one-digit numbers exist: all taken
    assert digits[1] == 90
    assert digits[2:].min() >= 100  # the rest shared equally among 3..9 digits
    again = nw.sample_split_numbers(config)
    assert all(np.array_equal(numbers[k], again[k]) for k in numbers)


def test_bad_config_is_one_line_error():
    config = nw.NumberWordsConfig(name="t", low=0, high=100, num_train=100, num_validation=1,
                                  num_test=1)
    with pytest.raises(ValueError, match="at most 100"):
        nw.sample_split_numbers(config)
    with pytest.raises(ValueError, match="lang"):
        nw.number_to_words(3, "xx")
