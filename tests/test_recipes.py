"""benchmarks/recipes.py: the study's splits, its staged (resumed) runs and its resumable results.

The runs are real `python -m train.translate` launches on a generated number-words corpus, at
test size (the `--override` flags) and with budgets of seconds.
"""

import importlib.util
import json
import lzma
import pathlib

import pytest
from shared import one_device_xla_flags

from train.data.number_words import number_to_words

_SPEC = importlib.util.spec_from_file_location(
    "recipes", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "recipes.py")
recipes = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(recipes)

TINY = ["model.embed_dim=16", "model.hidden_size=16", "model.decoder_hidden_size=16", "data.vocab_size=64",
        "data.max_source_length=24", "data.max_target_length=24", "data.bucket_lengths=(24,)",
        "data.tokens_per_batch=256", "decode.max_length=16", "data.read_threads=1"]


def _corpus(path, count: int) -> None:
    with lzma.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(f"{number_to_words(i, 'en')}\t{number_to_words(i, 'de')}\n" for i in range(count)))


def test_splits_by_line_order_and_leaves_the_corpus_alone(tmp_path):
    _corpus(tmp_path / "pairs.tsv.xz", 100)
    before = (tmp_path / "pairs.tsv.xz").read_bytes()
    paths = recipes.split_corpus(str(tmp_path / "pairs.tsv.xz"), str(tmp_path / "data"), test=20, dev=5)
    lines = {name: open(path, encoding="utf-8").read().splitlines() for name, path in paths.items()}
    assert [line.split("\t")[0] for line in lines["test"]] == [number_to_words(i, "en") for i in range(20)]
    assert [line.split("\t")[0] for line in lines["dev"]] == [number_to_words(i, "en") for i in range(20, 25)]
    assert [line.split("\t")[0] for line in lines["train"]] == [number_to_words(i, "en") for i in range(40, 100)]
    assert (tmp_path / "pairs.tsv.xz").read_bytes() == before


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: --models: unknown lstm; expected any of transformer_recipe"):
        recipes.main(["--corpus", str(tmp_path / "x.tsv"), "--workdir", str(tmp_path), "--models=lstm"])
    with pytest.raises(SystemExit, match=r"^error: --corpus: .*x\.tsv does not exist$"):
        recipes.main(["--corpus", str(tmp_path / "x.tsv"), "--workdir", str(tmp_path)])


@pytest.mark.slow
def test_each_mark_is_scored_once_then_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", one_device_xla_flags())
    _corpus(tmp_path / "pairs.tsv.xz", 300)
    study = tmp_path / "study"
    argv = ["--corpus", str(tmp_path / "pairs.tsv.xz"), "--workdir", str(study), "--models=bahdanau", "--cores=1",
            "--minutes=0.1,0.05", "--test=30", "--dev=20", "--output", str(tmp_path / "table.md"),
            "--plot", str(tmp_path / "chrf.png"), *(f"--override={kv}" for kv in TINY)]
    recipes.main(argv)
    cells = json.loads((study / "results.json").read_text())
    assert sorted(cells) == ["bahdanau/1/0.05", "bahdanau/1/0.1"]
    first, second = cells["bahdanau/1/0.05"], cells["bahdanau/1/0.1"]
    assert 0 < first["step"] < second["step"]  # the second stage resumed the first run and trained on
    for cell in (first, second):
        for key in ("chrf", "bleu", "greedy_chrf", "greedy_bleu"):
            assert 0.0 <= cell[key] <= 100.0, (key, cell)
    table = (tmp_path / "table.md").read_text()
    assert "| model | cores | 0.05 min | 0.1 min |" in table
    assert f"| bahdanau | 1 | {first['chrf']:.1f} / {first['bleu']:.1f} ({first['greedy_chrf']:.1f}) |" in table
    assert (tmp_path / "chrf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    log = (study / "runs" / "bahdanau_1core.log").read_text()
    launches = [line for line in log.splitlines() if line.startswith("$ ")]
    assert len(launches) == 4 and sum("--mode=eval" in line for line in launches) == 2
    assert sum("--config.max_train_minutes=0.05" in line for line in launches) == 2  # 0.05, then 0.1 - 0.05
    recipes.main(argv)  # every cell is measured: nothing runs again
    assert (study / "runs" / "bahdanau_1core.log").read_text() == log
    assert json.loads((study / "results.json").read_text()) == cells
