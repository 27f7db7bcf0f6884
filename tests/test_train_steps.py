"""Loss, schedules, optimizer and the train/eval steps under jit (Mesh) and pmap."""

import dataclasses
import functools

import chex
import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from model_params import numpy_init, toy_batch

from jaxattn import BOS_ID, EOS_ID, PAD_ID
from jaxattn.models import Transformer, TransformerConfig
from train import losses, optim, sharding, steps
from train.configs import base
from train.data import PackBatchIterDataset


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    """What the steps read from a model's config: its special ids."""

    pad_id: int = PAD_ID
    bos_id: int = BOS_ID


class TinySeq2Seq(nn.Module):
    """A throwaway model with the trainer's interface: bag-of-source + previous target token."""

    config: TinyConfig = TinyConfig()
    vocab: int = 11
    dim: int = 8
    dropout_rate: float = 0.0
    report_step: bool = False  # sow the step it was given, as the RNN sows its sampling probability

    @nn.compact
    def __call__(self, inputs, targets, *, train: bool = False, step=None):
        if self.report_step and step is not None:
            self.sow("metrics", "step_seen", jnp.asarray(step, jnp.float32))
        embed = nn.Embed(self.vocab, self.dim)
        source = jnp.mean(embed(inputs), axis=1, keepdims=True)                     # [B, 1, D]
        prev = jnp.concatenate([jnp.full_like(targets[:, :1], self.config.bos_id), targets[:, :-1]],
                               1)                                                   # [B, T]
        h = jnp.tanh(nn.Dense(self.dim)(embed(prev) + source))                      # [B, T, D]
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return nn.Dense(self.vocab)(h).astype(jnp.float32)                          # [B, T, V]


def _config(**overrides) -> ml_collections.ConfigDict:
    config = base.get_base_config()
    config.warmup_steps = 2
    config.learning_rate = 1e-2
    config.num_train_steps = 10
    config.update(overrides)
    return config


def _batch(rng: np.random.Generator, b: int = 8, s: int = 5, t: int = 7, vocab: int = 11):
    inputs = rng.integers(4, vocab, size=(b, s)).astype(np.int32)                   # [B, S]
    targets = rng.integers(4, vocab, size=(b, t)).astype(np.int32)                  # [B, T]
    # Ragged lengths: padding differs per row (and so per device shard).
    for row in range(b):
        cut = 1 + (row * 3) % t
        targets[row, cut:] = PAD_ID
        targets[row, cut - 1] = EOS_ID
    return {"inputs": inputs, "targets": targets}


# -- loss -------------------------------------------------------------------------------


def test_cross_entropy_hand_computed():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))        # [1, 2, 3]
    targets = jnp.array([[PAD_ID, 1]])                                            # first is pad
    sums = losses.cross_entropy_sums(logits, jnp.array([[1, PAD_ID]]), 0.0, pad_id=PAD_ID)
    np.testing.assert_allclose(sums["nll_sum"], -np.log(0.25), rtol=1e-6)
    assert float(sums["weight_sum"]) == 1.0
    assert float(sums["correct_sum"]) == 0.0
    sums = losses.cross_entropy_sums(logits, targets, 0.0, pad_id=PAD_ID)
    np.testing.assert_allclose(sums["nll_sum"], np.log(3.0), rtol=1e-6)


def test_label_smoothing_matches_explicit_kl():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)                 # [B, T, V]
    targets = jnp.asarray(rng.integers(1, 7, size=(3, 5)))
    targets = targets.at[0, 3:].set(PAD_ID)
    eps, vocab = 0.1, 7
    q = jax.nn.one_hot(targets, vocab) * (1 - eps) + (1 - jax.nn.one_hot(targets, vocab)) * eps / (vocab - 1)
    kl = jnp.sum(q * (jnp.log(q) - jax.nn.log_softmax(logits)), -1)                # [B, T]
    expected = jnp.sum(kl * (targets != PAD_ID))
    sums = losses.cross_entropy_sums(logits, targets, eps, pad_id=PAD_ID)
    np.testing.assert_allclose(sums["loss_sum"], expected, rtol=1e-5)
    # The optimum of the smoothed loss is the smoothed distribution, at loss 0.
    sums = losses.cross_entropy_sums(jnp.log(q), targets, eps, pad_id=PAD_ID)
    np.testing.assert_allclose(sums["loss_sum"], 0.0, atol=1e-5)


def test_cross_entropy_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits"):
        losses.cross_entropy_sums(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), jnp.int32), pad_id=PAD_ID)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.cross_entropy_sums(jnp.zeros((2, 3, 5)), jnp.zeros((2, 3), jnp.int32), 1.0, pad_id=PAD_ID)


def test_steps_take_the_pad_id_from_the_model_config():
    batch = _batch(np.random.default_rng(0))
    moved = {k: np.where(v == PAD_ID, 9, np.where(v == 9, 4, v)) for k, v in batch.items()}  # pad 9
    sums = {}
    for name, model, b in (("pad 0", TinySeq2Seq(), batch),
                           ("pad 9", TinySeq2Seq(config=TinyConfig(pad_id=9)), moved)):
        params = steps.init_state(jax.random.PRNGKey(0), model=model, tx=optim.make_optimizer(_config()),
                                  input_shape=(1, 5), target_shape=(1, 7)).params
        eval_step = functools.partial(steps.eval_step, model=model, label_smoothing=0.0)
        sums[name] = jax.jit(eval_step)(params, b)
    real = float(np.sum(batch["targets"] != PAD_ID))
    assert real < batch["targets"].size  # the batch has padding to leave out
    for s in sums.values():
        assert float(s["weight_sum"]) == real and float(s["tokens"]) == real + batch["inputs"].size


# -- schedules and optimizer ------------------------------------------------------------


def test_noam_peaks_at_warmup_then_decays_as_rsqrt():
    schedule = optim.make_schedule(_config(schedule="noam", learning_rate=7e-4, warmup_steps=4000))
    lr = np.array([schedule(s) for s in (0, 1999, 3999, 15999)])
    np.testing.assert_allclose(lr[2], 7e-4, rtol=1e-6)
    np.testing.assert_allclose(lr[1], 7e-4 * 2000 / 4000, rtol=1e-6)
    np.testing.assert_allclose(lr[3], 7e-4 * 0.5, rtol=1e-6)  # sqrt(4000 / 16000)
    # Vaswani et al. eq. 3 with d = 512 at step 16000.
    np.testing.assert_allclose(lr[3], 512**-0.5 * 16000**-0.5, rtol=2e-3)


def test_cosine_and_unknown_schedule():
    schedule = optim.make_schedule(_config(schedule="cosine", warmup_steps=2, num_train_steps=10))
    np.testing.assert_allclose(schedule(2), 1e-2, rtol=1e-6)
    assert float(schedule(10)) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="config.schedule"):
        optim.make_schedule(_config(schedule="linear-ish"))


@pytest.mark.parametrize("kind", ["linear", "inverse_sigmoid"])
def test_sampling_schedules_rise_to_max(kind):
    config = _config()
    config.scheduled_sampling.kind = kind
    config.scheduled_sampling.ramp_steps = 100
    config.scheduled_sampling.k = 10.0
    schedule = optim.make_sampling_schedule(config)
    values = np.array([schedule(s) for s in (0, 50, 100, 10_000)])
    assert values[0] < 0.1 * config.scheduled_sampling.max_probability
    assert np.all(np.diff(values) >= 0)
    np.testing.assert_allclose(values[-1], config.scheduled_sampling.max_probability, rtol=1e-5)


def test_gradient_accumulation_equals_one_big_batch():
    model = TinySeq2Seq()
    rng = np.random.default_rng(1)
    batch = _batch(rng)
    batch["targets"][:, :] = np.where(batch["targets"] != PAD_ID, batch["targets"], 5)  # equal counts
    init = functools.partial(steps.init_state, model=model, input_shape=(1, 5), target_shape=(1, 7))

    def run(config, batches):
        state = init(jax.random.PRNGKey(0), tx=optim.make_optimizer(config))
        step = jax.jit(functools.partial(steps.train_step, model=model, label_smoothing=0.0,
                                         learning_rate_fn=optim.make_schedule(config),
                                         grad_accum_steps=config.grad_accum_steps))
        for b in batches:
            state, _ = step(state, b, jax.random.PRNGKey(1))
        return state.params

    halves = [jax.tree.map(lambda x: x[:4], batch), jax.tree.map(lambda x: x[4:], batch)]
    big = run(_config(grad_clip_norm=0.0), [batch])
    accumulated = run(_config(grad_clip_norm=0.0, grad_accum_steps=2), halves)
    chex.assert_trees_all_close(big, accumulated, atol=1e-6)


# -- steps under jit and pmap -----------------------------------------------------------


def _train(parallel, batches, *, dropout_rate=0.0, steps_to_run=3):
    config = _config()
    model = TinySeq2Seq(dropout_rate=dropout_rate)
    tx = optim.make_optimizer(config)
    init_fn = functools.partial(steps.init_state, model=model, tx=tx, input_shape=(1, 5), target_shape=(1, 7))
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    train_step = parallel.compile_train_step(
        functools.partial(steps.train_step, model=model, label_smoothing=0.1,
                          learning_rate_fn=optim.make_schedule(config)))
    rng = parallel.put_rng(jax.random.PRNGKey(1))
    history = []
    for batch in batches[:steps_to_run]:
        state, metrics = train_step(state, parallel.put_batch(batch), rng)
        history.append(parallel.fetch(metrics))
    eval_fn = parallel.compile_eval_step(functools.partial(steps.eval_step, model=model, label_smoothing=0.1))
    eval_sums = parallel.fetch(eval_fn(state.params, parallel.put_batch(batches[0])))
    return jax.device_get(parallel.host_state(state)), history, eval_sums


def test_mesh_and_pmap_on_8_devices_match_one_device():
    assert jax.device_count() == 8, "tests/conftest.py provides 8 fake CPU devices"
    rng = np.random.default_rng(0)
    batches = [_batch(rng) for _ in range(3)]
    single, single_hist, single_eval = _train(sharding.MeshParallel(jax.devices()[:1]), batches)
    for parallel in (sharding.MeshParallel(), sharding.PmapParallel()):
        assert parallel.num_devices == 8
        state, hist, eval_sums = _train(parallel, batches)
        assert int(state.step) == 3
        chex.assert_trees_all_close(state.params, single.params, atol=1e-5, rtol=1e-5)
        chex.assert_trees_all_close(state.opt_state, single.opt_state, atol=1e-5, rtol=1e-5)
        for a, b in zip(hist, single_hist):
            np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=1e-5)
            assert float(a["weight_sum"]) == float(b["weight_sum"])
            assert float(a["tokens"]) == float(b["tokens"])
        chex.assert_trees_all_close(eval_sums, single_eval, rtol=1e-5)


def test_train_step_learns_and_uses_dropout_rng_per_step():
    rng = np.random.default_rng(0)
    batch = _batch(rng)
    parallel = sharding.MeshParallel(jax.devices()[:1])
    _, hist, _ = _train(parallel, [batch] * 10, steps_to_run=10)
    assert hist[-1]["loss_sum"] < hist[0]["loss_sum"]
    assert all(h["finite"] == 1.0 for h in hist)
    # Same seed and step -> same dropout masks; the run is reproducible.
    a, _, _ = _train(parallel, [batch] * 2, dropout_rate=0.5, steps_to_run=2)
    b, _, _ = _train(parallel, [batch] * 2, dropout_rate=0.5, steps_to_run=2)
    chex.assert_trees_all_equal(a.params, b.params)


@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_what_the_model_reports_comes_back_as_is(strategy):
    # Sown scalars are returned after the all-reduce: on 8 devices, not 8 times the value.
    parallel = sharding.PARALLEL[strategy]()
    assert parallel.num_devices == 8
    config = _config()
    model = TinySeq2Seq(report_step=True)
    init_fn = functools.partial(steps.init_state, model=model, tx=optim.make_optimizer(config),
                                input_shape=(1, 5), target_shape=(1, 7))
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    train_step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=model, label_smoothing=0.0, learning_rate_fn=optim.make_schedule(config)))
    batch = parallel.put_batch(_batch(np.random.default_rng(0)))
    rng = parallel.put_rng(jax.random.PRNGKey(1))
    for step in range(3):
        state, metrics = train_step(state, batch, rng)
        assert parallel.fetch(metrics["reported"]) == {"step_seen": float(step)}
    silent = TinySeq2Seq()  # a model that reports nothing
    state = steps.init_state(jax.random.PRNGKey(0), model=silent, tx=optim.make_optimizer(config),
                             input_shape=(1, 5), target_shape=(1, 7))
    _, metrics = jax.jit(functools.partial(
        steps.train_step, model=silent, label_smoothing=0.0, learning_rate_fn=optim.make_schedule(config)))(
        state, _batch(np.random.default_rng(0)), jax.random.PRNGKey(1))
    assert metrics["reported"] == {}


def test_steps_feed_packed_batches_to_the_model_as_is():
    # The pipeline's packed keys are the model's arguments: the packed rows score as the pairs apart.
    inputs, targets = map(np.asarray, toy_batch())                                  # [3, 7], [3, 5]
    model = Transformer(TransformerConfig(vocab_size=13, emb_dim=16, num_heads=4, mlp_dim=24,
                                          num_encoder_layers=1, num_decoder_layers=1, max_len=32,
                                          dropout_rate=0.0))
    params = numpy_init(model, inputs, targets)["params"]
    pairs = [{"inputs": i[i != PAD_ID], "targets": t[t != PAD_ID]} for i, t in zip(inputs, targets)]
    chunks = grain.MapDataset.source([pairs]).to_iter_dataset()
    packed = list(PackBatchIterDataset(chunks, length=12, rows=2, pool_size=3, seed=0))
    assert len(packed) == 1 and "inputs_positions" in packed[0]
    eval_step = jax.jit(functools.partial(steps.eval_step, model=model, label_smoothing=0.1))
    apart, together = eval_step(params, {"inputs": inputs, "targets": targets}), eval_step(params, packed[0])
    assert float(together["weight_sum"]) == float(apart["weight_sum"])
    np.testing.assert_allclose(together["loss_sum"], apart["loss_sum"], rtol=1e-5)
    unpacked = {k: v for k, v in packed[0].items() if k in ("inputs", "targets")}
    assert not np.allclose(eval_step(params, unpacked)["loss_sum"], apart["loss_sum"], rtol=1e-3)


def test_train_step_compiles_once_per_shape():
    config = _config()
    model = TinySeq2Seq()
    tx = optim.make_optimizer(config)
    state = steps.init_state(jax.random.PRNGKey(0), model=model, tx=tx, input_shape=(1, 5), target_shape=(1, 7))
    @chex.assert_max_traces(n=1)
    def traced(state, batch, rng):
        return steps.train_step(state, batch, rng, model=model, label_smoothing=0.0,
                                learning_rate_fn=optim.make_schedule(config))

    step = jax.jit(traced, donate_argnums=(0,))
    batch = _batch(np.random.default_rng(0))
    for i in range(3):
        state, metrics = step(state, batch, jax.random.PRNGKey(0))
    assert int(state.step) == 3
    assert float(metrics["learning_rate"]) == pytest.approx(float(optim.make_schedule(config)(2)))


def test_non_finite_loss_is_flagged():
    config = _config(learning_rate=1e-2)
    model = TinySeq2Seq()
    tx = optim.make_optimizer(config)
    state = steps.init_state(jax.random.PRNGKey(0), model=model, tx=tx, input_shape=(1, 5), target_shape=(1, 7))
    state = state.replace(params=jax.tree.map(lambda x: x * jnp.nan, state.params))
    _, metrics = jax.jit(functools.partial(steps.train_step, model=model, label_smoothing=0.0,
                                           learning_rate_fn=optim.make_schedule(config)))(
        state, _batch(np.random.default_rng(0)), jax.random.PRNGKey(0))
    assert float(metrics["finite"]) == 0.0


def test_summarize_turns_sums_into_means():
    out = steps.summarize({"loss_sum": 6.0, "nll_sum": 4.0, "correct_sum": 1.0, "weight_sum": 2.0}, "x")
    assert out == pytest.approx({"x/loss": 3.0, "x/nll": 2.0, "x/perplexity": np.exp(2.0), "x/accuracy": 0.5})



@pytest.mark.parametrize("strategy", ["jit", "pmap"])
def test_state_is_donated_except_on_cpu(strategy):
    # XLA:CPU copies donated parameters before updating them (see train.sharding).
    class Accelerator:
        platform = "gpu"

    assert sharding._donated_state(Accelerator()) == (0,)
    parallel = sharding.PARALLEL[strategy]()
    model = TinySeq2Seq()
    config = _config()
    init_fn = functools.partial(steps.init_state, model=model, tx=optim.make_optimizer(config),
                                input_shape=(1, 5), target_shape=(1, 7))
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    train_step = parallel.compile_train_step(functools.partial(
        steps.train_step, model=model, label_smoothing=0.1, learning_rate_fn=optim.make_schedule(config)))
    new_state, _ = train_step(state, parallel.put_batch(_batch(np.random.default_rng(0))),
                              parallel.put_rng(jax.random.PRNGKey(1)))
    assert int(jax.device_get(parallel.host_state(new_state)).step) == 1
    assert not any(x.is_deleted() for x in jax.tree.leaves(state))  # the old state is still readable
