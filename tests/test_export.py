"""`--mode=export --format=ctranslate2`: CTranslate2 computes what jaxattn computes.

The suite's tiny trained Transformer (pre-LN, sinusoidal, shared and tied embeddings) is exported
and read back by CTranslate2: its teacher-forced log-probabilities equal `Translator.score`'s, its
greedy translations equal jaxattn's, and beam search agrees on the sentences here. The other
variants the exporter takes (post-LN, learned positions, grouped-query attention, separate and
untied embeddings) are checked on randomly initialised models, whose log-probabilities must agree
as well; the variants it cannot take are one-line errors.
"""

import dataclasses
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ctranslate2
import ml_collections
import numpy as np
import pytest

from jaxattn.models import build_model
from train import export, modes, saved_config, translation
from train.data.number_words import number_to_words
from train.errors import UserError
from train.evaluation import decode_lengths

pytestmark = pytest.mark.slow  # a trained model (the suite's tiny run) and a second inference engine

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [number_to_words(n, "en") for n in range(0, 4000, 53)] + ["", "seven"]


@pytest.fixture(scope="module")
def trained(tiny_run_reader):
    return modes.load_trained(saved_config.trained_run_config(tiny_run_reader, {}, None), tiny_run_reader)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("export") / "ct2")
    export.export(trained, output)
    return output


def _ct2_log_probs(model_dir, trained, pairs):
    tok = trained.tokenizers
    pieces = lambda t, text: [t.id_to_piece(i) for i in t.encode(text, add_eos=False)]  # noqa: E731
    scorer = ctranslate2.Translator(model_dir, device="cpu", compute_type="float32")
    results = scorer.score_batch([pieces(tok.source, s) for s, _ in pairs], [pieces(tok.target, t) for _, t in pairs])
    return [sum(r.log_probs) for r in results]


def _pairs(count=12):
    return [(number_to_words(n, "en"), number_to_words(n, "de")) for n in range(5, 5 + 97 * count, 97)]


def test_log_probabilities_equal_jaxattn(trained, exported):
    pairs = _pairs()
    ours = [s.total for s in translation.Translator(trained).score(pairs)]
    np.testing.assert_allclose(_ct2_log_probs(exported, trained, pairs), ours, rtol=1e-5, atol=1e-4)


def test_writes_the_model_and_the_vocabularies(exported):
    assert sorted(os.listdir(exported)) == ["config.json", "model.bin", "shared_vocabulary.json", "source.model",
                                            "target.model"]
    assert oct(os.stat(exported).st_mode & 0o777) != oct(0o700)  # an ordinary directory, not mkdtemp's


@pytest.mark.parametrize("strategy", ["greedy", "beam"])
def test_translations_equal_jaxattn(trained, exported, strategy):
    translator = translation.Translator(trained)
    decode_config = translator.decode_config(strategy=strategy, beam_size=3)
    ours = translator.translate(SENTENCES, decode_config)
    theirs = export.CTranslate2Model(exported).translate(SENTENCES, decode_config)
    assert ours[-2:][0] == theirs[-2:][0] == ""  # a blank sentence
    same = sum(a == b for a, b in zip(ours, theirs))
    if strategy == "greedy":
        assert ours == theirs
    else:  # the length penalties differ in form (GNMT's vs CTranslate2's); on these all agree
        assert same == len(SENTENCES), [(a, b) for a, b in zip(ours, theirs) if a != b][:3]


def _random_trained(trained, init=True, **changes):
    """`trained` with another Transformer variant, randomly initialised (`init`), the same vocabulary."""
    model_config = dataclasses.replace(trained.model.config, **changes)
    model = build_model(model_config)
    ids = jnp.ones((1, 4), jnp.int32)
    params = model.init(jax.random.key(1), ids, ids)["params"] if init else None
    config = ml_collections.ConfigDict(trained.config.to_dict())
    config.model.update({k: v for k, v in changes.items() if k in config.model})
    return modes.Trained(config, model, params, trained.tokenizers, 0)


@pytest.mark.parametrize("changes", [
    {"norm": "post"},
    {"positional": "learned", "max_len": 64},
    {"num_heads": 4, "num_kv_heads": 2},
    {"share_embeddings": False, "tie_output": False},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_variants_compute_the_same_log_probabilities(trained, tmp_path, changes):
    variant = _random_trained(trained, **changes)
    export.export(variant, str(tmp_path / "ct2"))
    pairs = _pairs(6)
    ours = [s.total for s in translation.Translator(variant).score(pairs)]
    np.testing.assert_allclose(_ct2_log_probs(str(tmp_path / "ct2"), variant, pairs), ours, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("positional", ["alibi", "t5", "rotary"])
def test_positions_ctranslate2_cannot_take_are_one_line_errors(trained, tmp_path, positional):
    with pytest.raises(UserError, match=rf"model.positional='{positional}' cannot be exported"):
        export.export(_random_trained(trained, init=False, positional=positional), str(tmp_path / "ct2"))
    assert not os.listdir(tmp_path)  # nothing written


def test_an_rnn_is_a_one_line_error(trained, tmp_path):
    config = ml_collections.ConfigDict(trained.config.to_dict())
    config.model.family = "rnn"
    with pytest.raises(UserError, match=r"model.family='rnn' cannot be exported; CTranslate2's encoder-decoder"):
        export.export(dataclasses.replace(trained, config=config), str(tmp_path / "ct2"))


def test_command_line_export_never_overwrites(tiny_run_reader, tmp_path):
    command = [sys.executable, "-m", "train.translate", f"--workdir={tiny_run_reader}", "--mode=export",
               "--format=ctranslate2"]
    output = tmp_path / "ct2"
    ran = subprocess.run([*command, f"--output_dir={output}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert re.fullmatch(rf"Exported transformer \(step \d+\) as ctranslate2 to {re.escape(str(output))}\n", ran.stdout)
    before = {p: os.path.getmtime(output / p) for p in os.listdir(output)}
    again = subprocess.run([*command, f"--output_dir={output}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.strip().splitlines()[-1] == (
        f"error: --output_dir: {str(output)!r} exists; the export writes a new directory")
    assert before == {p: os.path.getmtime(output / p) for p in os.listdir(output)}
    assert sorted(os.listdir(tmp_path)) == ["ct2"]  # no partial directory left beside it


def test_readme_example_runs_on_an_export(trained, exported, tmp_path, monkeypatch):
    """The README's CTranslate2 snippet, run as written (int8) in a checkout-like directory where
    `runs/default_ct2` is the tiny run's export: one translation per sentence; with float32 and
    jaxattn's length limit, the same words as `--mode=translate` with beam search."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if "ctranslate2" in b]
    (tmp_path / "runs").mkdir()
    os.symlink(exported, tmp_path / "runs" / "default_ct2")
    monkeypatch.chdir(tmp_path)

    def run(source):
        printed = []
        exec(compile(source, "README.md ctranslate2 block", "exec"),
             {"print": lambda *a: printed.append(" ".join(map(str, a)))})
        return printed
    sentences = eval(re.search(r"sentences = (\[.*?\])", block).group(1))  # noqa: S307 (the README's list)
    assert len(run(block)) == len(sentences)
    assert 'compute_type="int8"' in block and "beam_size=4" in block
    translator = translation.Translator(trained)
    decode_config = translator.decode_config(strategy="beam", beam_size=4)
    limit = int(max(decode_lengths(len(trained.tokenizers.source.encode(s)), decode_config)
                    for s in sentences))
    exact = block.replace('compute_type="int8"', 'compute_type="float32"').replace(
        "beam_size=4", f"beam_size=4, length_penalty={decode_config.alpha}, max_decoding_length={limit}")
    words = lambda text: " ".join(text.split())  # noqa: E731  (SentencePiece spaces unknown pieces apart)
    assert [words(t) for t in run(exact)] == [words(t) for t in translator.translate(sentences, decode_config)]


def test_speed_benchmark_runs(tiny_run_reader, exported, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text("".join(f"{number_to_words(n, 'en')}\t{number_to_words(n, 'de')}\n" for n in range(3, 300, 37)),
                     encoding="utf-8")
    output = tmp_path / "speed.md"
    ran = subprocess.run([sys.executable, "-m", "benchmarks.ctranslate2_speed", f"--workdir={tiny_run_reader}",
                          f"--input_file={pairs}", "--sentences=6", "--repeats=1", "--threads", "1",
                          "--engines=jaxattn,ctranslate2-float32", "--strategies=beam", f"--export_dir={exported}",
                          f"--output={output}"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    rows = [line.split(" | ") for line in output.read_text(encoding="utf-8").splitlines() if line.startswith("| ")][1:]
    assert [(r[0], r[2]) for r in rows] == [("| beam 4", "jaxattn"), ("| beam 4", "ctranslate2-float32")]
    assert all(float(r[3]) > 0 and r[-1] == "100.0% |" for r in rows), rows  # float32 gives jaxattn's words
