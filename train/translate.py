r"""Train, evaluate and translate: `python -m train.translate`.

    python -m train.translate                     # default: Transformer on number words, CPU
    python -m train.translate --config=train/configs/rnn_bahdanau.py --workdir=runs/bahdanau \
        --config.num_train_steps=3000
    python -m train.translate --workdir=runs/default --mode=eval --checkpoint=best
    python -m train.translate --workdir=runs/default --mode=translate \
        --sentence="forty two" --sentence="three hundred and seven"
    echo "nine thousand and one" | python -m train.translate --mode=translate
    python -m train.translate --mode=translate --input_file=in.txt --output_file=out.txt --nbest=4
    printf 'five\tfünf\n' | python -m train.translate --mode=score   # log P(target | source)
    python -m train.translate --workdir=runs/default --mode=serve --port=8000  # HTTP API + explorer page
    printf 'forty two\tzweiundvierzig\n' | python -m train.translate --mode=align   # Pharaoh word links
    python -m train.translate --mode=translate --sentence="forty two" --align       # translation<TAB>links
    python -m train.translate --mode=export --format=ctranslate2 --output_dir=runs/default_ct2
    python -m train.translate --workdir=runs/b --mode=translate --ensemble=runs/a  # two runs decoded as one
    python -m train.translate --workdir=runs/tuned --config.init_from=runs/a ...    # fine-tune runs/a

A thin entry: flags -> config -> `train.loop` (training), `train.modes` (eval,
translate, score), `train.align` (align), `train.export` (export) or `train.server` (serve),
which notebooks and tests import directly. Bad input ends with one `error: ...` line and exit status 1,
with nothing in the workdir overwritten.
"""

import logging
import os
import sys
import time

from train import interrupt

if __name__ == "__main__":
    interrupt.exit_on_ctrl_c()  # Ctrl-C while the libraries load: one line, exit 130

import jax  # noqa: E402  (after the Ctrl-C handler: these imports take seconds)
import ml_collections  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from train import align, cli, loop, modes, run, saved_config, sharding, translation  # noqa: E402
from train.errors import UserError  # noqa: E402

_log = logging.getLogger("train.translate")  # not __name__: that is "__main__" under `python -m`
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
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "translate", "score", "align", "serve", "export"],
                          "train (resumes automatically), eval a checkpoint, translate sentences, score "
                          "source<TAB>target pairs (log-probabilities), align them (Pharaoh word links from "
                          "attention), serve the model over HTTP with the attention explorer page, or export "
                          "it for another inference engine.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "latest", list(run.CHECKPOINT_CHOICES),
                                "Checkpoint used by --mode=eval / translate / score / align / serve / export.")
_SENTENCES = flags.DEFINE_multi_string("sentence", [], "Sentence to translate (repeatable); default: "
                                       "--input_file, else stdin lines.")
_INPUT_FILE = flags.DEFINE_string("input_file", "", "translate: sentences, one a line; score / align: "
                                  "source<TAB>target lines. Default: stdin.")
_OUTPUT_FILE = flags.DEFINE_string("output_file", "", "Where translate / score / align write, one line per input "
                                   "line (replaced only when the run succeeds). Default: stdout.")
_ALIGN = flags.DEFINE_bool("align", False, "translate: add a TAB and the word alignment of each translation "
                           "(Pharaoh i-j pairs, as --mode=align prints them; settings config.align.*).")
_FORMAT = flags.DEFINE_enum("format", "ctranslate2", ["ctranslate2"], "export: the format written.")
_ENSEMBLE = flags.DEFINE_list("ensemble", [], "eval / translate / score: more workdirs (same vocabulary) whose "
                              "models decode with --workdir's as one, averaging their log-probabilities at every "
                              "step (e.g. --ensemble=runs/b,runs/c).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "", "export: the directory written (must not exist yet).")
_NBEST = flags.DEFINE_integer("nbest", 0, "translate: K > 0 prints K lines per input line, "
                              "line<TAB>rank<TAB>score<TAB>translation (beam size max(K, decode.beam_size)).",
                              lower_bound=0)
_HOST = flags.DEFINE_string("host", "127.0.0.1", "serve: the address to listen on (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 8000, "serve: the TCP port (0: a free one, printed at start-up).",
                             lower_bound=0, upper_bound=65535)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "translate / score: sentences per batch "
                                   "(0 = config.data.eval_batch_size).", lower_bound=0)


def _summary_line(summary: dict, split: str) -> str:
    return (f"{split}: BLEU {summary[f'{split}/bleu']:.2f} | chrF {summary[f'{split}/chrf']:.2f} | "
            f"exact match {100 * summary[f'{split}/exact_match']:.1f}% | steps {summary['step']} | "
            + (f"early stopping: best step {summary['best_step']} | " if "best_step" in summary else "")
            + f"wall time {summary.get('wall_time', 0.0):.0f}s | workdir {summary['workdir']}")


def _mode_config() -> ml_collections.ConfigDict:
    """Training reads `--config`; every other mode reads the run's own config from `--workdir`."""
    if _MODE.value == "train":
        return _CONFIG.value
    config_flag = flags.FLAGS["config"]
    return saved_config.trained_run_config(
        _WORKDIR.value, config_flags.get_override_values(config_flag),
        _CONFIG.value if config_flag.present else None)


def _use_compilation_cache(config: ml_collections.ConfigDict) -> None:
    """JAX's persistent compilation cache: a second launch skips most XLA compiles."""
    path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser(config.compilation_cache_dir)
    if path:
        jax.config.update("jax_compilation_cache_dir", path)


def _run() -> int:
    workdir = _WORKDIR.value
    if _ENSEMBLE.value and _MODE.value not in ("eval", "translate", "score"):
        raise UserError(f"--ensemble: for --mode=eval, translate or score, got --mode={_MODE.value}")
    config = _mode_config()
    _use_compilation_cache(config)
    if config.distributed.coordinator_address:
        if jax.config.jax_platforms in (None, "", "cpu"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        sharding.initialize_distributed(config)
    if _MODE.value == "train":
        summary = loop.train_and_evaluate(config, workdir)
        if summary["interrupted"]:
            print(f"Interrupted at step {summary['step']}; checkpoint saved in {workdir}. Re-run to resume.")
        else:
            print(_summary_line(summary, summary["eval_splits"][-1]))
    elif _MODE.value == "eval":
        summary = modes.evaluate(config, workdir, _CHECKPOINT.value, _ENSEMBLE.value)
        for split in summary["eval_splits"]:
            print(_summary_line(summary, split))
    elif _MODE.value == "serve":
        _serve(config, workdir)
    elif _MODE.value == "export":
        _export(config, workdir)
    else:
        _translate_or_score(config, workdir)
    return 0


def _serve(config: ml_collections.ConfigDict, workdir: str) -> None:
    from train import server, serving  # noqa: PLC0415  (the HTTP libraries, for this mode only)

    server.bind(_HOST.value, _PORT.value).close()  # a taken port is said before the model loads
    service = serving.Service(modes.load_trained(config, workdir, _CHECKPOINT.value), workdir, _CHECKPOINT.value)
    start = time.perf_counter()
    shapes = service.warm_up()
    _log.info("Compiled %d shapes in %.1f s", shapes, time.perf_counter() - start)
    server.serve(service, _HOST.value, _PORT.value, announce=lambda line: print(line, flush=True))


def _export(config: ml_collections.ConfigDict, workdir: str) -> None:
    from train import export  # noqa: PLC0415  (the exporter's library, for this mode only)

    if not _OUTPUT_DIR.value:
        raise UserError("--output_dir: missing, expected the directory to write the exported model to")
    export.check_output_dir(_OUTPUT_DIR.value)
    trained = modes.load_trained(config, workdir, _CHECKPOINT.value)
    export.export(trained, _OUTPUT_DIR.value, _FORMAT.value)
    print(f"Exported {config.model.family} (step {trained.step}) as {_FORMAT.value} to {_OUTPUT_DIR.value}")


def _translate_or_score(config: ml_collections.ConfigDict, workdir: str) -> None:
    """translate / score / align: one output line per input line (`--nbest`: K), written only once all
    are computed."""
    mode = _MODE.value
    if mode != "translate" and (_SENTENCES.value or _NBEST.value or _ALIGN.value):
        raise UserError(f"--sentence / --nbest / --align: for --mode=translate; --mode={mode} reads "
                        "source<TAB>target lines from --input_file or stdin")
    if _SENTENCES.value and _INPUT_FILE.value:
        raise UserError("--sentence, --input_file: got both, expected one of them (or stdin)")
    translation.check_output_file(_OUTPUT_FILE.value)
    lines = list(_SENTENCES.value) or translation.read_lines(_INPUT_FILE.value)
    pairs = translation.parse_pairs(lines, _INPUT_FILE.value or "stdin") if mode != "translate" else None
    if _ENSEMBLE.value and (mode == "align" or _ALIGN.value):
        raise UserError("--ensemble: word alignments read one model's attention; leave --ensemble out to align")
    translator = translation.Translator(modes.load_trained(config, workdir, _CHECKPOINT.value, _ENSEMBLE.value),
                                        _BATCH_SIZE.value, progress=bool(_INPUT_FILE.value) and config.progress_bar)
    aligner = align.Aligner(translator.trained, translator=translator) if mode == "align" or _ALIGN.value else None
    if mode == "score":
        out = translation.score_lines(translator.score(pairs))
    elif mode == "align":
        out = ["" if links is None else align.pharaoh(links) for links in aligner.align(pairs)]
    elif _NBEST.value:
        nbest = translator.nbest(lines, _NBEST.value)
        out = translation.nbest_lines(nbest)
        if aligner:
            hypotheses = [(line, h.text) if line.strip() else None for line, hs in zip(lines, nbest) for h in hs]
            out = [f"{row}\t{_links(links)}" for row, links in zip(out, aligner.align(hypotheses))]
    else:
        out = translator.translate(lines)
        if aligner:
            pairs = [(line, text) if line.strip() else None for line, text in zip(lines, out)]
            out = [f"{text}\t{_links(links)}" if links is not None else "" for text, links in
                   zip(out, aligner.align(pairs))]
    translation.write_lines(out, _OUTPUT_FILE.value)


def _links(links: list | None) -> str:
    return "" if links is None else align.pharaoh(links)


if __name__ == "__main__":
    cli.run(_run)
