"""Translation as a tool (train.translation, `--mode=translate` / `--mode=score`) on one tiny trained run.

One tiny Transformer is trained once for the module (number_words/tiny, a few steps: its
translations are poor but differ between sentences, which is all these tests need).
"""

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from jaxattn import decoding
from model_params import shrink_model
from train import evaluation, loop, modes, quiet, translation
from train.configs import transformer
from train.data import number_words as nw
from train.data import tokenizer as tk
from train.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Mixed lengths, blank and whitespace-only lines; the long one needs a bucket above the run's 24.
SENTENCES = ["five", "", "seven hundred and seventy seven", "   ", "twelve",
             " ".join(["one hundred and one"] * 6), "forty two", "nine hundred and ninety nine"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(config, workdir) of a tiny trained Transformer."""
    workdir = str(tmp_path_factory.mktemp("translation") / "run")
    config = transformer.get_config()
    config.data.update(dataset="number_words/tiny", data_dir=str(tmp_path_factory.mktemp("tfds")), vocab_size=48,
                       max_source_length=24, max_target_length=24, bucket_lengths=(24,), tokens_per_batch=192,
                       batch_size_multiple=8, eval_batch_size=16, eval_max_examples=16)
    shrink_model(config)
    config.update(num_train_steps=40, warmup_steps=2, log_every_steps=20, eval_every_steps=100,
                  checkpoint_every_steps=100, num_samples=0, num_heatmaps=0, progress_bar=False)
    config.decode.max_length = 12
    loop.train_and_evaluate(config, workdir)
    return config, workdir


@pytest.fixture(scope="module")
def trained(run):
    return modes.load_trained(*run)


@pytest.fixture(scope="module")
def batched(trained):
    """Two sentences a batch: several batches, sorted, with a padding row in the last."""
    return translation.Translator(trained, batch_size=2)


@pytest.fixture(scope="module")
def alone(trained):
    """The CLI's default batch size: one sentence is a batch of one row."""
    return translation.Translator(trained)


def _with_decode(trained, **fields):
    config = ml_collections.ConfigDict(trained.config.to_dict())
    config.decode.update(fields)
    return dataclasses.replace(trained, config=config)


def _tidy(text: str) -> bool:
    return text == " ".join(text.split())


def test_decode_leaves_no_stray_spaces():
    texts = [nw.number_to_words(n, "en") for n in range(0, 2000, 7)]
    tok = tk.train_sentencepiece(texts + [f"({t})" for t in texts[:40]], vocab_size=64)
    space = tok._sp.piece_to_id("▁")
    assert space != tk.UNK_ID  # a lone "▁" piece exists, as in real vocabularies
    five, two = tok.encode("five", add_eos=False).tolist(), tok.encode("two", add_eos=False).tolist()
    ids = [space, *five, space, *two, tk.UNK_ID, space, tk.EOS_ID, tk.PAD_ID]
    raw = tok._sp.decode(ids[:-2])  # a lone "▁" before "▁word" and at the end, "<unk>" as " ⁇ "
    assert "  " in raw and raw.endswith(" ")
    assert tok.decode(ids) == "five two ⁇"
    assert tok.decode_batch(np.asarray([ids, [*five, tk.EOS_ID] + [0] * (len(ids) - len(five) - 1)])) == [
        "five two ⁇", "five"]
    for text in texts[::25]:
        assert tok.decode(tok.encode(text)) == text


def test_decode_lengths_by_hand():
    cfg = ml_collections.ConfigDict({"max_length": 40, "max_length_a": 2.0, "max_length_b": 10})
    np.testing.assert_array_equal(evaluation.decode_lengths(np.array([1, 5, 15, 30]), cfg), [12, 20, 40, 40])
    cfg.update(max_length_a=1.5, max_length_b=1)
    assert int(evaluation.decode_lengths(3, cfg)) == 5  # floor(5.5)
    cfg.update(max_length_a=0.0, max_length_b=0)
    assert int(evaluation.decode_lengths(7, cfg)) == 1  # at least one token


@pytest.mark.slow
def test_blank_lines_order_and_batching(batched, alone):
    outputs = batched.translate(SENTENCES)
    assert outputs == [alone.translate([s])[0] for s in SENTENCES]  # sorting, batching, padding change nothing
    assert outputs[1] == outputs[3] == "" and len(set(outputs)) > 2  # the model tells sentences apart
    assert all(_tidy(o) for o in outputs)


@pytest.mark.slow
def test_train_lib_translate_delegates(run, alone):
    assert modes.translate(*run, ["", "five"]) == alone.translate(["", "five"])


@pytest.mark.slow
def test_translations_equal_the_evaluators(run, trained, batched):
    path = os.path.join(run[1], "samples", f"validation_step{trained.step}.jsonl")
    rows = [json.loads(line) for line in open(path, encoding="utf-8")][:8]
    outputs = batched.translate([r["source"] for r in rows])
    assert outputs == [r["hypothesis"] for r in rows]


@pytest.mark.slow
def test_nbest_scores_descend_and_the_first_is_beam_search_best(trained, batched):
    k, sentences = 3, ["five", "", "seven hundred and seventy seven", "twelve"]
    nbest = batched.nbest(sentences, k)
    assert [len(h) for h in nbest] == [k] * len(sentences)
    assert nbest[1] == [translation.Hypothesis("", -np.inf)] * k
    for hypotheses in nbest[:1] + nbest[2:]:
        scores = [h.score for h in hypotheses]
        assert np.all(np.isfinite(scores)) and scores == sorted(scores, reverse=True)
    tok, decode = trained.tokenizers, trained.config.decode
    inputs = tok.source.encode_batch(sentences[:1] + sentences[2:], length=24)  # [B, S]
    # decode.max_length = 12 <= 2 * S + 10: the relative limit never binds, the search is beam_search's.
    best = decoding.beam_search(trained.model, trained.params, inputs, max_len=decode.max_length,
                                beam_size=max(k, decode.beam_size), alpha=decode.alpha)  # [B, T']
    assert [h[0].text for h in nbest[:1] + nbest[2:]] == tok.target.decode_batch(np.asarray(best))
    lines = translation.nbest_lines(nbest)
    assert len(lines) == k * len(sentences) and lines[k].startswith("1\t1\t-inf\t")
    index, rank, score, text = lines[1].split("\t")
    assert (index, rank, text) == ("0", "2", nbest[0][1].text) and float(score) == pytest.approx(nbest[0][1].score)


@pytest.mark.slow
def test_relative_max_length_cuts_each_row(trained):
    short = translation.Translator(_with_decode(trained, max_length_a=0.0, max_length_b=1), batch_size=2)
    outputs = short.translate(SENTENCES[:5])
    assert all(len(trained.tokenizers.target.encode(o, add_eos=False)) <= 1 for o in outputs)
    decode = _with_decode(trained, max_length_a=1.0, max_length_b=0, max_length=12).config.decode
    tok = trained.tokenizers.source
    texts = ("five", "seven hundred and seventy seven")
    ids = [tok.encode(s) for s in texts]
    inputs = tok.encode_batch(texts, length=24)                                # [B, S]
    tokens = np.asarray(evaluation.make_decode_fn(trained.model, decode)(trained.params, inputs))  # [B, T']
    assert tokens.shape == (2, 12)  # the search ran to min(a * 24 + b, max_length) for the padded width
    for row, e in zip(tokens, ids):  # each row = greedy search bounded by its own limit, S tokens
        source = np.pad(e, (0, 24 - len(e)))[None]                             # [1, 24]
        alone = np.asarray(decoding.greedy_decode(trained.model, trained.params, source, max_len=len(e)))[0]  # [S]
        np.testing.assert_array_equal(row, np.pad(alone, (0, 12 - len(e))))


@pytest.mark.slow
def test_score_equals_a_hand_computation(trained, batched):
    pairs = [("five", "fünf"), None, ("seven hundred and seventy seven", "siebenhundertsiebenundsiebzig"),
             ("twelve", "")]
    scores = batched.score(pairs)  # two batches, the second with a padding row
    assert scores[1] is None
    tok = trained.tokenizers
    inputs = tok.source.encode_batch([p[0] for p in pairs if p])              # [B, S]
    padded = tok.target.encode_batch([p[1] for p in pairs if p])              # [B, T]
    targets = [tok.target.encode(p[1]) for p in pairs if p]
    apply = jax.jit(lambda p, x, y: trained.model.apply({"params": p}, x, y, train=False))
    logits = np.asarray(apply(trained.params, inputs, padded), np.float64)    # [B, T, V]
    for score, target, row in zip([s for s in scores if s], targets, logits):
        row = row[:len(target)]                                               # [T_i, V]
        log_z = np.log(np.sum(np.exp(row - row.max(-1, keepdims=True)), -1)) + row.max(-1)  # [T_i]
        total = float(np.sum(row[np.arange(len(target)), target] - log_z))
        assert score.total == pytest.approx(total, abs=1e-4) and total < 0
        assert score.mean == pytest.approx(total / len(target), abs=1e-5)
    assert translation.score_lines(scores)[1] == "" and translation.score_lines(scores)[0] == (
        f"{scores[0].total:.6f}\t{scores[0].mean:.6f}")


def test_malformed_pair_names_its_line():
    assert translation.parse_pairs(["a\tb", "", "c\t"], "stdin") == [("a", "b"), None, ("c", "")]
    with pytest.raises(UserError, match=r"pairs.tsv line 2: got 1 tab-separated field\(s\), expected 2"):
        translation.parse_pairs(["a\tb", "no tab here"], "pairs.tsv")


def test_output_file_replaced_only_on_success(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")

    def failing():
        yield "first"
        raise RuntimeError("the run fails half way")
    with pytest.raises(RuntimeError):
        translation.write_lines(failing(), str(path))
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["out.txt"]
    translation.write_lines(["a", "", "b"], str(path))
    assert path.read_text() == "a\n\nb\n" and os.listdir(tmp_path) == ["out.txt"]
    with pytest.raises(UserError, match="--output_file: directory"):
        translation.check_output_file(str(tmp_path / "missing" / "out.txt"))


@pytest.mark.parametrize("message", ["Given directory is read only=/runs/x/checkpoints",
                                     "Using custom data configuration: parallel_corpus_3f2a"])
def test_routine_library_notices_are_dropped_real_warnings_kept(message):
    absl_logger = logging.getLogger("absl")
    before = list(absl_logger.filters)
    try:
        quiet.install()
        assert not absl_logger.filter(logging.LogRecord("absl", logging.WARNING, __file__, 1, message, None, None))
        assert absl_logger.filter(logging.LogRecord("absl", logging.WARNING, __file__, 1, "disk almost full",
                                                    None, None))
    finally:
        absl_logger.filters[:] = before


def _cli(workdir, *args, stdin=""):
    # The suite's compilation cache (tests/conftest.py) holds what the tests above compiled.
    return subprocess.run([sys.executable, "-m", "train.translate", f"--workdir={workdir}", *args], input=stdin,
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def _no_library_warnings(stderr: str) -> None:
    assert not re.search(r"^[WEF]\d{4} ", stderr, re.MULTILINE), stderr  # absl warning / error lines
    assert not re.search(r"\w+Warning:", stderr), stderr                  # Python warnings


@pytest.mark.slow
def test_cli_stdin_to_stdout(run, alone):
    _, workdir = run
    lines = ["five", "", "seventy two", "  ", "twelve"]
    done = _cli(workdir, "--mode=translate", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == alone.translate(lines)
    _no_library_warnings(done.stderr)


@pytest.mark.slow
def test_cli_input_and_output_files_nbest(run, alone, tmp_path):
    _, workdir = run
    lines = ["five", "", "twelve"]
    source, output = tmp_path / "in.txt", tmp_path / "out.txt"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    output.write_text("old\n")
    done = _cli(workdir, "--mode=translate", "--nbest=2", f"--input_file={source}", f"--output_file={output}")
    assert done.returncode == 0 and done.stdout == "", done.stderr
    got = [line.split("\t") for line in output.read_text(encoding="utf-8").split("\n")[:-1]]
    want = alone.nbest(lines, 2)
    assert [(int(i), int(rank), text) for i, rank, _, text in got] == [
        (i, rank, h.text) for i, hs in enumerate(want) for rank, h in enumerate(hs, 1)]
    np.testing.assert_allclose([float(score) for _, _, score, _ in got], [h.score for hs in want for h in hs],
                               atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["in.txt", "out.txt"]
    _no_library_warnings(done.stderr)


@pytest.mark.slow
def test_cli_score_and_a_failed_run(run, alone, tmp_path):
    _, workdir = run
    pairs = [("five", "fünf"), None, ("twelve", "zwölf")]
    done = _cli(workdir, "--mode=score", stdin="five\tfünf\n\ntwelve\tzwölf\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == translation.score_lines(alone.score(pairs))
    _no_library_warnings(done.stderr)
    output = tmp_path / "scores.txt"
    output.write_text("old\n")
    failed = _cli(workdir, "--mode=score", f"--output_file={output}", stdin="five\tfünf\nno tab\n")
    assert failed.returncode == 1 and failed.stderr.strip().splitlines() == [
        "error: stdin line 2: got 1 tab-separated field(s), expected 2 (source<TAB>target): 'no tab'"]
    assert output.read_text() == "old\n" and os.listdir(tmp_path) == ["scores.txt"]


@pytest.mark.slow
def test_cli_translation_loads_no_training_data_pipeline(run, alone, tmp_path):
    """Translating reads only the vocabulary: grain and TFDS (0.7 s of imports) stay unloaded."""
    _, workdir = run
    report = tmp_path / "modules.txt"
    driver = ("import atexit, runpy, sys\n"
              f"atexit.register(lambda: open({str(report)!r}, 'w').write('\\n'.join(sorted(sys.modules))))\n"
              "runpy.run_module('train.translate', run_name='__main__', alter_sys=True)\n")
    done = subprocess.run([sys.executable, "-c", driver, f"--workdir={workdir}", "--mode=translate", "--sentence=five"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == alone.translate(["five"])[0] + "\n"
    loaded = set(report.read_text().split())
    assert "train.translation" in loaded and not loaded & {"grain", "tensorflow_datasets"}, sorted(
        m for m in loaded if m.split(".")[0] in ("grain", "tensorflow_datasets"))[:5]


@pytest.fixture(scope="module")
def twin(run, tmp_path_factory):
    """A copy of the run in another workdir: the same model, vocabulary and parameters."""
    workdir = str(tmp_path_factory.mktemp("twin") / "run")
    shutil.copytree(run[1], workdir)
    return workdir


def test_an_ensemble_of_the_model_with_itself_translates_and_scores_as_the_model(run, alone, twin):
    config, workdir = run
    trained = modes.load_trained(config, workdir, ensemble=[twin])
    assert type(trained.model).__name__ == "Ensemble" and set(trained.params) == {"members_0", "members_1"}
    both = translation.Translator(trained)
    assert both.translate(SENTENCES) == alone.translate(SENTENCES)
    got, want = both.nbest(SENTENCES[:3], 2), alone.nbest(SENTENCES[:3], 2)
    assert [[h.text for h in hs] for hs in got] == [[h.text for h in hs] for hs in want]
    pairs = [("five", "fünf"), None, ("twelve", "zwölf")]
    np.testing.assert_allclose([s.total for s in both.score(pairs) if s], [s.total for s in alone.score(pairs) if s],
                               rtol=1e-5)


def test_ensemble_members_must_share_the_vocabulary(run, twin, tmp_path):
    config, workdir = run
    other = str(tmp_path / "other")
    shutil.copytree(twin, other)
    texts = [nw.number_to_words(n, lang) for n in range(200) for lang in ("en", "fr")]
    tk.train_sentencepiece(texts, vocab_size=48).save(os.path.join(other, "vocab", "shared.model"))
    with pytest.raises(UserError, match=r"^--ensemble: '.*other' has another vocabulary than"):
        modes.load_trained(config, workdir, ensemble=[other])
    with pytest.raises(UserError, match=r"^--ensemble: '.*' is --workdir itself"):
        modes.load_trained(config, workdir, ensemble=[workdir])


@pytest.mark.slow
def test_cli_ensemble(run, alone, twin):
    _, workdir = run
    lines = ["five", "", "seventy two"]
    done = _cli(workdir, "--mode=translate", f"--ensemble={twin}", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:-1] == alone.translate(lines)
    assert "Ensemble member" in done.stderr
    refused = _cli(workdir, "--mode=align", f"--ensemble={twin}", stdin="five\tfünf\n")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines() == [
        "error: --ensemble: for --mode=eval, translate or score, got --mode=align"]
