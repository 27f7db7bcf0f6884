"""Fine-tuning (`config.init_from`): a new run from the suite's tiny run's parameters and vocabulary."""

import logging
import os
import re

import jax
import numpy as np
import pytest

from test_train_e2e import _params
from tiny import tiny
from train import finetune, loop
from train.errors import UserError

pytestmark = pytest.mark.slow  # the trainer end to end (see pyproject.toml's markers)


def _tuned_config(parent: str, data_dir: str, **overrides):
    """The tiny run's config on other data (English -> French), started from `parent`."""
    config = tiny(init_from=parent, num_train_steps=2, **overrides)
    config.data.update(data_dir=data_dir, target_lang="fr")
    return config


def test_starts_from_the_parent_with_a_fresh_optimizer_then_resumes_as_its_own(tiny_run, tiny_run_reader, tmp_path,
                                                                               caplog):
    parent, data_dir = tiny_run_reader, tiny_run[1]
    workdir = str(tmp_path / "tuned")
    config = _tuned_config(parent, data_dir)
    with caplog.at_level(logging.INFO, logger="train"):
        summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 2  # a fresh schedule: its own steps, not the parent's 4 + 2
    with open(os.path.join(parent, "vocab", "shared.model"), "rb") as a, \
            open(os.path.join(workdir, "vocab", "shared.model"), "rb") as b:
        assert a.read() == b.read()  # the parent's vocabulary, not one trained on the French data
    # One Adam step (lr <= 1e-3 per element) away from the parent's parameters: started from them.
    tuned, start = jax.tree.leaves(_params(workdir, 1)), jax.tree.leaves(_params(parent, 4))
    distance = max(float(np.max(np.abs(a - b))) for a, b in zip(tuned, start))
    assert 0 < distance < 5e-3, distance
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"Fine-tuning from {parent}, checkpoint 4 (latest)") for m in messages)
    unknown = next(m for m in messages if m.startswith(f"Vocabulary from {parent} on "))
    counts = re.search(r"<unk> is (\d+) of (\d+) source tokens .* and (\d+) of (\d+) target tokens", unknown)
    source_unk, source_total, target_unk, target_total = map(int, counts.groups())
    assert source_unk == 0 < source_total and 0 < target_unk < target_total, unknown  # é, ç: not in its pieces

    caplog.clear()
    config.num_train_steps = 3
    with caplog.at_level(logging.INFO, logger="train"):
        summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Resuming at step 2") for m in messages)
    assert not any(m.startswith("Fine-tuning from") for m in messages)  # its own checkpoint, not the parent's


def test_another_model_is_a_one_line_error_and_nothing_is_written(tiny_run, tiny_run_reader, tmp_path):
    parent, data_dir = tiny_run_reader, tiny_run[1]
    workdir = str(tmp_path / "tuned")
    config = _tuned_config(parent, data_dir)
    config.model.emb_dim = 32
    with pytest.raises(UserError) as error:
        loop.train_and_evaluate(config, workdir)
    message = str(error.value)
    assert message.startswith(f"config.init_from: {parent!r} holds another model (model.emb_dim: workdir has 16, "
                              "config has 32)") and "\n" not in message
    assert not os.path.exists(workdir)
    config.model.emb_dim, config.model.dropout_rate = 16, 0.3
    finetune.check(config)  # dropout may differ
    for field, value, match in [("init_from", str(tmp_path / "nothing"), r"^config\.init_from: .* is not a directory"),
                                ("init_from_checkpoint", "first", r"^config\.init_from_checkpoint: got 'first'")]:
        bad = _tuned_config(parent, data_dir)
        bad[field] = value
        with pytest.raises(UserError, match=match):
            loop.train_and_evaluate(bad, workdir)
        assert not os.path.exists(workdir)
