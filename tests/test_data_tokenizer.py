"""SentencePiece tokenizers: fixed special ids, round trip, reuse and mismatch errors."""
import os

import numpy as np
import pytest

import jaxattn
from jaxattn.models import RNNConfig, TransformerConfig
from train import data
from train.data import number_words as nw
from train.data import tokenizer as tk

_EN = [nw.number_to_words(n, "en") for n in range(0, 2000, 3)]
_DE = [nw.number_to_words(n, "de") for n in range(0, 2000, 3)]


@pytest.fixture(scope="module")
def tok():
    return tk.train_sentencepiece(_EN + _DE, vocab_size=96)


def test_special_ids_fixed(tok):
    assert (data.PAD_ID, data.UNK_ID, data.BOS_ID, data.EOS_ID) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tok.vocab_size == 96


def test_vocabularies_and_models_share_one_set_of_special_ids():
    ids = (jaxattn.PAD_ID, jaxattn.BOS_ID, jaxattn.EOS_ID)
    assert (data.PAD_ID, data.BOS_ID, data.EOS_ID) == (tk.PAD_ID, tk.BOS_ID, tk.EOS_ID) == ids
    assert data.UNK_ID == tk.UNK_ID == jaxattn.UNK_ID
    for config in (TransformerConfig.tiny(96), RNNConfig.tiny(96)):
        assert (config.pad_id, config.bos_id, config.eos_id) == ids, type(config).__name__


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_round_trip(model_type):
    tok = tk.train_sentencepiece(_EN + _DE, vocab_size=80, model_type=model_type)
    for text in ["seven hundred and twelve", "siebenhundertzwölf", "neunzehn", _DE[-1]]:
        ids = tok.encode(text)
        assert ids.dtype == np.int32 and ids[-1] == data.EOS_ID
        assert data.BOS_ID not in ids.tolist() and data.PAD_ID not in ids.tolist()
        assert tok.decode(ids) == text
        assert tok.decode(np.concatenate([ids, [0, 0]])) == text  # padding ignored
    assert tok.decode_batch(tok.encode_batch(["one", "zwei"], length=12)) == ["one", "zwei"]


def test_encode_batch_is_encode_per_row_then_zero_padding(tok):
    texts = ["seven hundred and twelve", "one", "", "neunzehn"]
    rows = [tok.encode(t) for t in texts]
    batch = tok.encode_batch(texts)                                        # [B, L]
    assert batch.dtype == np.int32 and batch.shape == (4, max(map(len, rows)))
    for row, ids in zip(batch, rows):
        np.testing.assert_array_equal(row[:len(ids)], ids)                 # eos-terminated
        np.testing.assert_array_equal(row[len(ids):], data.PAD_ID)
    assert tok.decode_batch(batch) == texts
    wide = tok.encode_batch(texts, add_eos=False, length=20)               # [B, 20]
    assert wide.shape == (4, 20) and data.EOS_ID not in wide
    for row, ids in zip(wide, rows):
        np.testing.assert_array_equal(row, np.pad(ids[:-1], (0, 21 - len(ids))))
    assert tok.encode_batch([]).shape == (0, 0)
    with pytest.raises(ValueError, match=rf"rows: the longest has {max(map(len, rows))} ids, expected at most length=3"):
        tok.encode_batch(texts, length=3)
    with pytest.raises(ValueError, match="texts: expected a sequence of strings"):
        tok.encode_batch("one")


def test_pad_rows():
    out = tk.pad_rows([[5, 3], np.array([7, 8, 3], np.int32)], num_rows=3)  # [3, 3]
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[5, 3, 0], [7, 8, 3], [0, 0, 0]])
    np.testing.assert_array_equal(tk.pad_rows([[5]], length=4), [[5, 0, 0, 0]])
    assert tk.pad_rows([], length=2, num_rows=1).tolist() == [[0, 0]]
    with pytest.raises(ValueError, match="num_rows: got 1, expected at least the 2 rows given"):
        tk.pad_rows([[1], [2]], num_rows=1)


def test_decode_stops_at_eos(tok):
    ids = np.concatenate([tok.encode("one"), tok.encode("two")])
    assert tok.decode(ids) == "one"


def test_soft_vocab_limit_on_tiny_corpus():
    tok = tk.train_sentencepiece(["a b", "b a"], vocab_size=1000)
    assert tok.vocab_size < 1000
    assert tok.decode(tok.encode("a b")) == "a b"


def _load(vocab_dir, **overrides):
    kwargs = dict(shared=True, vocab_size=64, model_type="unigram", character_coverage=1.0,
                  dataset_id="number_words/tiny:en->de", source_texts=lambda: _EN,
                  target_texts=lambda: _DE)
    kwargs.update(overrides)
    return tk.load_or_train_tokenizers(str(vocab_dir), **kwargs)


def test_reused_and_never_overwritten(tmp_path):
    first = _load(tmp_path)
    assert first.shared and os.path.exists(tmp_path / "shared.model")
    before = (tmp_path / "shared.model").read_bytes()

    def no_training():
        raise AssertionError("retrained")
    again = _load(tmp_path, source_texts=no_training, target_texts=no_training)
    assert again.fingerprint() == first.fingerprint()
    with pytest.raises(ValueError, match="never overwritten"):
        _load(tmp_path, vocab_size=128)
    with pytest.raises(ValueError, match="never overwritten"):
        _load(tmp_path, dataset_id="number_words/tiny:en->fr")
    assert (tmp_path / "shared.model").read_bytes() == before


def test_separate_vocabularies(tmp_path):
    toks = _load(tmp_path, shared=False)
    loaded = tk.load_tokenizers(str(tmp_path), shared=False)
    assert loaded.fingerprint() == toks.fingerprint()
    with pytest.raises(ValueError, match="missing vocabulary"):
        tk.load_tokenizers(str(tmp_path), shared=True)
    assert not toks.shared
    assert toks.source.fingerprint != toks.target.fingerprint
    source_pieces = "".join(toks.source.id_to_piece(i) for i in range(toks.source.vocab_size))
    target_pieces = "".join(toks.target.id_to_piece(i) for i in range(toks.target.vocab_size))
    assert "ü" not in source_pieces and "ü" in target_pieces  # English vs German vocabulary


def test_fingerprint_check(tmp_path):
    toks = _load(tmp_path / "a")
    toks.check(toks.fingerprint())
    other = _load(tmp_path / "b", vocab_size=48)
    with pytest.raises(ValueError, match="tokenizer"):
        toks.check(other.fingerprint())


def test_bad_arguments():
    with pytest.raises(ValueError, match="model_type"):
        tk.train_sentencepiece(_EN, vocab_size=64, model_type="wordpiece")
    with pytest.raises(ValueError, match="texts"):
        tk.train_sentencepiece(["", ""], vocab_size=64)


def test_sampled_segmentations(tok):
    text = "seven hundred and seventy seven"
    draws = [tuple(tok.sample_encode(text, alpha=0.1, nbest=16, rng=np.random.default_rng(i))) for i in range(40)]
    assert all(d[-1] == tk.EOS_ID and tok.decode(np.asarray(d)) == text for d in draws)  # the same text
    assert len(set(draws)) > 3  # in several segmentations
    again = [tuple(tok.sample_encode(text, alpha=0.1, nbest=16, rng=np.random.default_rng(i))) for i in range(40)]
    assert again == draws  # a generator seeded alike draws alike
    best = tuple(tok.encode(text))
    sharp = [tuple(tok.sample_encode(text, alpha=50.0, nbest=16, rng=np.random.default_rng(i))) for i in range(20)]
    assert sharp.count(best) >= 18  # a large alpha leaves the best segmentation nearly alone
    assert tok.sample_encode("", alpha=0.1, nbest=16, rng=np.random.default_rng(0)).tolist() == [tk.EOS_ID]
