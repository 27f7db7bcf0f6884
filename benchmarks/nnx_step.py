"""NNX train step against the Linen one: the same model, optimizer, loss and batch, in one process.

Run (CPU, about 5 minutes on 2 shared cores):

    python -m benchmarks.nnx_step --models default rnn tiny --rounds 7 --steps 10

Three steps train the model of `--models` (as `benchmarks/train_step.py` builds it: the config
file's model and optimizer, float32, a synthetic batch with realistic padding; "tiny" is the
default config's Transformer at test size, D 16, 1 + 1 layers, vocabulary 64, where per-call
Python work is a large share of a step):

* **linen**: the trainer's own step, `train.steps.train_step`, compiled as the trainer compiles it
  (`MeshParallel` on one device);
* **nnx.jit**: `jaxattn.nnx.Model` (the same Linen module through `flax.nnx.bridge`) and an
  `nnx.Optimizer` of the same optax transformation, stepped by an `nnx.jit` function, the style of
  Flax's NNX guides;
* **nnx split/merge**: the same NNX step body jitted with `jax.jit` over `nnx.split((model,
  optimizer))`'s state as plain dicts (`nnx.to_pure_dict`), merged inside and split again (the
  "functional" style Flax's performance guide recommends when `nnx.jit`'s Python overhead shows
  on small models).

The NNX steps compute what the trainer's step computes: label-smoothed cross-entropy sums
(`train.losses.cross_entropy_sums`) over the global non-pad token count, gradients, the
optimizer update and the gradient norm; their dropout keys come from the model's `nnx.Rngs`.
The three alternate in every round, in a rotated order, so the load of a shared machine falls on
all three; each figure is the median over rounds of ms/step, and the ratio is the median over
rounds of NNX time / Linen time in the same round (1.00 = as fast as Linen).
"""

import argparse
import datetime
import functools
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from benchmarks.train_step import MODELS, _batch, ours
from jaxattn import nnx as jaxattn_nnx
from train import build, losses, sharding

TINY = ("transformer (test size, D16 1+1)", None, 8, 12)  # where per-call Python work shows


def _loss(model, batch, label_smoothing):
    pad_id = model.config.pad_id
    weight_total = jnp.maximum(jnp.sum(batch["targets"] != pad_id).astype(jnp.float32), 1.0)
    logits = model(batch["inputs"], batch["targets"], train=True)                 # [B, T, V]
    sums = losses.cross_entropy_sums(logits, batch["targets"], label_smoothing, pad_id=pad_id)
    return sums["loss_sum"] / weight_total, sums


def _nnx_update(model, optimizer, batch, label_smoothing):
    grads, sums = nnx.grad(_loss, has_aux=True)(model, batch, label_smoothing)
    optimizer.update(model, grads)
    return dict(sums, grad_norm=optax.tree.norm(grads))


def _nnx_parts(module, vocab: int, rows: int, length: int, seed: int = 0):
    config = module.get_config()
    config.compute_dtype = "float32"
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1])).with_vocab_size(vocab)
    model = jaxattn_nnx.Model(built.model.config, rngs=nnx.Rngs(params=seed, dropout=seed + 1, sampling=seed + 2))
    optimizer = nnx.Optimizer(model, built.optimizer, wrt=nnx.Param)
    batch = jax.device_put(_batch(rows, length, vocab))
    return model, optimizer, batch, config.label_smoothing


def nnx_jit_runner(module, vocab: int, rows: int, length: int):
    """() -> metrics: one `nnx.jit` step (the model and optimizer update in place)."""
    model, optimizer, batch, label_smoothing = _nnx_parts(module, vocab, rows, length)
    step = nnx.jit(functools.partial(_nnx_update, label_smoothing=label_smoothing))
    return lambda: step(model, optimizer, batch)


def nnx_functional_runner(module, vocab: int, rows: int, length: int):
    """() -> metrics: one `jax.jit` step over `nnx.split`'s state (merged inside, split again)."""
    model, optimizer, batch, label_smoothing = _nnx_parts(module, vocab, rows, length)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        metrics = _nnx_update(model, optimizer, batch, label_smoothing)
        return nnx.to_pure_dict(nnx.state((model, optimizer))), metrics

    # Plain dicts cross the jit boundary: jax flattens them in C++, an nnx.State in Python
    # (0.43 ms against 0.07 ms a flatten for the test-size model's 150 arrays, twice a step).
    box = {"state": nnx.to_pure_dict(state)}

    def run():
        box["state"], metrics = step(box["state"], batch)
        return metrics

    return run


def linen_runner(module, vocab: int, rows: int, length: int):
    runner = ours(module, vocab, rows, length)

    def run():
        runner.state, metrics = runner.step(runner.state)
        return metrics

    return run


def _seconds_per_step(run, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        metrics = run()
    jax.block_until_ready(metrics)
    return (time.perf_counter() - start) / steps


RUNNERS = {"linen": linen_runner, "nnx.jit": nnx_jit_runner, "nnx split/merge": nnx_functional_runner}


def measure(module, vocab: int, rows: int, length: int, rounds: int, steps: int) -> dict[str, dict[str, float]]:
    """{runner: {"ms": median ms/step, "ratio": median of (its time / linen's) per round}}."""
    runs = {name: make(module, vocab, rows, length) for name, make in RUNNERS.items()}
    for run in runs.values():  # compile and warm up
        jax.block_until_ready(run())
    names = list(runs)
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_seconds_per_step(runs[name], steps))
    return {name: {"ms": 1e3 * statistics.median(times[name]),
                   "ratio": statistics.median(t / b for t, b in zip(times[name], times["linen"]))}
            for name in names}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["default", "rnn", "tiny"], choices=sorted([*MODELS, "tiny"]))
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10, help="steps per runner per round")
    parser.add_argument("--smoke", action="store_true", help="only the test-size model, to check the code runs")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    print(f"{datetime.date.today()}, {platform.machine()} {platform.processor() or ''}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}; "
          f"python -m benchmarks.nnx_step {' '.join(argv)}".rstrip())
    print("| model | B x L | linen ms/step | nnx.jit ms/step (ratio) | nnx split/merge ms/step (ratio) |")
    print("|---|---|---:|---:|---:|")
    models = ["tiny"] if args.smoke else args.models
    for name in models:
        label, module, rows, length = TINY if name == "tiny" else MODELS[name]
        module = module or _tiny_module()
        vocab = 64 if name == "tiny" else args.vocab
        result = measure(module, vocab, rows, length, args.rounds, args.steps)
        cells = [f"{result[n]['ms']:.1f} ({result[n]['ratio']:.3f})" for n in ("nnx.jit", "nnx split/merge")]
        print(f"| {label} | {rows} x {length} | {result['linen']['ms']:.1f} | {' | '.join(cells)} |", flush=True)


def _tiny_module():
    from train.configs import transformer  # noqa: PLC0415

    class Tiny:
        @staticmethod
        def get_config():
            config = transformer.get_config()
            config.model.update(emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1)
            return config

    return Tiny


if __name__ == "__main__":
    main()
