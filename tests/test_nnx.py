"""Every model as a Flax NNX module (`jaxattn.nnx`): the Linen model's outputs, tokens and weights.

Each variant (every RNN attention and Luong score, every Transformer position scheme, pre/post-LN,
grouped-query attention) is checked with the same weights in both APIs: teacher-forced logits,
encode and the KV-cache step, bitwise. Per family: greedy, beam search and sampling tokens,
attention maps, eager construction, dropout and training with nnx.Optimizer. The weights of a
trained run moving into an NNX model and back into a workdir: tests/test_nnx_workdir.py.
"""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from model_params import numpy_init, toy_batch

from jaxattn import nnx as jaxattn_nnx
from jaxattn.decoding import beam_search, greedy_decode, sample_decode
from jaxattn.models import RNNConfig, TransformerConfig, build_model

V = 11
RNN = dict(vocab_size=V, embed_dim=8, hidden_size=12, num_layers=1, dropout_rate=0.0)
TRANSFORMER = dict(vocab_size=V, emb_dim=16, num_heads=4, mlp_dim=24, num_encoder_layers=1,
                   num_decoder_layers=2, max_len=16, dropout_rate=0.0)
CONFIGS = {
    "rnn-none": RNNConfig(**RNN, cell="gru", attention="none"),
    "rnn-bahdanau": RNNConfig(**RNN, cell="gru", attention="bahdanau", bidirectional=True),
    **{f"rnn-luong-{score}": RNNConfig(**RNN, cell="lstm", attention="luong", score=score, max_source_length=16)
       for score in ("dot", "general", "concat", "location")},
    **{f"transformer-{positional}": TransformerConfig(**TRANSFORMER, positional=positional)
       for positional in ("sinusoidal", "learned", "alibi", "t5", "rotary")},
    "transformer-pre-ln": TransformerConfig(**TRANSFORMER, norm="pre"),
    "transformer-gqa": TransformerConfig(**TRANSFORMER, num_kv_heads=2),
}
# One per family runs in the inner loop; the sweep over every variant is `slow`.
FAST = ("rnn-bahdanau", "transformer-sinusoidal")
PARAMS = [pytest.param(name, marks=() if name in FAST else pytest.mark.slow) for name in CONFIGS]


def _pair(name: str):
    """(NNX model, Linen model, its params): the same weights (drawn with NumPy: no init compile)."""
    inputs, targets = toy_batch()
    linen = build_model(CONFIGS[name])
    params = numpy_init(linen, inputs, targets)["params"]
    return jaxattn_nnx.from_linen_params(CONFIGS[name], params), linen, params


def _outputs(model, inputs, targets):
    """Teacher-forced logits, the encoding and the first KV-cache step's logits (NNX or Linen model)."""
    encoded = model.encode(inputs)
    memory, state = model.init_cache(encoded, 6)
    step_logits, _ = model.decode_step(memory, state, jnp.full(inputs.shape[:1], model.config.bos_id), 0)
    return model(inputs, targets), encoded, step_logits


@pytest.mark.parametrize("name", PARAMS)
def test_same_logits_encoding_cache_steps_and_tokens_as_linen(name):
    model, linen, params = _pair(name)
    inputs, targets = toy_batch()
    # Run op by op (the small programs compile once for every variant): the NNX model's calls
    # against the Linen model's apply of the same function.
    logits, encoded, step_logits = _outputs(model, inputs, targets)
    want_logits, want_encoded, want_step = linen.apply({"params": params}, inputs, targets, method=_outputs)
    chex.assert_shape(step_logits, (inputs.shape[0], V))
    chex.assert_trees_all_equal(logits, want_logits)
    chex.assert_trees_all_equal(encoded, want_encoded)
    chex.assert_trees_all_equal(step_logits, want_step)
    if name in FAST:  # decoding: one family each (and beam search, sampling below)
        np.testing.assert_array_equal(greedy_decode(model, inputs, max_len=6),
                                      greedy_decode(linen, params, inputs, max_len=6))


@pytest.mark.parametrize("name", FAST)
def test_beam_search_and_sampling_take_the_nnx_model(name):
    model, linen, params = _pair(name)
    inputs, _ = toy_batch()
    tokens, scores = beam_search(model, inputs, max_len=6, beam_size=3, return_all=True)
    want_tokens, want_scores = beam_search(linen, params, inputs, max_len=6, beam_size=3, return_all=True)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(scores, want_scores)
    rng = jax.random.key(7)
    np.testing.assert_array_equal(sample_decode(model, inputs, rng, max_len=6, temperature=2.0),
                                  sample_decode(linen, params, inputs, rng, max_len=6, temperature=2.0))
    # Under nnx.jit, as NNX code calls it.
    np.testing.assert_array_equal(nnx.jit(lambda m, x: greedy_decode(m, x, max_len=6))(model, inputs),
                                  greedy_decode(linen, params, inputs, max_len=6))


@pytest.mark.parametrize("name", ["rnn-bahdanau", pytest.param("transformer-sinusoidal", marks=pytest.mark.slow)])
def test_attention_maps_through_nnx_pop(name):
    config = CONFIGS[name].replace(capture_attention=True)
    _, _, params = _pair(name)
    model = jaxattn_nnx.from_linen_params(config, params)
    linen = build_model(config)
    inputs, targets = toy_batch()
    model(inputs, targets, mutable=["intermediates"])
    maps = model.attention_maps(nnx.pop(model, nnx.Intermediate))
    _, state = linen.apply({"params": params}, inputs, targets, mutable=["intermediates"])
    chex.assert_trees_all_close(maps, linen.attention_maps(state["intermediates"]), atol=1e-6)
    assert maps, name
    assert not nnx.state(model, nnx.Intermediate), "nnx.pop leaves no intermediates behind"


@pytest.mark.parametrize("config", [CONFIGS["rnn-bahdanau"], TransformerConfig.tiny(vocab_size=V)],
                         ids=["rnn", "transformer"])
def test_built_eagerly_from_a_config(config):
    model = jaxattn_nnx.Model(config, rngs=nnx.Rngs(0))
    params = jaxattn_nnx.linen_params(model)
    inputs, targets = toy_batch()
    shapes = jax.eval_shape(build_model(config).init, jax.random.key(0), inputs, targets)["params"]
    chex.assert_trees_all_equal_shapes_and_dtypes(params, shapes)
    assert model.config is config
    again = jaxattn_nnx.Model(config, rngs=nnx.Rngs(0))
    chex.assert_trees_all_equal(jaxattn_nnx.linen_params(again), params)  # seeded: the same weights
    other = jaxattn_nnx.Model(config, rngs=nnx.Rngs(1))
    differ = jax.tree.map(lambda a, b: not np.array_equal(a, b), jaxattn_nnx.linen_params(other), params)
    assert any(jax.tree.leaves(differ)), "another seed draws other weights"


def test_dropout_draws_from_the_rngs_streams_and_follows_train_and_eval():
    config = TransformerConfig(**{**TRANSFORMER, "dropout_rate": 0.3})
    inputs, targets = toy_batch()
    _, _, params = _pair("transformer-sinusoidal")
    model = jaxattn_nnx.from_linen_params(config, params, rngs=nnx.Rngs(0, dropout=5))
    run = nnx.jit(lambda m, x, y: m(x, y, train=True))
    first, second = run(model, inputs, targets), run(model, inputs, targets)
    assert not np.allclose(first, second), "each call draws a new dropout key"
    call = nnx.jit(lambda m, x, y: m(x, y))
    linen = jax.jit(build_model(config).apply)({"params": params}, inputs, targets)
    assert model.deterministic
    np.testing.assert_array_equal(call(model, inputs, targets), linen)
    # NNX's mode switches: a call without train= follows them, an explicit train= wins.
    model.train()
    assert not model.deterministic
    assert not np.allclose(call(model, inputs, targets), linen)
    np.testing.assert_array_equal(nnx.jit(lambda m, x, y: m(x, y, train=False))(model, inputs, targets), linen)
    model.eval()
    np.testing.assert_array_equal(call(model, inputs, targets), linen)


def test_trains_with_nnx_optimizer():
    model, _, _ = _pair("transformer-sinusoidal")
    inputs, targets = toy_batch()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            logits = model(inputs, targets, train=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
            return (loss * (targets != 0)).sum() / (targets != 0).sum()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


def test_params_of_another_config_are_a_one_line_error():
    _, _, params = _pair("transformer-sinusoidal")
    wider = dataclasses.replace(CONFIGS["transformer-sinusoidal"], mlp_dim=32)
    with pytest.raises(ValueError, match=r"params: \['decoder_layers_0'\]\['feed_forward'\]\S+ has shape \(24,\), this config expects \(32,\)$"):
        jaxattn_nnx.from_linen_params(wider, params)
    with pytest.raises(ValueError, match=r"params: not the tree of this Transformer config .*missing"):
        jaxattn_nnx.from_linen_params(CONFIGS["transformer-gqa"].replace(num_decoder_layers=3), params)


def test_a_linen_call_without_params_and_an_nnx_call_with_them_are_errors():
    model, linen, params = _pair("rnn-bahdanau")
    inputs, _ = toy_batch()
    with pytest.raises(TypeError, match=r"greedy_decode: an NNX model holds its weights"):
        greedy_decode(model, params, inputs, max_len=4)
    with pytest.raises(TypeError, match=r"beam_search: a Linen model needs its params"):
        beam_search(linen, inputs, max_len=4)

