"""Bad input from outside the program: each one `error:` line, exit status 1 (130 for Ctrl-C), nothing written.

Every case here was once a traceback: an unknown model family, an unknown dataset config, learned
positions shorter than the data, a workdir name longer than the file system allows, Ctrl-C while
the libraries load or while a mode compiles. (The first two on the command line:
tests/test_train_bad_input.py::test_cli_bad_input_is_one_line_and_exit_1.)
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from train import cli, interrupt, loop
from train.errors import UserError

from tiny import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("change, message", [
    ({"model.family": "lstm"}, r"config\.model\.family: got 'lstm', expected one of \['rnn', 'transformer'\]"),
    ({"data.dataset": "number_words/gigantic"},
     r"dataset: 'number_words/gigantic': number_words has no config 'gigantic', expected one of \['tiny'"),
    ({"data.dataset": "no_such_dataset"}, r"dataset: 'no_such_dataset' is not a TFDS dataset"),
    ({"model.positional": "learned", "model.max_len": 16},
     r"config\.data\.max_source_length: length 24 exceeds TransformerConfig\.max_len=16 of learned positions: "
     r"raise config\.model\.max_len or lower config\.data\.max_source_length"),
])
def test_refused_before_anything_is_written(tmp_path, change, message):
    config = tiny()
    config.update_from_flattened_dict(change)
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=message):
        loop.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_workdir_name_longer_than_the_file_system_allows(tmp_path):
    workdir = str(tmp_path / ("w" * 300))
    with pytest.raises(UserError, match=r"workdir: .* cannot be used \(File name too long; longest name part 300"):
        loop.train_and_evaluate(tiny(), workdir)
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_while_the_libraries_load_is_one_line_and_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "train.translate", f"--workdir={tmp_path / 'run'}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # past interpreter start-up, inside the imports (jax, flax, orbax, tfds: seconds)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == interrupt.EXIT_STATUS == 130, err[-3000:]
    assert err == interrupt.MESSAGE + "\n" and out == ""
    assert not (tmp_path / "run").exists()


def test_ctrl_c_in_a_mode_is_one_line_and_130(monkeypatch, capsys):
    """Ctrl-C outside the training loop (data preparation, restoring, compiling a mode)."""
    def body() -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(sys, "argv", ["translate"])
    with pytest.raises(SystemExit) as exit_info:
        cli.run(body)
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == interrupt.MESSAGE + "\n"
