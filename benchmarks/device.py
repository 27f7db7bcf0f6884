r"""Device benchmark: one command that checks and measures jaxattn on a GPU or TPU.

    python -m benchmarks.device --flax_wmt=<flax checkout>/examples/wmt   # <= 8 min on one H100
    python -m benchmarks.device --smoke        # the same code at tiny sizes on the CPU (~1 min)

Writes one markdown section (stdout and `--output`, default runs/device_benchmark.md) with:

  a. correctness: every `implementation` of `jaxattn.dot_product_attention` (auto,
     reference, xla, cudnn, chunked) against a float64 NumPy reference, in float32 and
     bfloat16, without a mask, with key padding, causal, and causal + padding (padded
     query rows are fully masked): outputs and gradients (benchmarks/device_correctness.py);
     which implementation `auto` compiled to;
  b. attention speed: jaxattn vs `jax.nn.dot_product_attention` (xla, cudnn) vs
     `flax.linen.dot_product_attention`, B 8, T=S 1024 and 4096, N 16, H 64, bfloat16, fwd
     and fwd+bwd, causal and not, timed round-robin in one process, median, as ratios;
  c. train step: the base Transformer (D 512, 6+6, bf16) of
     train/configs/transformer_base_wmt14.py at V 32000 on a packed 16 x 256 batch
     (4096 + 4096 token slots): tokens/s and MFU, beside the Flax WMT example's model
     (`--flax_wmt`, its models.py imported by path) trained by the same kind of step;
  d. decoding: cached greedy and beam-4 tokens/s of the base Transformer in bf16;
  e. end to end: the default `python -m train.translate` in a temporary workdir: wall
     time, BLEU and exact match.

Each part runs in its own child process under its own timeout (`--timeouts`), so a
crash, hang or out-of-memory in one part still reports the others; the exit status is 1
if any part failed. Children run one at a time, each owning the accelerator.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import jax

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What each part runs; `FULL` on the accelerator, `SMOKE` on a CPU in the tests."""

    check_shape: tuple[int, int, int, int] = (2, 128, 4, 64)  # B, T=S, N, H
    attention_bnh: tuple[int, int, int] = (8, 16, 64)  # B, N, H
    attention_lengths: tuple[int, ...] = (1024, 4096)  # T = S
    attention_repeats: int = 20
    train_model: dict = dataclasses.field(default_factory=dict)  # config.model overrides
    train_vocab: int = 32000
    train_batch: tuple[int, int] = (16, 256)  # rows, packed row length
    train_steps: int = 10  # steps per timed repeat
    train_repeats: int = 3
    decode_model: str = "base"  # TransformerConfig preset
    decode_vocab: int = 32000
    decode_batch: tuple[int, int, int] = (32, 32, 64)  # sentences, source length, output length
    decode_repeats: int = 5
    e2e_flags: tuple[str, ...] = ()  # added to `python -m train.translate`
    timeouts: dict = dataclasses.field(default_factory=lambda: {
        "correctness": 60, "attention": 90, "train_step": 120, "decode": 70, "e2e": 140})


FULL = Sizes()
SMOKE = Sizes(
    check_shape=(2, 24, 2, 16), attention_bnh=(2, 2, 16), attention_lengths=(16,),
    attention_repeats=3,
    train_model=dict(emb_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                     mlp_dim=64),
    train_vocab=64, train_batch=(4, 32), train_steps=2, train_repeats=2,
    decode_model="tiny", decode_vocab=64, decode_batch=(2, 8, 8), decode_repeats=2,
    e2e_flags=("--config.data.dataset=number_words/tiny", "--config.data.vocab_size=48",
               "--config.num_train_steps=2", "--config.warmup_steps=1",
               "--config.eval_every_steps=2", "--config.checkpoint_every_steps=2",
               "--config.data.eval_max_examples=16", "--config.eval_decode_examples=8",
               "--config.decode.max_length=12", "--config.model.emb_dim=32",
               "--config.model.num_heads=2", "--config.model.mlp_dim=64",
               "--config.model.num_encoder_layers=1", "--config.model.num_decoder_layers=1",
               "--config.num_heatmaps=0"),
    timeouts={"correctness": 120, "attention": 120, "train_step": 120, "decode": 120,
              "e2e": 150})


def _machine() -> dict:
    device = jax.devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "jaxlib": importlib.metadata.version("jaxlib")}


# --- e. end to end -----------------------------------------------------------------------

SUMMARY = re.compile(r"^test: BLEU (?P<bleu>[\d.]+) \| chrF (?P<chrf>[\d.]+) \| exact match "
                     r"(?P<exact>[\d.]+)% \| steps (?P<steps>\d+) \| wall time (?P<wall>\d+)s",
                     re.M)


def end_to_end(sizes: Sizes, emit) -> bool:
    """The default trainer command in a temporary workdir (this process never touches jax)."""
    workdir = tempfile.mkdtemp(prefix="jaxattn_device_e2e_")
    command = [sys.executable, "-m", "train.translate", f"--workdir={workdir}/run",
               *sizes.e2e_flags]
    shown = " ".join(["python -m train.translate", "--workdir=<tmp>", *sizes.e2e_flags])
    try:
        start = time.perf_counter()
        # This process's environment (set by the parent) is the trainer's.
        proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    match = SUMMARY.search(proc.stdout)
    emit(f"`{shown}` (TFDS data dir: the default, so a fresh machine first builds the data; "
         "the vocabulary is trained in the workdir). Command wall time from this script; "
         "trainer wall time as the trainer reports it.")
    emit("")
    emit("| command wall s | trainer wall s | steps | test BLEU | chrF | exact match |")
    emit("|---:|---:|---:|---:|---:|---:|")
    if proc.returncode != 0 or match is None:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:160].replace("|", "/")
        emit(f"| {wall:.0f} | failed (exit {proc.returncode}): {tail} | | | | |")
        return False
    emit(f"| {wall:.0f} | {match['wall']} | {match['steps']} | {match['bleu']} | "
         f"{match['chrf']} | {match['exact']}% |")
    return True


# --- the command: one child process per part ---------------------------------------------


# The parts' modules are imported in the child that runs them: a part whose imports
# break fails alone.
def _correctness(sizes: Sizes, emit, args) -> bool:
    from benchmarks import device_correctness  # noqa: PLC0415

    return device_correctness.correctness(sizes.check_shape, emit)


def _attention(sizes: Sizes, emit, args) -> bool:
    from benchmarks import device_speed  # noqa: PLC0415

    return device_speed.attention_speed(sizes, emit)


def _train_step(sizes: Sizes, emit, args) -> bool:
    from benchmarks import device_speed  # noqa: PLC0415

    return device_speed.train_step_speed(sizes, emit, args.flax_wmt, args.peak_tflops)


def _decode(sizes: Sizes, emit, args) -> bool:
    from benchmarks import device_speed  # noqa: PLC0415

    return device_speed.decode_speed(sizes, emit)


def _end_to_end(sizes: Sizes, emit, args) -> bool:
    return end_to_end(sizes, emit)


# part -> (title, run(sizes, emit, args) -> passed, whether it initialises the accelerator)
PARTS = {
    "correctness": ("a. Correctness of every implementation", _correctness, True),
    "attention": ("b. Attention speed (bf16)", _attention, True),
    "train_step": ("c. Train step, base Transformer (bf16)", _train_step, True),
    "decode": ("d. Decoding, base Transformer (bf16)", _decode, True),
    "e2e": ("e. End to end: `python -m train.translate`", _end_to_end, False),
}


# At smoke sizes compiling dominates: halve it by skipping XLA's costlier CPU passes, and compile
# with XLA:CPU's loop emitters rather than its fusion emitters (another 0.55-0.7x).
SMOKE_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                   "--xla_cpu_use_fusion_emitters=false")


def _child_env(smoke: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if smoke:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}".strip()
    return env


CHECKS_FAILED = 3  # a child's exit status when it ran to the end but a check failed


def _run_child(args) -> int:
    """Runs one part in this (child) process, appending markdown lines to --child_output."""
    sizes = SMOKE if args.smoke else FULL
    _, run, uses_device = PARTS[args.child]
    with open(args.child_output, "a", encoding="utf-8") as out:
        def emit(line: str) -> None:
            out.write(line + "\n")
            out.flush()  # a part killed by its timeout keeps what it wrote

        if uses_device:  # the machine, as this part saw it
            pathlib.Path(args.child_output + ".json").write_text(json.dumps(_machine()))
        return 0 if run(sizes, emit, args) else CHECKS_FAILED


def _run_part(name: str, args, timeout: float, scratch: str) -> tuple[str, list[str], float]:
    """(status, markdown lines, seconds) of one part run in a child process group."""
    output = os.path.join(scratch, name + ".md")
    command = [sys.executable, "-m", "benchmarks.device", f"--child={name}",
               f"--child_output={output}", f"--flax_wmt={args.flax_wmt}"]
    command += ["--smoke"] if args.smoke else []
    command += [f"--peak_tflops={args.peak_tflops}"] if args.peak_tflops else []
    start = time.perf_counter()
    # A new session: on timeout the whole group (e.g. the trainer under part e) is killed.
    proc = subprocess.Popen(command, cwd=REPO, env=_child_env(args.smoke), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
        status = {0: "ok", CHECKS_FAILED: "failed"}.get(
            proc.returncode, f"crashed (exit {proc.returncode}): "
            + (stderr.strip().splitlines() or ["no output"])[-1][:200].replace("|", "/"))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        status = f"timed out after {timeout:g} s"
    seconds = time.perf_counter() - start
    lines = pathlib.Path(output).read_text(encoding="utf-8").splitlines() if os.path.exists(
        output) else []
    return status, lines, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes, for a CPU: checks that every part runs")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--output", default="",
                        help="markdown file (default runs/device_benchmark[_smoke].md)")
    parser.add_argument("--flax_wmt", default="",
                        help="path to the Flax WMT example (flax/examples/wmt) for part c's peer")
    parser.add_argument("--peak_tflops", type=float, default=0.0,
                        help="device bf16 peak for MFU (default: the table, by device kind)")
    parser.add_argument("--timeouts", default="",
                        help="per-part timeouts in s over the defaults, e.g. e2e=300,decode=60")
    parser.add_argument("--child", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--child_output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(args)

    parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown or not parts:
        parser.error(f"--parts: got {args.parts!r}, expected a comma-separated subset of "
                     f"{','.join(PARTS)}")
    sizes = SMOKE if args.smoke else FULL
    timeouts = dict(sizes.timeouts)
    for item in filter(None, args.timeouts.split(",")):
        name, _, seconds = item.partition("=")
        if name not in PARTS or not re.fullmatch(r"\d+(\.\d*)?", seconds):
            parser.error(f"--timeouts: got {item!r}, expected <part>=<seconds> with a part of "
                         f"{','.join(PARTS)}")
        timeouts[name] = float(seconds)
    output = args.output or f"runs/device_benchmark{'_smoke' if args.smoke else ''}.md"

    started = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    body, summary, failed = [], [], False
    with tempfile.TemporaryDirectory(prefix="jaxattn_device_") as scratch:
        for name in parts:
            status, lines, seconds = _run_part(name, args, timeouts[name], scratch)
            failed |= status != "ok"
            summary.append(f"| {PARTS[name][0].split('.')[0]} | {status} | {seconds:.0f} | "
                           f"{timeouts[name]:g} |")
            body += ["", f"#### {PARTS[name][0]}", ""] + lines
            if status != "ok":
                body += ["", f"**{status}** (the lines above are what it wrote before)."]
            print(f"[{name}] {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
        machines = sorted(pathlib.Path(scratch).glob("*.json"))
        machine = json.loads(machines[0].read_text()) if machines else {}
    total = time.perf_counter() - start
    command = " ".join(["python -m benchmarks.device", *(argv if argv is not None
                                                          else sys.argv[1:])])
    kind = machine.get("device_kind", "unknown device")
    section = [
        f"### {'Smoke run (tiny sizes, not performance figures)' if args.smoke else 'Run'}: "
        f"{kind} x{machine.get('device_count', '?')}, {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"`{command}` on {platform.machine()} "
        f"({machine.get('platform', '?')} backend), jax {machine.get('jax', jax.__version__)}, "
        f"jaxlib {machine.get('jaxlib', '?')}, Python {platform.python_version()}; "
        f"total {total:.0f} s.",
        "",
        "| part | status | s | timeout s |",
        "|---|---|---:|---:|",
        *summary,
        *body,
    ]
    text = "\n".join(section) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    pathlib.Path(output).write_text(text, encoding="utf-8")
    print(f"wrote {output}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
