"""Train-step benchmark: tokens/s, model FLOPs utilisation, and the Flax WMT example as a peer.

Run (CPU; about 10 minutes per vocabulary on 2 shared cores):

    python benchmarks/train_step.py --vocab 8000 32000 --flax_wmt=PATH/flax/examples/wmt

For each model (`--models`: "default", the Transformer of
train/configs/transformer.py; "base", the Transformer of
train/configs/transformer_base_wmt14.py in float32; "rnn", the Bahdanau RNN of
train/configs/rnn_bahdanau.py) and each `--vocab` size, this builds the
trainer's real step (`train.steps.train_step`, jitted by
`train.sharding.MeshParallel` on one device, which donates the state except on
CPU), compiles it ahead of time and times `--repeats` rounds of `--steps` steps
on a fixed synthetic batch whose rows have random lengths (so padding is
realistic). Reported:

* tokens/s: non-pad source + target tokens per second (median over rounds);
* FLOPs/step: XLA's own count, `compiled.cost_analysis()["flops"]` (forward,
  backward and optimizer update);
* MFU: FLOPs/step / step time / peak. Peak FLOP/s is given by `--peak_gflops`;
  the default (332.8) is this benchmark's CPU: 2 cores x 2.6 GHz x 64 float32
  FLOPs/cycle (two AVX-512 FMA units = 2 x 16 lanes x 2 FLOPs; a lone [512,
  512] x [512, 2048] matmul runs at ~175 GFLOP/s per core-second here). Pass
  the right figure for another machine.

The peer (`--flax_wmt`: the path of a checkout's examples/wmt; nothing of it is
copied here) is imported by path: its `models.py` whole, and from its
`train.py` the functions `train_step` (forward, label-smoothed loss
`compute_weighted_cross_entropy`, backward, update, `compute_metrics`) and
`create_learning_rate_schedule` and the class `TrainState`. `train.py` imports
modules a train step does not use: clu and tensorflow (when not installed) and
the example's own bleu, decode and input_pipeline are replaced, inside this
process only, by empty stand-in modules before the import. As in its
`train_and_evaluate`, the step is `jax.pmap(partial(train_step, config=...,
learning_rate_fn=..., label_smoothing=...), axis_name="batch",
donate_argnums=(0,))`, here over one device; parameters come from
`jax.jit(Transformer(eval_config).init)`; the optimizer is
`optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0)` (written
inline there, so repeated here). Ours is Adam with the same betas and epsilon,
plus global-norm clipping where the config asks for it (default: 1.0; base:
none). Same sizes as ours: `emb_dim = qkv_dim = D`, `num_heads`, `num_layers`,
`mlp_dim`, `dropout_rate`, `attention_dropout_rate`, shared embeddings with the
output projection tied to them, float32, the same batch (with a leading device
axis). The peer is always pre-LayerNorm (our base config is post-LN: the same
work) and also drops out inside its feed-forward block.

Ours and the peer alternate round by round in one process (the order swapped
every round), so that the load of a shared machine falls on both; "speed-up" is
the median over rounds of the peer's step time / ours in the same round.
"""

import argparse
import dataclasses
import datetime
import functools
import importlib.machinery
import importlib.util
import os
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import jax_utils

from jaxattn.models import count_params
from train import build, sharding, steps
from train.configs import rnn_bahdanau, transformer, transformer_base_wmt14

MODELS = {  # --models name: (table label, config module, rows, length)
    "default": ("transformer (default, D128 3+3)", transformer, 64, 24),
    "base": ("transformer base (D512 6+6, fp32)", transformer_base_wmt14, 16, 32),
    "rnn": ("rnn_bahdanau (GRU 128, dec 256)", rnn_bahdanau, 64, 24),
}


def _batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {}
    for key in ("inputs", "targets"):
        ids = rng.integers(4, vocab, size=(rows, length)).astype(np.int32)          # [B, L]
        lengths = rng.integers(length // 3, length + 1, size=rows)
        ids[np.arange(length)[None, :] >= lengths[:, None]] = 0
        ids[np.arange(rows), lengths - 1] = 3
        batch[key] = ids
    return batch


@dataclasses.dataclass
class Runner:
    """A compiled step with its state: `run(n)` takes n steps, returns seconds per step."""

    step: Callable[..., tuple]
    state: object
    flops: float
    params: int

    def run(self, num_steps: int) -> float:
        start = time.perf_counter()
        for _ in range(num_steps):
            self.state, metrics = self.step(self.state)
        jax.block_until_ready(metrics)
        return (time.perf_counter() - start) / num_steps


def ours(module, vocab: int, rows: int, length: int) -> Runner:
    config = module.get_config()
    config.compute_dtype = "float32"
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]))
    built = built.with_vocab_size(vocab)
    parallel = built.parallel
    init_fn = functools.partial(steps.init_state, model=built.model, tx=built.optimizer,
                                input_shape=(1, 8), target_shape=(1, 8))
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=built.model, label_smoothing=config.label_smoothing,
        learning_rate_fn=built.schedule))
    batch = parallel.put_batch(_batch(rows, length, vocab))
    rng = parallel.put_rng(jax.random.PRNGKey(1))
    compiled = step.lower(state, batch, rng).compile()
    params = count_params(state.params)
    flops = float(compiled.cost_analysis()["flops"])
    return Runner(lambda s: compiled(s, batch, rng), state, flops, params)


class _StandIn(types.ModuleType):
    """An empty module whose attributes are stand-ins too (for annotations like `tf.data.Dataset`)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StandIn(f"{self.__name__}.{attr}")


def load_flax_wmt(path: str) -> tuple[types.ModuleType, types.ModuleType]:
    """The Flax WMT example's `models` and `train` modules, imported from `path`."""
    # Imports tensorflow if it is installed: before any stand-in exists.
    import flax.training.checkpoints  # noqa: F401, PLC0415

    for name in ("models.py", "train.py"):
        if not os.path.isfile(os.path.join(path, name)):
            raise SystemExit(f"--flax_wmt: no {name} in {path!r}; expected the path of "
                             "flax/examples/wmt")
    for name in ("clu", "clu.metric_writers", "clu.periodic_actions", "tensorflow",
                 "bleu", "decode", "input_pipeline"):
        local = name in ("bleu", "decode", "input_pipeline")  # the example's own, not needed here
        missing = importlib.util.find_spec(name.split(".")[0]) is None
        if name not in sys.modules and (local or missing):
            sys.modules[name] = _StandIn(name)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, sys.modules[name])
    loaded = []
    for module_name, file_name in (("models", "models.py"), ("flax_wmt_train", "train.py")):
        spec = importlib.util.spec_from_file_location(module_name, os.path.join(path, file_name))
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # train.py does `import models`
        spec.loader.exec_module(module)
        loaded.append(module)
    return loaded[0], loaded[1]


def peer(flax_wmt, module, vocab: int, rows: int, length: int) -> Runner:
    models, wmt_train = flax_wmt
    ours_config = module.get_config()
    m = ours_config.model
    if m.num_encoder_layers != m.num_decoder_layers:
        raise SystemExit("the Flax WMT example needs as many encoder as decoder layers")
    config = models.TransformerConfig(
        vocab_size=vocab, output_vocab_size=vocab, share_embeddings=True, logits_via_embedding=True,
        dtype=jnp.float32, emb_dim=m.emb_dim, num_heads=m.num_heads, num_layers=m.num_encoder_layers,
        qkv_dim=m.emb_dim, mlp_dim=m.mlp_dim, max_len=m.max_len, dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate, deterministic=False)
    learning_rate_fn = wmt_train.create_learning_rate_schedule(ours_config.learning_rate,
                                                               ours_config.warmup_steps)
    dummy = jnp.ones((1, 8), jnp.float32)
    init = jax.jit(models.Transformer(config.replace(deterministic=True)).init)
    variables = init(jax.random.PRNGKey(0), dummy, dummy)
    tx = optax.adamw(learning_rate=learning_rate_fn, b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0)
    state = wmt_train.TrainState.create(apply_fn=None, params=variables["params"], tx=tx,
                                        dynamic_scale=None)
    state = jax_utils.replicate(state, jax.devices()[:1])
    p_train_step = jax.pmap(
        functools.partial(wmt_train.train_step, config=config, learning_rate_fn=learning_rate_fn,
                          label_smoothing=ours_config.label_smoothing),
        axis_name="batch", donate_argnums=(0,))
    batch = jax_utils.replicate(_batch(rows, length, vocab), jax.devices()[:1])
    dropout_rngs = jax.random.split(jax.random.PRNGKey(1), 1)
    compiled = p_train_step.lower(state, batch, dropout_rng=dropout_rngs).compile()
    flops = float(compiled.cost_analysis()["flops"])
    params = count_params(variables["params"])
    return Runner(lambda s: p_train_step(s, batch, dropout_rng=dropout_rngs), state, flops, params)


def bench(module, vocab: int, rows: int, length: int, num_steps: int, repeats: int,
          flax_wmt) -> dict:
    runners = {"ours": ours(module, vocab, rows, length)}
    if flax_wmt is not None and module.get_config().model.family == "transformer":
        runners["peer"] = peer(flax_wmt, module, vocab, rows, length)
    for runner in runners.values():
        runner.run(1)  # warm-up
    times = {name: [] for name in runners}
    for round_index in range(repeats):
        order = list(runners) if round_index % 2 == 0 else list(reversed(runners))
        for name in order:
            times[name].append(runners[name].run(num_steps))
    tokens = float(sum(np.sum(v != 0) for v in _batch(rows, length, vocab).values()))
    step_time = statistics.median(times["ours"])
    flops = runners["ours"].flops
    result = {"params": runners["ours"].params, "batch": f"{rows}x{length}", "tokens": tokens,
              "step_ms": 1e3 * step_time, "tokens_per_s": tokens / step_time,
              "gflops": flops / 1e9, "achieved": flops / step_time / 1e9}
    if "peer" in runners:
        ratios = [p / o for p, o in zip(times["peer"], times["ours"])]
        result.update(peer_ms=1e3 * statistics.median(times["peer"]),
                      peer_gflops=runners["peer"].flops / 1e9, speedup=statistics.median(ratios),
                      speedup_range=(min(ratios), max(ratios)))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8000, 32000], help="vocabulary sizes V")
    parser.add_argument("--flax_wmt", default=None,
                        help="path of the Flax WMT example (flax/examples/wmt): adds the peer columns")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models to run (default: all)")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (medians reported)")
    parser.add_argument("--peak_gflops", type=float, default=332.8, help="device peak float32 GFLOP/s")
    args = parser.parse_args()
    flax_wmt = load_flax_wmt(args.flax_wmt) if args.flax_wmt else None
    print(f"# {datetime.datetime.now():%Y-%m-%d %H:%M} | {platform.processor() or platform.machine()}"
          f" | {os.cpu_count()} CPUs | {jax.devices()[0].device_kind} x{jax.device_count()} | "
          f"jax {jax.__version__} | peak {args.peak_gflops} GFLOP/s | median of {args.repeats} rounds "
          f"x {args.steps} steps | load average {os.getloadavg()[0]:.1f}")
    print("| model | V | params | batch (rows x L) | non-pad tokens | step ms | tokens/s | GFLOP/step | "
          "GFLOP/s | MFU | peer step ms | peer GFLOP/step | speed-up vs peer (range) | load avg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for vocab in args.vocab:
        for name in args.models:
            label, module, rows, length = MODELS[name]
            r = bench(module, vocab, rows, length, args.steps, args.repeats, flax_wmt)
            peer_cells = "| - | - | - "
            if "speedup" in r:
                low, high = r["speedup_range"]
                peer_cells = (f"| {r['peer_ms']:.1f} | {r['peer_gflops']:.2f} | "
                              f"{r['speedup']:.2f}x ({low:.2f}-{high:.2f}) ")
            print(f"| {label} | {vocab} | {r['params'] / 1e6:.2f}M | {r['batch']} | "
                  f"{r['tokens']:.0f} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | "
                  f"{r['gflops']:.2f} | {r['achieved']:.1f} | "
                  f"{100 * r['achieved'] / args.peak_gflops:.1f}% {peer_cells}| "
                  f"{os.getloadavg()[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
