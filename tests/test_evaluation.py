"""train.evaluation scores: exact match, BLEU and chrF on hand-checkable corpora."""

import json

import pytest

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
