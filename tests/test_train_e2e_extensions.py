"""The zoo's extensions trained end to end once each through the trainer, at tiny size.

Luong's location score (a new `LUONG_SCORES` entry), ALiBi and T5 relative position
biases and rotary embeddings (new `POSITIONS` entries) are chosen by a config field
alone (`config.model.score`, `config.model.positional`); nothing in the trainer knows
them. Each run trains, evaluates, decodes and draws its attention heatmaps (the
captured weights go through the same bias / hook as training).
"""

import json
import os

import numpy as np
import pytest
from test_train_e2e import tiny

from train import loop, modes
from train.configs import rnn_luong_location, transformer

pytestmark = pytest.mark.slow  # the trainer end to end (see pyproject.toml's markers)

RUNS = {
    "luong-location": (rnn_luong_location, {}),
    "transformer-alibi": (transformer, {"positional": "alibi"}),
    "transformer-t5": (transformer, {"positional": "t5"}),
    "transformer-rotary": (transformer, {"positional": "rotary"}),
}
# The parameters each extension owns in the trained model (ALiBi and rotary own none).
OWN_PARAMS = {
    "luong-location": {("cell", "w"): (16, 24)},  # W_a [Q, L], L = data.max_source_length
    "transformer-alibi": {},
    "transformer-t5": {("positions", "encoder_bias"): (32, 2), ("positions", "decoder_bias"): (32, 2)},
    "transformer-rotary": {},
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.parametrize("name", sorted(RUNS))
def test_extension_trains_end_to_end(tmp_path, data_dir, name):
    module, model_fields = RUNS[name]
    config = tiny(module, data_dir, num_train_steps=4, eval_every_steps=4, checkpoint_every_steps=4,
                  log_every_steps=4, num_heatmaps=1)
    config.model.update(model_fields)
    workdir = str(tmp_path / name)
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 4 and not summary["interrupted"]
    assert np.isfinite(summary["validation/loss"]) and 0.0 <= summary["test/exact_match"] <= 1.0
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
        saved = json.load(f)["model"]
    assert {k: saved[k] for k in model_fields} == model_fields
    assert saved["score" if name == "luong-location" else "positional"] in name
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert losses and all(np.isfinite(losses))
    assert len(os.listdir(os.path.join(workdir, "heatmaps"))) == 1
    params = modes.load_trained(config, workdir).params
    for (module, param), shape in OWN_PARAMS[name].items():
        assert params[module][param].shape == shape, (module, param)
    assert ("positions" in params) == (name == "transformer-t5")
