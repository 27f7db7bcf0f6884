"""Decoding benchmark: cached (incremental) vs uncached (full recomputation) decoding.

Run (CPU; about 10 minutes on a shared 2-core machine):

    python benchmarks/decode.py

Tokens/s = output tokens (batch x length; beam search counts the returned
hypothesis, not the k beams) per second of wall time for jit-compiled
`greedy_decode` and `beam_search(beam_size=4)` with `cached=True` (Transformer:
self-attention KV cache + cross-attention keys/values projected once per source;
RNN: carried state) and `cached=False` (every step reruns the teacher-forced
decoder over the whole L-token buffer). `eos_id=-1` so no run stops early: every
run emits exactly L tokens per row. Each cell is compiled first, then the median
of `--repeats` runs is reported.

Uncached decoding costs O(L) decoder passes of L positions each. Where that is
too slow to run in full (`--step_timed`; default: the base Transformer, and the
RNN at L=256), uncached steps are timed instead (a jitted loop of `--timed_steps` steps of the
same step function, whose cost does not depend on the position because the
whole buffer is recomputed) and tokens/s = rows / step time; these cells are
marked "(step-timed)" and exclude beam bookkeeping (top-k over k*V), so they
slightly favour the uncached side.
"""
from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from jaxattn.decoding import beam_search, greedy_decode, make_stepper
from jaxattn.decoding.steppers import encode
from jaxattn.models import RNNConfig, TransformerConfig, build_model, count_params

SOURCE_LEN = 32
NEVER = -1  # eos id that is never produced: fixed-length runs

MODELS = {
    "transformer-tiny": lambda max_len: TransformerConfig.tiny(8000, max_len=max_len),
    "transformer-base": lambda max_len: TransformerConfig.base(37000, max_len=max_len,
                                                               dropout_rate=0.0),
    "rnn-bahdanau": lambda max_len: RNNConfig(vocab_size=8000, embed_dim=256, hidden_size=256,
                                              cell="gru", attention="bahdanau",
                                              dropout_rate=0.0),
}


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile + warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_time(model, variables, inputs, length, rows_per_input, steps):
    """Seconds per uncached step for `inputs` tiled `rows_per_input` times."""
    @jax.jit
    def run(variables, inputs):
        inputs = jnp.repeat(inputs, rows_per_input, axis=0)
        stepper = make_stepper(model, variables, encode(model, variables, inputs), length,
                               cached=False)
        tokens = jnp.full((inputs.shape[0],), model.config.bos_id, jnp.int32)  # [B]

        def body(i, carry):
            state, tokens = carry
            logits, state = stepper.step(stepper.memory, state, tokens, i)
            return state, jnp.argmax(logits, axis=-1).astype(jnp.int32)
        # Positions spread over the buffer; the cost does not depend on them.
        return jax.lax.fori_loop(0, steps, body, (stepper.state, tokens))[1]

    return _median_time(lambda: run(variables, inputs), 1) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--lengths", default="64,256")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step_timed",
                        default="transformer-base:64,transformer-base:256,rnn-bahdanau:256",
                        help="model:length cells whose uncached runs are step-timed")
    parser.add_argument("--timed_steps", type=int, default=4)
    args = parser.parse_args()
    step_timed = {tuple(c.split(":")) for c in args.step_timed.split(",") if c}
    lengths = [int(x) for x in args.lengths.split(",")]

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
          f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, "
          f"jax {jax.__version__}, batch {args.batch}, source length {SOURCE_LEN}, "
          f"median of {args.repeats}")
    print("| model | params | L | search | cached tok/s | uncached tok/s | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        config = MODELS[name](max(lengths))
        model = build_model(config)
        inputs = jax.random.randint(jax.random.key(0), (args.batch, SOURCE_LEN), 4,
                                    config.vocab_size, jnp.int32)
        variables = jax.jit(model.init)(jax.random.key(1), inputs, inputs)
        n_params = count_params(variables["params"])
        for length in lengths:
            for search, beam in (("greedy", 1), ("beam-4", 4)):
                def run(cached):
                    if beam == 1:
                        return greedy_decode(model, variables, inputs, max_len=length,
                                             eos_id=NEVER, cached=cached)
                    return beam_search(model, variables, inputs, max_len=length, beam_size=beam,
                                       eos_id=NEVER, cached=cached)
                tokens = args.batch * length
                cached_tps = tokens / _median_time(lambda: run(True), args.repeats)
                if (name, str(length)) in step_timed:
                    seconds = _step_time(model, variables, inputs, length, beam, args.timed_steps)
                    uncached_tps = args.batch / seconds
                    note = " (step-timed)"
                else:
                    uncached_tps = tokens / _median_time(lambda: run(False), args.repeats)
                    note = ""
                print(f"| {name} | {n_params / 1e6:.1f}M | {length} | {search} | "
                      f"{cached_tps:,.0f} | {uncached_tps:,.1f}{note} | "
                      f"{cached_tps / uncached_tps:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
