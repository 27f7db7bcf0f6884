"""The attention explorer page in a real headless browser (the OS's Chromium, driven by Playwright).

A two-layer Transformer (parameters from init, the tiny run's vocabulary) is served in this process
on 127.0.0.1; the page is loaded, a sentence typed and submitted, and the heatmap read back.
Chromium comes from the OS packages (`apt-get install chromium`; `.ci/run` installs it): without it
this test fails under CI=true and is skipped elsewhere, saying so.
"""

import os
import shutil

import jax
import numpy as np
import pytest
from serve_util import Running, call
from tiny import tiny

from train import build, modes, serving

pytestmark = pytest.mark.slow  # a browser (see pyproject.toml's markers)

SENTENCE = "seven hundred and one"


def _chromium() -> str:
    path = os.environ.get("JAXATTN_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    if path is None:
        message = "no Chromium on PATH (apt-get install chromium) and $JAXATTN_CHROMIUM unset"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def url(tiny_run_reader):
    from train import saved_config  # noqa: PLC0415

    vocab = modes.load_trained(saved_config.trained_run_config(tiny_run_reader, {}), tiny_run_reader)
    config = tiny()
    config.model.update(num_encoder_layers=2, num_decoder_layers=2)
    model = build.build_model(config, vocab.model.config.vocab_size)
    inputs = np.asarray([[5, 6, 3]], np.int32)
    params = jax.jit(model.init)(jax.random.key(1), inputs, inputs)["params"]
    running = Running(serving.Service(modes.Trained(config, model, params, vocab.tokenizers, step=0)))
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def page(url):
    from playwright.sync_api import sync_playwright  # noqa: PLC0415

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(url + "/")
        yield page
        assert requests and all(r.startswith(url + "/") for r in requests), requests  # nothing from outside
        browser.close()


def _weights(page) -> list[float]:
    return [float(w) for w in page.eval_on_selector_all("#heatmap td.cell", "cells => cells.map(c => c.dataset.weight)")]


def test_type_a_sentence_and_explore_its_attention(page, url):
    page.wait_for_function("document.querySelector('#model').textContent.includes('transformer model')")
    page.fill("#sentence", SENTENCE)
    page.click("#submit")
    page.wait_for_selector("#result:not([hidden])")
    _, answer = call(url, "/attention", {"sentence": SENTENCE, "nbest": 3})
    assert page.inner_text("#translation") == (answer["translation"] or "(empty)")
    assert page.eval_on_selector_all("#nbest-list li", "items => items.length") == 3

    # cross-attention first: target x source cells, labelled with the tokens
    assert page.input_value("#kind") == "cross"
    rows, cols = len(answer["target_tokens"]), len(answer["source_tokens"])
    assert page.eval_on_selector_all("#heatmap td.cell", "cells => cells.length") == rows * cols
    assert page.eval_on_selector_all("#heatmap thead th[data-col]", "h => h.map(x => x.textContent)") == \
        answer["source_tokens"]
    first = _weights(page)
    np.testing.assert_allclose(first, np.ravel(answer["attention"]["cross"]["weights"][0][0]), atol=1e-6)

    page.select_option("#head", "1")
    second = _weights(page)
    assert len(second) == rows * cols and second != first
    page.select_option("#layer", "1")
    third = _weights(page)
    np.testing.assert_allclose(third, np.ravel(answer["attention"]["cross"]["weights"][1][1]), atol=1e-6)
    assert third != second

    page.select_option("#kind", "encoder_self")
    assert page.eval_on_selector_all("#heatmap td.cell", "cells => cells.length") == cols * cols

    page.hover("#heatmap td.cell[data-row='1'][data-col='0']")
    lit = page.eval_on_selector_all("#heatmap th.lit", "h => h.map(x => x.textContent)")
    assert sorted(lit) == sorted([answer["source_tokens"][1], answer["source_tokens"][0]])
    assert "weight" in page.inner_text("#hover")


def test_an_error_is_shown_on_the_page(page):
    page.fill("#sentence", "x" * 1200)
    page.click("#submit")
    page.wait_for_function("document.querySelector('#status').textContent.startsWith('error:')")
    assert "serve.max_sentence_chars" in page.inner_text("#status")
