"""make_datasets end to end on the tiny number-words config: batches, packing, resume, hosts."""
import collections
import gc
import json
import threading

import numpy as np
import pytest

from train import data
from train.data import catalog


def _config(data_dir, **overrides):
    c = data.default_data_config()
    c.dataset = "number_words/tiny"
    c.data_dir = str(data_dir)
    c.vocab_size = 64
    c.max_source_length = 24
    c.max_target_length = 24
    c.tokens_per_batch = 192
    c.bucket_lengths = (8, 12, 16, 24)
    c.read_chunk_size = 32
    c.bucket_pool_size = 64
    c.eval_batch_size = 16
    c.num_epochs = 1
    c.read_threads = 0
    c.update(overrides)
    return c


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds"), tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def train_pairs(dirs):
    builder = data.NumberWords(config="tiny", data_dir=str(dirs[0]))
    builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split="train")
    return collections.Counter(catalog.record_pair(source[i], "en", "de")
                               for i in range(len(source)))


def _make(dirs, **overrides):
    return data.make_datasets(_config(dirs[0], **overrides), str(dirs[1]), process_index=0,
                              process_count=1)


def _row_pairs(tokenizers, batch):
    pairs = []
    for inputs, targets in zip(batch["inputs"], batch["targets"]):
        if targets[0] != data.PAD_ID:
            pairs.append((tokenizers.source.decode(inputs), tokenizers.target.decode(targets)))
    return pairs


def test_bucketed_batches_format_and_budget(dirs, train_pairs):
    ds = _make(dirs)
    assert ds.num_train_examples == 300
    assert all(rows * length <= 192 for rows, length in ds.batch_shapes)
    seen = collections.Counter()
    for batch in ds.train:
        assert set(batch) == {"inputs", "targets"}
        assert batch["inputs"].shape == batch["targets"].shape
        assert batch["inputs"].shape in ds.batch_shapes
        for key in ("inputs", "targets"):
            x = batch[key]
            assert x.dtype == np.int32
            lengths = (x != data.PAD_ID).sum(axis=1)
            real = lengths > 0
            assert (x[real, lengths[real] - 1] == data.EOS_ID).all()  # eos ends every row
            assert ((np.arange(x.shape[1])[None, :] < lengths[:, None]) == (x != 0)).all()  # pad after
        seen.update(_row_pairs(ds.tokenizers, batch))
    assert seen == train_pairs  # one epoch = every training pair exactly once


@pytest.mark.parametrize("count", [2, 4])
def test_process_slices_cover_data_exactly_once(dirs, train_pairs, count):
    seen = collections.Counter()
    sizes = []
    for index in range(count):
        ds = data.make_datasets(_config(dirs[0]), str(dirs[1]), process_index=index,
                                process_count=count)
        sizes.append(ds.num_train_examples)
        part = collections.Counter()
        for batch in ds.train:
            part.update(_row_pairs(ds.tokenizers, batch))
        assert sum(part.values()) == ds.num_train_examples
        seen.update(part)
    assert sum(sizes) == 300 and max(sizes) - min(sizes) <= 1
    assert seen == train_pairs


def _stream(ds, n):
    it = iter(ds.train)
    return [next(it) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_order_deterministic_from_seed_and_reshuffled_per_epoch(dirs):
    assert _same(_stream(_make(dirs, num_epochs=0), 12), _stream(_make(dirs, num_epochs=0), 12))
    assert not _same(_stream(_make(dirs, num_epochs=0), 12),
                     _stream(_make(dirs, num_epochs=0, seed=1), 12))
    ds = _make(dirs, num_epochs=2, batch_size=10, bucket_lengths=(24,), bucket_pool_size=300,
               read_chunk_size=300)
    epochs = [[p for b in batches for p in _row_pairs(ds.tokenizers, b)]
              for batches in (_stream(ds, 60)[:30], _stream(ds, 60)[30:])]
    assert collections.Counter(epochs[0]) == collections.Counter(epochs[1])
    assert epochs[0] != epochs[1]


def _check_resume(dirs, skip, **kwargs):
    """A stream restored from the state after `skip` batches gives the next 8 batches again."""
    it = iter(_make(dirs, **kwargs).train)
    for _ in range(skip):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(8)]
    resumed = iter(_make(dirs, **kwargs).train)
    resumed.set_state(state)
    assert _same([next(resumed) for _ in range(8)], expected)


@pytest.mark.parametrize("packing, threads, prefetch", [(False, 0, 0), (False, 1, 2),
                                                        (True, 0, 0), (True, 1, 2)])
@pytest.mark.parametrize("skip", [0, 1, 5, 11, 25])  # 25 crosses an epoch
def test_save_restore_gives_identical_batches(dirs, packing, threads, prefetch, skip):
    _check_resume(dirs, skip, num_epochs=0, packing=packing, read_threads=threads, prefetch_batches=prefetch)


@pytest.mark.parametrize("threads, skip", [(0, 5), (1, 25)])  # 25 crosses an epoch
def test_sampled_segmentations_resume_identically(dirs, threads, skip):
    _check_resume(dirs, skip, num_epochs=0, read_threads=threads, prefetch_batches=2, subword_alpha=0.1,
                  subword_nbest=8)


def test_sampled_segmentations_spell_the_same_pairs_differently_and_never_in_evaluation(dirs, train_pairs):
    plain, sampled = _make(dirs), _make(dirs, subword_alpha=0.1, subword_nbest=8)
    batches = list(iter(sampled.train))  # one epoch: every pair once, in sampled pieces
    assert collections.Counter(p for b in batches for p in _row_pairs(sampled.tokenizers, b)) == train_pairs
    rows = [row[row > 0] for b in batches for row in (*b["inputs"], *b["targets"]) if row[0] != data.PAD_ID]
    best = [sampled.tokenizers.source.encode(sampled.tokenizers.source.decode(row)) for row in rows]
    differ = sum(not np.array_equal(row, ids) for row, ids in zip(rows, best))
    assert len(rows) // 10 < differ < len(rows)  # many rows are not their best segmentation, some are
    assert sampled.tokenizers.fingerprint() == plain.tokenizers.fingerprint()  # the same vocabulary
    for split in plain.eval:  # evaluation reads the best segmentation
        assert plain.eval[split].pairs == sampled.eval[split].pairs
        assert all(np.array_equal(a.batch["inputs"], b.batch["inputs"])
                   for a, b in zip(plain.eval[split].batches, sampled.eval[split].batches))


def test_packing_invariants(dirs, train_pairs):
    ds = _make(dirs, packing=True, pack_length=24)
    assert ds.batch_shapes == ((8, 24),)
    seen = collections.Counter()
    for batch in ds.train:
        assert set(batch) == {"inputs", "targets", "inputs_segmentation", "targets_segmentation",
                              "inputs_positions", "targets_positions"}
        for key in batch:
            assert batch[key].shape == (8, 24) and batch[key].dtype == np.int32
        for r in range(8):
            row_pairs = {}
            for side in ("inputs", "targets"):
                tokens, seg, pos = (batch[side][r], batch[f"{side}_segmentation"][r],
                                    batch[f"{side}_positions"][r])
                assert ((seg == 0) == (tokens == data.PAD_ID)).all()  # pad exactly where no segment
                assert (pos[seg == 0] == 0).all()
                ids = [s for s in np.unique(seg) if s]
                assert ids == list(range(1, len(ids) + 1))
                for s in ids:
                    where = np.flatnonzero(seg == s)
                    assert (np.diff(where) == 1).all()  # contiguous segment
                    assert (pos[where] == np.arange(len(where))).all()  # positions restart at 0
                    assert tokens[where[-1]] == data.EOS_ID and data.EOS_ID not in tokens[where[:-1]]
                    row_pairs.setdefault(s, []).append(tokens[where])
            assert all(len(v) == 2 for v in row_pairs.values())  # each pair on both sides
            seen.update((ds.tokenizers.source.decode(i), ds.tokenizers.target.decode(t))
                        for i, t in row_pairs.values())
    assert seen == train_pairs


def test_eval_sets(dirs):
    ds = _make(dirs)
    builder = data.NumberWords(config="tiny", data_dir=str(dirs[0]))
    source = builder.as_data_source(split="test")
    evalset = ds.eval["test"]
    assert evalset.pairs == [catalog.record_pair(source[i], "en", "de")
                             for i in range(len(source))]
    index = np.concatenate([b.example_index for b in evalset.batches])
    assert sorted(index[index >= 0].tolist()) == list(range(50))
    for batch, example_index in evalset.batches:
        assert set(batch) == {"inputs", "targets"}  # the model batch; the index lies beside it
        assert batch["inputs"].shape[0] == 16
        for row, i in enumerate(example_index):
            if i < 0:
                assert not batch["inputs"][row].any()
                continue
            assert ds.tokenizers.source.decode(batch["inputs"][row]) == evalset.pairs[i][0]
            assert ds.tokenizers.target.decode(batch["targets"][row]) == evalset.pairs[i][1]
    assert len(_make(dirs, eval_max_examples=10).eval["validation"].pairs) == 10


@pytest.mark.parametrize("policy", ["filter", "truncate"])
def test_length_policy(dirs, policy):
    ds = _make(dirs, max_source_length=6, max_target_length=6, bucket_lengths=(6,),
               length_policy=policy)
    rows = 0
    for batch in ds.train:
        lengths = (batch["inputs"] != 0).sum(axis=1)
        assert lengths.max() <= 6
        real = lengths > 0
        assert (batch["inputs"][real, lengths[real] - 1] == data.EOS_ID).all()
        rows += int(real.sum())
    assert rows < 300 if policy == "filter" else rows == 300


@pytest.mark.parametrize("overrides, match", [
    ({"length_policy": "clip"}, "length_policy"),
    ({"vocab_model_type": "wordpiece"}, "vocab_model_type"),
    ({"packing": True, "pack_length": 8}, "pack_length"),
    ({"bucket_lengths": (8, 16)}, "bucket_lengths"),
    ({"dataset": "no_such_dataset_xyz"}, "dataset"),
    ({"source_lang": "xx"}, "source_lang"),
    ({"eval_splits": ("dev",)}, "split"),
    ({"tokens_per_batch": 4, "batch_size": 0}, "tokens_per_batch"),
    ({"subword_alpha": -0.1}, "subword_alpha"),
    ({"subword_alpha": 0.1, "vocab_model_type": "bpe"}, "subword_alpha: sampled segmentations need a unigram"),
    ({"subword_alpha": 0.1, "subword_nbest": 1}, "subword_nbest"),
])
def test_bad_config_one_line_errors(dirs, overrides, match):
    with pytest.raises(ValueError, match=match) as err:
        _make(dirs, **overrides)
    assert "\n" not in str(err.value)


def test_prefetch_thread_stops_when_iterator_is_dropped(dirs):
    ds = _make(dirs, num_epochs=0, prefetch_batches=2)
    before = threading.active_count()
    it = iter(ds.train)
    next(it)
    assert threading.active_count() > before
    del it
    gc.collect()
    for _ in range(50):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before


def test_prefetch_close_stops_the_thread_and_keeps_the_consumed_state(dirs):
    it = iter(_make(dirs, num_epochs=0, prefetch_batches=2).train)
    next(it)
    running = threading.active_count()
    state = json.loads(json.dumps(it.get_state()))
    expected = _stream(_make(dirs, num_epochs=0), 2)[1]  # the batch after the one taken
    it.close()
    assert threading.active_count() < running
    assert it.get_state() == state  # what the trainer saves after closing: the batch taken last
    resumed = iter(_make(dirs, num_epochs=0, prefetch_batches=2).train)
    resumed.set_state(state)
    assert _same([next(resumed)], [expected])
    resumed.close()


def test_fast_pair_reader_matches_tfds_decoding(dirs):
    builder = data.NumberWords(config="tiny", data_dir=str(dirs[0]))
    builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split="train")
    reader = catalog.PairReader(source, "de", "fr")
    assert reader.uses_fast_path
    index = np.random.default_rng(0).permutation(len(source))[:100]
    assert reader.read(index) == [catalog.record_pair(source[int(i)], "de", "fr") for i in index]
