"""benchmarks/topic_split.py: the topic's pairs held out and split, every other pair kept in order."""

import importlib.util
import pathlib

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "topic_split", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "topic_split.py")
topic_split = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(topic_split)


def test_splits_by_whole_topic_words(tmp_path, capsys):
    lines = [f"Open image {i}\tOuvrir l'image {i}" for i in range(10)] + [
        f"Save file {i}\tEnregistrer le fichier {i}" for i in range(5)] + ["Imagery\tImagerie", "LAYER 2\tCalque 2"]
    (tmp_path / "train.tsv").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    topic_split.main(["--inputs", str(tmp_path / "train.tsv"), "--output_dir", str(tmp_path / "out"),
                      "--words", "image layer", "--test", "3", "--dev", "2"])
    read = lambda name: (tmp_path / "out" / name).read_text(encoding="utf-8").splitlines()  # noqa: E731
    held = read("topic_test.tsv") + read("topic_dev.tsv") + read("topic_train.tsv")
    assert sorted(held) == sorted(lines[:10] + ["LAYER 2\tCalque 2"])  # whole words, any case
    assert [len(read(f"topic_{s}.tsv")) for s in ("test", "dev", "train")] == [3, 2, 6]
    assert read("other_train.tsv") == lines[10:16]  # "Imagery" is not "image"
    assert "topic_train.tsv: 6 pairs" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="error: --test \\+ --dev: 20 pairs held out, but the topic has only 11"):
        topic_split.main(["--inputs", str(tmp_path / "train.tsv"), "--output_dir", str(tmp_path / "o2"),
                          "--words", "image layer", "--test", "10", "--dev", "10"])
