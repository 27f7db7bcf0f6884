"""Budgets (steps, wall-clock minutes, epochs), stopping on signals, checkpoint averaging, start-up log."""

import logging
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tqdm

from shared import one_device_xla_flags
from test_train_e2e import _params, tiny
from train import data, loop, modes
from train.budget import Budget
from train.configs import transformer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.mark.slow
def test_time_budget_ends_training_evaluates_and_saves(tmp_path, data_dir, caplog, monkeypatch):
    config = tiny(transformer, data_dir, num_train_steps=10_000, max_train_minutes=0.02,  # ~1 s
                  progress_bar=True, log_every_steps=10_000)
    bars = []  # (finished steps, bar total) at every update of the progress bar

    class RecordingBar(tqdm.tqdm):
        def update(self, n=1):
            super().update(n)
            bars.append((self.n, self.total))

    monkeypatch.setattr(tqdm, "tqdm", RecordingBar)
    with caplog.at_level(logging.INFO, logger="train"):
        summary = loop.train_and_evaluate(config, str(tmp_path))
    step = summary["step"]
    assert 1 <= step < 10_000 and not summary["interrupted"]
    # The bar's total follows the time budget from the first finished step, not the 10,000-step one
    # (nor only from the first log step).
    assert bars and bars[-1][0] == step
    assert all(n <= total < 10_000 for n, total in bars), bars
    assert np.isfinite(summary["test/loss"]) and "test/bleu" in summary
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"Training stopped at step {step}: max_train_minutes=0.02 reached" in m for m in messages)
    assert any(m.startswith("Start-up: ") and "data " in m and "vocabulary " in m and "init/restore " in m
               for m in messages)
    assert any(m.startswith("Compiled the train step for batch [8, 24] in ") for m in messages)
    assert os.path.isdir(os.path.join(str(tmp_path), "checkpoints", str(step)))


def test_budget_estimates_the_step_where_the_binding_budget_ends(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("train.budget.time.time", lambda: clock[0])
    config = transformer.get_config()
    config.num_train_steps, config.max_train_minutes, config.data.num_epochs = 1_000_000, 1.0, 0
    budget = Budget(config, start_step=100, num_train_examples=5_000)
    assert budget.estimate_total(100) == 1_000_000  # nothing measured yet: the step budget
    clock[0] += 6.0  # 10 steps in 6 s of a 60 s budget: 90 more
    assert budget.estimate_total(110) == 200
    config.num_train_steps = 150
    assert Budget(config, 100, 5_000).estimate_total(100) == 150
    config.num_train_steps, config.max_train_minutes, config.data.num_epochs = 1_000_000, 0.0, 2
    budget = Budget(config, start_step=0, num_train_examples=5_000)
    budget.add_rows(500)  # 10 steps read 500 of 10,000 pairs: 200 steps in all
    assert budget.estimate_total(10) == 200
    clock[0] += 3600.0  # no time budget: the clock does not matter
    assert budget.estimate_total(10) == 200


@pytest.mark.slow
def test_epoch_budget_is_one_pass_over_the_data(tmp_path, data_dir):
    config = tiny(transformer, data_dir, num_train_steps=10_000)
    config.data.num_epochs = 1
    batches = sum(1 for _ in data.make_datasets(config.data, str(tmp_path / "count"), process_index=0,
                                                process_count=1).train)
    summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["step"] == batches and not summary["interrupted"]


@pytest.mark.slow
def test_average_of_the_last_checkpoints(tmp_path, data_dir, caplog):
    config = tiny(transformer, data_dir, num_train_steps=6, checkpoint_every_steps=2, eval_every_steps=100,
                  keep_checkpoints=3, average_last_checkpoints=3)
    workdir = str(tmp_path)
    with caplog.at_level(logging.INFO, logger="train"):
        loop.train_and_evaluate(config, workdir)
    assert any("Averaged the parameters of checkpoints [2, 4, 6]" in r.getMessage() for r in caplog.records)
    expected = jax.tree.map(lambda *xs: np.mean(np.stack(xs), axis=0), *(_params(workdir, s) for s in (2, 4, 6)))
    averaged = modes.load_trained(config, workdir, "average")
    assert averaged.step == 6
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), averaged.params, expected)
    latest = modes.load_trained(config, workdir, "latest").params
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(latest), jax.tree.leaves(expected)))
    config.average_last_checkpoints = 0
    with pytest.raises(ValueError, match="--checkpoint=average: config.average_last_checkpoints is 0"):
        modes.load_trained(config, workdir, "average")
    config.average_last_checkpoints = 4
    with pytest.raises(ValueError, match="config.average_last_checkpoints: got 4, expected at most"):
        loop.train_and_evaluate(config, str(tmp_path / "other"))


def _cli(workdir, data_dir, *flags, stderr=subprocess.PIPE):
    """`python -m train.translate` at test size, its stderr readable line by line."""
    args = [sys.executable, "-m", "train.translate", f"--workdir={workdir}", "--config.data.dataset=number_words/tiny",
            f"--config.data.data_dir={data_dir}", "--config.data.vocab_size=48", "--config.model.emb_dim=16",
            "--config.model.num_heads=2", "--config.model.mlp_dim=16", "--config.model.num_encoder_layers=1",
            "--config.model.num_decoder_layers=1", "--config.data.bucket_lengths=24",
            "--config.data.max_source_length=24", "--config.data.max_target_length=24",
            "--config.data.tokens_per_batch=192", "--config.progress_bar=false", *flags]
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=one_device_xla_flags(), JAX_PLATFORMS="cpu")
    return subprocess.Popen(args, cwd=REPO, env=env, stderr=stderr, stdout=subprocess.PIPE, text=True)


def _wait_for(proc, marker: str) -> list[str]:
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"{marker!r} never logged: {''.join(lines[-20:])}")


@pytest.mark.slow
def test_sigint_stops_within_a_step_and_saves(tmp_path, data_dir):
    proc = _cli(tmp_path / "run", data_dir, "--config.num_train_steps=100000", "--config.log_every_steps=1",
                "--config.eval_every_steps=100000", "--config.checkpoint_every_steps=100000")
    lines = _wait_for(proc, "Compiled the train step")
    time.sleep(2)  # steps are completing
    proc.send_signal(signal.SIGINT)
    sent = time.time()
    out, err = proc.communicate(timeout=120)
    lines += err.splitlines()
    assert proc.returncode == 0, err[-2000:]
    stopped = [line for line in lines if "Received SIGINT: saving step" in line]
    assert len(stopped) == 1 and "Interrupted at step" in out
    step = int(stopped[0].split("saving step ")[1].split()[0])
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / str(step))
    assert time.time() - sent < 60  # a step, a save and the exit; no evaluation ran
    assert not any("Final evaluation" in line for line in lines)


@pytest.mark.slow
def test_sigint_during_the_final_evaluation_aborts_it(tmp_path, data_dir):
    proc = _cli(tmp_path / "run", data_dir, "--config.num_train_steps=2", "--config.data.eval_max_examples=0",
                "--config.data.eval_batch_size=8", "--config.decode.strategy=beam", "--config.decode.max_length=64")
    _wait_for(proc, "Final evaluation of step 2")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "Final evaluation aborted by SIGINT; saving step 2" in err and "Interrupted at step 2" in out
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / "2")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_one_host_stops_every_host_at_the_same_step(tmp_path, data_dir, signum):
    """Two processes on loopback: SIGTERM to one of them is JAX's preemption notice (SIGINT is forwarded
    as one); both stop at the sync point (`multihost_utils.reached_preemption_sync_point`), save that
    step and exit 0."""
    from test_train_multihost import _free_port
    from train.data import catalog

    catalog.prepare_builder("number_words/tiny", data_dir)  # once, before two processes read it
    address = f"127.0.0.1:{_free_port()}"
    procs, logs = [], [tmp_path / f"process{i}.log" for i in range(2)]
    for i in range(2):
        with open(logs[i], "w") as log:
            proc = _cli(tmp_path / "run", data_dir, "--config.num_train_steps=100000", "--config.log_every_steps=1",
                        "--config.eval_every_steps=100000", "--config.checkpoint_every_steps=100000",
                        "--config.data.batch_size_multiple=8", f"--config.distributed.coordinator_address={address}",
                        "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                        stderr=log)
        procs.append(proc)
    try:
        deadline = time.time() + 240
        while not all("Compiled the train step" in p.read_text() for p in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), logs[1].read_text()[-3000:]
            time.sleep(0.5)
        time.sleep(2)  # steps are completing
        procs[1].send_signal(signum)
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    steps = []
    for i, (proc, out, log) in enumerate(zip(procs, outs, logs)):
        text = log.read_text()
        assert proc.returncode == 0, text[-3000:]
        stopped = [line for line in text.splitlines() if ": saving step " in line and "Received" in line]
        assert len(stopped) == 1 and "Interrupted at step" in out, text[-3000:]
        # JAX's preemption service told every process; a SIGINT is named where it arrived.
        assert ("Received SIGINT" if i == 1 and signum == signal.SIGINT else "a preemption notice") in stopped[0]
        steps.append(int(stopped[0].split("saving step ")[1].split()[0]))
    assert steps[0] == steps[1] and steps[0] >= 1
    assert os.path.isdir(tmp_path / "run" / "checkpoints" / str(steps[0]))
