"""train.evaluation scores: exact match, BLEU and chrF on hand-checkable corpora; the cut of
decoded rows at their length limit and first <eos>, with the special ids they are given."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import EOS_ID, PAD_ID
from train import evaluation


def test_is_exact_ignores_only_whitespace():
    assert evaluation.is_exact("zwei und  zwanzig ", " zwei und zwanzig")
    assert not evaluation.is_exact("zweiundzwanzig", "zwei und zwanzig")
    assert not evaluation.is_exact("Zwanzig", "zwanzig")


def test_corpus_scores_by_hand():
    scores = evaluation.corpus_scores(["einundzwanzig", "sieben", "drei"], ["einundzwanzig", "sieben", "vier"])
    assert scores["exact_match"] == pytest.approx(2 / 3)
    perfect = evaluation.corpus_scores(["einundzwanzig", "sieben"], ["einundzwanzig", "sieben"])
    # One-word sentences: effective-order BLEU is 100 when perfect (plain BLEU would be 0).
    assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0), "exact_match": 1.0}
    assert evaluation.corpus_scores([], []) == {"bleu": 0.0, "chrf": 0.0, "exact_match": 0.0}
    with pytest.raises(ValueError, match="hypotheses: got 1, expected 2"):
        evaluation.corpus_scores(["a"], ["a", "b"])


def test_predictions_and_samples_mark_the_same_rows(tmp_path):
    rows = [{"index": 0, "source": "seven", "reference": "sieben", "hypothesis": "sieben "},
            {"index": 1, "source": "three", "reference": "drei", "hypothesis": "vier"}]
    path = evaluation.write_predictions(str(tmp_path / "p.jsonl"), rows)
    records = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert [r["exact"] for r in records] == [True, False]
    assert records[1] == {"index": 1, "source": "three", "reference": "drei", "hypothesis": "vier", "exact": False}
    lines = evaluation.write_samples(str(tmp_path / "s.txt"), rows, limit=1)
    assert len(lines) == 1 and lines[0].startswith("[=] seven")
    assert open(tmp_path / "s.txt", encoding="utf-8").read().splitlines()[1].startswith("[x] three")


def test_within_limits_ranks_what_fits_and_pads_with_the_given_id():
    e = EOS_ID
    seqs = jnp.asarray([[[5, 6, e, 0], [5, e, 0, 0]]], jnp.int32)                     # [1, 2, 4]
    scores = jnp.asarray([[-1.0, -2.0]])                                             # [1, 2]
    out, out_scores = evaluation._within_limits(seqs, scores, jnp.asarray([2]), eos_id=e, pad_id=7)
    np.testing.assert_array_equal(out, [[[5, e, 7, 7], [5, 6, 7, 7]]])  # the one ending in 2 first
    np.testing.assert_array_equal(out_scores, [[-2.0, -np.inf]])  # the cut one: no score


@pytest.mark.parametrize("pad_id, eos_id", [(PAD_ID, EOS_ID), (1, 9)])
def test_until_eos_strips_padding_and_cuts_after_the_first_eos(pad_id, eos_id):
    ids = np.asarray([5, pad_id, eos_id, 6, eos_id, pad_id])
    np.testing.assert_array_equal(evaluation.until_eos(ids, pad_id=pad_id, eos_id=eos_id), [5, eos_id])
    np.testing.assert_array_equal(evaluation.until_eos(ids[:2], pad_id=pad_id, eos_id=eos_id), [5])
