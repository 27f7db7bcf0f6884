"""The length experiment: four models through the real trainer at tiny size, then the report.

`run_experiment` trains every model on `number_words/tiny` (built in the test's TFDS data dir)
for two steps with tiny widths, and the test checks the report against the predictions files
the trainer wrote and the dataset's own split size; one model runs on `number_lists/short` with
the dataset's own settings (`length.DATASETS`).
"""

import json
import os
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

from model_params import shrink_model
from train import build
from train.experiments import length, length_report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKETS = ((1, 3), (4, 4), (5, None))  # tiny: 1 to 5 source words
STEPS = 2


def tiny(model, config):
    """Test-size widths and batches (8 rows: one per fake device)."""
    del model
    config.data.update(vocab_size=48, bucket_lengths=(24,), tokens_per_batch=192, batch_size_multiple=8,
                       eval_batch_size=16, read_threads=1)
    shrink_model(config)
    config.update(warmup_steps=1, log_every_steps=1, eval_every_steps=100, checkpoint_every_steps=100)
    config.decode.max_length = 12


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    root = tmp_path_factory.mktemp("length")
    data_dir = str(root / "tfds")
    kwargs = dict(steps=STEPS, output=str(root / "docs" / "report"), dataset="number_words/tiny",
                  data_dir=data_dir, buckets=BUCKETS, progress_bar=False, configure=tiny)
    report = length.run_experiment(list(length.MODELS), str(root / "runs"), **kwargs)
    return root, data_dir, kwargs, report


def _own_buckets(rows):
    """Bucket the predictions file independently of length_report."""
    out = [[] for _ in BUCKETS]
    for row in rows:
        words = len(row["source"].split())
        out[0 if words <= 3 else 1 if words == 4 else 2].append(row)
    return out


@pytest.mark.slow
def test_report_files_and_per_bucket_numbers(experiment):
    root, data_dir, _, report = experiment
    output = root / "docs" / "report"
    with open(f"{output}.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(f"{output}.json", encoding="utf-8") as f:
        assert json.load(f) == json.loads(json.dumps(report))
    markdown = (root / "docs" / "report.md").read_text(encoding="utf-8")
    assert "![BLEU, chrF and exact match against source length](report.png)" in markdown

    test_size = tfds.builder("number_words/tiny", data_dir=data_dir).info.splits["test"].num_examples
    assert list(report["models"]) == list(length.MODELS) and report["steps"] == STEPS
    for model, result in report["models"].items():
        assert result["label"] in markdown
        rows = length_report.read_predictions(str(root / "runs" / model / "samples" / f"test_step{STEPS}.jsonl"))
        buckets = result["buckets"]
        assert [b["label"] for b in buckets] == ["1-3", "4", "5+"]
        assert sum(b["count"] for b in buckets) == test_size == len(rows) == result["overall"]["count"]
        for bucket, own in zip(buckets, _own_buckets(rows)):
            assert bucket["count"] == len(own)
            if own:
                assert bucket["exact_match"] == pytest.approx(sum(r["exact"] for r in own) / len(own))
                assert 0.0 <= bucket["bleu"] <= 100.0
            else:
                assert bucket["exact_match"] is None and bucket["bleu"] is None
        assert result["parameters"] > 0 and result["wall_time_s"] > 0


@pytest.mark.slow
def test_rerun_reuses_finished_models_and_keeps_the_reading(experiment):
    root, _, kwargs, report = experiment
    md = root / "docs" / "report.md"
    md.write_text(md.read_text(encoding="utf-8") + "\n## Reading\n\nThe curves are flat.\n", encoding="utf-8")
    again = length.run_experiment(["plain", "transformer"], str(root / "runs"), **kwargs)
    for model in ("plain", "transformer"):  # not retrained: same recorded wall time and scores
        assert again["models"][model] == report["models"][model]
    text = md.read_text(encoding="utf-8")
    assert text.endswith("## Reading\n\nThe curves are flat.\n") and text.count("## Reading") == 1


def test_experiment_configs_are_comparable():
    configs = {m: length.experiment_config(m, steps=100) for m in length.MODELS}
    for config in configs.values():
        build.validate_config(config)
        assert config.num_train_steps == 100
        assert config.data.to_dict() == configs["plain"].data.to_dict()  # same vocabulary and batches
    params = {m: length.count_parameters(c, 256) for m, c in configs.items()}
    assert params["plain"] >= max(params["bahdanau"], params["luong"])
    assert configs["plain"].model.attention == "none" and configs["bahdanau"].model.attention == "bahdanau"


def test_dataset_settings_are_consistent():
    assert length.DEFAULT_DATASET == "number_lists/long" and length.DEFAULT_DATASET in length.DATASETS
    for name, settings in length.DATASETS.items():
        length_report.check_buckets(settings.buckets)
        lengths = settings.bucket_lengths
        assert list(lengths) == sorted(set(lengths)) and lengths[-1] == settings.max_length, name
        config = length.experiment_config("bahdanau", steps=3, dataset=name)
        build.validate_config(config)
        assert config.data.max_source_length == config.data.max_target_length == settings.max_length
        assert tuple(config.data.bucket_lengths) == lengths
        assert config.decode.max_length == settings.decode_max_length
    # The long datasets: lists reach Bahdanau's Fig. 2 range, single numbers stop at 17 words.
    assert length.DATASETS["number_lists/long"].buckets[-1][0] > 50
    assert length.DATASETS["number_words/long"].buckets[-1][0] < 17


def test_unknown_dataset_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"dataset: got 'number_words/medium', expected one of \["):
        length.experiment_config("plain", steps=1, dataset="number_words/medium")
    with pytest.raises(ValueError, match="dataset: got 'wmt'"):
        length.run_experiment(["plain"], "unused", dataset="wmt")


@pytest.mark.slow
def test_number_lists_short_with_the_dataset_settings(tmp_path):
    """Default steps, buckets and lengths come from DATASETS; no test pair is filtered out."""
    def tiny_lists(model, config):
        tiny(model, config)
        config.data.bucket_lengths = length.DATASETS["number_lists/short"].bucket_lengths
        config.data.tokens_per_batch = 256  # 8 rows of 32
        config.decode.max_length = length.DATASETS["number_lists/short"].decode_max_length

    data_dir = str(tmp_path / "tfds")
    report = length.run_experiment(["bahdanau"], str(tmp_path / "runs"), output=str(tmp_path / "report"),
                                   dataset="number_lists/short", data_dir=data_dir, progress_bar=False,
                                   configure=tiny_lists)
    settings = length.DATASETS["number_lists/short"]
    assert report["steps"] == settings.steps
    assert [b["label"] for b in report["buckets"]] == [length_report.bucket_label(b) for b in settings.buckets]
    result = report["models"]["bahdanau"]
    test_size = tfds.builder("number_lists/short", data_dir=data_dir).info.splits["test"].num_examples
    assert result["overall"]["count"] == sum(b["count"] for b in result["buckets"]) == test_size
    assert all(b["count"] > 0 for b in result["buckets"])  # every word bucket is populated


def test_bucket_scores_hand_computed():
    rows = [{"source": "one", "reference": "eins", "hypothesis": "eins"},
            {"source": "twenty one", "reference": "einundzwanzig", "hypothesis": "zwanzig"},
            {"source": "a b c d e f", "reference": "x y", "hypothesis": "x  y"}]
    out = length_report.bucket_scores(rows, ((1, 1), (2, 5), (6, None)))
    assert [(b["label"], b["count"], b["exact_match"]) for b in out] == [("1", 1, 1.0), ("2-5", 1, 0.0), ("6+", 1, 1.0)]
    assert out[0]["bleu"] == pytest.approx(100.0) and out[1]["bleu"] == pytest.approx(0.0)


@pytest.mark.parametrize("buckets, message", [
    ((), "at least one"),
    (((2, 4), (5, None)), "starts at 2, expected 1"),
    (((1, 4), (6, None)), "starts at 6, expected 5"),
    (((1, 4), (5, 9)), "open-ended"),
])
def test_bad_buckets(buckets, message):
    with pytest.raises(ValueError, match=message):
        length_report.check_buckets(buckets)


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match=r"unknown \['rnn'\]"):
        length.parse_models(["plain", "rnn"])


@pytest.mark.slow  # the command line as a subprocess
def test_unknown_model_is_a_one_line_error(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "train.experiments.length", "--models=plain,rnn", f"--workdir={tmp_path / 'runs'}",
         f"--output={tmp_path / 'report'}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: models: got unknown ['rnn']"), result.stderr
    assert not os.path.exists(tmp_path / "runs") and not os.path.exists(tmp_path / "report.png")
