"""RNN encoder-decoder family: shapes, causality, padding, cached steps, scheduled
sampling, bf16, overfitting, errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_params import fit, numpy_init, toy_batch

from jaxattn import LUONG_SCORES
from jaxattn.models import ATTENTIONS, RNNConfig, build_model

V = 13
VARIANTS = {
    "none-lstm-bi": dict(attention="none", cell="lstm", bidirectional=True),
    "bahdanau-gru-bi": dict(attention="bahdanau", cell="gru", bidirectional=True),
    "luong-dot-lstm": dict(attention="luong", score="dot", cell="lstm", bidirectional=False,
                           num_layers=2),
    "luong-general-gru-bi": dict(attention="luong", score="general", cell="gru"),
    "luong-concat-gru-bi": dict(attention="luong", score="concat", cell="gru",
                                decoder_hidden_size=24),
    # W_a covers 12 source positions: the toy batch's 7, and 11 once padded by 4.
    "luong-location-gru": dict(attention="luong", score="location", cell="gru", bidirectional=False,
                               max_source_length=12),
}
# Variants every property test runs on (each adds compile time); the overfit test
# covers the remaining one.
PROPERTY_VARIANTS = ["none-lstm-bi", "bahdanau-gru-bi", "luong-dot-lstm", "luong-concat-gru-bi",
                     "luong-location-gru"]


def _config(name, **overrides):
    fields = dict(embed_dim=16, hidden_size=16, attention_dim=20, dropout_rate=0.0)
    return RNNConfig(vocab_size=V, **{**fields, **VARIANTS[name], **overrides})


class Jitted:
    """One compiled function per method and shape, shared by the tests of a variant."""

    def __init__(self, model):
        self.forward = jax.jit(model.apply)
        self.encode = jax.jit(lambda v, x: model.apply(v, x, method="encode"))
        self.step = jax.jit(lambda v, m, s, tok, i: model.apply(v, m, s, tok, i,
                                                                method="decode_step"))


@pytest.fixture(scope="module", params=PROPERTY_VARIANTS)
def setup(request):
    config = _config(request.param)
    model = build_model(config)
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    return config, model, variables, Jitted(model)


def test_shapes_and_alignment(setup):
    config, model, variables, jitted = setup
    inputs, targets = toy_batch()
    logits = jitted.forward(variables, inputs, targets)
    chex.assert_shape(logits, (3, 5, V))
    chex.assert_type(logits, jnp.float32)
    capture = build_model(config.replace(capture_attention=True))
    _, state = jax.jit(functools.partial(capture.apply, mutable=["intermediates"]))(
        variables, inputs, targets)
    if config.attention == "none":
        assert "intermediates" not in state or not state["intermediates"]
        assert capture.attention_map(state.get("intermediates", {})) is None
        return
    (alignment,) = state["intermediates"]["alignment"]
    chex.assert_shape(alignment, (3, 5, 7))
    # What a heatmap shows: the alignments as one head.
    np.testing.assert_array_equal(capture.attention_map(state["intermediates"]), alignment[:, None])
    valid = np.asarray(inputs != 0)
    np.testing.assert_allclose(alignment.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.asarray(alignment)[~np.broadcast_to(valid[:, None, :], alignment.shape)] == 0)
    # The default path sows nothing.
    _, state = jax.eval_shape(functools.partial(model.apply, mutable=["intermediates"]),
                              variables, inputs, targets)
    assert not state.get("intermediates")


def test_decoder_is_causal(setup):
    _, _, variables, jitted = setup
    inputs, targets = toy_batch()
    changed = targets.at[:, 3:].set(11)
    a = jitted.forward(variables, inputs, targets)
    b = jitted.forward(variables, inputs, changed)
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)  # position 3 reads targets[2]
    assert not np.allclose(a[:, 4], b[:, 4])


def test_extra_source_padding_changes_nothing(setup):
    _, _, variables, jitted = setup
    inputs, targets = toy_batch()
    padded = jnp.pad(inputs, ((0, 0), (0, 4)))
    np.testing.assert_allclose(jitted.forward(variables, padded, targets),
                               jitted.forward(variables, inputs, targets), atol=1e-5)


def test_decode_step_matches_teacher_forcing(setup):
    _, model, variables, jitted = setup
    inputs, targets = toy_batch()
    full = jitted.forward(variables, inputs, targets)
    encoded = jitted.encode(variables, inputs)
    memory, state = model.apply(variables, encoded, 5, method="init_cache")
    previous = jnp.full((3,), 2, jnp.int32)
    for t in range(5):
        logits, state = jitted.step(variables, memory, state, previous, jnp.int32(t))
        chex.assert_shape(logits, (3, V))
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
        previous = targets[:, t]


def test_scheduled_sampling(setup):
    _, model, variables, jitted = setup
    inputs, targets = toy_batch()
    forced = jitted.forward(variables, inputs, targets)
    apply = jax.jit(lambda p, rng: model.apply(variables, inputs, targets, sampling_prob=p,
                                               rngs={"sampling": rng}))
    zero = apply(0.0, jax.random.key(1))
    np.testing.assert_allclose(zero, forced, atol=1e-6)
    one = apply(1.0, jax.random.key(1))  # same compiled function: p is traced
    np.testing.assert_allclose(one[:, 0], forced[:, 0], atol=1e-6)  # step 0 always reads <sos>
    assert not np.allclose(one, forced, atol=1e-3)
    assert apply._cache_size() == 1


def test_sampling_schedule_takes_the_step_in_training():
    model = build_model(_config("bahdanau-gru-bi"))
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    rngs = {"dropout": jax.random.key(0), "sampling": jax.random.key(1)}
    scheduled = model.clone(sampling_schedule=lambda step: jnp.minimum(step / 10, 1.0))
    apply = jax.jit(lambda m, train, **kw: m.apply(variables, inputs, targets, train=train,
                                                   rngs=rngs, mutable=["metrics"], **kw),
                    static_argnums=(0, 1))
    for step in (0, 4, 10):  # the schedule's probability, as if passed by hand
        logits, state = apply(scheduled, True, step=step)
        expected, by_hand = apply(model, True, sampling_prob=min(step / 10, 1.0))
        np.testing.assert_allclose(logits, expected, atol=1e-6)
        np.testing.assert_allclose(state["metrics"]["sampling_probability"], [min(step / 10, 1.0)])
        np.testing.assert_array_equal(by_hand["metrics"]["sampling_probability"],
                                      state["metrics"]["sampling_probability"])
    # Teacher forcing outside training or without a step: nothing sampled, nothing reported.
    forced, _ = apply(model, True)
    assert not np.allclose(logits, forced, atol=1e-3)  # step 10: p = 1, every token sampled
    for train, kw in ((False, dict(step=10)), (True, {})):
        logits, state = apply(scheduled, train, **kw)
        np.testing.assert_allclose(logits, forced, atol=1e-6)
        assert not state.get("metrics")


def test_real_init_and_bf16_compute_is_finite():
    config = _config("bahdanau-gru-bi", dtype=jnp.bfloat16)
    model = build_model(config)
    inputs, targets = toy_batch()
    variables = jax.jit(model.init)(jax.random.key(0), inputs, targets)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    logits = jax.jit(model.apply)(variables, inputs, targets)
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def _overfit(model, steps, lr=3e-2):
    inputs, targets = toy_batch()
    _, losses = fit(model, numpy_init(model, inputs, targets), inputs, targets, steps=steps, lr=lr)
    return float(losses[0]), float(losses[-1])


@pytest.mark.parametrize("name", ["none-lstm-bi", "bahdanau-gru-bi", "luong-general-gru-bi"])
def test_overfits_tiny_batch(name):
    first, last = _overfit(build_model(_config(name)), steps=120)
    assert first > 2.0
    assert last < 0.05, (first, last)


def test_packed_batches_are_rejected(setup):
    _, model, variables, _ = setup
    inputs, targets = toy_batch()
    with pytest.raises(TypeError, match="inputs_segmentation"):  # no such argument
        model.apply(variables, inputs, targets, inputs_segmentation=jnp.ones_like(inputs))


@pytest.mark.parametrize("field, value, match", [
    ("cell", "rnn", "RNNConfig.cell"),
    ("max_source_length", 0, "RNNConfig.max_source_length"),
    ("attention", "local", "RNNConfig.attention"),
    ("score", "bilinear", "RNNConfig.score"),
    ("hidden_size", 0, "RNNConfig.hidden_size"),
    ("dropout_rate", 1.0, "RNNConfig.dropout_rate"),
    ("bos_id", 99, "RNNConfig.bos_id"),
])
def test_bad_config_raises(field, value, match):
    with pytest.raises(ValueError, match=match):
        RNNConfig(vocab_size=V, **{field: value})


def test_dot_score_needs_matching_sizes():
    with pytest.raises(ValueError, match="decoder_hidden_size"):
        RNNConfig(vocab_size=V, attention="luong", score="dot", hidden_size=8,
                  decoder_hidden_size=12)


def test_config_names_are_the_registry_keys():
    assert set(ATTENTIONS) == {"none", "bahdanau", "luong"}
    for attention in ATTENTIONS:
        assert RNNConfig(vocab_size=V, attention=attention).attention == attention
    for score in LUONG_SCORES:
        config = RNNConfig(vocab_size=V, attention="luong", score=score, bidirectional=False)
        assert config.score == score


def test_location_score_refuses_sources_longer_than_its_weights():
    model = build_model(_config("luong-location-gru", max_source_length=6))
    inputs, targets = toy_batch()  # S = 7
    with pytest.raises(ValueError, match="location_score has weights for L=6 .* got S=7"):
        jax.eval_shape(model.init, jax.random.key(0), inputs, targets)


def test_dropout_and_scheduled_sampling_in_training():
    config = _config("luong-dot-lstm", dropout_rate=0.3)
    model = build_model(config)
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    train = jax.jit(lambda seed, p: model.apply(
        variables, inputs, targets, train=True, sampling_prob=p,
        rngs={"dropout": jax.random.key(seed), "sampling": jax.random.key(seed + 1)}))
    a, b = train(0, 0.25), train(1, 0.25)
    chex.assert_tree_all_finite((a, b))
    assert not np.allclose(a, b)
    no_dropout = build_model(config.replace(dropout_rate=0.0))
    np.testing.assert_allclose(model.apply(variables, inputs, targets),
                               no_dropout.apply(variables, inputs, targets), atol=1e-6)
