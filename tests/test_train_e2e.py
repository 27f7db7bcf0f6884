"""End to end on tiny data: every config family through train -> resume -> eval -> translate.

Runs the real trainer (`train.loop`) on the embedded number-words data
(`number_words/tiny`, built in the test's TFDS data dir) over the 8 fake CPU
devices of tests/conftest.py, with tiny model and step overrides.
"""

import json
import os
import signal

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from model_params import shrink_model
from train import checkpoint, early_stopping, loop, modes, stopping
from train.configs import rnn_bahdanau, rnn_luong, rnn_plain, transformer, transformer_base_wmt14

pytestmark = pytest.mark.slow  # the trainer end to end (see pyproject.toml's markers)

FAMILIES = {
    "transformer": transformer,
    "rnn_bahdanau": rnn_bahdanau,
    "rnn_luong": rnn_luong,
    "rnn_plain": rnn_plain,
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def tiny(module, data_dir, **overrides):
    """A config file's config at test size (the same overrides a user would pass as flags)."""
    config = module.get_config()
    config.data.dataset = "number_words/tiny"
    config.data.data_dir = data_dir
    config.data.vocab_size = 48
    config.data.max_source_length = 24
    config.data.max_target_length = 24
    config.data.bucket_lengths = (24,)  # one batch shape: one compilation
    config.data.tokens_per_batch = 192  # 8 rows: one per fake device
    config.data.batch_size_multiple = 8
    config.data.eval_batch_size = 16
    config.data.eval_max_examples = 16
    config.data.read_threads = 1
    shrink_model(config)
    config.num_train_steps = 6
    config.warmup_steps = 2
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.eval_decode_examples = 8
    config.checkpoint_every_steps = 3
    config.decode.max_length = 12
    config.num_samples = 2
    config.num_heatmaps = 2 if config.num_heatmaps else 0
    config.progress_bar = False
    config.update(overrides)
    return config


def _params(workdir: str, step: int):
    manager = ocp.CheckpointManager(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(read_only=True))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return jax.device_get(restored["state"]["state"]["params"])


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_train_resume_eval_translate(tmp_path, data_dir, name):
    workdir = str(tmp_path / name)
    config = tiny(FAMILIES[name], data_dir)
    if name == "rnn_bahdanau":
        config.scheduled_sampling.kind = "linear"
        config.scheduled_sampling.ramp_steps = 4
    if name == "rnn_plain":
        config.parallel = "pmap"  # the pmap path end to end (jit vs pmap parity: test_train_steps)
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 6 and not summary["interrupted"]
    for split in ("validation", "test"):
        assert 0.0 <= summary[f"{split}/exact_match"] <= 1.0
        assert np.isfinite(summary[f"{split}/loss"]) and summary[f"{split}/perplexity"] > 1.0
        assert os.path.exists(os.path.join(workdir, "samples", f"{split}_final.txt"))
        predictions = [json.loads(line) for line in open(os.path.join(workdir, "samples", f"{split}_step6.jsonl"))]
        assert [p["index"] for p in predictions] == list(range(len(predictions))) and predictions
        exact = np.mean([p["exact"] for p in predictions])
        assert exact == pytest.approx(summary[f"{split}/exact_match"])
    for path in ("config.json", "metrics.jsonl", "vocab/shared.model", "tensorboard"):
        assert os.path.exists(os.path.join(workdir, path)), path
    heatmaps = os.listdir(os.path.join(workdir, "heatmaps")) if config.num_heatmaps else []
    assert len(heatmaps) == config.num_heatmaps
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6]
    # Step 6 is a multiple of checkpoint_every_steps: its checkpoint must still carry the final
    # validation BLEU, or `--checkpoint=best` could never pick the final model.
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, checkpoint.CHECKPOINT_DIR), keep=2, read_only=True)
    # (and every other validation metric: early stopping may pick the best by any of them)
    assert ckpt.manager.metrics(6) == {k: pytest.approx(summary[f"validation/{k}"]) for k in early_stopping.METRICS}
    ckpt.close()
    if name == "rnn_bahdanau":
        probabilities = [r["train/sampling_probability"] for r in rows if "train/loss" in r]
        assert probabilities[0] < probabilities[-1]

    # Same workdir, more steps: resumes from step 6 (no retraining from scratch).
    config.num_train_steps = 8
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 8
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "train/loss" in r] == [2, 4, 6, 8]

    evaluated = modes.evaluate(config, workdir, "best")
    assert 0.0 <= evaluated["test/bleu"] <= 100.0
    outputs = modes.translate(config, workdir, ["five", "one hundred and two"])
    assert len(outputs) == 2 and all(isinstance(o, str) for o in outputs)
    trained = modes.load_trained(config, workdir)
    assert trained.step == 8
    np.testing.assert_array_equal(jax.tree.leaves(trained.params)[0], jax.tree.leaves(_params(workdir, 8))[0])


def test_interrupted_run_resumes_bitwise(tmp_path, data_dir, monkeypatch):
    config = tiny(transformer, data_dir, num_train_steps=7, checkpoint_every_steps=100, eval_every_steps=100)
    config.model.dropout_rate = 0.3  # the per-step dropout keys must replay too
    straight = str(tmp_path / "straight")
    loop.train_and_evaluate(config, straight)

    # SIGTERM arrives during step 4: the loop finishes the step, saves, returns.
    class SignalAtStep4(stopping.PreemptionGuard):
        calls = 0

        def should_stop(self, step=None):
            SignalAtStep4.calls += 1
            if SignalAtStep4.calls == 4:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().should_stop(step)

    resumed = str(tmp_path / "resumed")
    monkeypatch.setattr(stopping, "PreemptionGuard", SignalAtStep4)
    summary = loop.train_and_evaluate(config, resumed)
    assert summary == {"step": 4, "wall_time": summary["wall_time"], "interrupted": True,
                       "stopped": "received SIGTERM", "workdir": resumed}
    monkeypatch.undo()
    summary = loop.train_and_evaluate(config, resumed)
    assert summary["step"] == 7
    a, b = _params(straight, 7), _params(resumed, 7)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    leaves = jax.tree.leaves(a)
    assert any(not np.array_equal(x, y) for x, y in zip(leaves, jax.tree.leaves(_params(resumed, 4))))


def test_catalog_dataset_with_mock_data(tmp_path):
    config = tiny(transformer_base_wmt14, str(tmp_path / "tfds"), num_train_steps=2, num_heatmaps=0)
    config.data.update(dataset="wmt14_translate/de-en", packing=True, pack_length=32, max_source_length=32,
                       bucket_lengths=(32,),
                       max_target_length=32, tokens_per_batch=256, eval_batch_size=8, read_threads=1)
    config.model.update(max_len=64)
    config.decode.update(strategy="beam", beam_size=2, max_length=8)
    with tfds.testing.mock_data(num_examples=24):
        summary = loop.train_and_evaluate(config, str(tmp_path / "wmt"))
    assert summary["step"] == 2 and np.isfinite(summary["test/loss"])
