"""Orbax checkpointing, preemption signals, metric writers and heatmaps."""

import json
import os
import signal

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training import train_state

from train import checkpoint, heatmaps, metrics, stopping


def _state(value: float):
    params = {"w": jnp.full((2, 3), value), "b": jnp.arange(3.0) * value}
    return train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))


def test_save_restore_roundtrip_with_data_iterator(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=2)
    it = iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset())
    for _ in range(7):
        next(it)
    state, rng = _state(1.5), jax.random.PRNGKey(42)
    ckpt.save(7, state, rng, it, {"config": {"a": 1}, "vocab": {"v": "x"}})
    expected_next = [next(it) for _ in range(3)]
    ckpt.close()

    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=2, read_only=True)
    assert ckpt.latest_step() == 7
    assert ckpt.restore_config(7) == {"config": {"a": 1}, "vocab": {"v": "x"}}
    abstract = jax.eval_shape(lambda: _state(0.0))
    fresh = iter(grain.MapDataset.range(100).shuffle(seed=3).to_iter_dataset())
    restored, restored_rng = ckpt.restore(7, abstract, jax.eval_shape(lambda: rng), fresh)
    ckpt.close()
    chex.assert_trees_all_equal(restored.params, state.params)
    chex.assert_trees_all_equal(restored.opt_state, state.opt_state)
    np.testing.assert_array_equal(restored_rng, rng)
    assert [next(fresh) for _ in range(3)] == expected_next


def test_keeps_latest_k_and_best_by_bleu(tmp_path):
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), keep=2)
    bleu = {2: 10.0, 4: 30.0, 6: 20.0}
    for step in range(1, 9):
        metrics_ = {"bleu": bleu[step]} if step in bleu else None
        ckpt.save(step, _state(step), jax.random.PRNGKey(0), None, {"step": step}, metrics_)
    ckpt.wait()
    assert ckpt.manager.all_steps() == [4, 7, 8]
    assert ckpt.best_step() == 4
    assert ckpt.latest_step() == 8
    ckpt.close()


def test_preemption_guard_turns_sigterm_into_a_flag():
    previous = signal.getsignal(signal.SIGTERM)
    with stopping.PreemptionGuard() as guard:
        assert not guard.should_stop()
        os.kill(os.getpid(), signal.SIGTERM)
        assert guard.should_stop()
        assert guard.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is previous


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    writer = metrics.MetricWriter(str(tmp_path), enabled=True)
    writer.write_scalars(10, {"train/loss": np.float32(2.5), "train/accuracy": 0.5})
    writer.write_scalars(20, {"train/loss": 1.25})
    writer.write_text(20, "samples", "a => b")
    writer.close()
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows == [{"step": 10, "train/loss": 2.5, "train/accuracy": 0.5}, {"step": 20, "train/loss": 1.25}]
    events = os.listdir(tmp_path / "tensorboard")
    assert len(events) == 1 and events[0].startswith("events.out.tfevents")
    assert os.path.getsize(tmp_path / "tensorboard" / events[0]) > 0


@pytest.mark.parametrize("shape", [(4, 6), (3, 4, 6)])
def test_plot_attention_writes_png(tmp_path, shape):
    weights = np.random.default_rng(0).dirichlet(np.ones(6), size=shape[:-1])     # [..., T, S]
    path = heatmaps.plot_attention(weights, list("abcde"), list("wxyz"), str(tmp_path / "a.png"), "t")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_attention_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match=r"weights: got shape \(6,\)"):
        heatmaps.plot_attention(np.ones(6), ["a"], ["b"], str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="token lists"):
        heatmaps.plot_attention(np.ones((2, 2)), list("abc"), ["b"], str(tmp_path / "a.png"))


def test_relative_checkpoint_directory(tmp_path, monkeypatch):
    # `--workdir=runs/x` is relative; Orbax itself only accepts absolute paths.
    monkeypatch.chdir(tmp_path)
    ckpt = checkpoint.Checkpointer(os.path.join("runs", "x", "checkpoints"), keep=1)
    ckpt.save(3, _state(2.0), jax.random.PRNGKey(0), None, {"a": 1})
    ckpt.close()
    assert os.path.isdir(tmp_path / "runs" / "x" / "checkpoints" / "3" / "state")
