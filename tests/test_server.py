"""`--mode=serve` in this process: the JSON API over real HTTP on 127.0.0.1, batching, bad input,
and the attention maps of each model family.

A copy of the session's tiny trained Transformer (`tiny_run_reader`) is served by uvicorn on a thread; answers are
checked against `train.translation.Translator`, which `--mode=translate` / `--mode=score` print
(tests/test_server_cli.py checks the printed lines themselves, and the page in a browser).
"""

import concurrent.futures
import logging
import math

import jax
import numpy as np
import pytest
from serve_util import Running, call
from tiny import tiny

from train import build, modes, saved_config, serving
from train.configs import rnn_bahdanau, rnn_plain
from train.translation import Translator

pytestmark = pytest.mark.slow  # a trained model served end to end (see pyproject.toml's markers)

SENTENCES = ["forty two", "", "seven hundred and one", "three"]


@pytest.fixture(scope="module")
def trained(tiny_run_reader):
    config = saved_config.trained_run_config(tiny_run_reader, {"serve.row_sizes": (1, 8),
                                                               "serve.batch_wait_ms": 100.0})
    return modes.load_trained(config, tiny_run_reader)


@pytest.fixture(scope="module")
def service(trained, tiny_run_reader):
    service = serving.Service(trained, tiny_run_reader)
    assert service.warm_up() == 2 * 2 + 1  # 2 row sizes x 1 length bucket x (translate, score) + attention
    return service


@pytest.fixture(scope="module")
def url(service):
    running = Running(service)
    yield running.url
    running.stop()


def test_health_and_info(url, trained):
    assert call(url, "/health") == (200, {"status": "ok"})
    status, info = call(url, "/info")
    assert status == 200
    assert info["family"] == "transformer" and info["step"] == trained.step == 4
    assert info["parameters"] == sum(x.size for x in jax.tree.leaves(trained.params))
    assert info["vocabulary"] == {"source": 48, "target": 48, "shared": True}
    assert info["attention_kinds"] == ["cross", "encoder_self", "decoder_self"]
    assert info["config"]["model"]["emb_dim"] == 16 and info["config"]["data"]["dataset"] == "number_words/tiny"
    assert info["limits"]["row_sizes"] == [1, 8] and set(info["served"]) == {"requests", "batches", "sentences"}


def test_translate_and_score_answer_what_the_translator_gives(url, trained):
    translator = Translator(trained)
    status, answer = call(url, "/translate", {"sentences": SENTENCES})
    assert status == 200 and answer == {"translations": translator.translate(SENTENCES)}
    assert answer["translations"][1] == ""

    status, answer = call(url, "/translate", {"sentences": SENTENCES, "nbest": 3, "alpha": 0.0})
    expected = translator.nbest(SENTENCES, 3, translator.decode_config(alpha=0.0))
    assert status == 200 and answer["translations"] == [h[0].text for h in expected]
    for got, want in zip(answer["nbest"], expected):
        assert [h["translation"] for h in got] == [h.text for h in want]
        assert [h["score"] for h in got] == [h.score if math.isfinite(h.score) else None for h in want]
    assert all(h["score"] is None for h in answer["nbest"][1])  # a blank sentence: K empty, -inf

    pairs = [["forty two", "zweiundvierzig"], None, ["three", "drei"]]
    status, answer = call(url, "/score", {"pairs": pairs})
    expected = translator.score([None if p is None else tuple(p) for p in pairs])
    assert status == 200 and answer["scores"][1] is None
    for got, want in zip(answer["scores"][::2], expected[::2]):
        assert (got["total"], got["mean"]) == (want.total, want.mean) and want.total < 0


def test_decode_options_per_request(url, trained):
    translator = Translator(trained)
    for options in ({"strategy": "beam", "beam_size": 3}, {"max_length": 2}, {"max_length_a": 0, "max_length_b": 1}):
        status, answer = call(url, "/translate", {"sentences": SENTENCES, **options})
        assert status == 200
        assert answer["translations"] == translator.translate(SENTENCES, translator.decode_config(**options))
    _, short = call(url, "/translate", {"sentences": ["seven hundred and one"], "max_length_a": 0, "max_length_b": 1})
    assert short["translations"] == [""]  # one token allowed: eos or a cut word piece


def test_concurrent_requests_are_decoded_together(url, service):
    sentences = [f"{w} hundred and {u}" for w in ("two", "three", "four", "five") for u in ("one", "six")]
    alone = [call(url, "/translate", {"sentences": [s]})[1]["translations"][0] for s in sentences]
    before = call(url, "/info")[1]["served"]
    with concurrent.futures.ThreadPoolExecutor(len(sentences)) as pool:
        answers = list(pool.map(lambda s: call(url, "/translate", {"sentences": [s]}), sentences))
    after = call(url, "/info")[1]["served"]
    assert [a for _, a in answers] == [{"translations": [t]} for t in alone]
    assert after["requests"] - before["requests"] == len(sentences)
    assert after["sentences"] - before["sentences"] == len(sentences)
    assert after["batches"] - before["batches"] < len(sentences) / 2  # within serve.batch_wait_ms (100 here)


BAD = [
    ("POST", "/translate", b"", 400, "body: empty"),
    ("POST", "/translate", b"{not json", 400, "body: not JSON"),
    ("POST", "/translate", b"[1, 2]", 400, "body: got a JSON list, expected an object"),
    ("POST", "/translate", b'{"sentence": "x"}', 400, "sentence: unknown field"),
    ("POST", "/translate", b'{"sentences": "forty two"}', 400, "sentences: got str, expected a list"),
    ("POST", "/translate", b'{"sentences": [42]}', 400, "sentences[0]: got int, expected a string"),
    ("POST", "/translate", b'{"sentences": ["x"], "nbest": "3"}', 400, "nbest: got str"),
    ("POST", "/translate", b'{"sentences": ["x"], "nbest": 99}', 413, "serve.max_nbest"),
    ("POST", "/translate", b'{"sentences": ["x"], "beam_size": 0}', 400, "beam_size: got 0, expected >= 1"),
    ("POST", "/translate", b'{"sentences": ["x"], "strategy": "sample"}', 400, "strategy: got 'sample'"),
    ("POST", "/translate", b'{"sentences": ["x"], "alpha": true}', 400, "alpha: got bool"),
    ("POST", "/translate", b'{"sentences": ["' + b"a" * 1_000_000 + b'"]}', 413, "more than this server takes"),
    ("POST", "/translate", b'{"sentences": ["' + b"a" * 2000 + b'"]}', 413, "serve.max_sentence_chars=1000"),
    ("POST", "/translate", b'{"sentences": [' + b",".join([b'"x"'] * 65) + b"]}", 413, "serve.max_sentences=64"),
    ("POST", "/score", b'{"pairs": [["x"]]}', 400, "pairs[0]: expected [source, target] or null"),
    ("POST", "/attention", b'{"sentence": "  "}', 400, "sentence: blank"),
    ("POST", "/attention", b"{}", 400, "sentence: missing"),
    ("GET", "/nowhere", None, 404, "/nowhere: no such route"),
    ("GET", "/translate", None, 405, "/translate: GET is not allowed here"),
    ("DELETE", "/info", None, 405, "/info: DELETE is not allowed here"),
]


@pytest.mark.parametrize("method, path, raw, status, message", BAD, ids=[f"{b[1]}-{b[4][:24]}" for b in BAD])
def test_bad_input_is_a_one_line_json_error_and_serving_goes_on(url, caplog, method, path, raw, status, message):
    with caplog.at_level(logging.INFO):
        got, answer = call(url, path, raw=raw, method=method)
    assert got == status and set(answer) == {"error"}, answer
    assert message in answer["error"] and "\n" not in answer["error"], answer
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert call(url, "/translate", {"sentences": ["three"]})[0] == 200


def test_transformer_attention_of_a_sentence(url, trained):
    status, answer = call(url, "/attention", {"sentence": "seven hundred and one", "nbest": 2})
    assert status == 200
    assert answer["translation"] == Translator(trained).translate(["seven hundred and one"])[0]
    assert answer["nbest"][0]["translation"] == Translator(trained).nbest(["seven hundred and one"], 2)[0][0].text
    source, target = answer["source_tokens"], answer["target_tokens"]
    tok = trained.tokenizers
    assert source == [tok.source.id_to_piece(i) for i in tok.source.encode("seven hundred and one")]
    assert target[-1] == "</s>" or len(target) == trained.config.decode.max_length
    sizes = {"source": len(source), "target": len(target)}
    assert list(answer["attention"]) == ["cross", "encoder_self", "decoder_self"]  # the page lists them so
    for kind, (rows, cols) in {"cross": ("target", "source"), "encoder_self": ("source", "source"),
                               "decoder_self": ("target", "target")}.items():
        entry = answer["attention"][kind]
        weights = np.asarray(entry["weights"])
        assert (entry["rows"], entry["cols"], entry["layers"], entry["heads"]) == (rows, cols, 1, 2)
        assert weights.shape == (1, 2, sizes[rows], sizes[cols])
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=2e-3)  # padding gets no weight
    causal = np.asarray(answer["attention"]["decoder_self"]["weights"])
    assert np.all(np.triu(causal[0, 0], k=1) == 0)


@pytest.mark.parametrize("module, kinds", [(rnn_bahdanau, ["alignment"]), (rnn_plain, [])], ids=["bahdanau", "plain"])
def test_rnn_attention_is_its_alignment(trained, module, kinds):
    """An RNN with parameters straight from init (the vocabulary of the tiny run): the alignment, or none."""
    config = tiny(module)
    model = build.build_model(config, trained.model.config.vocab_size)
    inputs = np.asarray([[5, 6, 3]], np.int32)
    params = jax.jit(model.init)(jax.random.key(0), inputs, inputs)["params"]
    service = serving.Service(modes.Trained(config, model, params, trained.tokenizers, step=0))
    answer = service.attention(*service.attention_request({"sentence": "forty two"}))
    assert sorted(answer["attention"]) == kinds
    if kinds:
        entry = answer["attention"]["alignment"]
        weights = np.asarray(entry["weights"])
        assert weights.shape == (1, 1, len(answer["target_tokens"]), len(answer["source_tokens"]))
        np.testing.assert_allclose(weights.sum(-1), 1.0, atol=2e-3)
    assert service.info()["attention_kinds"] == kinds
