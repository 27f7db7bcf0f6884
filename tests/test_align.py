"""Word alignments from attention (`train.align`, `--mode=align`, `--mode=translate --align`).

The pieces-to-words arithmetic and AER are checked on hand-made weights whose answer is known;
the Aligner and the command line on the suite's tiny trained Transformer and on randomly
initialised RNNs (the plain one has no attention: a one-line error).
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxattn.models import build_model
from model_params import shrink_model
from train import align, build, modes, saved_config
from train.configs import rnn_bahdanau, rnn_plain
from train.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_word_index_starts_a_word_at_each_space_marker():
    assert align.word_index(["▁for", "ty", "▁two", "▁", "5"]).tolist() == [0, 0, 1, 2, 2]
    assert align.word_index(["ty", "▁two"]).tolist() == [0, 1]  # the first piece always starts a word
    assert align.word_index([]).tolist() == []


def test_word_weights_sum_or_max_over_source_pieces_and_mean_over_target_pieces():
    weights = np.array([[0.1, 0.2, 0.7],    # target piece 0 (word 0)
                        [0.3, 0.3, 0.4],    # target piece 1 (word 1)
                        [0.5, 0.1, 0.4]])   # target piece 2 (word 1)
    source_words, target_words = np.array([0, 0, 1]), np.array([0, 1, 1])
    np.testing.assert_allclose(align.word_weights(weights, source_words, target_words, "sum"),
                               [[0.3, 0.7], [0.6, 0.4]])
    np.testing.assert_allclose(align.word_weights(weights, source_words, target_words, "max"),
                               [[0.2, 0.7], [0.4, 0.4]])
    with pytest.raises(UserError, match=r"align.subwords: got 'mean', expected one of \['sum', 'max'\]"):
        align.word_weights(weights, source_words, target_words, "mean")


def test_links_take_each_target_words_heaviest_source_word_in_pharaoh_order():
    pairs = align.links(np.array([[0.3, 0.7], [0.6, 0.4], [0.1, 0.9]]))
    assert pairs == [(0, 1), (1, 0), (1, 2)]
    assert align.pharaoh(pairs) == "0-1 1-0 1-2"
    assert align.links(np.zeros((0, 3))) == [] and align.pharaoh([]) == ""
    weights = np.array([[0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])  # [J, I]: source word 0 weighs most in target word 1
    assert align.links(weights, "source") == [(0, 1), (1, 2)]
    assert align.links(weights, "union") == [(0, 1), (1, 0), (1, 2)]
    assert align.links(weights, "intersection") == [(0, 1), (1, 2)]
    with pytest.raises(UserError, match=r"align.method: got 'grow'"):
        align.links(weights, "grow")


def test_alignment_error_rate_is_och_and_neys():
    sure = [{(0, 0), (1, 1)}, {(0, 0)}]
    assert align.alignment_error_rate(sure, sure) == 0.0
    assert align.alignment_error_rate([{(0, 1), (1, 0)}, {(1, 1)}], sure) == 1.0
    # A = {(0,0), (0,1)} + {(0,0)}: |A∩S| = 2, |A| = 3, |S| = 3 -> 1 - 4/6
    assert align.alignment_error_rate([{(0, 0), (0, 1)}, {(0, 0)}], sure) == pytest.approx(1 - 4 / 6)
    # a possible link counts in the numerator once, not as a miss: P = S + {(0, 1)}
    possible = [{(0, 0), (1, 1), (0, 1)}, {(0, 0)}]
    assert align.alignment_error_rate([{(0, 0), (0, 1)}, {(0, 0)}], sure, possible) == pytest.approx(1 - 5 / 6)
    with pytest.raises(ValueError, match="expected equal counts"):
        align.alignment_error_rate([set()], sure)


# --- On models -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_run_reader):
    return modes.load_trained(saved_config.trained_run_config(tiny_run_reader, {}, None), tiny_run_reader)


def _random_rnn(trained, config_module):
    """An RNN of `config_module` at test size with `trained`'s vocabulary, randomly initialised."""
    config = config_module.get_config()
    config.data = ml_collections.ConfigDict(trained.config.data.to_dict())
    shrink_model(config)
    model = build_model(build.model_config(config, trained.tokenizers.source.vocab_size))
    ids = jnp.ones((1, 4), jnp.int32)
    params = model.init(jax.random.key(0), ids, ids)["params"]
    return modes.Trained(config, model, params, trained.tokenizers, 0)


@pytest.mark.slow
def test_aligner_gives_one_link_per_target_word(trained):
    aligner = align.Aligner(trained)
    pairs = [("forty two then five", "zweiundvierzig dann fünf"), None, ("seven", ""),
             ("three hundred and one", "dreihunderteins")]
    out = aligner.align(pairs)
    assert out[1] is None and out[2] == []
    for pair, links in zip(pairs, out):  # the default links: the union of both directions
        if pair and pair[1]:
            assert {j for _, j in links} == set(range(len(pair[1].split())))
            assert {i for i, _ in links} == set(range(len(pair[0].split())))
    maps = aligner.maps(pairs[:1])[0]  # [L, N, T, S] over pieces, eos included
    source, target = aligner.words(pairs[0])
    assert maps.shape == (1, 2, len(target) + 1, len(source) + 1)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)  # softmax rows
    assert "layer 0" in aligner.describe() and "all heads" in aligner.describe()


@pytest.mark.slow
def test_layer_and_heads_are_checked_and_chosen(trained):
    settings = ml_collections.ConfigDict({"layer": 0, "heads": (1,), "subwords": "max", "method": "target"})
    aligner = align.Aligner(trained, settings)
    pair = ("forty two", "zweiundvierzig")
    maps = aligner.maps([pair])[0]
    source, target = aligner.words(pair)
    expected = align.word_weights(maps[0, 1, :len(target), :len(source)], source, target, "max")
    np.testing.assert_allclose(aligner.word_weights(maps, source, target), expected)
    assert align.Aligner(trained, ml_collections.ConfigDict({**settings.to_dict(), "layer": -2})).layer == 0
    for field, value, message in [("layer", 1, r"align.layer: got 1, expected at most 0"),
                                  ("heads", (2,), r"align.heads: got \(2,\), expected heads 0 to 1"),
                                  ("subwords", "first", r"align.subwords: got 'first'"),
                                  ("method", "grow", r"align.method: got 'grow'")]:
        bad = ml_collections.ConfigDict(settings.to_dict())
        bad[field] = value
        with pytest.raises(UserError, match=message):
            align.Aligner(trained, bad)


@pytest.mark.slow
def test_rnn_aligns_with_its_attention_and_the_plain_rnn_has_none(trained):
    rnn = align.Aligner(_random_rnn(trained, rnn_bahdanau))
    (links,) = rnn.align([("forty two", "zwei und")])
    assert rnn.kind == "alignment" and {j for _, j in links} == {0, 1} and {i for i, _ in links} == {0, 1}
    assert "the RNN's attention" in rnn.describe()
    with pytest.raises(UserError, match=r"align: the rnn model \(model.attention='none'\) has no attention"):
        align.Aligner(_random_rnn(trained, rnn_plain))


@pytest.mark.slow
def test_command_line_align_and_translate_align(tiny_run_reader):
    def run(*args, stdin=""):
        return subprocess.run([sys.executable, "-m", "train.translate", f"--workdir={tiny_run_reader}", *args],
                              cwd=REPO, input=stdin, capture_output=True, text=True, timeout=300)
    ran = run("--mode=align", stdin="forty two\tzwei und vierzig\n\nfive\tfünf\n")
    assert ran.returncode == 0, ran.stderr[-3000:]
    lines = ran.stdout.split("\n")
    assert len(lines) == 4 and lines[1] == "" and lines[3] == ""
    links = [tuple(map(int, p.split("-"))) for p in lines[0].split(" ")]
    assert links == sorted(links) and {j for _, j in links} == {0, 1, 2} and {i for i, _ in links} == {0, 1}
    assert lines[2] == "0-0"
    ran = run("--mode=translate", "--sentence=forty two", "--sentence=", "--align")
    assert ran.returncode == 0, ran.stderr[-3000:]
    first, blank = ran.stdout.split("\n")[:2]
    assert blank == "" and re.fullmatch(r"[^\t]*\t(\d+-\d+( \d+-\d+)*)?", first)
    ran = run("--mode=translate", "--sentence=forty two", "--nbest=2", "--align")
    assert ran.returncode == 0, ran.stderr[-3000:]
    rows = [line.split("\t") for line in ran.stdout.splitlines()]
    assert [(r[0], r[1]) for r in rows] == [("0", "1"), ("0", "2")] and all(len(r) == 5 for r in rows), rows
    assert all(re.fullmatch(r"(\d+-\d+( \d+-\d+)*)?", r[4]) for r in rows), rows
    assert "Word alignments from cross-attention of decoder layer 0 (0-based, of 1), all heads averaged" in ran.stderr
    bad = run("--mode=align", "--sentence=forty two")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1] == (
        "error: --sentence / --nbest / --align: for --mode=translate; --mode=align reads source<TAB>target "
        "lines from --input_file or stdin")


def test_gold_links_of_number_lists():
    from train.experiments.alignment import gold_links, score  # noqa: PLC0415

    gold = gold_links("twenty one then five then three hundred", "einundzwanzig dann fünf dann dreihundert")
    assert gold == {(0, 0), (1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 4)}
    assert gold_links("seven", "sieben") == {(0, 0)}
    with pytest.raises(ValueError, match="2 vs 1 numbers"):
        gold_links("one then two", "eins")
    result = score([{(0, 0), (1, 1)}], [{(0, 0), (1, 0)}])
    assert result == {"aer": 0.5, "precision": 0.5, "recall": 0.5}
