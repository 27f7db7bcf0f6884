r"""jaxattn's own decoding against its CTranslate2 export: sentences per second and chrF.

    python -m benchmarks.ctranslate2_speed --workdir=runs/gettext --input_file=test.tsv \
        --sentences=2000 --repeats=3 --output=runs/ct2_speed.md

Translates the first `--sentences` sources of `--input_file` (source<TAB>reference lines) with the
trained Transformer in `--workdir`:

- **jaxattn**: `train.translation.Translator` (what `--mode=translate` runs: length-sorted batches of
  `--batch_size`, each padded to a bucket length, one compiled program per shape), greedy and beam;
- **CTranslate2**: the run exported by `train.export` and read by `train.export.CTranslate2Model`
  (the same pieces and length limits), float32 and int8, `max_batch_size=--batch_size`.

Each configuration runs in its own child process pinned to 1 or 2 CPU cores (`--threads`), the
same for both engines (CTranslate2's `intra_threads` too): compiling (jaxattn) and loading happen
before the timed passes; a pass translates every sentence; the median of `--repeats` passes is
reported, with chrF (sacrebleu) of the output against the references and the share of sentences
on which each configuration gives jaxattn's own translation for the same search.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENGINES = ("jaxattn", "ctranslate2-float32", "ctranslate2-int8")
STRATEGIES = ("greedy", "beam")


def _read_pairs(path: str, count: int) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()][:count]
    bad = [i for i, r in enumerate(rows, 1) if len(r) != 2]
    if bad:
        sys.exit(f"error: --input_file: line {bad[0]} is not source<TAB>reference")
    return [r[0] for r in rows], [r[1] for r in rows]


def _child(args) -> None:
    """One engine, strategy and thread count: translations and pass times to `--child_output`."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:args.threads]))  # before any thread pool
    from train import export, modes, saved_config, translation  # noqa: PLC0415  (after the pinning)

    sources, _ = _read_pairs(args.input_file, args.sentences)
    config = saved_config.trained_run_config(args.workdir, {}, None)
    trained = modes.load_trained(config, args.workdir)
    translator = translation.Translator(trained, args.batch_size)
    decode_config = translator.decode_config(strategy=args.strategy, beam_size=args.beam_size)
    if args.engine == "jaxattn":
        run = lambda: translator.translate(sources, decode_config)  # noqa: E731
    else:
        model = export.CTranslate2Model(args.export_dir, compute_type=args.engine.split("-")[1],
                                        intra_threads=args.threads)
        run = lambda: model.translate(sources, decode_config, max_batch_size=args.batch_size)  # noqa: E731
    output = run()  # compiles every shape (jaxattn) / warms up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        output = run()
        times.append(time.perf_counter() - start)
    with open(args.child_output, "w", encoding="utf-8") as f:
        json.dump({"times": times, "translations": output}, f)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained Transformer run")
    parser.add_argument("--input_file", required=True, help="source<TAB>reference lines")
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--beam_size", type=int, default=4)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {ENGINES}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma-separated subset of {STRATEGIES}")
    parser.add_argument("--output", default="", help="markdown file for the table (default: stdout only)")
    parser.add_argument("--export_dir", default="", help="an existing export of --workdir (default: export now)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="", help=argparse.SUPPRESS)
    parser.add_argument("--child_output", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.threads = args.threads[0]
        _child(args)
        return 0
    engines = [e for e in args.engines.split(",") if e]
    if not engines or set(engines) - set(ENGINES):
        parser.error(f"--engines: got {args.engines!r}, expected a comma-separated subset of {','.join(ENGINES)}")
    strategies = [s for s in args.strategies.split(",") if s]
    if not strategies or set(strategies) - set(STRATEGIES):
        parser.error(f"--strategies: got {args.strategies!r}, expected a comma-separated subset of "
                     f"{','.join(STRATEGIES)}")
    import sacrebleu  # noqa: PLC0415

    # The children run in the repository: paths as this process sees them.
    args.workdir, args.input_file = os.path.abspath(args.workdir), os.path.abspath(args.input_file)
    args.export_dir = os.path.abspath(args.export_dir) if args.export_dir else ""

    sources, references = _read_pairs(args.input_file, args.sentences)
    with tempfile.TemporaryDirectory(prefix="ct2_speed_") as scratch:
        export_dir = args.export_dir
        if not export_dir and any(e.startswith("ctranslate2") for e in engines):
            export_dir = os.path.join(scratch, "ct2")
            subprocess.run([sys.executable, "-m", "train.translate", f"--workdir={args.workdir}", "--mode=export",
                            f"--output_dir={export_dir}"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        results = {}
        for strategy in strategies:
            for threads in args.threads:
                for engine in engines:
                    out = os.path.join(scratch, f"{engine}-{strategy}-{threads}.json")
                    subprocess.run([sys.executable, "-m", "benchmarks.ctranslate2_speed", "--child",
                                    f"--engine={engine}", f"--strategy={strategy}", f"--threads={threads}",
                                    f"--workdir={args.workdir}", f"--input_file={args.input_file}",
                                    f"--sentences={args.sentences}", f"--repeats={args.repeats}",
                                    f"--batch_size={args.batch_size}", f"--beam_size={args.beam_size}",
                                    f"--export_dir={export_dir}", f"--child_output={out}"], cwd=REPO, check=True)
                    with open(out, encoding="utf-8") as f:
                        results[engine, strategy, threads] = json.load(f)
                    median = statistics.median(results[engine, strategy, threads]["times"])
                    print(f"[{engine} {strategy} {threads} thread(s)] {len(sources) / median:.1f} sentences/s",
                          file=sys.stderr, flush=True)
    search = {"greedy": "greedy", "beam": f"beam {args.beam_size}"}
    lines = [f"{len(sources):,} sentences of `{os.path.basename(args.input_file)}`, batches of {args.batch_size}, "
             f"median of {args.repeats} passes; agreement: the share of sentences translated exactly as jaxattn "
             "translates them with the same search and threads.", "",
             "| search | threads | engine | sentences/s | x jaxattn | chrF | agrees with jaxattn |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for strategy in strategies:
        for threads in args.threads:
            base = results.get(("jaxattn", strategy, threads))
            base_speed = len(sources) / statistics.median(base["times"]) if base else None
            for engine in engines:
                r = results[engine, strategy, threads]
                speed = len(sources) / statistics.median(r["times"])
                chrf = sacrebleu.corpus_chrf(r["translations"], [references]).score
                ratio = f"{speed / base_speed:.2f}" if base_speed else "—"
                agree = (f"{100 * sum(a == b for a, b in zip(r['translations'], base['translations'])) / len(sources):.1f}%"
                         if base else "—")
                lines.append(f"| {search[strategy]} | {threads} | {engine} | {speed:.1f} | {ratio} | {chrf:.2f} | {agree} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
