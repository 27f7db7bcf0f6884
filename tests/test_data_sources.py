"""TFDS catalog datasets (mocked, offline) and a user's TSV / aligned-text corpus."""
import collections
import logging

import numpy as np
import pytest
import tensorflow_datasets as tfds

from train import data
from train.data import catalog
from train.data import corpus


def _config(data_dir, **overrides):
    c = data.default_data_config()
    c.data_dir = str(data_dir)
    c.vocab_size = 48
    c.tokens_per_batch = 256
    c.read_chunk_size = 16
    c.bucket_pool_size = 32
    c.max_source_length = 64
    c.max_target_length = 64
    c.num_epochs = 1
    c.read_threads = 0
    c.update(overrides)
    return c


def _all_rows(ds):
    pairs = []
    for batch in ds.train:
        for inputs, targets in zip(batch["inputs"], batch["targets"]):
            if targets[0]:
                pairs.append((ds.tokenizers.source.decode(inputs), ds.tokenizers.target.decode(targets)))
    return pairs


@pytest.mark.parametrize("name, source_lang, target_lang", [
    ("ted_hrlr_translate/pt_to_en", "pt", "en"),
    ("wmt14_translate/de-en", "en", "de"),
])
def test_catalog_dataset_with_mock_data(tmp_path, name, source_lang, target_lang):
    with tfds.testing.mock_data(num_examples=20):
        c = _config(tmp_path / "tfds", dataset=name, source_lang=source_lang,
                    target_lang=target_lang)
        ds = data.make_datasets(c, str(tmp_path / "work"), process_index=0, process_count=1)
        assert ds.num_train_examples == 20
        rows = _all_rows(ds)
        assert len(rows) == 20
        assert all(isinstance(s, str) and isinstance(t, str) for s, t in ds.eval["test"].pairs)
        # Mock text is str; direction follows the keys.
        builder = tfds.builder(name, data_dir=str(tmp_path / "tfds"))
        source = builder.as_data_source(split="test")
        record = source[0]
        assert ds.eval["test"].pairs[0] == (catalog.record_text(record[source_lang]),
                                            catalog.record_text(record[target_lang]))


def test_record_text_accepts_bytes_str_and_arrays():
    assert catalog.record_text(b"gr\xc3\xbc\xc3\x9fe") == "grüße"
    assert catalog.record_text("grüße") == "grüße"
    assert catalog.record_text(np.array(b"ab", dtype=object)) == "ab"
    with pytest.raises(ValueError, match="record_text"):
        catalog.record_text(3)


def _write_tsv(path):
    lines = [f"source {i}\tziel {i}".encode() for i in range(30)]
    lines[3] = b"only one column"
    lines[7] = b"a\tb\tc"
    lines[11] = b"  \tleer"
    lines[15] = b"bad \xff\xfe bytes\tziel"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {(f"source {i}", f"ziel {i}") for i in range(30)} - {
        (f"source {i}", f"ziel {i}") for i in (3, 7, 11, 15)}


def test_tsv_corpus_skips_and_counts_bad_lines(tmp_path, caplog):
    tsv = tmp_path / "train.tsv"
    good = _write_tsv(tsv)
    before = tsv.read_bytes()
    c = _config(tmp_path / "tfds", dataset="tsv", train_file=str(tsv), eval_holdout=5,
                eval_splits=("validation",))
    with caplog.at_level(logging.WARNING):
        ds = data.make_datasets(c, str(tmp_path / "work"), process_index=0, process_count=1)
    skip_logs = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skip_logs) == 1 and "skipped 4 of 30" in skip_logs[0]
    assert "columns: 2" in skip_logs[0] and "empty: 1" in skip_logs[0] and "utf8: 1" in skip_logs[0]
    train, held_out = set(_all_rows(ds)), set(ds.eval["validation"].pairs)
    assert len(held_out) == 5 and not train & held_out and train | held_out == good
    assert tsv.read_bytes() == before  # the user's file is untouched
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # cached: not re-parsed, nothing logged
        data.make_datasets(c, str(tmp_path / "work"), process_index=0, process_count=1)
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]


def test_aligned_text_files_with_eval(tmp_path):
    src, tgt = tmp_path / "train.en", tmp_path / "train.de"
    src.write_text("".join(f"one {i}\n" for i in range(12)))
    tgt.write_text("".join(f"eins {i}\n" for i in range(12)))
    (tmp_path / "dev.tsv").write_text("one x\teins x\n")
    c = _config(tmp_path / "tfds", dataset="tsv", train_source_file=str(src),
                train_target_file=str(tgt), eval_file=str(tmp_path / "dev.tsv"),
                eval_splits=("validation",))
    ds = data.make_datasets(c, str(tmp_path / "work"), process_index=0, process_count=1)
    assert sorted(_all_rows(ds)) == sorted((f"one {i}", f"eins {i}") for i in range(12))
    assert ds.eval["validation"].pairs == [("one x", "eins x")]


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"no tab here\n\t\n", "no usable"),
])
def test_bad_corpus_file_is_one_line_error(tmp_path, content, match):
    tsv = tmp_path / "train.tsv"
    if content is not None:
        tsv.write_bytes(content)
    c = _config(tmp_path / "tfds", dataset="tsv", train_file=str(tsv), eval_splits=())
    with pytest.raises(ValueError, match=match) as err:
        data.make_datasets(c, str(tmp_path / "work"), process_index=0, process_count=1)
    assert "\n" not in str(err.value)


def test_misaligned_text_files_rejected(tmp_path):
    (tmp_path / "a").write_text("x\ny\n")
    (tmp_path / "b").write_text("x\n")
    builder = corpus.corpus_builder([str(tmp_path / "a"), str(tmp_path / "b")],
                                    data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="equal line counts"):
        builder.download_and_prepare(file_format="array_record")


def test_byte_order_mark_and_crlf_are_not_text(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfeins\tone\r\nzwei\ttwo\r\n")
    skipped = collections.Counter()
    assert list(corpus.read_pairs([str(tsv)], skipped)) == [(0, "eins", "one"), (1, "zwei", "two")]
    assert not skipped


def test_eval_splits_come_from_what_the_corpus_has(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"one {i}\teins {i}\n" for i in range(12)))
    (tmp_path / "test.tsv").write_text("one t\teins t\ntwo t\tzwei t\n")
    work = str(tmp_path / "work")
    c = _config(tmp_path / "tfds", dataset="tsv", train_file=str(tsv), eval_holdout=3)
    assert list(data.make_datasets(c, work, process_index=0, process_count=1).eval) == ["validation"]
    c.test_file = str(tmp_path / "test.tsv")
    ds = data.make_datasets(c, work, process_index=0, process_count=1)
    assert list(ds.eval) == ["validation", "test"]
    assert sorted(ds.eval["test"].pairs) == [("one t", "eins t"), ("two t", "zwei t")]
    assert len(ds.eval["validation"].pairs) == 3
    c.eval_splits = ("validation", "dev")
    with pytest.raises(ValueError, match=r"split: got 'dev', expected one of \[.*'test'.*'validation'|"
                                         r"split: got 'dev', expected one of \[.*'validation'.*'test'"):
        data.make_datasets(c, work, process_index=0, process_count=1)


def test_corpus_without_validation_is_a_one_line_error(tmp_path):
    tsv = tmp_path / "train.tsv"
    tsv.write_text("".join(f"one {i}\teins {i}\n" for i in range(12)))
    c = _config(tmp_path / "tfds", dataset="tsv", train_file=str(tsv))
    with pytest.raises(ValueError, match="eval_splits: dataset 'tsv' has no 'validation' split.*eval_holdout"):
        data.make_datasets(c, str(tmp_path / "work"), process_index=0, process_count=1)


def test_a_corpus_another_process_prepared_meanwhile_is_read(tmp_path):
    # Two trainers started together on one new corpus: both make a builder before either has written
    # it; the first prepares it, the second (waiting on the lock) must read it, not write it again.
    train = tmp_path / "pairs.tsv"
    train.write_text("".join(f"one {i}\teins {i}\n" for i in range(12)))
    made = []

    def make():  # the second trainer's first builder is made before the first trainer writes the data
        made.append(corpus.corpus_builder((str(train),), (), 2, str(tmp_path / "tfds"), (), 2000))
        if len(made) == 1:
            first = catalog.prepare(lambda: corpus.corpus_builder((str(train),), (), 2, str(tmp_path / "tfds"),
                                                                  (), 2000))
            assert sorted(first.info.splits) == ["train", "validation"]
        return made[-1]

    late = catalog.prepare(make)  # TFDS with the stale builder: FileExistsError renaming its directory
    assert not made[0].info.splits and sorted(late.info.splits) == ["train", "validation"]
    assert len(catalog.split_sources(late, ["train"])["train"]) == 10
