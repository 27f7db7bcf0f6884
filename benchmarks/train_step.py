"""Train-step benchmark: tokens/s and model FLOPs utilisation of the compiled step.

Run (CPU, a few minutes):

    python benchmarks/train_step.py

For each model (the default Transformer of train/configs/transformer.py, the
base Transformer of train/configs/transformer_base_wmt14.py in float32, and the
Bahdanau RNN of train/configs/rnn_bahdanau.py) this builds the trainer's real
step (`train.steps.train_step`, jitted with a donated state by
`train.sharding.MeshParallel` on one device), compiles it ahead of time and
times `--repeats` runs of `--steps` steps on a fixed synthetic batch whose rows
have random lengths (so padding is realistic). Reported:

* tokens/s: non-pad source + target tokens per second (median over repeats);
* FLOPs/step: XLA's own count, `compiled.cost_analysis()["flops"]` (forward,
  backward and optimizer update);
* MFU: FLOPs/step / step time / peak. Peak FLOP/s is given by `--peak_gflops`;
  the default (166.4) is this benchmark's CPU: 2 cores x 2.6 GHz x 32 float32
  FLOPs/cycle (two 256-bit FMA pipes = 2 x 8 lanes x 2 FLOPs; AMD Zen 4 runs
  AVX-512 as two 256-bit halves). Pass the right figure for another machine.
"""

import argparse
import datetime
import functools
import platform
import statistics
import time

import jax
import numpy as np

from train import optim, run_config, sharding, steps
from train.configs import rnn_bahdanau, transformer, transformer_base_wmt14

MODELS = {
    "transformer (default, D128 3+3)": (transformer, 64, 24),
    "transformer base (D512 6+6, fp32)": (transformer_base_wmt14, 16, 32),
    "rnn_bahdanau (GRU 128, dec 256)": (rnn_bahdanau, 64, 24),
}
VOCAB = 256


def _batch(rows: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {}
    for key in ("inputs", "targets"):
        ids = rng.integers(4, VOCAB, size=(rows, length)).astype(np.int32)          # [B, L]
        lengths = rng.integers(length // 3, length + 1, size=rows)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
        ids[np.arange(rows), lengths - 1] = 3
        batch[key] = ids
    return batch


def bench(module, rows: int, length: int, num_steps: int, repeats: int) -> dict[str, float]:
    config = module.get_config()
    config.compute_dtype = "float32"
    model = run_config.build_model(config, VOCAB)
    parallel = sharding.MeshParallel(jax.devices()[:1])
    tx = optim.make_optimizer(config)
    init_fn = functools.partial(steps.init_state, model=model, tx=tx, input_shape=(1, 8), target_shape=(1, 8))
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    sampling = optim.make_sampling_schedule(config) if config.scheduled_sampling.kind != "none" else None
    step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=model, label_smoothing=config.label_smoothing,
        learning_rate_fn=optim.make_schedule(config), sampling_schedule=sampling))
    batch = parallel.put_batch(_batch(rows, length))
    rng = parallel.put_rng(jax.random.PRNGKey(1))
    compiled = step.lower(state, batch, rng).compile()
    flops = float(compiled.cost_analysis()["flops"])
    tokens = float(np.sum(np.asarray(batch["inputs"]) != 0) + np.sum(np.asarray(batch["targets"]) != 0))
    state, metrics = compiled(state, batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(num_steps):
            state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / num_steps)
    step_time = statistics.median(times)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return {"params": params, "batch": f"{rows}x{length}", "tokens": tokens, "step_ms": 1e3 * step_time,
            "tokens_per_s": tokens / step_time, "gflops": flops / 1e9, "achieved": flops / step_time / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported)")
    parser.add_argument("--peak_gflops", type=float, default=166.4, help="device peak float32 GFLOP/s")
    args = parser.parse_args()
    print(f"# {datetime.date.today()} | {platform.processor() or platform.machine()} | "
          f"{jax.devices()[0].device_kind} x{jax.device_count()} | jax {jax.__version__} | "
          f"peak {args.peak_gflops} GFLOP/s | median of {args.repeats} x {args.steps} steps")
    print("| model | params | batch (rows x L) | non-pad tokens | step ms | tokens/s | GFLOP/step | "
          "GFLOP/s | MFU |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (module, rows, length) in MODELS.items():
        r = bench(module, rows, length, args.steps, args.repeats)
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['tokens']:.0f} | {r['step_ms']:.1f} | "
              f"{r['tokens_per_s']:,.0f} | {r['gflops']:.2f} | {r['achieved']:.1f} | "
              f"{100 * r['achieved'] / args.peak_gflops:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
