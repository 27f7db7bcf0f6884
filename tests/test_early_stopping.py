"""Early stopping: the counter's rules, the config's checks, and a run that stops, reads its best
checkpoint for the final evaluation, and stops again at once when resumed."""

import json
import logging
import os

import pytest

from test_train_e2e import tiny
from train import early_stopping, loop, run
from train.configs import transformer
from train.errors import UserError


def _config(**fields):
    config = transformer.get_config()
    config.early_stopping.update(fields)
    return config


def test_counts_evaluations_without_improvement_larger_than_min_delta():
    stopper = early_stopping.EarlyStopping(_config(metric="chrf", patience=2, min_delta=0.5), "validation")
    history = [(10, 40.0), (20, 40.4), (30, 41.0), (40, 41.2), (50, 41.5)]  # +0.4, +1.0, +0.2, +0.5
    reasons = [stopper.update(step, {"validation/chrf": v}) for step, v in history]
    assert reasons[:4] == ["", "", "", ""] and (stopper.best, stopper.best_step) == (41.0, 30)
    assert reasons[4].startswith("early stopping: validation/chrf did not improve on 41 (step 30) by more than 0.5 "
                                 "in 2 evaluations")


def test_a_loss_improves_downwards_and_off_never_stops():
    stopper = early_stopping.EarlyStopping(_config(metric="nll", patience=1), "validation")
    assert stopper.update(1, {"validation/nll": 2.0}) == "" and stopper.update(2, {"validation/nll": 1.5}) == ""
    assert stopper.update(3, {"validation/nll": 1.6}).startswith("early stopping: validation/nll")
    off = early_stopping.EarlyStopping(_config(metric=""), "validation")
    assert all(off.update(s, {}) == "" for s in range(10))


def test_replay_reads_the_evaluations_up_to_the_resumed_step(tmp_path):
    rows = [{"step": 2, "train/loss": 3.0}, {"step": 2, "validation/bleu": 10.0}, {"step": 4, "validation/bleu": 9.0},
            {"step": 4, "validation/bleu": 12.0},  # a resumed run wrote step 4 again: the last row counts
            {"step": 6, "validation/bleu": 5.0}]  # after the checkpoint resumed from: not replayed
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    stopper = early_stopping.EarlyStopping(_config(metric="bleu", patience=3), "validation")
    stopper.replay(str(tmp_path), 4)
    assert (stopper.best, stopper.best_step, stopper.stale) == (12.0, 4, 0)


@pytest.mark.parametrize("fields, message", [
    (dict(metric="accuracy"), "config.early_stopping.metric: got 'accuracy', expected '' (off) or one of"),
    (dict(metric="bleu", patience=0), "config.early_stopping.patience: got 0, expected >= 1"),
    (dict(metric="bleu", min_delta=-1.0), "config.early_stopping.min_delta: got -1.0, expected >= 0"),
])
def test_bad_fields_are_one_line_errors(fields, message):
    with pytest.raises(UserError) as error:
        early_stopping.check_config(_config(**fields))
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_with_checkpoint_averaging_is_refused():
    config = _config(metric="chrf")
    config.average_last_checkpoints = 3
    with pytest.raises(UserError, match=r"^config\.early_stopping\.metric: the final evaluation reads the best"):
        early_stopping.check_config(config)


@pytest.mark.slow
def test_run_stops_and_evaluates_its_best_checkpoint_then_stops_again_when_resumed(tmp_path, caplog):
    # At a constant learning rate of 1 the tiny model's validation loss is lowest after its first step
    # (4.9 nats, then 12, 8, ...): the run stops at the third evaluation (patience 2) and reads step 1
    # for the final evaluation.
    config = tiny(transformer, str(tmp_path / "tfds"), num_train_steps=50, eval_every_steps=1, eval_decode_examples=0,
                  checkpoint_every_steps=100, keep_checkpoints=1, log_every_steps=1, num_heatmaps=0,
                  schedule="constant", learning_rate=1.0, warmup_steps=0)
    config.early_stopping.update(metric="nll", patience=2)
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="train"):
        summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 3 and summary["best_step"] == 1 and not summary["interrupted"]
    assert summary["stopped"].startswith("early stopping: validation/nll did not improve on")
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Training stopped at step 3: early stopping") for m in messages)
    assert "The final evaluation reads the best checkpoint, step 1" in messages
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    first = next(r for r in rows if r["step"] == 1 and "validation/nll" in r)
    # The final evaluation is of step 1's parameters: the same loss, on the same (whole) split.
    assert summary["validation/nll"] == pytest.approx(first["validation/nll"], rel=1e-6)
    assert summary["validation/bleu"] == pytest.approx(first["validation/bleu"])
    evals = [r for r in rows if "validation/nll" in r]  # in the loop at steps 1, 2, 3, then the final one
    assert [r["step"] for r in evals] == [1, 2, 3, 3]
    assert all(r["validation/nll"] > first["validation/nll"] + 1 for r in evals[1:3])
    ckpt = run.open_checkpoints(workdir, config)
    assert ckpt.best_step() == 1 and ckpt.steps() == [1, 3]  # the best is kept beside the latest
    ckpt.close()

    config.num_train_steps = 10  # resumed: the replayed evaluations leave no patience
    summary = loop.train_and_evaluate(config, workdir)
    assert summary["step"] == 4 and summary["best_step"] == 1
