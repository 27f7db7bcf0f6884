r"""Which attention aligns? Alignment error rate against gold links known exactly.

    python -m train.experiments.length --models=bahdanau,luong,transformer \
        --output=runs/length_lists/report               # the models, in runs/length_lists (~20 min, 2 cores)
    python -m train.experiments.alignment               # -> docs/alignment.md and .json (~2 min)

The models are the length experiment's (`train.experiments.length`: each family's config file, the
same data, vocabulary, batches and step budget) on `number_lists/long`, where the gold alignment is
known: "twenty one then five" -> "einundzwanzig dann fünf" links every English word of the k-th
number to the k-th German number (one word: German writes numbers below a million as one word)
and "then" to "dann". For every test pair the attention is read teacher-forced (`train.align`)
and turned into word links; the alignment error rate (Och & Ney 2003, every gold link sure) is
reported with precision and recall, for the attention RNNs' one alignment and for the
Transformer's cross-attention per decoder layer and head, per layer (heads averaged) and over
all layers, each with every link method of `train.align.METHODS`.

Gold links are many English words to one German word, so "target" (one link per target word, as
fairseq and Marian print) cannot recall them all; "source" (one link per source word) can.
Writes `<output>.json` (every number) and `<output>.md` (command, machine, tables); text from a
"## Reading" heading on in an existing `<output>.md` is kept.
"""

import datetime
import functools
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import flags

from train import align, cli, modes, saved_config
from train.data.number_lists import SEPARATORS
from train.errors import UserError
from train.experiments import length, length_report

__all__ = ["gold_links", "score", "alignment_report"]

DATASET = "number_lists/long"
MODELS = ("bahdanau", "luong", "transformer")


def gold_links(source: str, target: str) -> set[tuple[int, int]]:
    """Every (source word, target word) link of a number-lists pair: the k-th English number's words to
    the k-th German number's words, each separator to its separator."""
    links: set[tuple[int, int]] = set()
    blocks = [part.split(" ") for part in f" {source} ".split(f" {SEPARATORS['en']} ")]
    target_blocks = [part.split(" ") for part in f" {target} ".split(f" {SEPARATORS['de']} ")]
    if len(blocks) != len(target_blocks):
        raise ValueError(f"{source!r} / {target!r}: {len(blocks)} vs {len(target_blocks)} numbers")
    i = j = 0
    for k, (english, german) in enumerate(zip(blocks, target_blocks)):
        english, german = [w for w in english if w], [w for w in german if w]
        if k:  # the separator before this number
            links.add((i, j))
            i, j = i + 1, j + 1
        links |= {(i + a, j + b) for a in range(len(english)) for b in range(len(german))}
        i, j = i + len(english), j + len(german)
    return links


def score(predicted: Sequence[set], gold: Sequence[set]) -> dict[str, float]:
    """AER, precision and recall over a corpus."""
    hits = sum(len(a & g) for a, g in zip(predicted, gold))
    size_a, size_g = sum(map(len, predicted)), sum(map(len, gold))
    return {"aer": align.alignment_error_rate(predicted, gold), "precision": hits / max(size_a, 1),
            "recall": hits / max(size_g, 1)}


def _selections(aligner: align.Aligner) -> list[tuple[str, int | None, list[int], list[int]]]:
    """(label, layer or None for all, layers, heads) of every attention choice to score."""
    if aligner.kind == "alignment":
        return [("alignment", 0, [0], [0])]
    layers, heads = range(aligner.layers), list(range(aligner.heads))
    out = [(f"layer {l}, head {h}", l, [l], [h]) for l in layers for h in heads]
    out += [(f"layer {l}, heads averaged", l, [l], heads) for l in layers]
    out.append(("all layers and heads averaged", None, list(layers), heads))
    return out


def alignment_report(workdir: str, models: Sequence[str], examples: int, data_dir: str = "") -> dict[str, Any]:
    """Scores every model's attention on the first `examples` test pairs of `DATASET`."""
    source = tfds.data_source(DATASET, data_dir=data_dir or None)["test"]
    count = min(examples or len(source), len(source))
    pairs = [(source[k]["en"].decode(), source[k]["de"].decode()) for k in range(count)]
    gold = [gold_links(s, t) for s, t in pairs]
    report: dict[str, Any] = {"dataset": DATASET, "split": "test", "pairs": count, "models": {}}
    for name in models:
        run_dir = os.path.join(workdir, name)
        if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
            raise UserError(f"--workdir: {run_dir!r} holds no trained run; train it first with "
                            f"python -m train.experiments.length --models={','.join(models)} --workdir={workdir}")
        config = saved_config.trained_run_config(run_dir, {}, None)
        trained = modes.load_trained(config, run_dir)
        aligner = align.Aligner(trained)
        maps = aligner.maps(pairs)
        rows = []
        words = [aligner.words(pair) for pair in pairs]
        for label, layer, layers, heads in _selections(aligner):
            weights = [np.mean([aligner.word_weights(m, *w, layer=l, heads=heads) for l in layers], axis=0)
                       for m, w in zip(maps, words)]
            row = {"attention": label, "layer": layer, "heads": heads}
            for method in align.METHODS:
                row[method] = score([set(align.links(w, method)) for w in weights], gold)
            rows.append(row)
        report["models"][name] = {"label": length.LABELS[name], "step": trained.step, "kind": aligner.kind,
                                  "rows": rows}
    return report


def _cell(result: dict[str, float]) -> str:
    return f"{100 * result['aer']:.1f} ({100 * result['precision']:.0f} / {100 * result['recall']:.0f})"


def markdown(report: dict[str, Any], command: str, machine: str, reading: str) -> str:
    lines = [f"# Which attention aligns? AER on {report['dataset']}", "",
             f"`{command}` on {machine}, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d}: "
             f"{report['pairs']:,} {report['split']} pairs, gold links known exactly (every English word "
             "of the k-th number to the k-th German number, \"then\" to \"dann\"). Each cell: AER % "
             "(precision / recall %), lower AER is better; subword weights summed per word.", ""]
    header = "| model | attention | " + " | ".join(f"links by {m}" for m in align.METHODS) + " |"
    lines += [header, "|" + "---|" * (2 + len(align.METHODS))]
    for result in report["models"].values():
        for row in result["rows"]:
            cells = " | ".join(_cell(row[m]) for m in align.METHODS)
            lines.append(f"| {result['label']} (step {result['step']}) | {row['attention']} | {cells} |")
    return "\n".join(lines) + "\n" + ("\n" + reading if reading else "")


def _define_flags() -> dict[str, Any]:
    """The program's flags, defined when it runs (importing this module defines none)."""
    return {
        "workdir": flags.DEFINE_string("workdir", length.DATASETS[DATASET].workdir,
                                       "The length experiment's directory (<workdir>/<model>: trained runs)."),
        "models": flags.DEFINE_list("models", list(MODELS), f"Models to score, from {list(MODELS)}."),
        "examples": flags.DEFINE_integer("examples", 0, "Test pairs scored (0: all).", lower_bound=0),
        "output": flags.DEFINE_string("output", "docs/alignment", "Report path prefix: <output>.json and .md."),
        "data_dir": flags.DEFINE_string("data_dir", "", "TFDS data dir (empty: the TFDS default)."),
    }


def _run(flag: dict[str, Any]) -> int:
    models, output = flag["models"].value, flag["output"].value
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise UserError(f"--models: got {models}, expected names from {list(MODELS)}")
    report = alignment_report(flag["workdir"].value, models, flag["examples"].value, flag["data_dir"].value)
    command = " ".join(["python -m train.experiments.alignment", *sys.argv[1:]])
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(f"{output}.json", "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    md_path = f"{output}.md"
    text = markdown(report, command, length.machine_description(), length_report.kept_reading(md_path))
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(text)
    for result in report["models"].values():
        best = min(result["rows"], key=lambda r: min(r[m]["aer"] for m in align.METHODS))
        method = min(align.METHODS, key=lambda m: best[m]["aer"])
        print(f"{result['label']}: best AER {100 * best[method]['aer']:.1f}% ({best['attention']}, links by {method})")
    print(f"Wrote {output}.json and .md")
    return 0


if __name__ == "__main__":
    cli.run(functools.partial(_run, _define_flags()))
