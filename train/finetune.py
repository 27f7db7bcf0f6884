"""Fine-tuning: a new run that starts from another run's parameters and vocabulary.

`config.init_from` names the other run's workdir and `config.init_from_checkpoint` which of
its checkpoints ("latest", "best" or "average", as `--checkpoint`). The new run lives in its own
workdir, trains on its own data with a fresh optimizer and learning-rate schedule, and resumes
from its own checkpoints like any run; only its first start reads the other run.

    python -m train.translate --config=train/configs/transformer_small_corpus.py --workdir=runs/tuned \
        --config.init_from=runs/small --config.data.train_file=new_pairs.tsv ...

The model config must describe the same model (only dropout may differ): another one is a
one-line error naming the field, before anything is written. The vocabulary is copied into
the new workdir; how much of the new data it cannot represent (<unk>) is logged
(`train.data.make_datasets`).
"""

from __future__ import annotations

import logging
import os
import shutil

import ml_collections

from train import run, saved_config
from train.data import load_tokenizers
from train.errors import UserError

__all__ = ["MAY_DIFFER", "parent_config", "check", "copy_vocabulary", "initial_params"]

_log = logging.getLogger(__name__)

# Model fields a fine-tuning run may set differently from the run it starts from (no parameter depends on them).
MAY_DIFFER = ("dropout_rate", "attention_dropout_rate")


def parent_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config of the run `config.init_from` names (a UserError if it holds none)."""
    if not os.path.isdir(config.init_from):
        raise UserError(f"config.init_from: {config.init_from!r} is not a directory (expected the workdir of a "
                        "trained run)")
    return saved_config.trained_run_config(config.init_from, {})


def check(config: ml_collections.ConfigDict) -> None:
    """One-line errors for an `init_from` run that cannot start this one; writes nothing."""
    if not config.init_from:
        return
    if config.init_from_checkpoint not in run.CHECKPOINT_CHOICES:
        raise UserError(f"config.init_from_checkpoint: got {config.init_from_checkpoint!r}, expected one of "
                        f"{run.CHECKPOINT_CHOICES}")
    parent = parent_config(config)
    mine, theirs = config.model.to_dict(), parent.model.to_dict()
    for name in MAY_DIFFER:
        mine.pop(name, None)
        theirs.pop(name, None)
    differences = saved_config.diff({"model": theirs}, {"model": mine})
    if differences:
        raise UserError(f"config.init_from: {config.init_from!r} holds another model ({'; '.join(differences[:3])}); "
                        f"fine-tuning needs the same model config (only {', '.join(MAY_DIFFER)} may differ)")
    if parent.data.shared_vocab != config.data.shared_vocab:
        raise UserError(f"config.data.shared_vocab: {config.init_from!r} has {parent.data.shared_vocab}, config has "
                        f"{config.data.shared_vocab}; a fine-tuning run keeps the vocabulary layout of its parent")


def copy_vocabulary(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Copies the parent's vocabulary into `<workdir>/vocab` at the run's first start (then it is the run's own)."""
    vocab_dir = os.path.join(workdir, "vocab")
    roles = ("shared",) if config.data.shared_vocab else ("source", "target")
    if all(os.path.exists(os.path.join(vocab_dir, f"{role}.model")) for role in roles):
        return
    inherited = load_tokenizers(os.path.join(config.init_from, "vocab"), shared=config.data.shared_vocab)
    os.makedirs(vocab_dir, exist_ok=True)
    for role, tokenizer in zip(roles, (inherited.source, inherited.target)):
        settings = os.path.join(config.init_from, "vocab", f"{role}.json")
        if os.path.exists(settings):  # what the parent's vocabulary was trained with, for the record
            shutil.copyfile(settings, os.path.join(vocab_dir, f"{role}.json"))
        tokenizer.save(os.path.join(vocab_dir, f"{role}.model"))  # atomic, and last: its presence marks the copy
    _log.info("Vocabulary copied from %s (V=%d/%d)", os.path.join(config.init_from, "vocab"),
              inherited.source.vocab_size, inherited.target.vocab_size)


def initial_params(the_run: run.Run):
    """The parent's parameters (`init_from_checkpoint`), placed as `the_run`'s state places them."""
    config = the_run.config
    _, params, step = run.restore_params(config.init_from, config.init_from_checkpoint, the_run.tokenizers,
                                         the_run.parallel)
    _log.info("Fine-tuning from %s, checkpoint %d (%s): its parameters and vocabulary; the optimizer and the "
              "learning-rate schedule start afresh", config.init_from, step, config.init_from_checkpoint)
    return params
