"""Position schemes: ALiBi slopes and biases, T5 buckets and rotary rotations by hand and
by their defining properties; the `process_heads` hook of multi-head attention; the
registries extend without editing generic code. (Every scheme also runs the Transformer
property tests of test_models_transformer.py, decode cache included.)"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_params import numpy_init, toy_batch

import jaxattn
from jaxattn.models import (POSITIONS, RNNConfig, TransformerConfig, alibi_bias, alibi_slopes,
                            build_model, relative_position_buckets, rotary_embedding)
from jaxattn.models import positional, rnn_attention


def _normal(i, shape):
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32)


def test_alibi_slopes_follow_the_paper():
    np.testing.assert_allclose(alibi_slopes(8), [2.0 ** -i for i in range(1, 9)])  # 1/2 .. 1/256
    np.testing.assert_allclose(alibi_slopes(4), [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8])
    # N = 6: the 4 slopes of N = 4, then every other slope of N = 8 (1/2, 1/8).
    np.testing.assert_allclose(alibi_slopes(6), [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8,
                                                 2.0 ** -1, 2.0 ** -3])
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)


def test_alibi_bias_by_hand():
    q = jnp.asarray([[0, 2]], jnp.int32)  # [1, T=2]
    k = jnp.asarray([[0, 1, 2]], jnp.int32)  # [1, S=3]
    bias = alibi_bias(q, k, np.asarray([0.5, 0.25], np.float32))
    chex.assert_shape(bias, (1, 2, 2, 3))
    np.testing.assert_allclose(bias[0, 0], [[0.0, -0.5, -1.0], [-1.0, -0.5, 0.0]])
    np.testing.assert_allclose(bias[0, 1], [[0.0, -0.25, -0.5], [-0.5, -0.25, 0.0]])


def test_t5_buckets_by_hand():
    distance = jnp.arange(-200, 201, dtype=jnp.int32)  # key - query
    causal = np.asarray(relative_position_buckets(distance, bidirectional=False))
    two_way = np.asarray(relative_position_buckets(distance, bidirectional=True))
    d = np.arange(-200, 201)
    # Causal: future keys share bucket 0 with the query itself; 16 exact buckets back.
    assert np.all(causal[d >= 0] == 0)
    np.testing.assert_array_equal(causal[(d <= 0) & (d > -16)], -d[(d <= 0) & (d > -16)])
    # Log-spaced from 16 back: bucket 16 + floor(16 log(n / 16) / log(128 / 16)), capped at 31.
    back = causal[d <= 0][::-1]  # distances 0, 1, ..., 200 back
    assert np.all(np.diff(back) >= 0) and back[16] == back[18] == 16 and back[19] == 17
    assert back[112] == 30 and np.all(back[113:] == 31) and causal.max() == 31
    # Bidirectional: 8 exact per side, keys after the query in the upper half (16..31).
    np.testing.assert_array_equal(two_way[(d >= 0) & (d < 8)] - 16 * (d[(d >= 0) & (d < 8)] > 0),
                                  d[(d >= 0) & (d < 8)])
    np.testing.assert_array_equal(two_way[(d < 0) & (d > -8)], -d[(d < 0) & (d > -8)])
    assert two_way[d == 200] == 31 and two_way[d == -200] == 15


def test_rotary_dot_products_depend_on_relative_position_only():
    q, k = _normal(0, (1, 1, 2, 8)), _normal(1, (1, 1, 2, 8))  # [B, T, N, H]

    def score(i, j):
        qi = rotary_embedding(q, jnp.asarray([[i]], jnp.int32))
        kj = rotary_embedding(k, jnp.asarray([[j]], jnp.int32))
        return np.asarray(jnp.einsum("BTNH,BSNH->BNTS", qi, kj))

    np.testing.assert_allclose(score(3, 1), score(10, 8), atol=1e-5)
    np.testing.assert_allclose(score(0, 0), score(7, 7), atol=1e-5)
    assert not np.allclose(score(3, 1), score(3, 2), atol=1e-3)
    # Position 0 is the identity; a rotation keeps the norm of every pair.
    np.testing.assert_allclose(rotary_embedding(q, jnp.zeros((1, 1), jnp.int32)), q, atol=1e-6)
    rotated = rotary_embedding(q, jnp.asarray([[5]], jnp.int32))
    pair_norm = lambda x: np.hypot(np.asarray(x)[..., 0::2], np.asarray(x)[..., 1::2])  # noqa: E731
    np.testing.assert_allclose(pair_norm(rotated), pair_norm(q), atol=1e-5)
    # Channel pair (0, 1) turns by angle = position (timescale 1 for i = 0).
    x = jnp.zeros((1, 1, 1, 4)).at[..., 0].set(1.0)
    np.testing.assert_allclose(rotary_embedding(x, jnp.asarray([[2]], jnp.int32))[0, 0, 0, :2],
                               [np.cos(2.0), np.sin(2.0)], atol=1e-6)


def test_multi_head_process_heads_hook():
    b, t, d, n = 2, 5, 12, 3
    params = jaxattn.init_multi_head_params(jax.random.key(0), d, n)
    x = _normal(2, (b, t, d))
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    rotate = lambda q, k: (rotary_embedding(q, positions), rotary_embedding(k, positions))  # noqa: E731
    got = jax.jit(lambda x: jaxattn.multi_head_attention(params, x, process_heads=rotate))(x)
    q = rotary_embedding(jaxattn.project_heads(params["query"], x), positions)  # [B, T, N, H]
    k = rotary_embedding(jaxattn.project_heads(params["key"], x), positions)
    v = jaxattn.project_heads(params["value"], x)
    want = jaxattn.project_out(params["out"], jaxattn.dot_product_attention(q, k, v))
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not np.allclose(got, jaxattn.multi_head_attention(params, x), atol=1e-3)


@pytest.mark.parametrize("name", ["alibi", "t5"])
def test_bias_reaches_every_self_attention(name):
    """With captured weights, the encoder's self-attention is not the content-only one."""
    config = TransformerConfig.tiny(13, emb_dim=16, num_heads=2, mlp_dim=16, num_encoder_layers=1,
                                    num_decoder_layers=1, positional=name, capture_attention=True)
    model = build_model(config)
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    _, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(
        variables, inputs, targets)
    layer = state["intermediates"]["encoder_layers_0"]["self_attention"]["attention_weights"][0]
    # Recompute the first layer's weights by hand: content energies + the scheme's bias.
    p = variables["params"]["encoder_layers_0"]["self_attention"]
    x = model.apply(variables, inputs, method=lambda m, i: m.source_embed(i) * 4.0)  # sqrt(16)
    q = jaxattn.project_heads(p["query"], x)
    k = jaxattn.project_heads(p["key"], x)
    logits = jaxattn.scaled_dot_product_score(q, k)  # [B, N, S, S]
    bias = model.apply(variables, method=lambda m: m.positions.self_bias(
        jnp.arange(7, dtype=jnp.int32)[None], jnp.arange(7, dtype=jnp.int32)[None], causal=False))
    valid = np.asarray(inputs != 0)[:, None, None, :]
    want = jaxattn.masked_softmax(logits + bias, jnp.asarray(valid))
    np.testing.assert_allclose(layer, want, atol=1e-5)
    assert not np.allclose(layer, jaxattn.masked_softmax(logits, jnp.asarray(valid)), atol=1e-3)


class _UniformAttention(rnn_attention.NoAttention):
    """A toy attention defined outside the library: uniform weights over the real source words."""

    def read(self, carry, memory):
        del carry
        weights = memory["valid"] / jnp.sum(memory["valid"], axis=-1, keepdims=True)  # [B, S]
        context = jnp.einsum("BS,BSC->BC", weights, memory["values"])  # [B, C]
        return context, (context, weights)


class _NoPositions(positional._Positions):  # noqa: SLF001 (the scheme base class)
    """A toy scheme defined outside the library: no position information at all."""


def test_registries_extend_without_editing_generic_code(monkeypatch):
    monkeypatch.setitem(rnn_attention.ATTENTIONS, "uniform", _UniformAttention)
    monkeypatch.setitem(POSITIONS, "none", _NoPositions)
    inputs, targets = toy_batch()
    rnn = build_model(RNNConfig(vocab_size=13, embed_dim=8, hidden_size=8, attention="uniform",
                                capture_attention=True, dropout_rate=0.0))
    variables = numpy_init(rnn, inputs, targets)
    _, state = jax.jit(functools.partial(rnn.apply, mutable=["intermediates"]))(
        variables, inputs, targets)
    (alignment,) = state["intermediates"]["alignment"]
    np.testing.assert_allclose(alignment[1, :, :3], 1 / 3)  # row 1 has 3 real source words
    transformer = build_model(TransformerConfig.tiny(13, emb_dim=8, num_heads=2, mlp_dim=8,
                                                     num_encoder_layers=1, num_decoder_layers=1,
                                                     positional="none"))
    variables = numpy_init(transformer, inputs, targets)
    # Without positions the encoder is permutation-equivariant: swapping two real source
    # words leaves the output unchanged.
    swapped = inputs.at[0, 0].set(inputs[0, 1]).at[0, 1].set(inputs[0, 0])
    forward = jax.jit(transformer.apply)
    np.testing.assert_allclose(forward(variables, swapped, targets),
                               forward(variables, inputs, targets), atol=1e-5)
    with pytest.raises(ValueError, match="RNNConfig.attention"):
        RNNConfig(vocab_size=13, attention="local")
