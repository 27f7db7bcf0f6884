"""Bad input: one-line errors, non-zero exit, nothing in the workdir overwritten."""

import hashlib
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from train import build, checkpoint, loop, metrics, modes, saved_config
from train.configs import rnn_bahdanau
from train.data import train_sentencepiece
from train.errors import UserError

from tiny import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_digest(path: str) -> str:
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(full.encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_heads_not_dividing_width_fails_before_writing(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny()
    config.model.update(emb_dim=16, num_heads=3)
    with pytest.raises(UserError, match="config.model: .*num_heads=3 must divide emb_dim=16"):
        loop.train_and_evaluate(config, workdir)
    assert not os.path.exists(workdir)


@pytest.mark.parametrize("field, value, message", [
    ("parallel", "tpu-magic", "config.parallel"),
    ("schedule", "warm", "config.schedule"),
    ("label_smoothing", 1.0, "config.label_smoothing"),
    ("num_train_steps", 0, "config.num_train_steps"),
])
def test_invalid_trainer_fields(tmp_path, field, value, message):
    config = tiny()
    config[field] = value
    with pytest.raises(UserError, match=message):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_unknown_model_field_and_incompatible_options():
    config = tiny()
    config.model.unlocked_typo = 3
    with pytest.raises(ValueError, match="config.model: .*unlocked_typo"):
        build.validate_config(config)
    config = tiny()
    config.scheduled_sampling.kind = "linear"
    with pytest.raises(ValueError, match="scheduled_sampling.kind.*RNN"):
        build.validate_config(config)
    config = tiny(rnn_bahdanau)
    config.data.packing = True
    with pytest.raises(ValueError, match="packing"):
        build.validate_config(config)
    config = tiny()
    config.data.batch_size_multiple = 3
    with pytest.raises(ValueError, match="batch_size_multiple: got 3, expected a multiple of the 8 local devices"):
        build.validate_config(config)


def test_unknown_dataset_and_missing_file(tmp_path):
    config = tiny()
    config.data.update(dataset="no_such_corpus", data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="dataset: 'no_such_corpus' is not a TFDS dataset"):
        loop.train_and_evaluate(config, str(tmp_path / "a"))
    config.data.update(dataset="tsv", train_file=str(tmp_path / "missing.tsv"))
    with pytest.raises(ValueError, match="missing.tsv does not exist"):
        loop.train_and_evaluate(config, str(tmp_path / "b"))
    assert not os.path.exists(tmp_path / "a") and not os.path.exists(tmp_path / "b")


def test_workdir_with_another_model_is_refused_untouched(tmp_path):
    workdir = str(tmp_path / "run")
    saved_config.save_config(tiny(), workdir)
    before = _tree_digest(workdir)
    with pytest.raises(ValueError, match="holds a different model .*model.family: workdir has 'transformer'"):
        loop.train_and_evaluate(tiny(rnn_bahdanau), workdir)
    with pytest.raises(ValueError, match="holds a different model .*emb_dim"):
        modes.translate(_wider(), workdir, ["one"])
    assert _tree_digest(workdir) == before


def _wider():
    config = tiny()
    config.model.emb_dim = 32
    return config


def test_checkpoint_with_another_vocabulary_is_refused(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny()
    saved_config.save_config(config, workdir)
    os.makedirs(os.path.join(workdir, "vocab"))
    texts = [f"{w} {v}" for w in ("one", "two", "three", "four") for v in ("eins", "zwei", "drei")] * 5
    train_sentencepiece(texts, vocab_size=24).save(os.path.join(workdir, "vocab", "shared.model"))
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), keep=1)
    stored = {"source": "0" * 16, "target": "0" * 16, "source_vocab_size": 24, "target_vocab_size": 24}
    ckpt.save(1, {"w": np.zeros(2)}, jax.random.PRNGKey(0), None, {"config": config.to_dict(), "vocab": stored})
    ckpt.close()
    before = _tree_digest(workdir)
    with pytest.raises(ValueError, match="tokenizer: checkpoint was trained with vocabulary"):
        modes.translate(config, workdir, ["one"])
    assert _tree_digest(workdir) == before


def test_translate_without_checkpoint(tmp_path):
    with pytest.raises(ValueError, match="no checkpoints"):
        modes.translate(tiny(), str(tmp_path / "empty"), ["one"])


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "run")
    config = tiny(schedule="constant", learning_rate=1e30, grad_clip_norm=0.0)
    config.data.data_dir = str(tmp_path / "tfds")
    with pytest.raises(metrics.NonFiniteLossError, match=r"NaN or Inf at step \d+; .*last good checkpoint") as e:
        loop.train_and_evaluate(config, workdir)
    bad_step, good_step = map(int, re.search(r"step (\d+);.*checkpoint is step (\d+)", str(e.value)).groups())
    assert good_step == bad_step - 1  # checkpoints every step; the non-finite one was not saved
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), keep=1, read_only=True)
    assert ckpt.latest_step() == good_step
    restored = ckpt.manager.restore(good_step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    ckpt.close()
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored["state"]["state"]["params"]))


def _cli(*args, timeout=300):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "train.translate", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--config.no_such_field=1"], "unknown config field"),
    (["--config.model.num_heads=3"], "num_heads=3 must divide emb_dim=128"),
    (["--config.num_train_steps=many"], "num_train_steps"),
    (["--config.model.family=lstm"], "config.model.family: got 'lstm', expected one of"),
    (["--config.data.dataset=number_words/gigantic"], "number_words has no config 'gigantic'"),
])
@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_1(tmp_path, args, message):
    result = _cli(*args, f"--workdir={tmp_path / 'run'}")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "run")
