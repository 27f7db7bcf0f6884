"""Parts b-d of benchmarks/device.py: attention, train-step and decoding speed.

Each part is `f(sizes, emit, ...) -> passed`: it runs at `sizes` (a `benchmarks.device.Sizes`)
and writes markdown lines through `emit`.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s (no sparsity) from the vendors' datasheets, by a lower-case
# substring of `device_kind`; the longest matching key wins ("h100 pcie" over "h100").
PEAK_BF16_TFLOPS = {
    "h100": 989.4,       # H100 SXM ("NVIDIA H100 80GB HBM3")
    "h100 pcie": 756.0,
    "h100 nvl": 835.5,
    "h200": 989.4,       # H200 SXM
    "h200 nvl": 835.5,
    "a100": 312.0,       # SXM and PCIe
    "tpu v4": 275.0,
    "tpu v5 lite": 197.0,  # v5e
    "tpu v5": 459.0,       # v5p
    "tpu v6 lite": 918.0,  # v6e
}


def peak_flops(device_kind: str) -> float | None:
    """Dense bf16 peak FLOP/s of a device kind, or None if it is not in the table."""
    kind = device_kind.lower()
    keys = [key for key in PEAK_BF16_TFLOPS if key in kind]
    return 1e12 * PEAK_BF16_TFLOPS[max(keys, key=len)] if keys else None


def _median_ms(times: list[float]) -> float:
    return 1e3 * statistics.median(times)


def _short(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:100].replace("|", "/")
    return f"{type(error).__name__}: {text}"


# --- b. attention speed ------------------------------------------------------------------


def _attention_fns(length: int, causal: bool) -> dict:
    """name -> attention(q, k, v), or a string saying why it does not run here."""
    import flax.linen  # noqa: PLC0415 -- only this part needs it

    import jaxattn  # noqa: PLC0415

    def mask():  # built while tracing (iotas), not a [T, S] constant in the program
        return jaxattn.causal_mask(length) if causal else None  # [1, 1, T, S]

    fns = {
        "jaxattn": lambda q, k, v: jaxattn.dot_product_attention(q, k, v, mask()),
        # jax.nn takes the causal structure as a flag, so cuDNN can skip masked blocks.
        "jax.nn xla": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="xla"),
        "jax.nn cudnn": lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="cudnn"),
        "flax.linen": lambda q, k, v: flax.linen.dot_product_attention(q, k, v, mask=mask()),
    }
    if jax.default_backend() != "gpu":
        fns["jax.nn cudnn"] = f"n/a on {jax.default_backend()}"
    return fns


def _pass(attention, mode: str):
    """f(q, k, v, cot): the forward, or the gradients of <out, cot> wrt q, k, v."""
    if mode == "fwd":
        return lambda q, k, v, cot: attention(q, k, v)
    return jax.grad(lambda q, k, v, cot: jnp.sum(attention(q, k, v).astype(jnp.float32) * cot),
                    argnums=(0, 1, 2))


def attention_speed(sizes, emit) -> bool:
    """Emits the part-b table; False if jaxattn itself failed somewhere."""
    b, n, h = sizes.attention_bnh
    emit(f"B {b}, T=S as listed, N {n}, H {h}, bfloat16; each function jitted and compiled, "
         f"then all timed round-robin, median of {sizes.attention_repeats} runs in ms; "
         "(x) = that time / jaxattn's time (> 1: jaxattn is faster). jaxattn is "
         "`dot_product_attention(q, k, v, mask)` with the auto implementation (a causal "
         "`mask` array); jax.nn gets `is_causal=True` instead.")
    emit("")
    names = list(_attention_fns(8, False))
    emit("| T=S | mask | pass | " + " | ".join(names) + " | best peer / jaxattn |")
    emit("|---:|---|---|" + "---:|" * (len(names) + 1))
    passed = True
    for length in sizes.attention_lengths:
        keys = jax.random.split(jax.random.key(0), 4)
        q, k, v = (jax.random.normal(r, (b, length, n, h), jnp.bfloat16) for r in keys[:3])
        cot = jax.random.normal(keys[3], (b, length, n, h), jnp.float32)
        args = (q, k, v, cot)
        for causal in (False, True):
            fns = _attention_fns(length, causal)
            for mode in ("fwd", "fwd+bwd"):
                cells, times = {}, {}
                for name, fn in fns.items():
                    if isinstance(fn, str):
                        cells[name] = fn
                        continue
                    try:
                        compiled = jax.jit(_pass(fn, mode)).lower(*args).compile()
                        jax.block_until_ready(compiled(*args))  # warm up
                    except Exception as e:  # noqa: BLE001 -- report, time the others
                        cells[name] = f"failed: {_short(e)}"
                        continue
                    times[name] = (compiled, [])
                passed &= "jaxattn" in times
                for _ in range(sizes.attention_repeats):  # round-robin: drift hits all alike
                    for compiled, ts in times.values():
                        start = time.perf_counter()
                        jax.block_until_ready(compiled(*args))
                        ts.append(time.perf_counter() - start)
                ms = {name: _median_ms(ts) for name, (_, ts) in times.items()}
                base = ms.get("jaxattn")
                for name, value in ms.items():
                    ratio = f" ({value / base:.2f}x)" if base and name != "jaxattn" else ""
                    cells[name] = f"{value:.3f}{ratio}"
                peers = [value for name, value in ms.items() if name != "jaxattn"]
                best = f"{min(peers) / base:.2f}x" if base and peers else "n/a"
                emit(f"| {length} | {'causal' if causal else 'none'} | {mode} | "
                     + " | ".join(cells[name] for name in names) + f" | {best} |")
    return passed


# --- c. train step -----------------------------------------------------------------------


def _packed_batch(rows: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A packed batch with the trainer's keys: pairs of 8..length/4 tokens, rows filled in turn."""
    rng = np.random.default_rng(seed)
    batch = {f"{side}{suffix}": np.zeros((rows, length), np.int32)  # [B, L]
             for side in ("inputs", "targets") for suffix in ("", "_segmentation", "_positions")}
    for r in range(rows):
        used, segment = [0, 0], 0
        while True:
            sizes = rng.integers(8, max(9, length // 4), size=2)
            if used[0] + sizes[0] > length or used[1] + sizes[1] > length:
                break
            segment += 1
            for s, side in enumerate(("inputs", "targets")):
                ids = rng.integers(4, vocab, size=sizes[s])
                ids[-1] = 3  # eos
                span = slice(used[s], used[s] + sizes[s])
                batch[side][r, span] = ids
                batch[f"{side}_segmentation"][r, span] = segment
                batch[f"{side}_positions"][r, span] = np.arange(sizes[s])
                used[s] += sizes[s]
    return batch


def _time_steps(compiled, state, batch, rng, steps: int, repeats: int):
    state, metrics = compiled(state, batch, rng)  # warm up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times), state


def _jaxattn_step(sizes, batch, implementation=None, abstract=False):
    """(jitted train step, state, device batch, config): the trainer's, base config.

    With `abstract`, the state is only its shapes (enough to lower the step).
    """
    from train import build, sharding, steps  # noqa: PLC0415
    from train.configs import transformer_base_wmt14  # noqa: PLC0415

    config = transformer_base_wmt14.get_config()
    config.compute_dtype = "bfloat16"
    config.model.update(sizes.train_model)
    config.model.attention_implementation = implementation
    built = build.build(config, parallel=sharding.MeshParallel(jax.devices()[:1]))
    built = built.with_vocab_size(sizes.train_vocab)
    parallel = built.parallel
    init_fn = functools.partial(steps.init_state, model=built.model, tx=built.optimizer,
                                input_shape=(1, 8), target_shape=(1, 8))
    make = parallel.abstract_state if abstract else parallel.create_state
    state = make(init_fn, jax.random.key(0))
    step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=built.model, label_smoothing=config.label_smoothing,
        learning_rate_fn=built.schedule))
    return step, state, parallel.put_batch(batch), config


def _load_peer_models(path: str):
    """The Flax WMT example's models.py, imported by path (its train.py needs TF and clu)."""
    file = os.path.join(path, "models.py")
    spec = importlib.util.spec_from_file_location("flax_wmt_models", file)
    if spec is None or not os.path.isfile(file):
        raise FileNotFoundError(f"--flax_wmt: no models.py in {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peer_step(path: str, config, vocab: int, batch):
    """The Flax WMT model at our model's sizes, trained by the example's kind of step.

    As the example's `train_step`: label-smoothed cross-entropy over non-pad targets,
    packed-batch keys passed to the model, AdamW(0.9, 0.98, 1e-9), accuracy metric;
    jitted with a donated state on one device (the example pmaps it).
    """
    import optax  # noqa: PLC0415
    from flax.training import train_state  # noqa: PLC0415

    models = _load_peer_models(path)
    m = config.model
    peer = models.TransformerConfig(
        vocab_size=vocab, output_vocab_size=vocab, share_embeddings=True,
        logits_via_embedding=True, dtype=jnp.bfloat16, emb_dim=m.emb_dim, num_heads=m.num_heads,
        num_layers=m.num_encoder_layers, qkv_dim=m.emb_dim, mlp_dim=m.mlp_dim,
        max_len=max(256, batch["inputs"].shape[1]), dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate, deterministic=False)
    module = models.Transformer(peer)
    ones = jnp.ones((1, 8), jnp.int32)
    params = jax.jit(models.Transformer(peer.replace(deterministic=True)).init)(
        jax.random.key(0), ones, ones)["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 2e-3, 1000, 100_000),
                     b1=0.9, b2=0.98, eps=1e-9, weight_decay=0.0)
    state = train_state.TrainState.create(apply_fn=module.apply, params=params, tx=tx)
    smoothing = config.label_smoothing

    def step(state, batch, rng):
        targets = batch["targets"]                                         # [B, T]
        weights = (targets > 0).astype(jnp.float32)                        # [B, T]

        def loss_fn(params):
            logits = module.apply(
                {"params": params}, batch["inputs"], targets,
                inputs_positions=batch["inputs_positions"],
                targets_positions=batch["targets_positions"],
                inputs_segmentation=batch["inputs_segmentation"],
                targets_segmentation=batch["targets_segmentation"],
                rngs={"dropout": jax.random.fold_in(rng, state.step)})   # [B, T, V]
            labels = optax.smooth_labels(jax.nn.one_hot(targets, vocab), smoothing)
            loss = optax.softmax_cross_entropy(logits, labels)            # [B, T]
            return jnp.sum(loss * weights) / jnp.sum(weights), logits

        (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights)
        return state.apply_gradients(grads=grads), {"loss": loss, "accuracy": accuracy}

    device = jax.devices()[0]
    return (jax.jit(step, donate_argnums=(0,)), jax.device_put(state, device),
            jax.device_put(batch, device))


def train_step_speed(sizes, emit, flax_wmt: str, peak_tflops: float | None) -> bool:
    from jaxattn.models import count_params  # noqa: PLC0415

    rows, length = sizes.train_batch
    batch = _packed_batch(rows, length, sizes.train_vocab)
    tokens = int(np.sum(batch["inputs"] != 0) + np.sum(batch["targets"] != 0))
    step, state, device_batch, config = _jaxattn_step(sizes, batch)
    rng = jax.random.key(1)
    # Model FLOPs: XLA's count of our step lowered with XLA attention (FLOPs inside a
    # cuDNN custom call are not counted), the same figure for both rows.
    xla_step, xla_state, _, _ = _jaxattn_step(sizes, batch, implementation="xla", abstract=True)
    flops = float(xla_step.lower(xla_state, device_batch, rng).cost_analysis()["flops"])
    kind = jax.devices()[0].device_kind
    peak = 1e12 * peak_tflops if peak_tflops else peak_flops(kind)
    emit(f"Base Transformer (D {config.model.emb_dim}, {config.model.num_encoder_layers}+"
         f"{config.model.num_decoder_layers} layers, F {config.model.mlp_dim}, V "
         f"{sizes.train_vocab}, dropout {config.model.dropout_rate}), bf16 compute, float32 "
         f"params, one device; packed batch {rows} x {length} per side ({tokens} non-pad source "
         f"+ target tokens); median of {sizes.train_repeats} x {sizes.train_steps} steps. "
         f"Model FLOP/step {flops / 1e9:.4g} G (XLA's count of our step lowered with XLA "
         "attention, whose FLOPs a cuDNN custom call would hide; used for both rows); "
         + (f"MFU against {peak / 1e12:.4g} TFLOP/s bf16 ({kind})." if peak else
            f"MFU n/a: no bf16 peak for {kind!r} (pass --peak_tflops).")
         + " Flax WMT row: the example's models.py (pre-LN, its own attention) at the same "
         "sizes and batch, trained by the example's kind of step written here (its train.py "
         "imports TensorFlow and clu): label-smoothed cross-entropy, AdamW, jit with a "
         "donated state. The losses are defined differently (ours subtracts the entropy of "
         "the smoothed labels).")
    emit("")
    emit("| step | params | step ms | tokens/s | MFU | last loss (own definition) |")
    emit("|---|---:|---:|---:|---:|---:|")

    def row(name, compiled, state, device_batch):
        compiled = compiled.lower(state, device_batch, rng).compile()
        params = count_params(state.params)
        seconds, state = _time_steps(compiled, state, device_batch, rng, sizes.train_steps,
                                     sizes.train_repeats)
        _, metrics = compiled(state, device_batch, rng)
        loss = metrics["loss"] if "loss" in metrics else (
            metrics["loss_sum"] / jnp.maximum(metrics["weight_sum"], 1.0))
        mfu = f"{100 * flops / seconds / peak:.1f}%" if peak else "n/a"
        emit(f"| {name} | {params / 1e6:.3g}M | {1e3 * seconds:.1f} | {tokens / seconds:,.0f} | "
             f"{mfu} | {float(loss):.3f} |")

    row("jaxattn (train.steps.train_step)", step, state, device_batch)
    if not flax_wmt:
        emit("| Flax WMT example (models.py) | not run (no --flax_wmt) | | | | |")
        return True
    try:
        peer = _peer_step(flax_wmt, config, sizes.train_vocab, batch)
        row("Flax WMT example (models.py)", *peer)
    except Exception as e:  # noqa: BLE001 -- our row stands; say why the peer's is missing
        emit(f"| Flax WMT example (models.py) | failed: {_short(e)} | | | | |")
        return False
    return True


# --- d. decoding -------------------------------------------------------------------------


def decode_speed(sizes, emit) -> bool:
    from jaxattn.decoding import beam_search, greedy_decode  # noqa: PLC0415
    from jaxattn.models import TransformerConfig, build_model, count_params  # noqa: PLC0415

    rows, source_len, length = sizes.decode_batch
    preset = {"base": TransformerConfig.base, "tiny": TransformerConfig.tiny}[sizes.decode_model]
    config = preset(sizes.decode_vocab, max_len=max(length, source_len), dropout_rate=0.0,
                    dtype=jnp.bfloat16)
    model = build_model(config)
    inputs = jax.random.randint(jax.random.key(0), (rows, source_len), 4, config.vocab_size,
                                jnp.int32)  # [B, S]
    variables = jax.jit(model.init)(jax.random.key(1), inputs, inputs)
    emit(f"`TransformerConfig.{sizes.decode_model}({sizes.decode_vocab})` (D {config.emb_dim}, "
         f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, "
         f"{count_params(variables['params']) / 1e6:.3g}M params), bf16 compute, random "
         f"weights, {rows} sentences of {source_len} source tokens, cached (KV cache) "
         f"decoding of exactly {length} tokens each (`eos_id=-1`); tokens/s counts returned "
         f"tokens (beam: the best hypothesis), median of {sizes.decode_repeats} runs after "
         "a compile run.")
    emit("")
    emit("| search | ms per batch | tokens/s |")
    emit("|---|---:|---:|")
    runs = {
        "greedy": lambda: greedy_decode(model, variables, inputs, max_len=length, eos_id=-1),
        "beam-4": lambda: beam_search(model, variables, inputs, max_len=length, beam_size=4,
                                      eos_id=-1),
    }
    for name, run in runs.items():
        jax.block_until_ready(run())  # compile
        times = []
        for _ in range(sizes.decode_repeats):
            start = time.perf_counter()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        emit(f"| {name} | {1e3 * seconds:.1f} | {rows * length / seconds:,.0f} |")
    return True
