r"""Train, evaluate and translate: `python -m train.translate`.

    python -m train.translate                     # default: Transformer on number words, CPU
    python -m train.translate --config=train/configs/rnn_bahdanau.py --workdir=runs/bahdanau \
        --config.num_train_steps=3000
    python -m train.translate --workdir=runs/default --mode=eval --checkpoint=best
    python -m train.translate --workdir=runs/default --mode=translate \
        --sentence="forty two" --sentence="three hundred and seven"
    echo "nine thousand and one" | python -m train.translate --mode=translate

A thin entry: flags -> config -> `train.train_lib` (which notebooks and tests
import directly). Bad input ends with one `error: ...` line and exit status 1,
with nothing in the workdir overwritten.
"""

import os
import sys

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from train import cli, run_config, sharding, train_lib

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "transformer.py")

try:
    # config_flags applies --config.<field> overrides while defining the flag.
    _CONFIG = config_flags.DEFINE_config_file(
        "config", _DEFAULT_CONFIG, "Experiment config file (override fields with --config.<field>=<value>).",
        lock_config=True)
except (AttributeError, KeyError) as _e:
    print(f"error: --config.<field>: unknown config field {_e}; see the config file for its fields",
          file=sys.stderr)
    sys.exit(1)
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Run directory (vocabulary, checkpoints, metrics).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "translate"],
                          "train (resumes automatically), eval a checkpoint, or translate sentences.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "latest", list(train_lib.CHECKPOINT_CHOICES),
                                "Checkpoint used by --mode=eval / translate.")
_SENTENCES = flags.DEFINE_multi_string("sentence", [], "Sentence to translate (repeatable); default: stdin lines.")


def _summary_line(summary: dict, split: str) -> str:
    return (f"{split}: BLEU {summary[f'{split}/bleu']:.2f} | chrF {summary[f'{split}/chrf']:.2f} | "
            f"exact match {100 * summary[f'{split}/exact_match']:.1f}% | steps {summary['step']} | "
            f"wall time {summary.get('wall_time', 0.0):.0f}s | workdir {summary['workdir']}")


def _mode_config() -> ml_collections.ConfigDict:
    """Training reads `--config`; every other mode reads the run's own config from `--workdir`."""
    if _MODE.value == "train":
        return _CONFIG.value
    config_flag = flags.FLAGS["config"]
    return run_config.trained_run_config(
        _WORKDIR.value, config_flags.get_override_values(config_flag),
        _CONFIG.value if config_flag.present else None)


def _run() -> int:
    workdir = _WORKDIR.value
    config = _mode_config()
    if config.distributed.coordinator_address:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        sharding.initialize_distributed(config)
    if _MODE.value == "train":
        summary = train_lib.train_and_evaluate(config, workdir)
        if summary["interrupted"]:
            print(f"Interrupted at step {summary['step']}; checkpoint saved in {workdir}. Re-run to resume.")
        else:
            print(_summary_line(summary, summary["eval_splits"][-1]))
    elif _MODE.value == "eval":
        summary = train_lib.evaluate(config, workdir, _CHECKPOINT.value)
        for split in summary["eval_splits"]:
            print(_summary_line(summary, split))
    else:
        sentences = list(_SENTENCES.value) or [line.strip() for line in sys.stdin if line.strip()]
        for source, target in zip(sentences, train_lib.translate(config, workdir, sentences, _CHECKPOINT.value)):
            print(f"{source}\t{target}")
    return 0


if __name__ == "__main__":
    cli.run(_run)
