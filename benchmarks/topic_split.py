r"""Splits parallel TSV files by topic: the pairs whose source has a topic word, and the others.

The fine-tuning measurement of benchmarks/RESULTS.md ("Building on a trained model") trains a
model on the other pairs and fine-tunes it on the topic's:

    python benchmarks/topic_split.py --inputs train.tsv dev500.tsv test.tsv --output_dir=topics

writes `topics/topic_{train,dev,test}.tsv` (the topic's pairs of every input, shuffled with
`--seed`, then `--test` and `--dev` pairs held out) and `topics/other_<input name>` for each input
(its pairs without a topic word, in order). The default words are those of image editing (GIMP's
and its plug-ins' strings in the gettext corpus): a topic with its own vocabulary and style.
"""
from __future__ import annotations

import argparse
import os
import random
import re

IMAGE_EDITING = ("image images layer layers brush brushes pixel pixels color colors colour colours canvas selection "
                 "gradient gradients palette palettes channel channels paint opacity mask masks pattern patterns hue "
                 "saturation transparency alpha zoom crop rotate drawable resolution")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", nargs="+", required=True, help="source<TAB>target files")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--words", default=IMAGE_EDITING, help="the topic's words (whole words, any case)")
    parser.add_argument("--test", type=int, default=600, help="topic pairs held out as topic_test.tsv")
    parser.add_argument("--dev", type=int, default=200, help="topic pairs held out as topic_dev.tsv")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    topic = re.compile(r"\b(" + "|".join(map(re.escape, args.words.split())) + r")\b", re.IGNORECASE)
    os.makedirs(args.output_dir, exist_ok=True)
    pairs = []
    for path in args.inputs:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        pairs += [line for line in lines if topic.search(line.split("\t")[0])]
        other = [line for line in lines if not topic.search(line.split("\t")[0])]
        _write(os.path.join(args.output_dir, f"other_{os.path.basename(path)}"), other)
    random.Random(args.seed).shuffle(pairs)
    held = args.test + args.dev
    if len(pairs) <= held:
        raise SystemExit(f"error: --test + --dev: {held} pairs held out, but the topic has only {len(pairs)}")
    _write(os.path.join(args.output_dir, "topic_test.tsv"), pairs[:args.test])
    _write(os.path.join(args.output_dir, "topic_dev.tsv"), pairs[args.test:held])
    _write(os.path.join(args.output_dir, "topic_train.tsv"), pairs[held:])


def _write(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    print(f"{path}: {len(lines)} pairs")


if __name__ == "__main__":
    main()
