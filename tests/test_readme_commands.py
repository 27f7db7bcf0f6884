"""Every shell command of README.md runs, at tiny size, and does what the README says.

Each ```bash block is split into commands (one per line once `\\` continuations are joined
and `# comments` dropped) and each command into segments (`&&`, `||`, `;`; a segment may be
a `|` pipeline). Every segment must match one of RULES, which says how it runs here: the
trainer with tiny overrides appended (2 steps, width 16, number_words/tiny in a test TFDS
dir), the corpus files it names generated from number words, `--mode=eval/translate/score`
on the workdir trained by the README's own training command, TFDS catalog datasets on
`tfds.testing.mock_data`, multi-host commands as two processes on loopback, and so on. A
segment that matches no rule fails (test_every_readme_command_has_a_rule and the command's
own test), so a newly documented command cannot go untested.

Commands run as `bash -c` subprocesses (the venv's python first on PATH, the repository on
PYTHONPATH, one CPU device) in a temporary directory laid out like a checkout (symlinks to
the repository's top-level entries), with HOME and the TFDS data dir there too: nothing
outside the temporary directory is written but the suite's compilation cache. Independent commands run two at a time; trained
workdirs and compiled programs (JAX's persistent compilation cache) are shared through one
module-scoped session.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import shlex
import struct
import threading
import tomllib
from collections.abc import Callable

import ml_collections
import numpy as np
import pytest

from model_params import shrink_model
from readme_shell import REPO, Command, Ran, Session, free_port, pipeline, readme_commands, split, split_commands

pytestmark = pytest.mark.slow  # shell commands as subprocesses (see pyproject.toml's markers)

README = REPO / "README.md"
MOCK_TFDS_RUN = pathlib.Path(__file__).resolve().parent / "mock_tfds_run.py"
DEFAULT_CONFIG = "train/configs/transformer.py"  # what `python -m train.translate` trains
DEFAULT_WORKDIR = "runs/default"
README_TEXT = README.read_text(encoding="utf-8")
COMMANDS = readme_commands(README_TEXT)


# ------------------------------------------------------------------------------------------
# A `python -m train.translate ...` call inside a segment
# ------------------------------------------------------------------------------------------

_TRANSLATE = re.compile(r"(?:^|\s)python3?\s+-m\s+train\.translate\b")


@dataclasses.dataclass
class TranslateCall:
    """The `python -m train.translate` part of a segment, its flags read (not run)."""

    segment: str
    span: tuple[int, int]  # of the python part in `segment` (a pipeline part)
    flags: list[tuple[str, str | None]]

    @classmethod
    def parse(cls, segment: str) -> TranslateCall:
        for a, b in split(segment, ("|",)):
            if _TRANSLATE.search(segment[a:b]):
                break
        else:
            raise AssertionError(f"no `python -m train.translate` in {segment!r}")
        words = shlex.split(segment[a:b])
        while words and re.match(r"[A-Za-z_]\w*=", words[0]):  # VAR=value before python: bash's
            words.pop(0)
        assert words[1:3] == ["-m", "train.translate"], segment
        flags, rest = [], words[3:]
        while rest:
            word = rest.pop(0)
            assert word.startswith("--"), f"{segment!r}: unexpected argument {word!r}"
            name, eq, value = word[2:].partition("=")
            if not eq and rest and not rest[0].startswith("--"):
                value, eq = rest.pop(0), "="
            flags.append((name, value if eq else None))
        return cls(segment, (a, b), flags)

    def flag(self, name: str, default: str | None = None) -> str | None:
        values = [v for n, v in self.flags if n == name]
        return values[-1] if values else default

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.flags if n == name]

    @property
    def part(self) -> str:
        return self.segment[self.span[0]:self.span[1]]

    @property
    def workdir(self) -> str:
        return self.flag("workdir", DEFAULT_WORKDIR)

    @property
    def mode(self) -> str:
        return self.flag("mode", "train")

    @property
    def overrides(self) -> dict[str, str]:
        return {n[len("config."):]: v for n, v in self.flags if n.startswith("config.")}

    def with_flags(self, first: list[str], last: list[str], program: str | None = None) -> str:
        """The segment with `first` flags right after `--config=<file>` (config_flags wants
        overrides after the file; the command's own flags then win) and `last` at the end
        (they win over the command's); `program` replaces `python -m train.translate`."""
        part = self.part
        anchor = re.search(r"--config(?:=|\s+)(?!\.)\S+", part) or re.search(
            r"python3?\s+-m\s+train\.translate\b", part)
        part = " ".join(filter(None, [part[:anchor.end()], *first, part[anchor.end():].strip(), *last]))
        if program:
            part = re.sub(r"python3?\s+-m\s+train\.translate\b", program, part, count=1)
        a, b = self.span
        return self.segment[:a] + part + self.segment[b:]


def _flag(name: str, value) -> str:
    return shlex.quote(f"--config.{name}={value}")


def _load_config(path: str) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("readme_config", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _has_field(config: ml_collections.ConfigDict, dotted: str) -> bool:
    node = config
    for key in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            return False
        node = node[key]
    return True


TINY_DATASET = "number_words/tiny"
EMBEDDED_DATASETS = ("number_words/", "number_lists/")
# Appended after the command's own flags (they win): the same tiny sizes as test_train_e2e.
# Fields a config no longer has are left out, so a renamed field cannot break this table.
TINY_RUN = {
    "num_train_steps": 2, "warmup_steps": 1, "log_every_steps": 1, "eval_every_steps": 1000,
    "eval_decode_examples": 8, "checkpoint_every_steps": 1000, "num_samples": 1, "num_heatmaps": 0,
    "progress_bar": False, "decode.max_length": 8,
    "data.max_source_length": 24, "data.max_target_length": 24, "data.bucket_lengths": "(24,)",
    "data.pack_length": 0, "data.tokens_per_batch": 192, "data.batch_size": 0,
    "data.batch_size_multiple": 8, "data.eval_batch_size": 8, "data.eval_max_examples": 8,
    "data.read_threads": 1,
}


def _tiny_model_flags(config: ml_collections.ConfigDict) -> list[str]:
    """`--config.model.*` flags that make the config's model test-sized (any family)."""
    before = config.model.to_dict()
    shrink_model(config)
    return [_flag(f"model.{k}", v) for k, v in config.model.to_dict().items() if before[k] != v]


# ------------------------------------------------------------------------------------------
# Generated inputs: number words instead of a real corpus
# ------------------------------------------------------------------------------------------

_NUMBERS = np.random.default_rng(0).permutation(100_000)  # disjoint ranges per split below
_SPLIT_OFFSET = {"train": 0, "eval": 50_000, "test": 60_000, "input": 70_000}


def _pairs(part: str, count: int) -> list[tuple[str, str]]:
    """`count` (English, German) number-word pairs of one part of the number range."""
    from train.data.number_words import number_to_words

    numbers = _NUMBERS[_SPLIT_OFFSET[part]:_SPLIT_OFFSET[part] + count]
    return [(number_to_words(n, "en"), number_to_words(n, "de")) for n in numbers]


def _write_lines(path: pathlib.Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{threading.get_ident()}")
    tmp.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    os.replace(tmp, path)


def _redirect_target(segment: str) -> str | None:
    """The file that an unquoted `> file` at the end of `segment` writes, if any."""
    parts = split(segment, (">",))
    target = segment[slice(*parts[-1])] if len(parts) > 1 else None
    return target if target and re.fullmatch(r"[\w./-]+", target) else None


def _written_by_readme(session: Session, path: str, cwd: pathlib.Path) -> bool:
    """Runs the README command that writes `path` (e.g. `printf ... > sentences.txt`), if any."""
    writer = next((c for c in COMMANDS for s in c.segments if _redirect_target(s) == path), None)
    if writer is None or cwd != session.checkout:
        return False
    run_command(session, writer)
    return True


def _generate_corpus_files(session: Session, call: TranslateCall, cwd: pathlib.Path) -> None:
    """Writes the `--config.data.*_file` files the command names, as number-word pairs.

    `*_file` is a TSV (source<TAB>target), `*_source_file` / `*_target_file` aligned sides;
    the split (train / eval / test) is the field's first word. The training file holds the
    hold-out plus 1,200 pairs (a few hundred train the tiny model; the rest are held out).
    """
    overrides = call.overrides
    holdout = int(overrides.get("data.eval_holdout", 0) or 0)
    for key, value in overrides.items():
        match = re.fullmatch(r"data\.(train|eval|test)_(?:(source|target)_)?file", key)
        if not match or not value:
            continue
        part, side = match.groups()
        path = cwd / value
        if path.exists() or _written_by_readme(session, value, cwd):
            continue
        pairs = _pairs(part, holdout + 1_200 if part == "train" else 40)
        if side is None:
            _write_lines(path, [f"{s}\t{t}" for s, t in pairs])
        else:
            _write_lines(path, [s if side == "source" else t for s, t in pairs])


def _generate_inputs(session: Session, call: TranslateCall, cwd: pathlib.Path) -> None:
    """Writes the non-config `--*_file` inputs the command names: source sentences, or
    source<TAB>target pairs for `--mode=score` and `.tsv` names."""
    for name, value in call.flags:
        if not value or name.startswith("config.") or not name.endswith("_file") or "output" in name:
            continue
        path = cwd / value
        if path.exists() or _written_by_readme(session, value, cwd):
            continue
        pairs = _pairs("input", 5)
        if path.suffix == ".tsv" or call.mode == "score":
            _write_lines(path, [f"{s}\t{t}" for s, t in pairs])
        elif "target" in name or path.suffix == ".de":
            _write_lines(path, [t for _, t in pairs])
        else:
            _write_lines(path, [s for s, _ in pairs])


def run_command(session: Session, command: Command) -> None:
    """Runs every segment of `command` by its rule, once per session (tests share the result)."""
    session.once(("command", command), lambda: _run_segments(session, command))


def _run_segments(session: Session, command: Command) -> None:
    for segment in command.segments:
        rule = rule_for(segment)
        if rule is None:
            pytest.fail(f"README command has no rule in tests/test_readme_commands.py RULES: {segment!r} "
                        f"({command}); add one that runs it at tiny size")
        rule.run(session, segment, command)


# ------------------------------------------------------------------------------------------
# Rules: how each kind of README command runs here
# ------------------------------------------------------------------------------------------

FLOAT = r"-?(?:\d+(?:\.\d+)?(?:e[-+]?\d+)?|inf)"
SUMMARY = re.compile(r"^(?P<split>\w+): BLEU (?P<bleu>\d+\.\d+) \| chrF \d+\.\d+ \| exact match \d+\.\d% \| "
                     r"steps (?P<steps>\d+) \| .* \| workdir (?P<workdir>\S+)$", re.M)


def _tiny_training(session: Session, call: TranslateCall, cwd: pathlib.Path) -> str:
    """The training segment at tiny size, its input files written; runs on mock data if needed."""
    config_file = call.flag("config", DEFAULT_CONFIG)
    config = _load_config(config_file)
    dataset = call.overrides.get("data.dataset", config.data.dataset)
    first = [_flag("data.data_dir", session.tfds), _flag("data.vocab_size", 48)]
    last = _tiny_model_flags(config) + [_flag(k, v) for k, v in TINY_RUN.items() if _has_field(config, k)]
    program = None
    if dataset.startswith(EMBEDDED_DATASETS):
        # Every embedded dataset runs as number_words/tiny: the same builders at other sizes.
        last.append(_flag("data.dataset", TINY_DATASET))
    elif dataset == "tsv":
        _generate_corpus_files(session, call, cwd)
    else:  # a TFDS catalog dataset: same command, mock records instead of the download
        program = f"python {shlex.quote(str(MOCK_TFDS_RUN))} train.translate"
    return call.with_flags(first, last, program)


def _check_trained(ran: Ran, call: TranslateCall, cwd: pathlib.Path) -> None:
    ran.ok()
    summaries = list(SUMMARY.finditer(ran.stdout))
    assert summaries, f"no `<split>: BLEU ... | workdir ...` summary line printed by {ran.text}\n{ran.stdout[-2000:]}"
    summary = summaries[-1]
    assert summary["steps"] == str(TINY_RUN["num_train_steps"]) and summary["workdir"] == call.workdir, summary[0]
    workdir = cwd / call.workdir
    assert (workdir / "config.json").is_file() and list((workdir / "vocab").glob("*.model")), workdir
    assert (workdir / "checkpoints" / summary["steps"]).is_dir(), sorted(os.listdir(workdir / "checkpoints"))
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r for r in rows) and any(f"{summary['split']}/bleu" in r for r in rows)
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def run_training(session: Session, segment: str, command: Command | None = None) -> None:
    """`python -m train.translate [--config=...] ...`: trains a tiny run, once per README text."""
    def train():
        call = TranslateCall.parse(segment)
        if call.overrides.get("init_from"):  # fine-tuning: the run it starts from is trained first
            _ensure_trained(session, call.overrides["init_from"], segment)
        _check_trained(session.shell(_tiny_training(session, call, session.checkout)), call, session.checkout)
    session.once(("train", segment), train)


def _training_segment(workdir: str) -> str | None:
    """The README's own training command that produces `workdir` (in the shared checkout)."""
    return next((s for s in _training_segments() if TranslateCall.parse(s).workdir == workdir), None)


def _ensure_trained(session: Session, workdir: str, segment: str) -> None:
    training = _training_segment(workdir)
    assert training is not None, (f"{segment!r} needs --workdir={workdir}, which no README training command "
                                  "produces: document the command that trains it")
    run_training(session, training)


def _stdin_lines(session: Session, call: TranslateCall) -> list[str] | None:
    """What the pipeline feeds the translate part on stdin (its producer run here), or None."""
    producer = call.segment[:call.span[0]].rstrip()
    if not producer:
        return None
    assert producer.endswith("|"), call.segment
    return session.shell(producer[:-1]).ok().stdout.splitlines()


def run_on_trained_run(session: Session, segment: str, command: Command) -> None:
    """`--mode=eval|translate|score` on `--workdir`: trained first by the README's own training
    command for that workdir (tiny, shared), then run exactly as written."""
    call = TranslateCall.parse(segment)
    if call.mode == "train":
        return run_training(session, segment)
    for workdir in [call.workdir, *filter(None, (call.flag("ensemble") or "").split(","))]:
        _ensure_trained(session, workdir, segment)
    _generate_inputs(session, call, session.checkout)
    with session.workdir_lock(call.workdir):
        ran = session.shell(segment).ok()
    mode = call.mode
    if mode == "eval":
        summaries = list(SUMMARY.finditer(ran.stdout))
        assert summaries and summaries[0]["split"] == "validation", ran.stdout[-2000:]
        assert all(s["workdir"] == call.workdir and s["steps"] == str(TINY_RUN["num_train_steps"]) for s in summaries)
        return
    if mode == "export":
        output = session.checkout / call.flag("output_dir")
        assert {"model.bin", "config.json", "source.model", "target.model"} <= set(os.listdir(output)), output
        assert ran.stdout.startswith(f"Exported transformer (step {TINY_RUN['num_train_steps']}) as ctranslate2 to ")
        return
    if call.flag("input_file"):
        inputs = (session.checkout / call.flag("input_file")).read_text(encoding="utf-8").splitlines()
    else:
        inputs = call.all("sentence") or _stdin_lines(session, call) or []
    assert inputs, f"{segment!r}: no input given (expected --sentence, --input_file or a pipe)"
    output = ((session.checkout / call.flag("output_file")).read_text(encoding="utf-8")
              if call.flag("output_file") else ran.stdout).splitlines()
    nbest = int(call.flag("nbest", "0") or 0)
    if mode == "translate" and nbest:
        # K lines per input line: i<TAB>rank<TAB>score<TAB>translation, i from 0, rank 1 first.
        rows = [line.split("\t") for line in output]
        assert [tuple(r[:2]) for r in rows] == [(str(i), str(k)) for i in range(len(inputs))
                                                for k in range(1, nbest + 1)], output
        assert all(re.fullmatch(FLOAT, r[2]) for r in rows), output
    elif mode == "translate":
        # Exactly one line per input line, in order; a blank input line gives a blank line.
        assert len(output) == len(inputs), (inputs, output)
        assert all(out == "" for line, out in zip(inputs, output) if not line.strip()), (inputs, output)
        if any(name == "align" for name, _ in call.flags):  # translation<TAB>links
            for line, out in zip(inputs, output):
                if line.strip():
                    translation, links = out.split("\t")
                    _check_links(links, line, translation)
    elif mode == "align":
        # One line of Pharaoh links per source<TAB>target line.
        _check_pair_lines(inputs, output, lambda line, out: _check_links(out, *line.split("\t")))
    elif mode == "score":
        # total<TAB>mean log P(target | source) per line (<= 0).
        def check(line, out):
            assert re.fullmatch(rf"{FLOAT}\t{FLOAT}", out) and float(out.split("\t")[0]) <= 0, (line, out)
        _check_pair_lines(inputs, output, check)
    else:
        pytest.fail(f"no check for --mode={mode} in tests/test_readme_commands.py ({segment!r}): add one")


def _check_pair_lines(inputs: list[str], output: list[str], check: Callable[[str, str], None]) -> None:
    """One output line per source<TAB>target input line, `check(line, out)`ed; a blank line gives a blank line."""
    assert len(output) == len(inputs), (inputs, output)
    for line, out in zip(inputs, output):
        if not line.strip():
            assert out == "", (line, out)
        else:
            check(line, out)


def _check_links(links: str, source: str, target: str) -> None:
    """Pharaoh `i-j` pairs, sorted, linking every word of `source` and `target` (the default links,
    `align.method=union`, give each word of either side at least one)."""
    pairs = [tuple(map(int, p.split("-"))) for p in links.split()]
    assert all(re.fullmatch(r"\d+-\d+", p) for p in links.split()) and pairs == sorted(pairs), links
    assert {j for _, j in pairs} == set(range(len(target.split()))), (links, target)
    assert {i for i, _ in pairs} == (set(range(len(source.split()))) if target.split() else set()), (links, source)


def _run_hosts(session: Session, texts: list[str], envs: list[dict], cwd: pathlib.Path) -> list[Ran]:
    processes = [session.spawn(text, cwd, env) for text, env in zip(texts, envs)]
    try:
        return [session.wait(text, p) for text, p in zip(texts, processes)]
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)


def _check_hosts(ran: list[Ran], call: TranslateCall, cwd: pathlib.Path) -> None:
    """Every process trained, in one job of len(ran) processes, to the same evaluation."""
    for r in ran:
        r.ok()
    for i, r in enumerate(ran):  # the data log line names this process and the process count
        assert f"process {i}/{len(ran)}" in r.stderr, r.stderr[-3000:]
    _check_trained(ran[0], call, cwd)
    scores = [[m.group(0).split("| wall time")[0] for m in SUMMARY.finditer(r.stdout)] for r in ran]
    assert all(s == scores[0] for s in scores), scores  # lockstep: the same numbers everywhere


def run_multihost_explicit(session: Session, segment: str, command: Command) -> None:
    """`--config.distributed.coordinator_address=<host:port> --config.distributed.num_processes=N
    --config.distributed.process_id=0`: the README's address is swapped for 127.0.0.1 and a
    free port (no traffic leaves the machine), and N processes with process_id 0..N-1 run the
    command in one directory (the hosts' shared filesystem), one CPU device each."""
    call = TranslateCall.parse(segment)
    count = int(call.overrides["distributed.num_processes"])
    assert count >= 2 and "distributed.process_id" in call.overrides, segment
    cwd = session.fresh_dir("hosts")
    address = f"127.0.0.1:{free_port()}"
    tiny = _tiny_training(session, call, cwd)
    tiny = re.sub(r"(--config\.distributed\.coordinator_address=)\S+", rf"\g<1>{address}", tiny)
    texts = [re.sub(r"(--config\.distributed\.process_id=)\d+", rf"\g<1>{i}", tiny) for i in range(count)]
    _check_hosts(_run_hosts(session, texts, [{}] * count, cwd), call, cwd)


def run_multihost_auto(session: Session, segment: str, command: Command) -> None:
    """`--config.distributed.coordinator_address=auto`: JAX detects the cluster.

    No cluster exists here, so (1) without one the command must fail fast (no hang) naming the
    coordinator (today: JAX's own ValueError, with its traceback), and (2) it runs for real as
    a 2-task SLURM job on loopback: the SLURM variables JAX reads (job id -> coordinator port,
    node list -> 127.0.0.1, task count, task id) are set as `srun` would set them, which is
    what `auto` means on SLURM.
    """
    call = TranslateCall.parse(segment)
    cwd = session.fresh_dir("auto")
    tiny = _tiny_training(session, call, cwd)
    ran = session.shell(tiny, cwd, timeout=120)
    assert ran.returncode != 0 and "coordinator" in ran.stderr.lower(), ran.stderr[-3000:]
    assert not (cwd / call.workdir / "checkpoints").exists()

    port = free_port(65536 - 2**12)  # SLURM's coordinator port: 61440 + job id % 4096
    envs = [{"SLURM_JOB_ID": str(port - (65536 - 2**12)), "SLURM_STEP_NODELIST": "127.0.0.1",
             "SLURM_NTASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": str(i), "SLURM_LOCALID": "0"}
            for i in range(2)]
    cwd = session.fresh_dir("slurm")
    tiny = _tiny_training(session, call, cwd)
    _check_hosts(_run_hosts(session, [tiny, tiny], envs, cwd), call, cwd)


def run_file_writer(session: Session, segment: str, command: Command) -> None:
    """`printf '...' > file` / `echo ... > file`: a file later commands read, written as is."""
    session.shell(segment).ok()
    assert (session.checkout / _redirect_target(segment)).is_file(), segment


def run_python_c(session: Session, segment: str, command: Command) -> None:
    """`python -c "..."`: runs as written; what it prints is what the README says it prints."""
    out = session.shell(segment).ok().stdout.strip()
    assert out, segment
    quoted = f"{int(out):,}" if re.fullmatch(r"\d+", out) else out
    assert quoted in README_TEXT, f"{segment!r} printed {out!r}; the README does not quote {quoted!r}"


def _help_text(session: Session, program: str) -> str:
    ran = session.shell(f"{program} --help")
    # argparse exits 0 after --help; absl exits 1 after printing its flags to stdout.
    assert ran.returncode in (0, 1) and ("usage" in ran.stdout.lower() or "flags:" in ran.stdout), ran.stderr[-3000:]
    return ran.stdout


def _program_and_flags(segment: str) -> tuple[str, list[str]]:
    words = shlex.split(segment)
    n = 3 if words[1] == "-m" else 2  # python -m module | python script.py
    return shlex.join(words[:n]), [w.split("=")[0] for w in words[n:] if w.startswith("--")]


def run_device_benchmark(session: Session, segment: str, command: Command) -> None:
    """`python -m benchmarks.device ...`: runs with `--smoke` (the same code at tiny sizes on the
    CPU; the full run needs an accelerator), through tests/device_smoke.py so that the ~1 minute
    run is shared with tests/test_benchmarks_device.py."""
    from device_smoke import run_device_benchmark as device_benchmark

    words = shlex.split(segment)
    args = words[words.index("-m") + 2 if "-m" in words else 2:]
    run = device_benchmark(tuple(args if "--smoke" in args else [*args, "--smoke"]))
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.markdown and run.markdown in run.stdout, run.stdout[-2000:]  # its report, printed and written


def run_timing_script(session: Session, segment: str, command: Command) -> None:
    """`python benchmarks/x.py` / `python -m benchmarks.x` / `python -m train.experiments.x`:
    timing scripts and long experiments, not tests; their `--help` must work and list every
    flag the README passes."""
    program, flags = _program_and_flags(segment)
    listed = _help_text(session, program)
    for flag in flags:
        if flag not in ("--help", "--helpfull"):
            assert re.search(rf"{re.escape(flag)}\b", listed), f"{segment!r}: {flag} is not a flag of {program}"


def check_venv(session: Session, segment: str, command: Command) -> None:
    """`python3 -m venv <dir>`: run for real (quick), as CI's `.ci/run` does."""
    assert re.search(r"^python3 -m venv \S+", (REPO / ".ci" / "run").read_text(), re.M)
    directory = shlex.split(segment)[-1]
    session.once(("venv", segment), lambda: session.shell(segment).ok())
    assert (session.checkout / directory / "bin" / "activate").is_file()


def check_activate(session: Session, segment: str, command: Command) -> None:
    """`. <dir>/bin/activate`: activates the venv the same command created. The commands after
    it run with this session's own venv (installing into a fresh one needs the network)."""
    venv = shlex.split(segment)[-1].rsplit("/bin/activate", 1)[0]
    creators = [s for s in command.segments if rule_for(s) is not None and rule_for(s).run is check_venv]
    assert creators and shlex.split(creators[0])[-1] == venv, f"{segment!r}: no `python3 -m venv {venv}` before it"
    check_venv(session, creators[0], command)
    prefix = session.shell(f"{segment} && python -c 'import sys; print(sys.prefix)'").ok().stdout.strip()
    assert os.path.realpath(prefix) == os.path.realpath(session.checkout / venv), prefix


def check_pip_install(session: Session, segment: str, command: Command) -> None:
    """`[uv] pip install [-e] .[extras]`: not run (it needs the network; this session's venv was
    installed the same way): the target is the checkout and every extra exists."""
    words = shlex.split(segment)
    words = words[words.index("install") + 1:]
    targets = [w for w in words if not w.startswith("-")]
    assert targets, segment
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for target in targets:
        match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", target)
        assert match, f"{segment!r}: installs {target!r}, expected the checkout: . or .[extras]"
        extras = set(match.group(1).split(",")) if match.group(1) else set()
        missing = extras - set(project.get("optional-dependencies", {}))
        assert not missing, f"{segment!r}: extras {sorted(missing)} are not in pyproject.toml"


def check_installer(session: Session, segment: str, command: Command) -> None:
    """`pip install uv`: not run (it needs the network): the test command installs the project with
    uv, as CI's `.ci/run` does, right after installing it."""
    segments = list(command.segments)
    following = segments[segments.index(segment) + 1:]
    assert following and re.match(r"uv pip install ", following[0]), f"{segment!r}: no `uv pip install` after it"
    ci = [c.segments for c in split_commands((REPO / ".ci" / "run").read_text())]
    assert any(segment in c for c in ci), f"{segment!r} is not what .ci/run runs: {ci}"


def check_pytest(session: Session, segment: str, command: Command) -> None:
    """`pytest` is this suite (running it from inside itself would recurse): the README's test
    command, from its `pip install` on, must be exactly the one CI runs (`.ci/run`)."""
    segments = list(command.segments)
    end = segments.index(segment)
    installs = [i for i in range(end) if re.match(r"(python3? -m |uv )?pip install ", segments[i])]
    tail = tuple(segments[installs[-1] if installs else end:end + 1])
    ci = [c.segments for c in split_commands((REPO / ".ci" / "run").read_text())]
    assert any(c[-len(tail):] == tail for c in ci), f"{tail} is not what .ci/run runs: {ci}"


def check_inner_loop(session: Session, segment: str, command: Command) -> None:
    """`pytest -m "not slow"` (running it from inside the suite would recurse): the marker is
    registered, and the selection collects most of the suite's tests but none marked slow."""
    markers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers), markers
    ran = session.shell("pytest --collect-only -n 0 -p no:cacheprovider -m 'not slow'").ok()
    fast = [line for line in ran.stdout.splitlines() if "::" in line]
    counts = re.search(r"^(\d+)/(\d+) tests collected \((\d+) deselected\)", ran.stdout, re.M)
    assert counts, ran.stdout[-2000:]
    selected, total, deselected = map(int, counts.groups())
    assert len(fast) == selected > total / 2 and deselected > 0 and selected + deselected == total
    assert not any("test_readme_commands.py::" in t or "test_notebooks.py::test_runs" in t for t in fast)
    assert any("test_attention.py::" in t for t in fast)


def _events(path: pathlib.Path):
    """The records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto import event_pb2

    data, offset = path.read_bytes(), 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        event = event_pb2.Event()
        event.ParseFromString(data[offset + 12:offset + 12 + length])
        yield event
        offset += 12 + length + 4


def check_tensorboard(session: Session, segment: str, command: Command) -> None:
    """`tensorboard --logdir <dir>` starts a server (and `tensorboard` is not a dependency):
    instead, the runs the README trains under <dir> have event files that parse, with the
    training loss in them."""
    logdir = re.search(r"--logdir[= ]?(\S+)", segment).group(1).rstrip("/")
    runs = [c.workdir for c in map(TranslateCall.parse, _training_segments()) if c.workdir.startswith(logdir + "/")]
    assert runs, f"{segment!r}: no README training command writes under {logdir}/"
    _ensure_trained(session, runs[0], segment)
    files = sorted((session.checkout / logdir).glob("*/tensorboard/events.out.tfevents.*"))
    assert files, f"no event files under {logdir}"
    tags = {v.tag for f in files for e in _events(f) for v in e.summary.value}
    assert "train/loss" in tags, sorted(tags)


def _server(session: Session, segment: str) -> int:
    """The port of the README's `--mode=serve` command `segment`, started once in the background on a
    free port (its workdir trained first by the README's own command), serving when this returns."""
    def start() -> int:
        call = TranslateCall.parse(segment)
        _ensure_trained(session, call.workdir, segment)
        port = free_port()
        process = session.spawn(re.sub(r"--port[= ]\d+", f"--port={port}", segment))
        session.background.append(process)
        line = process.stdout.readline()
        assert re.search(rf"^Serving \w+ \(step \d+\) at http://127\.0\.0\.1:{port}/", line), (
            line, process.stderr.read() if process.poll() is not None else "")
        return port
    return session.once(("serve", segment), start)


def run_server(session: Session, segment: str, command: Command) -> None:
    """`--mode=serve`: starts (once) and answers /health; the README's curl commands talk to it."""
    port = _server(session, segment)
    answer = json.loads(session.shell(f"curl -s 127.0.0.1:{port}/health").ok().stdout)
    assert answer == {"status": "ok"}, answer


def run_curl(session: Session, segment: str, command: Command) -> None:
    """`curl ... localhost:<port>/<route>`: against the README's `--mode=serve` command with that
    `--port` (started first, on a free port the URL is rewritten to); the answer is JSON, no error."""
    documented = re.search(r"localhost:(\d+)(/\w*)", segment)
    assert documented, f"{segment!r}: expected a localhost:<port>/<route> URL"
    port, route = documented.groups()
    servers = [s for c in COMMANDS for s in c.segments
               if rule_for(s) is not None and rule_for(s).run is run_server and re.search(rf"--port[= ]{port}\b", s)]
    assert servers, f"{segment!r}: no README `--mode=serve` command listens on port {port}"
    actual = _server(session, servers[0])
    ran = session.shell(segment.replace(f"localhost:{port}", f"127.0.0.1:{actual}")).ok()
    answer = json.loads(ran.stdout)
    assert "error" not in answer, answer
    expected = {"/translate": "translations", "/score": "scores", "/info": "family", "/health": "status"}
    assert expected[route] in answer, (route, answer)
    body = re.search(r"-d '(.*)'", segment)
    if route == "/translate":
        sent = json.loads(body.group(1))
        assert len(answer["translations"]) == len(sent["sentences"]) and all(answer["translations"])
        assert [len(n) for n in answer.get("nbest", [])] == [sent.get("nbest", 0)] * len(sent["sentences"]) * (
            "nbest" in sent)


def _training_segments() -> list[str]:
    return [s for c in COMMANDS for s in c.segments if rule_for(s) is not None and rule_for(s).run is run_training]


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    pattern: str  # re.search on a segment; the first matching rule runs it
    run: Callable[[Session, str, Command], None]
    waits: bool = False  # uses what another command leaves (runs after the independent ones)


RULES = (
    Rule("venv", r"^python3? -m venv \S+$", check_venv),
    Rule("activate", r"^(\.|source) \S+/bin/activate$", check_activate),
    Rule("installer", r"^pip install uv$", check_installer),
    Rule("pip install", r"^(python3? -m |uv )?pip install ", check_pip_install),
    Rule("inner loop", r"^pytest -m \"not slow\"$", check_inner_loop),
    Rule("pytest", r"^pytest\b", check_pytest),
    Rule("multi-host, detected", r"python3? -m train\.translate\b.*--config\.distributed\.coordinator_address=auto\b",
         run_multihost_auto),
    Rule("multi-host, explicit", r"python3? -m train\.translate\b.*--config\.distributed\.coordinator_address=\S",
         run_multihost_explicit),
    Rule("serve", r"python3? -m train\.translate\b.*--mode[= ]serve\b", run_server, waits=True),
    Rule("trained run", r"python3? -m train\.translate\b.*--mode[= ]\w", run_on_trained_run, waits=True),
    Rule("curl", r"^curl -s localhost:\d+/", run_curl, waits=True),
    Rule("train", r"(^|\s)python3? -m train\.translate\b", run_training),
    Rule("python -c", r"^python3? -c ", run_python_c),
    Rule("write a file", r"^(printf|echo|cat) .*[^>]>\s*[\w./-]+$", run_file_writer),
    Rule("device benchmark", r"^python3? (-m benchmarks\.device|benchmarks/device\.py)\b", run_device_benchmark),
    Rule("timing scripts", r"^python3? (-m (benchmarks|train\.experiments)\.\w+|benchmarks/\w+\.py)\b",
         run_timing_script),
    Rule("tensorboard", r"^tensorboard --logdir[= ]?\S+$", check_tensorboard, waits=True),
)


def rule_for(segment: str) -> Rule | None:
    return next((rule for rule in RULES if re.search(rule.pattern, segment)), None)


# ------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------


def test_commands_are_split_like_bash():
    block = ('python -m a --x=1 \\\n    --y="two # three" # a comment\n\n# only a comment\n'
             'echo "a && b" | python -m t --m=z && pytest ; ls\n')
    commands = split_commands(block, 10)
    assert [c.line for c in commands] == [10, 14]
    assert commands[0].text == 'python -m a --x=1 --y="two # three"'
    assert commands[1].segments == ('echo "a && b" | python -m t --m=z', "pytest", "ls")
    assert pipeline(commands[1].segments[0]) == ['echo "a && b"', "python -m t --m=z"]


def test_readme_has_commands():
    assert len(COMMANDS) >= 5 and any(_TRANSLATE.search(c.text) for c in COMMANDS)


def test_every_readme_command_has_a_rule():
    missing = [f"{c}  (segment {s!r})" for c in COMMANDS for s in c.segments if rule_for(s) is None]
    assert not missing, ("README commands with no rule in tests/test_readme_commands.py RULES (add one that "
                         "runs them at tiny size):\n" + "\n".join(missing))


@pytest.fixture(scope="module")
def session(tmp_path_factory, request):
    """The shared session; the selected commands start at once, two at a time, those that need
    another command's result last (each test then waits for its own)."""
    session = Session(tmp_path_factory.mktemp("readme"))
    from train.data import catalog

    catalog.prepare_builder(TINY_DATASET, str(session.tfds))  # once, before commands run concurrently
    selected = [item.callspec.params["command"] for item in request.session.items
                if item.module is request.module and getattr(item, "originalname", "") == "test_readme_command"]
    try:
        if os.environ.get("PYTEST_XDIST_WORKER"):  # xdist: each worker runs its own share lazily
            yield session
            return
        selected.sort(key=lambda c: any(r is not None and r.waits for r in map(rule_for, c.segments)))
        with concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="readme") as pool:
            for command in selected:
                pool.submit(run_command, session, command)
            yield session
    finally:
        session.close()


@pytest.mark.parametrize("command", COMMANDS, ids=[
    f"L{c.line}-{re.sub(r'[^A-Za-z0-9=._/-]+', '_', c.text)[:70]}" for c in COMMANDS])
def test_readme_command(session, command):
    run_command(session, command)
