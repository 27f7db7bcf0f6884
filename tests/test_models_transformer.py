"""Transformer: shapes and attention weights, causality, padding, packing, cached
steps, GQA, dropout, bf16, parameter count, errors. (Overfitting a tiny batch is
checked in test_decoding.py, whose fixture trains a Transformer.)"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_params import numpy_init, toy_batch

from jaxattn.models import (TransformerConfig, build_model, collect_attention_weights,
                            count_params)

V = 13
VARIANTS = {
    "post-sinusoidal-tied": dict(),
    "pre-learned-gqa-untied": dict(norm="pre", positional="learned", num_kv_heads=2,
                                   share_embeddings=False, tie_output=False),
    # Relative positions: every property below, the decode cache included, holds for them too
    # (one layer per stack keeps the compile time down).
    "pre-alibi-gqa": dict(norm="pre", positional="alibi", num_kv_heads=2, num_encoder_layers=1,
                          num_decoder_layers=1),
    "post-t5": dict(positional="t5", num_encoder_layers=1, num_decoder_layers=1),
    "pre-rotary-gqa": dict(norm="pre", positional="rotary", num_kv_heads=2, num_encoder_layers=1,
                           num_decoder_layers=1),
}


def _config(name, **overrides):
    fields = dict(emb_dim=16, num_heads=4, mlp_dim=24, num_encoder_layers=2,
                  num_decoder_layers=2, max_len=32, dropout_rate=0.0)
    return TransformerConfig(vocab_size=V, **{**fields, **VARIANTS[name], **overrides})


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def setup(request):
    config = _config(request.param)
    model = build_model(config)
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    return config, model, variables, jax.jit(model.apply)


def test_shapes_and_attention_weights(setup):
    config, model, variables, forward = setup
    inputs, targets = toy_batch()
    logits = forward(variables, inputs, targets)
    chex.assert_shape(logits, (3, 5, V))
    chex.assert_type(logits, jnp.float32)
    capture = build_model(config.replace(capture_attention=True))
    captured, state = jax.jit(functools.partial(capture.apply, mutable=["intermediates"]))(
        variables, inputs, targets)
    np.testing.assert_allclose(captured, logits, atol=1e-5)
    weights = collect_attention_weights(state["intermediates"])
    le, ld = config.num_encoder_layers, config.num_decoder_layers
    chex.assert_shape(weights["encoder_self"], (le, 3, 4, 7, 7))
    chex.assert_shape(weights["decoder_self"], (ld, 3, 4, 5, 5))
    chex.assert_shape(weights["cross"], (ld, 3, 4, 5, 7))
    src_pad = np.asarray(inputs == 0)[None, :, None, None, :]  # [1, B, 1, 1, S]
    assert np.all(np.asarray(weights["cross"])[np.broadcast_to(src_pad, (ld, 3, 4, 5, 7))] == 0)
    future = np.triu(np.ones((5, 5), bool), k=1)
    assert np.all(np.asarray(weights["decoder_self"])[..., future] == 0)
    np.testing.assert_allclose(weights["cross"].sum(-1), 1.0, atol=1e-5)
    # What a heatmap shows: the last decoder layer's cross-attention.
    np.testing.assert_array_equal(capture.attention_map(state["intermediates"]), weights["cross"][-1])
    assert capture.attention_map({}) is None
    _, state = jax.eval_shape(functools.partial(model.apply, mutable=["intermediates"]),
                              variables, inputs, targets)
    assert not state.get("intermediates")  # nothing computed on the default path


def test_decoder_is_causal(setup):
    _, _, variables, forward = setup
    inputs, targets = toy_batch()
    a = forward(variables, inputs, targets)
    b = forward(variables, inputs, targets.at[:, 3:].set(11))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-5)
    assert not np.allclose(a[:, 4], b[:, 4])


def test_extra_source_padding_changes_nothing(setup):
    _, _, variables, forward = setup
    inputs, targets = toy_batch()
    padded = jnp.pad(inputs, ((0, 0), (0, 4)))
    np.testing.assert_allclose(forward(variables, padded, targets),
                               forward(variables, inputs, targets), atol=1e-5)


def test_packed_rows_equal_separate_rows(setup):
    _, _, variables, forward = setup
    inputs, targets = toy_batch()
    # Pack rows 1 and 2 (lengths 3+4 source, 2+3 target) into one row.
    packed_inputs = jnp.asarray([[4, 5, 3, 9, 8, 7, 3, 0]], jnp.int32)
    packed_targets = jnp.asarray([[5, 3, 7, 8, 3, 0]], jnp.int32)
    logits = forward(
        variables, packed_inputs, packed_targets,
        inputs_segmentation=jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]], jnp.int32),
        targets_segmentation=jnp.asarray([[1, 1, 2, 2, 2, 0]], jnp.int32),
        inputs_positions=jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]], jnp.int32),
        targets_positions=jnp.asarray([[0, 1, 0, 1, 2, 0]], jnp.int32))
    separate = forward(variables, inputs, targets)
    np.testing.assert_allclose(logits[0, :2], separate[1, :2], atol=1e-5)
    np.testing.assert_allclose(logits[0, 2:5], separate[2, :3], atol=1e-5)


def test_decode_step_matches_teacher_forcing(setup):
    _, model, variables, forward = setup
    inputs, targets = toy_batch()
    full = forward(variables, inputs, targets)
    encoded = model.apply(variables, inputs, method="encode")
    memory, state = model.apply(variables, encoded, 6, method="init_cache")
    step = jax.jit(lambda m, s, tok, i: model.apply(variables, m, s, tok, i,
                                                    method="decode_step"))
    previous = jnp.full((3,), 2, jnp.int32)
    for t in range(5):
        logits, state = step(memory, state, previous, jnp.int32(t))
        chex.assert_shape(logits, (3, V))
        np.testing.assert_allclose(logits, full[:, t], atol=1e-5)
        previous = targets[:, t]
    assert step._cache_size() == 1  # one compiled step serves every position


def test_dropout_is_applied_in_training_only():
    config = _config("post-sinusoidal-tied", dropout_rate=0.3, attention_dropout_rate=0.2)
    model = build_model(config)
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    # Compiled as a whole: eager, every op of the model compiles on its own (4x the test's time).
    forward = jax.jit(model.apply, static_argnames="train")
    a = forward(variables, inputs, targets, train=True, rngs={"dropout": jax.random.key(1)})
    b = forward(variables, inputs, targets, train=True, rngs={"dropout": jax.random.key(2)})
    assert not np.allclose(a, b)
    no_dropout = build_model(config.replace(dropout_rate=0.0, attention_dropout_rate=0.0))
    np.testing.assert_allclose(forward(variables, inputs, targets),
                               jax.jit(no_dropout.apply)(variables, inputs, targets), atol=1e-6)


def test_bf16_compute_is_finite():
    model = build_model(_config("pre-learned-gqa-untied", dtype=jnp.bfloat16))
    inputs, targets = toy_batch()
    variables = numpy_init(model, inputs, targets)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
    logits = jax.jit(model.apply)(variables, inputs, targets)  # compiled whole: eager compiles op by op
    chex.assert_type(logits, jnp.float32)
    chex.assert_tree_all_finite(logits)


def test_base_parameter_count_matches_formula():
    config = TransformerConfig.base(37_000)
    model = build_model(config)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 4), jnp.int32),
                            jnp.ones((1, 4), jnp.int32))
    d, f, v = 512, 2048, 37_000
    attention = 4 * (d * d + d)
    ffn = d * f + f + f * d + d
    norm = 2 * d
    expected = v * d + 6 * (attention + ffn + 2 * norm) + 6 * (2 * attention + ffn + 3 * norm)
    assert count_params(shapes["params"]) == expected  # about 63.1M (paper: ~65M)


@pytest.mark.parametrize("fields, match", [
    (dict(emb_dim=30, num_heads=4), "num_heads"),
    (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
    (dict(norm="sandwich"), "TransformerConfig.norm"),
    (dict(positional="xpos"), "TransformerConfig.positional"),
    (dict(attention_implementation="flash"), "attention_implementation"),
    (dict(attention_dropout_rate=0.1, attention_implementation="xla"), "cannot apply attention_dropout"),
    (dict(positional="alibi", attention_implementation="chunked"), "takes no bias"),
    (dict(positional="rotary", emb_dim=12, num_heads=4),
     r"emb_dim / num_heads \(the head dimension H\) must be even"),
    (dict(mlp_dim=0), "TransformerConfig.mlp_dim"),
])
def test_bad_config_raises(fields, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(vocab_size=V, **fields)


def test_scheduled_sampling_is_rejected_and_step_is_ignored(setup):
    _, model, variables, forward = setup
    inputs, targets = toy_batch()
    with pytest.raises(TypeError, match="sampling_prob"):  # an RNN option: no such argument
        model.apply(variables, inputs, targets, sampling_prob=0.5)
    np.testing.assert_array_equal(forward(variables, inputs, targets, step=7),
                                  forward(variables, inputs, targets))


def test_build_model_rejects_unknown_config():
    with pytest.raises(ValueError, match="config"):
        build_model({"vocab_size": 3})


def test_sinusoidal_positions_match_the_paper():
    from jaxattn.models import sinusoidal_positions
    positions = jnp.asarray([[0, 1, 5]], jnp.int32)
    d = 6
    pe = sinusoidal_positions(positions, d)
    chex.assert_shape(pe, (1, 3, d))
    for j, pos in enumerate([0, 1, 5]):
        for i in range(d // 2):
            angle = pos / 10_000 ** (2 * i / d)
            np.testing.assert_allclose(pe[0, j, 2 * i], np.sin(angle), atol=1e-6)
            np.testing.assert_allclose(pe[0, j, 2 * i + 1], np.cos(angle), atol=1e-6)
    with pytest.raises(ValueError, match="features"):
        sinusoidal_positions(positions, 5)


def test_shift_right_restarts_every_segment():
    from jaxattn.models import shift_right
    targets = jnp.asarray([[5, 3, 7, 8, 3, 0]], jnp.int32)
    np.testing.assert_array_equal(shift_right(targets, 2), [[2, 5, 3, 7, 8, 3]])
    segments = jnp.asarray([[1, 1, 2, 2, 2, 0]], jnp.int32)
    np.testing.assert_array_equal(shift_right(targets, 2, segments)[:, :5], [[2, 5, 2, 7, 8]])


def test_tied_logits_vjp_matches_autodiff():
    from jaxattn.models.transformer import _tied_logits_cpu
    rng = np.random.default_rng(0)
    y = jnp.asarray(rng.normal(size=(3, 5, 7)), jnp.float32)                       # [B, T, D]
    table = jnp.asarray(rng.normal(size=(V, 7)), jnp.float32)                      # [V, D]
    g = jnp.asarray(rng.normal(size=(3, 5, V)), jnp.float32)                       # [B, T, V]
    out, vjp = jax.vjp(_tied_logits_cpu, y, table)
    want, want_vjp = jax.vjp(lambda a, b: jnp.einsum("BTD,VD->BTV", a, b), y, table)
    np.testing.assert_allclose(out, want, atol=1e-5)
    for got, expected in zip(vjp(g), want_vjp(g)):
        chex.assert_equal_shape([got, expected])
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_tied_logits_vjp_is_used_on_cpu_only(monkeypatch):
    from jaxattn.models import transformer
    config = _config("post-sinusoidal-tied", num_encoder_layers=1, num_decoder_layers=1)
    model = build_model(config)
    inputs, targets = toy_batch()
    params = numpy_init(model, inputs, targets)["params"]

    def loss(p):
        return jnp.sum(jnp.sin(model.apply({"params": p}, inputs, targets)))

    def run():  # a fresh function each time: jax caches traces by function
        return (str(jax.make_jaxpr(lambda p: loss(p))(params)).count("custom_vjp"),
                jax.jit(jax.grad(lambda p: loss(p)))(params))

    assert transformer.platform_of(inputs) == "cpu"
    on_cpu_vjps, on_cpu = run()
    monkeypatch.setattr(transformer, "platform_of", lambda x: "gpu")
    elsewhere_vjps, elsewhere = run()
    assert on_cpu_vjps == elsewhere_vjps + 1  # the tied projection's; attention keeps its own
    chex.assert_trees_all_close(elsewhere, on_cpu, atol=1e-5)
