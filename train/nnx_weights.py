"""NNX models in and out of the trainer's workdirs.

    trained = nnx_weights.load("runs/default")            # a `modes.Trained`; .model is a jaxattn.nnx.Model
    ...                                                   # train it further with nnx.Optimizer
    nnx_weights.save(trained.model, "runs/tuned", like="runs/default")
    # python -m train.translate --workdir=runs/tuned --mode=translate   (or eval, score, serve)

`load` reads a checkpoint as `--mode=translate` does (`--checkpoint=latest|best|average`) and hands
its parameters to `jaxattn.nnx.from_linen_params`. `save` writes a new workdir holding the run
config and vocabulary of the workdir `like` (the model's config must be that run's) and one
checkpoint of the model's weights, with a fresh optimizer state: the modes read it as any run's,
and training it further starts its optimizer and schedule afresh. It never writes into an existing
directory, and a failed save leaves nothing behind.
"""

import dataclasses
import os
import shutil
import tempfile

import jax

from jaxattn import nnx as jaxattn_nnx
from train import build, modes, run, saved_config, sharding, steps
from train.data import load_tokenizers
from train.errors import UserError

__all__ = ["load", "save"]


def load(workdir: str, checkpoint_name: str = "latest") -> modes.Trained:
    """The run in `workdir` with its model as a `jaxattn.nnx.Model` (`params` None: the model holds them)."""
    config = saved_config.trained_run_config(workdir, {})
    trained = modes.load_trained(config, workdir, checkpoint_name)
    model = jaxattn_nnx.from_linen_params(trained.model.config, jax.device_get(trained.params))
    return dataclasses.replace(trained, model=model, params=None)


def save(model: jaxattn_nnx.Model, workdir: str, *, like: str, step: int = 0) -> str:
    """Writes `model`'s weights to the new workdir `workdir`, a run of `like`'s config and vocabulary.

    Returns:
      `workdir`.

    Raises:
      UserError: `workdir` exists, `like` is no trained run, or the model is not `like`'s model.
    """
    if os.path.lexists(workdir):
        raise UserError(f"workdir: {workdir!r} exists; save to a new directory (nothing is overwritten)")
    config = saved_config.trained_run_config(like, {})
    tokenizers = load_tokenizers(os.path.join(like, "vocab"), shared=config.data.shared_vocab)
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]), data=False)
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(workdir)}.partial-", dir=parent)
    try:
        the_run = run.for_vocabulary(config, partial, tokenizers, built)
        if the_run.model.config != model.config:
            raise UserError(f"model: its config is not the model of {like!r} ({_first_difference(the_run.model.config, model.config)})")
        shutil.copytree(os.path.join(like, "vocab"), os.path.join(partial, "vocab"))
        saved_config.save_config(config, partial)
        rng = sharding.global_rng(config.seed)
        # The model's own weights and a fresh optimizer state for them (no second initialization).
        state = steps.TrainState.create(apply_fn=the_run.model.apply, params=jaxattn_nnx.linen_params(model),
                                        tx=built.optimizer)
        state = built.parallel.place_state(state.replace(step=step))
        ckpt = run.checkpointer(config, partial)
        try:
            ckpt.save(step, state, rng, None, run.checkpoint_config(the_run))
        finally:
            ckpt.close()
        os.rename(partial, workdir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return workdir


def _first_difference(want, got) -> str:
    if type(want) is not type(got):
        return f"the run's is a {type(want).__name__}, the model's a {type(got).__name__}"
    for field in dataclasses.fields(want):
        a, b = getattr(want, field.name), getattr(got, field.name)
        if a != b:
            return f"{field.name}: the run has {a!r}, the model {b!r}"
    return "equal fields"
