"""Fault injection: damaged run directories, a full disk, a busy workdir, and inputs that slip through.

The session's tiny run (tests/conftest.py `tiny_run`: checkpoints at steps 2, 3, 4; step 4
is the final one and carries a validation BLEU) is trained once; each test damages its own copy.
"""

import collections
import errno
import glob
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags

from train import build, checkpoint, checkpoint_files, cli, loop, modes, quiet, workdir_lock
from train.data import corpus, load_tokenizers, make_datasets
from train.errors import UserError
from train.run import open_checkpoints, select_step

from tiny import tiny

pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))


def _config(data_dir: str, **overrides):
    config = tiny(keep_checkpoints=3, **overrides)
    config.data.data_dir = data_dir
    return config


@pytest.fixture
def run(tiny_run, tiny_run_copy):
    """A private copy of the session's tiny run (checkpoints 2, 3, 4): (workdir, checkpoints dir, data_dir)."""
    assert checkpoint_files.step_dirs(os.path.join(tiny_run[0], "checkpoints")) == [2, 3, 4]
    return tiny_run_copy, os.path.join(tiny_run_copy, "checkpoints"), tiny_run[1]


def _digest(path: str) -> str:
    """Content and relative layout of a directory tree (unchanged by a rename)."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _garbage(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"\xbfgarbage{{")


def _damage(step_dir: str, kind: str) -> str:
    """Damages one checkpoint; returns the file (relative to the checkpoints dir) to be named."""
    name = os.path.basename(step_dir)
    if kind == "arrays":  # every array data file overwritten
        files = sorted(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True))
        for path in files:
            _garbage(path)
        return f"{name}/state/"
    if kind == "truncated":  # every file cut in half
        for path in glob.glob(os.path.join(step_dir, "**"), recursive=True):
            if os.path.isfile(path):
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
        return f"{name}/"
    if kind == "no_state":
        shutil.rmtree(os.path.join(step_dir, "state"))
        return f"{name}/state: missing"
    relative = {"metadata": "state/_METADATA", "iterator": "data/process_0-of-1.json",
                "config_item": "config/metadata", "metrics": "metrics/metrics",
                "step_metadata": "_CHECKPOINT_METADATA"}[kind]
    _garbage(os.path.join(step_dir, relative))
    return f"{name}/{relative}"


DAMAGES = ["arrays", "truncated", "no_state", "metadata", "iterator", "config_item", "metrics", "step_metadata"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", DAMAGES)
def test_damaged_latest_is_named_and_skipped(run, kind, caplog):
    _, ckpt_dir, _ = run
    named = _damage(os.path.join(ckpt_dir, "4"), kind)
    before = _digest(os.path.join(ckpt_dir, "4"))
    caplog.set_level(logging.WARNING, logger="train")

    reader = checkpoint.Checkpointer(ckpt_dir, keep=1, read_only=True)  # eval / translate
    try:
        assert reader.select("latest") == 3
    finally:
        reader.close()
    assert f"checkpoint 4 is damaged: {named}" in caplog.text and "falling back to checkpoint 3" in caplog.text
    assert _digest(os.path.join(ckpt_dir, "4")) == before  # readers touch nothing
    assert not os.listdir(os.path.join(os.path.dirname(ckpt_dir), ".snapshots"))  # snapshot removed

    caplog.clear()
    trainer = checkpoint.Checkpointer(ckpt_dir, keep=3)  # a resumed run
    try:
        assert trainer.select("latest", checkpoint.RESUME_ITEMS) == 3
        assert trainer.latest_step() == 3 and trainer.manager.latest_step() == 3
    finally:
        trainer.close()
    assert f"checkpoint 4 is damaged: {named}" in caplog.text and "falling back to checkpoint 3" in caplog.text
    assert checkpoint_files.step_dirs(ckpt_dir) == [2, 3]
    assert _digest(os.path.join(ckpt_dir, "damaged-4")) == before  # set aside whole, never rewritten


@pytest.mark.slow
def test_resume_falls_back_and_never_overwrites_the_damaged_step(run, caplog):
    workdir, ckpt_dir, data_dir = run
    _damage(os.path.join(ckpt_dir, "4"), "arrays")
    before = _digest(os.path.join(ckpt_dir, "4"))
    caplog.set_level(logging.INFO, logger="train")
    summary = loop.train_and_evaluate(_config(data_dir, num_train_steps=5), workdir)
    assert summary["step"] == 5
    assert "Restored checkpoint 3" in caplog.text and "moved it to" in caplog.text
    assert _digest(os.path.join(ckpt_dir, "damaged-4")) == before
    assert checkpoint_files.step_dirs(ckpt_dir) == [3, 4, 5]  # a fresh step 4, written next to the old one
    checkpoint_files.check_step(ckpt_dir, 4, checkpoint.RESUME_ITEMS)


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_error_and_nothing_moves(run):
    workdir, ckpt_dir, data_dir = run
    for step in (2, 3, 4):
        _damage(os.path.join(ckpt_dir, str(step)), "no_state")
    before = _digest(ckpt_dir)
    with pytest.raises(UserError, match=r"no intact checkpoint in .*checkpoint 4 is damaged: 4/state: missing"):
        loop.train_and_evaluate(_config(data_dir, num_train_steps=5), workdir)  # never starts afresh
    with pytest.raises(UserError, match="no intact checkpoint"):
        modes.translate(_config(data_dir), workdir, ["one"])
    assert _digest(ckpt_dir) == before


@pytest.mark.slow
def test_cli_translate_falls_back_without_asyncio_tracebacks(run):
    workdir, ckpt_dir, _ = run
    _damage(os.path.join(ckpt_dir, "4"), "arrays")
    result = _cli("--mode=translate", f"--workdir={workdir}", "--sentence=one")
    assert result.returncode == 0, result.stderr
    assert "checkpoint 4 is damaged: 4/state/" in result.stderr
    assert "falling back to checkpoint 3" in result.stderr
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr


@pytest.mark.slow
def test_damaged_config_json_and_vocabulary_are_one_line_naming_the_file(run):
    workdir, _, data_dir = run
    _garbage(os.path.join(workdir, "config.json"))
    with pytest.raises(UserError, match=r"config\.json: unreadable run config"):
        loop.train_and_evaluate(_config(data_dir, num_train_steps=5), workdir)
    os.remove(os.path.join(workdir, "config.json"))  # what the message suggests for training
    _garbage(os.path.join(workdir, "vocab", "shared.model"))
    with pytest.raises(UserError, match=r"vocabulary .*vocab/shared\.model: not a SentencePiece model"):
        load_tokenizers(os.path.join(workdir, "vocab"), shared=True)
    with pytest.raises(UserError, match=r"vocab/shared\.model: not a SentencePiece model"):
        loop.train_and_evaluate(_config(data_dir, num_train_steps=5), workdir)


@pytest.mark.slow
def test_best_without_a_best_checkpoint_lists_the_steps(run):
    _, ckpt_dir, _ = run
    shutil.rmtree(os.path.join(ckpt_dir, "4"))  # the only one with a validation BLEU
    ckpt = open_checkpoints(os.path.dirname(ckpt_dir))
    try:
        assert select_step(ckpt, "latest") == 3
        with pytest.raises(UserError, match=r"no best checkpoint .*steps \[2, 3\].*--checkpoint=latest reads step 3"):
            select_step(ckpt, "best")
    finally:
        ckpt.close()


def _tensorstore_disk_full(path: str) -> ValueError:
    return ValueError(f'RESOURCE_EXHAUSTED: Failed writing: "{path}": Failed to write 845 bytes to file 13: '
                      "No space left on device [os_error_code='28']")


@pytest.mark.slow
def test_disk_full_is_one_line_and_keeps_the_last_checkpoint(run, monkeypatch, capsys):
    workdir, ckpt_dir, data_dir = run
    save, wait = ocp.CheckpointManager.save, ocp.CheckpointManager.wait_until_finished
    failed = []

    def full_save(self, step, *args, **kwargs):  # the write of step 5 runs out of space in the background
        if step < 5:
            return save(self, step, *args, **kwargs)
        failed.append(step)
        return True

    def full_wait(self):  # reports the background error once, as Orbax does
        if failed:
            failed.pop()
            raise _tensorstore_disk_full(f"{ckpt_dir}/5.orbax-checkpoint-tmp/state/d/0")
        return wait(self)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_save)
    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", full_wait)
    with pytest.raises(checkpoint.DiskFullError) as error:
        loop.train_and_evaluate(_config(data_dir, num_train_steps=7), workdir)
    message = str(error.value)
    assert "no space left on the device of" in message and ckpt_dir in message
    assert "while saving checkpoint 5" in message and "checkpoint 4 is the last complete one" in message
    assert " free)" in message and "\n" not in message
    monkeypatch.undo()
    assert checkpoint_files.step_dirs(ckpt_dir) == [2, 3, 4]
    checkpoint_files.check_step(ckpt_dir, 4, checkpoint.RESUME_ITEMS)

    # The CLI prints that one line, also when closing files on the full disk fails afterwards.
    def body() -> int:
        try:
            raise error.value
        finally:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # e.g. TensorBoard's flush on close
    assert cli.one_line_errors(body) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err == f"error: {message}\n"


def test_disk_full_echoes_of_background_writers_are_dropped(monkeypatch, capsys):
    printed = []
    monkeypatch.setattr(threading, "excepthook", lambda args: printed.append(args.exc_value))
    monkeypatch.setattr(sys, "unraisablehook", lambda u: printed.append(u.exc_value))
    quiet.install()

    def writer(error):
        raise error
    for error in (OSError(errno.ENOSPC, "No space left on device"), RuntimeError("a bug in a thread")):
        thread = threading.Thread(target=writer, args=(error,))
        thread.start()
        thread.join()
    assert [str(e) for e in printed] == ["a bug in a thread"]


@pytest.mark.slow
def test_second_trainer_is_refused_naming_the_first(run):
    workdir, ckpt_dir, data_dir = run
    before = _digest(ckpt_dir)
    with workdir_lock.WorkdirLock(workdir):
        with pytest.raises(UserError, match=rf"in use by another trainer \(pid {os.getpid()} on host .+, started "):
            loop.train_and_evaluate(_config(data_dir, num_train_steps=5), workdir)
    assert _digest(ckpt_dir) == before

    # The kernel releases the lock of a killed process: no stale lock.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from train.workdir_lock import WorkdirLock\n"
        f"lock = WorkdirLock({workdir!r}).__enter__(); print('locked', flush=True); time.sleep(60)")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"pid {holder.pid} on host"):
            workdir_lock.WorkdirLock(workdir).__enter__()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lock.WorkdirLock(workdir):
        pass


_TRAINER_CONFIG = '''
import sys
sys.path.insert(0, {tests!r})
from tiny import tiny


def get_config():
    config = tiny(num_train_steps=100000, checkpoint_every_steps=1, keep_checkpoints=1, eval_every_steps=100000)
    config.data.data_dir = {data_dir!r}
    return config
'''


def _cli(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", "train.translate", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_eval_and_translate_read_a_stable_checkpoint_while_training(run, tmp_path):
    workdir, ckpt_dir, data_dir = run
    config_file = tmp_path / "trainer_config.py"
    config_file.write_text(_TRAINER_CONFIG.format(tests=TESTS, data_dir=data_dir))
    trainer = subprocess.Popen([sys.executable, "-m", "train.translate", f"--config={config_file}",
                                f"--workdir={workdir}"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while max(checkpoint_files.step_dirs(ckpt_dir), default=0) < 8:  # rotating every step by now
            assert trainer.poll() is None and time.time() < deadline, "the trainer did not get going"
            time.sleep(0.2)
        second = _cli(f"--config={config_file}", f"--workdir={workdir}")
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"in use by another trainer (pid {trainer.pid} on host" in errors[0]
        translated = _cli("--mode=translate", f"--workdir={workdir}", "--sentence=one", "--sentence=two")
        assert translated.returncode == 0, translated.stderr
        assert len(translated.stdout.splitlines()) == 2  # one translation per sentence
        evaluated = _cli("--mode=eval", f"--workdir={workdir}")
        assert evaluated.returncode == 0, evaluated.stderr
        assert "validation: BLEU" in evaluated.stdout
        assert trainer.poll() is None  # still training: the readers never waited for it
    finally:
        trainer.send_signal(signal.SIGTERM)  # saves and exits 0
        _, stderr = trainer.communicate(timeout=120)
    assert trainer.returncode == 0, stderr
    assert not os.listdir(os.path.join(workdir, ".snapshots"))


def _flag_value(value, kind):
    """A value of the field's type different from `value`, as it is written on the command line."""
    if kind is bool:
        return str(not value), (not value)
    if kind is int:
        new = 1 if value is None else value + 1
        return str(new), new
    if kind is float:
        return repr(value + 0.25), value + 0.25
    if kind is str:
        new = "xla" if value is None else f"{value}_x"
        return new, new
    if kind is tuple:
        new = tuple(value) + tuple(value[:1]) if value else ("x",)
        return repr(new), new
    raise AssertionError(f"field of type {kind.__name__}: cannot be set from the command line")


def _leaves(config, prefix=""):
    for key in config.keys():
        value = config[key]
        if hasattr(value, "keys"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value, config.get_type(key)


CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(REPO, "train", "configs", "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "base.py"))


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_field_can_be_set_from_the_command_line(path):
    loaded = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=loaded, sys_argv=["prog", f"--config={path}"])
    loaded(["prog", f"--config={path}"])
    wanted = {}
    argv = ["prog", f"--config={path}"]
    for name, value, kind in _leaves(loaded.config):
        text, wanted[name] = _flag_value(value, kind)
        argv.append(f"--config.{name}={text}")
    parsed = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=parsed, sys_argv=argv)
    parsed(argv)
    got = {name: value for name, value, _ in _leaves(parsed.config)}
    assert got == wanted
    assert wanted  # every leaf was overridden


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if "transformer" in os.path.basename(p)],
                         ids=os.path.basename)
def test_none_default_model_fields_take_valid_values(path):
    argv = ["prog", f"--config={path}", "--config.model.num_kv_heads=1",
            "--config.model.attention_implementation=xla"]
    parsed = flags.FlagValues()
    config_flags.DEFINE_config_file("config", path, flag_values=parsed, sys_argv=argv)
    parsed(argv)
    model = build.model_config(parsed.config, vocab_size=64)
    assert model.num_kv_heads == 1 and model.attention_implementation == "xla"


@pytest.mark.parametrize("content, message", [
    ("def get_config(:\n", "cannot load the config file (SyntaxError: invalid syntax"),
    ("x = 1\n", "the file defines no get_config()"),
    (None, "no such file"),
])
def test_config_file_errors_are_one_line(tmp_path, monkeypatch, capsys, content, message):
    path = tmp_path / "bad_config.py"
    if content is not None:
        path.write_text(content)
    fresh = flags.FlagValues()
    config_flags.DEFINE_config_file("config", os.path.join(REPO, "train", "configs", "transformer.py"),
                                    flag_values=fresh, sys_argv=["prog"])
    monkeypatch.setattr(flags, "FLAGS", fresh)
    monkeypatch.delitem(sys.modules, "config_config", raising=False)  # as in a fresh process
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", f"--config={path}"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --config={path}: ") and message in err, err


def test_stray_positional_argument_is_one_line(monkeypatch, capsys):
    fresh = flags.FlagValues()
    monkeypatch.setattr(flags, "FLAGS", fresh)
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", "translate", "this"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unexpected arguments: translate this")


def test_overlong_lines_are_skipped_and_counted(tmp_path, caplog):
    tsv = tmp_path / "pairs.tsv"
    good = [f"word{i} more\tWort{i} mehr" for i in range(20)]
    tsv.write_text("\n".join(good[:10] + ["x" * 1_000_000 + "\ty", "a\t" + "b " * 1500] + good[10:]) + "\n")
    counter = collections.Counter()
    pairs = list(corpus.read_pairs([str(tsv)], counter, max_chars=2000))
    assert [p[1] for p in pairs] == [g.split("\t")[0] for g in good]
    assert dict(counter) == {"longer than 2000 chars": 2}

    config = tiny()
    config.data.update(dataset="tsv", train_file=str(tsv), eval_holdout=4, data_dir=str(tmp_path / "tfds"))
    caplog.set_level(logging.WARNING)
    datasets = make_datasets(config.data, str(tmp_path / "run"))
    assert datasets.num_train_examples == 16
    assert "skipped 2 of 22 lines" in caplog.text and "longer than 2000 chars: 2" in caplog.text

    tsv.write_text("x" * 1_000_000 + "\ty\n")
    config.data.update(eval_holdout=0, eval_file=str(tsv), data_dir=str(tmp_path / "tfds2"))
    with pytest.raises(UserError, match=r"no usable .*longer than 2000 chars': 1"):
        make_datasets(config.data, str(tmp_path / "run2"))

    # Short enough in characters, too long in tokens for every pair: refused, not an endless search.
    tsv.write_text("".join(f"{'eins zwei drei ' * 20}{i}\tone two three {i}\n" for i in range(8)))
    config.data.update(data_dir=str(tmp_path / "tfds3"))
    with pytest.raises(UserError, match=r"all 8 training pairs are longer than 24 / 24 tokens"):
        make_datasets(config.data, str(tmp_path / "run3"))
