"""A restore that fails says what happened: damaged files, a state of another structure, or a bug.

One tiny run is trained once per module (checkpoints at steps 3 and 4); each test works on its own copy.
"""

import glob
import os

import jax
import orbax.checkpoint as ocp
import pytest

from train import build, checkpoint, loop, modes, run, sharding
from train.data import load_tokenizers
from train.errors import UserError

from tiny import tiny

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")]  # ml_collections


def _config(data_dir: str):
    config = tiny(keep_checkpoints=3)
    config.data.data_dir = data_dir
    return config


@pytest.fixture
def trained(tiny_run):
    """(workdir, data_dir) of the session's tiny run (tests/conftest.py): checkpoints 2, 3, 4."""
    return tiny_run


@pytest.fixture
def workdir(tiny_run_copy):
    return tiny_run_copy


def _restore_latest(config, workdir: str):
    """`run.restore` of step 4 without `select`'s file check first (as if damaged after it)."""
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]))
    tokenizers = load_tokenizers(os.path.join(workdir, "vocab"), shared=config.data.shared_vocab)
    ckpt = run.open_checkpoints(workdir)
    try:
        return run.restore(run.for_vocabulary(config, workdir, tokenizers, built), ckpt, 4)
    finally:
        ckpt.close()


# Orbax's operations still in flight complete into its closed asyncio loop (the CLI drops these echoes).
@pytest.mark.filterwarnings("ignore:Exception ignored:pytest.PytestUnraisableExceptionWarning")
def test_damaged_array_file_found_at_restore_is_named(trained, workdir):
    config = _config(trained[1])
    _restore_latest(config, workdir)  # intact: restores
    data_files = glob.glob(os.path.join(workdir, "checkpoints", "4", "state", "d", "*"))
    assert data_files
    for path in data_files:
        with open(path, "r+b") as f:
            f.write(b"\xbfgarbage{{")
    with pytest.raises(checkpoint.DamagedCheckpointError, match=r"^checkpoint 4 is damaged: 4/state/d/") as error:
        _restore_latest(config, workdir)
    assert "\n" not in str(error.value)


@pytest.mark.filterwarnings("ignore:Exception ignored:pytest.PytestUnraisableExceptionWarning")
def test_state_of_another_structure_names_the_arrays_that_differ(trained, workdir, monkeypatch):
    config = _config(trained[1])
    model_config = build.model_config

    def wider_mlp(*args, **kwargs):  # the code now builds a wider feed-forward layer than was trained
        return model_config(*args, **kwargs).replace(mlp_dim=48)
    monkeypatch.setattr(build, "model_config", wider_mlp)
    with pytest.raises(checkpoint.CheckpointMismatchError) as error:
        modes.translate(config, workdir, ["one"])
    message = str(error.value)
    assert message.startswith("checkpoint 4 holds a different state structure than this code builds: params/")
    assert ("checkpoint [16, 32], model [16, 48]" in message) and ("checkpoint [32, 16], model [48, 16]" in message)
    assert "\n" not in message and not isinstance(error.value, checkpoint.DamagedCheckpointError)
    assert isinstance(error.value, UserError)


def test_a_bug_in_restore_keeps_its_type_and_traceback(trained, workdir, monkeypatch):
    def broken_restore(self, step, *args, **kwargs):
        raise TypeError(f"a bug while restoring step {step}")
    monkeypatch.setattr(ocp.CheckpointManager, "restore", broken_restore)
    with pytest.raises(TypeError, match="a bug while restoring step 4") as error:
        modes.translate(_config(trained[1]), workdir, ["one"])
    assert not isinstance(error.value, UserError)
    assert error.traceback[-1].name == "broken_restore"  # raised where the bug is, not re-raised as damage


def test_a_restored_state_has_the_types_of_a_fresh_one(trained):
    """The train step of a resumed run is the program of a fresh run (no weak-typed leaf in either), so a
    resume reads it from the compilation cache instead of compiling it again."""
    config = _config(trained[1])
    restored, _ = _restore_latest(config, trained[0])
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]))
    tokenizers = load_tokenizers(os.path.join(trained[0], "vocab"), shared=config.data.shared_vocab)
    the_run = run.for_vocabulary(config, trained[0], tokenizers, built)
    fresh = jax.eval_shape(the_run.init_fn, jax.random.PRNGKey(0))

    def types(tree):  # the leaves' types by path (the two states' optimizers are different closures)
        return [(jax.tree_util.keystr(path), x.shape, x.dtype, jax.typeof(x).weak_type)
                for path, x in jax.tree_util.tree_leaves_with_path(tree)]
    assert types(restored) == types(fresh)
