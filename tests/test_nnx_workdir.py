"""NNX models and the trainer's workdirs (`train.nnx_weights`): a trained run's checkpoint loads into
the NNX model, and an NNX model's weights save to a workdir that `--mode=translate` / `--mode=eval`
read, with identical logits both ways (on the suite's tiny trained run)."""
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from jaxattn import nnx as jaxattn_nnx
from train import modes, nnx_weights, saved_config, translation
from train.errors import UserError

pytestmark = pytest.mark.slow  # reads and writes trained workdirs (see pyproject.toml's markers)

SENTENCES = ["five", "", "seven hundred and seventy seven", "twelve", "forty two"]


@pytest.fixture(scope="module")
def linen(tiny_run_reader):
    return modes.load_trained(saved_config.trained_run_config(tiny_run_reader, {}), tiny_run_reader)


@pytest.fixture(scope="module")
def loaded(tiny_run_reader):
    return nnx_weights.load(tiny_run_reader)


def _batch(trained):
    source = trained.tokenizers.source.encode_batch(SENTENCES[2:])             # [B, S]
    target = trained.tokenizers.target.encode_batch(["sieben", "zwölf", "zweiundvierzig"])  # [B, T]
    return source, target


def _logits(model, params, batch):
    if params is None:
        return nnx.jit(lambda m, x, y: m(x, y))(model, *batch)
    return jax.jit(model.apply)({"params": params}, *batch)


def test_a_checkpoint_loads_into_the_nnx_model(linen, loaded):
    assert isinstance(loaded.model, jaxattn_nnx.Model) and loaded.params is None
    assert loaded.step == linen.step and loaded.model.config == linen.model.config
    jax.tree.map(np.testing.assert_array_equal, jaxattn_nnx.linen_params(loaded.model), jax.device_get(linen.params))
    batch = _batch(linen)
    np.testing.assert_array_equal(_logits(loaded.model, None, batch), _logits(linen.model, linen.params, batch))


def test_the_translator_takes_the_nnx_model(linen, loaded):
    for overrides in ({}, {"strategy": "beam", "beam_size": 3}):
        ours, theirs = translation.Translator(loaded), translation.Translator(linen)
        assert ours.translate(SENTENCES, ours.decode_config(**overrides)) == theirs.translate(
            SENTENCES, theirs.decode_config(**overrides))
    assert translation.Translator(loaded).score([(s, "fünf") for s in SENTENCES if s]) == translation.Translator(
        linen).score([(s, "fünf") for s in SENTENCES if s])


def test_trained_further_in_nnx_then_read_by_the_modes(tiny_run_reader, loaded, tmp_path):
    model = jaxattn_nnx.from_linen_params(loaded.model.config, jaxattn_nnx.linen_params(loaded.model))
    batch = _batch(loaded)
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, inputs, targets):
        def loss_fn(model):
            logits = model(inputs, targets)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

        optimizer.update(model, nnx.grad(loss_fn)(model))

    for _ in range(3):
        step(model, optimizer, *batch)
    workdir = nnx_weights.save(model, str(tmp_path / "tuned"), like=tiny_run_reader, step=7)
    assert sorted(os.listdir(tmp_path)) == ["tuned"], "no partial directory is left"

    back = nnx_weights.load(workdir)
    assert back.step == 7
    jax.tree.map(np.testing.assert_array_equal, jaxattn_nnx.linen_params(back.model), jaxattn_nnx.linen_params(model))
    np.testing.assert_array_equal(_logits(back.model, None, batch), _logits(model, None, batch))
    config = saved_config.trained_run_config(workdir, {})
    trained = modes.load_trained(config, workdir)                          # what --mode=translate reads
    np.testing.assert_array_equal(_logits(trained.model, trained.params, batch), _logits(model, None, batch))
    assert modes.translate(config, workdir, SENTENCES) == translation.Translator(back).translate(SENTENCES)
    assert modes.translate(config, workdir, SENTENCES) != modes.translate(config, tiny_run_reader, SENTENCES)
    metrics = modes.evaluate(config, workdir)                              # --mode=eval
    assert metrics["step"] == 7 and metrics["eval_splits"], metrics
    assert all(0 <= metrics[f"{split}/bleu"] <= 100 for split in metrics["eval_splits"]), metrics


def test_save_never_overwrites_and_checks_the_model(tiny_run_reader, loaded, tmp_path):
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(UserError, match=r"^workdir: '.*exists' exists; save to a new directory"):
        nnx_weights.save(loaded.model, str(existing), like=tiny_run_reader)
    other = jaxattn_nnx.Model(loaded.model.config.replace(mlp_dim=loaded.model.config.mlp_dim + 8), rngs=nnx.Rngs(0))
    with pytest.raises(UserError, match=r"^model: its config is not the model of .*\(mlp_dim: the run has \d+, the model \d+\)$"):
        nnx_weights.save(other, str(tmp_path / "new"), like=tiny_run_reader)
    assert sorted(os.listdir(tmp_path)) == ["exists"], "a refused save leaves nothing behind"
