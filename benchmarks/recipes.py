r"""Which model for a small corpus and a CPU budget: test chrF and BLEU against minutes of training.

    python -m benchmarks.recipes --corpus=pairs.tsv.xz --workdir=runs/recipes \
        --models=transformer_recipe,bahdanau --cores=1,2 --minutes=5,10,30,60

The corpus (`source<TAB>target`, plain or xz) is split by line order: test = the first `--test`
pairs, validation = the first `--dev` of the next `--test` (so that a larger validation set could
be taken later without touching test), training = the rest. Each model of `MODELS` trains once per
core count, pinned to that many cores (`taskset`, from `--first_core`), in stages resumed at each
mark of `--minutes` (`--config.max_train_minutes` = the time to the next mark; resuming is bitwise,
so the stages are one run). At each mark the trainer's own final evaluation decodes test with the
model's decoding (beam 4), and `--mode=eval` again greedily: both are recorded.

Every measured cell goes to `<workdir>/results.json` at once (under a file lock), and a cell already
there is not run again: the study can be run in parts, e.g. two one-core runs at a time with
`--first_core=0` and `--first_core=1` and different `--models`. The table (`--output`, markdown) and the
plot of chrF against minutes (`--plot`) are made from every cell in results.json.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

import filelock

# The own-corpus flags every model gets (the README's), then its own. A model is a config file
# plus overrides; a variant that wins the study becomes a recipe file of train/configs.
OWN_CORPUS = {"data.dataset": "tsv", "data.vocab_size": 6000, "data.max_source_length": 64,
              "data.max_target_length": 64, "data.bucket_lengths": "(16,32,64)", "data.tokens_per_batch": 2048,
              "data.eval_max_examples": 0, "num_train_steps": 10_000_000, "decode.strategy": "beam",
              "decode.beam_size": 4, "decode.alpha": 0.6, "decode.max_length": 128, "progress_bar": False}


class Model(NamedTuple):
    label: str
    config: str
    overrides: dict


MODELS = {
    "transformer_recipe": Model("Transformer recipe (D 128, 3+3 layers, Noam 1.5e-3, warmup 800)",
                                "train/configs/transformer_small_corpus.py", {}),
    "transformer_warmup200": Model("Transformer recipe, warmup 200", "train/configs/transformer_small_corpus.py",
                                   {"warmup_steps": 200}),
    "bahdanau": Model("Bahdanau (bi-GRU 128, additive attention)", "train/configs/rnn_bahdanau.py", {}),
    "bahdanau_lstm": Model("Bahdanau with LSTM cells", "train/configs/rnn_bahdanau.py", {"model.cell": "lstm"}),
    "bahdanau_wide": Model("Bahdanau, E 256, encoder 256 per direction, decoder 512", "train/configs/rnn_bahdanau.py",
                           {"model.embed_dim": 256, "model.hidden_size": 256, "model.decoder_hidden_size": 512}),
    "bahdanau_ls": Model("Bahdanau, label smoothing 0.1", "train/configs/rnn_bahdanau.py", {"label_smoothing": 0.1}),
    "luong": Model("Luong (LSTM, general score, input feeding)", "train/configs/rnn_luong.py", {}),
}


def split_corpus(corpus: str, directory: str, test: int, dev: int) -> dict[str, str]:
    """train.tsv, dev.tsv and test.tsv of `corpus` in `directory` (written once; the corpus is never modified)."""
    paths = {name: os.path.join(directory, f"{name}.tsv") for name in ("train", "dev", "test")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths
    opener = lzma.open if corpus.endswith(".xz") else open
    with opener(corpus, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) <= 2 * test:
        raise SystemExit(f"error: --corpus: {corpus} has {len(lines)} lines, expected more than 2 x --test={test}")
    parts = {"test": lines[:test], "dev": lines[test:test + dev], "train": lines[2 * test:]}
    os.makedirs(directory, exist_ok=True)
    for name, part in parts.items():
        with open(paths[name] + ".tmp", "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in part))
        os.replace(paths[name] + ".tmp", paths[name])
    return paths


def _flags(overrides: dict) -> list[str]:
    return [f"--config.{key}={value}" for key, value in overrides.items()]


def _last_test_row(workdir: str) -> dict:
    """The newest metrics.jsonl row with test scores (written by each final evaluation)."""
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if '"test/chrf"' in line]
    return rows[-1]


def _run(command: list[str], cores: list[int], log: str) -> None:
    command = ["taskset", "-c", ",".join(map(str, cores)), *command] if shutil.which("taskset") else command
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(command)}\n")
        f.flush()
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:6])} ... failed (exit {done.returncode}); see {log}")


class Results:
    """results.json of the study: {"<model>/<cores>/<minutes>": cell}, read and written under a file lock."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "results.json")
        self.lock = filelock.FileLock(self.path + ".lock")

    def read(self) -> dict:
        with self.lock:
            return self._read()

    def add(self, key: str, cell: dict) -> None:
        with self.lock:
            cells = self._read()
            cells[key] = cell
            with open(self.path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(cells, f, indent=1, sort_keys=True)
            os.replace(self.path + ".tmp", self.path)

    def _read(self) -> dict:
        if not os.path.exists(self.path):
            return {}
        with open(self.path, encoding="utf-8") as f:
            return json.load(f)


def measure(name: str, cores: int, minutes: list[float], args, paths: dict[str, str], results: Results) -> None:
    """Trains `name` on `cores` cores in stages ending at each of `minutes`, recording each mark."""
    model = MODELS[name]
    workdir = os.path.join(args.workdir, "runs", f"{name}_{cores}core")
    log = workdir + ".log"
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    pinned = list(range(args.first_core, args.first_core + cores))
    trained = 0.0
    for mark in minutes:
        key = f"{name}/{cores}/{mark:g}"
        if key in results.read():
            trained = mark
            continue
        data = {"data.train_file": paths["train"], "data.eval_file": paths["dev"], "data.test_file": paths["test"]}
        overrides = {**OWN_CORPUS, **data, **model.overrides, **args.override, "max_train_minutes": mark - trained}
        start = time.time()
        _run([sys.executable, "-m", "train.translate", f"--config={model.config}", f"--workdir={workdir}",
              *_flags(overrides)], pinned, log)
        wall = time.time() - start
        beam = _last_test_row(workdir)
        _run([sys.executable, "-m", "train.translate", f"--workdir={workdir}", "--mode=eval",
              "--config.data.eval_splits=('test',)", "--config.decode.strategy=greedy"], pinned, log)
        greedy = _last_test_row(workdir)
        cell = {"model": name, "cores": cores, "minutes": mark, "step": beam["step"],
                "chrf": beam["test/chrf"], "bleu": beam["test/bleu"],
                "greedy_chrf": greedy["test/chrf"], "greedy_bleu": greedy["test/bleu"],
                "stage_wall_seconds": round(wall, 1), "date": time.strftime("%Y-%m-%d %H:%M"),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}
        results.add(key, cell)
        print(f"{key}: step {cell['step']}, test chrF {cell['chrf']:.1f} BLEU {cell['bleu']:.1f} (beam), "
              f"chrF {cell['greedy_chrf']:.1f} (greedy)", flush=True)
        trained = mark


def table(cells: dict) -> str:
    """Markdown: one row per (model, cores), chrF / BLEU at each minute mark (beam; greedy chrF in brackets)."""
    marks = sorted({c["minutes"] for c in cells.values()})
    rows = sorted({(c["model"], c["cores"]) for c in cells.values()}, key=lambda r: (r[1], list(MODELS).index(r[0])
                                                                                    if r[0] in MODELS else 99, r[0]))
    lines = ["| model | cores | " + " | ".join(f"{m:g} min" for m in marks) + " |",
             "|---|---:|" + "---:|" * len(marks)]
    for model, cores in rows:
        out = []
        for m in marks:
            c = cells.get(f"{model}/{cores}/{m:g}")
            out.append(f"{c['chrf']:.1f} / {c['bleu']:.1f} ({c['greedy_chrf']:.1f})" if c else "—")
        lines.append(f"| {model} | {cores} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def plot(cells: dict, path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    cores_seen = sorted({c["cores"] for c in cells.values()})
    fig = Figure(figsize=(5.0 * len(cores_seen), 3.8))
    FigureCanvasAgg(fig)
    for i, cores in enumerate(cores_seen):
        ax = fig.add_subplot(1, len(cores_seen), i + 1)
        for model in dict.fromkeys(c["model"] for c in cells.values() if c["cores"] == cores):
            points = sorted((c["minutes"], c["chrf"]) for c in cells.values()
                            if c["model"] == model and c["cores"] == cores)
            ax.plot(*zip(*points), marker="o", label=model)
        ax.set(xlabel="training minutes", ylabel="test chrF (beam 4)", title=f"{cores} CPU core(s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", required=True, help="source<TAB>target pairs, plain or .xz")
    parser.add_argument("--workdir", required=True, help="splits, runs, logs and results.json")
    parser.add_argument("--models", default=",".join(MODELS), help=f"any of {', '.join(MODELS)}")
    parser.add_argument("--cores", default="1,2", help="core counts, each a separate run per model")
    parser.add_argument("--first_core", type=int, default=0, help="runs are pinned to cores first_core...")
    parser.add_argument("--minutes", default="5,10,30,60", help="training minutes at which test is scored")
    parser.add_argument("--test", type=int, default=2000, help="first pairs held out as test")
    parser.add_argument("--dev", type=int, default=500, help="validation pairs, from the next --test pairs")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a --config override for every model (e.g. smaller sizes for a smoke run)")
    parser.add_argument("--output", default="", help="markdown table of every cell in results.json")
    parser.add_argument("--plot", default="", help="PNG of chrF against minutes")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m not in MODELS]
    if unknown:
        raise SystemExit(f"error: --models: unknown {', '.join(unknown)}; expected any of {', '.join(MODELS)}")
    if not os.path.exists(args.corpus):
        raise SystemExit(f"error: --corpus: {args.corpus} does not exist")
    try:
        minutes = sorted(float(m) for m in args.minutes.split(","))
        cores = [int(c) for c in args.cores.split(",")]
    except ValueError as e:
        raise SystemExit(f"error: --minutes / --cores: {e}") from None
    args.override = dict(kv.split("=", 1) for kv in args.override)
    os.makedirs(args.workdir, exist_ok=True)
    results = Results(args.workdir)
    with results.lock:  # another part of the study may be splitting the same corpus
        paths = split_corpus(args.corpus, os.path.join(args.workdir, "data"), args.test, args.dev)
    for n in cores:
        for name in args.models.split(","):
            measure(name, n, minutes, args, paths, results)
    cells = results.read()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table(cells))
    if args.plot:
        plot(cells, args.plot)
    print(table(cells))


if __name__ == "__main__":
    main()
