"""Decoding: trained models reproduce their targets; cached == uncached token for
token (greedy and beam); beam size 1 == greedy; beam scores are length-normalised
log-probabilities; sampling; <eos> handling; errors."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_params import fit, numpy_init, token_loss

from jaxattn.decoding import beam_search, greedy_decode, length_penalty, sample_decode
from jaxattn.models import RNNConfig, TransformerConfig, build_model

V = 11
MAX_LEN = 7
CONFIGS = {
    "transformer": TransformerConfig(vocab_size=V, emb_dim=32, num_heads=4, mlp_dim=64,
                                     num_encoder_layers=1, num_decoder_layers=2,
                                     max_len=16, dropout_rate=0.0, num_kv_heads=2),
    "bahdanau": RNNConfig(vocab_size=V, embed_dim=16, hidden_size=24, cell="gru",
                          attention="bahdanau", dropout_rate=0.0),
}
# RNN decode steps are checked against teacher forcing for every attention in
# test_models_rnn.py; here the search algorithms run on one RNN and the Transformer.


def _task():
    """Reverse the source (ids 4..10), different lengths, all eos-terminated."""
    inputs = np.array([[4, 5, 6, 7, 3, 0],
                       [8, 9, 3, 0, 0, 0],
                       [10, 4, 8, 6, 9, 3],
                       [5, 3, 0, 0, 0, 0]], np.int32)
    targets = np.zeros((4, MAX_LEN), np.int32)
    for row, source in enumerate(inputs):
        words = [t for t in source if t > 3]
        targets[row, :len(words) + 1] = words[::-1] + [3]
    return jnp.asarray(inputs), jnp.asarray(targets)


def _train(model, steps=120):
    inputs, targets = _task()
    variables = numpy_init(model, inputs, targets)  # the real init runs in the trainer tests (init_state)
    trained, _ = fit(model, variables, inputs, targets, steps=steps, lr=1e-2)
    return variables, trained, float(token_loss(model, trained, inputs, targets))


@pytest.fixture(scope="module")
def transformer():
    model = build_model(CONFIGS["transformer"])
    untrained, trained, loss = _train(model)
    return model, untrained, trained, loss


@pytest.fixture(scope="module")
def bahdanau():
    model = build_model(CONFIGS["bahdanau"])
    inputs, targets = _task()
    return model, numpy_init(model, inputs, targets, seed=1)


@pytest.fixture(params=["transformer-untrained", "transformer-trained", "bahdanau-untrained"])
def model_and_variables(request, transformer, bahdanau):
    if request.param == "bahdanau-untrained":
        return bahdanau
    model, untrained, trained, _ = transformer
    return model, (trained if request.param.endswith("-trained") else untrained)


def _unseen_inputs():
    """Same shape as the training inputs (one compilation serves both)."""
    return jnp.asarray([[6, 7, 8, 3, 0, 0],
                        [9, 3, 0, 0, 0, 0],
                        [4, 10, 5, 7, 6, 3],
                        [10, 9, 8, 7, 6, 3]], jnp.int32)


def test_trained_model_reproduces_targets(transformer):
    model, _, trained, loss = transformer
    assert loss < 0.05  # the Transformer overfits the tiny batch
    inputs, targets = _task()
    np.testing.assert_array_equal(greedy_decode(model, trained, inputs, max_len=MAX_LEN), targets)
    # The bare params tree is accepted too.
    np.testing.assert_array_equal(
        beam_search(model, trained["params"], inputs, max_len=MAX_LEN, beam_size=3), targets)


def test_cached_equals_recomputation(model_and_variables):
    model, variables = model_and_variables
    inputs = _unseen_inputs()
    cached = greedy_decode(model, variables, inputs, max_len=MAX_LEN)
    naive = greedy_decode(model, variables, inputs, max_len=MAX_LEN, cached=False)
    chex.assert_shape(cached, (4, MAX_LEN))
    np.testing.assert_array_equal(cached, naive)
    beams, scores = beam_search(model, variables, inputs, max_len=MAX_LEN, beam_size=3,
                                return_all=True)
    naive_beams, naive_scores = beam_search(model, variables, inputs, max_len=MAX_LEN,
                                            beam_size=3, cached=False, return_all=True)
    chex.assert_shape(beams, (4, 3, MAX_LEN))
    chex.assert_shape(scores, (4, 3))
    np.testing.assert_array_equal(beams, naive_beams)
    np.testing.assert_allclose(scores, naive_scores, atol=1e-4)


@pytest.mark.parametrize("positional", ["alibi", "t5", "rotary"])
def test_cached_equals_recomputation_with_relative_positions(positional):
    """The self-attention bias / rotation of step i against cache positions 0..L-1 equals the
    full-prefix one: greedy and sampled tokens are those of recomputation."""
    model = build_model(CONFIGS["transformer"].replace(positional=positional, num_decoder_layers=1))
    inputs = _unseen_inputs()
    variables = numpy_init(model, inputs, _task()[1], seed=2)
    for decode in (lambda cached: greedy_decode(model, variables, inputs, max_len=MAX_LEN,
                                                cached=cached),
                   lambda cached: sample_decode(model, variables, inputs, jax.random.key(0),
                                                max_len=MAX_LEN, temperature=3.0, cached=cached)):
        np.testing.assert_array_equal(decode(True), decode(False))
    assert len(np.unique(np.asarray(decode(True)))) > 3  # samples vary: every step is compared


def test_special_ids_come_from_the_model_config(bahdanau):
    model, variables = bahdanau
    inputs = _unseen_inputs()
    moved = build_model(model.config.replace(bos_id=5, eos_id=6))
    tokens = greedy_decode(moved, variables, inputs, max_len=MAX_LEN)
    np.testing.assert_array_equal(
        tokens, greedy_decode(moved, variables, inputs, max_len=MAX_LEN, bos_id=5, eos_id=6))
    assert not np.array_equal(
        tokens, greedy_decode(moved, variables, inputs, max_len=MAX_LEN, bos_id=2, eos_id=3))
    beams = beam_search(moved, variables, inputs, max_len=MAX_LEN, beam_size=2)
    np.testing.assert_array_equal(
        beams, beam_search(moved, variables, inputs, max_len=MAX_LEN, beam_size=2, bos_id=5, eos_id=6))


def test_beam_size_one_is_greedy(model_and_variables):
    model, variables = model_and_variables
    inputs = _unseen_inputs()
    np.testing.assert_array_equal(
        beam_search(model, variables, inputs, max_len=MAX_LEN, beam_size=1, alpha=0.0),
        greedy_decode(model, variables, inputs, max_len=MAX_LEN))


def _sequence_log_prob(model, variables, inputs, tokens):
    """Teacher-forced log P(tokens | inputs) up to and including the first <eos>."""
    logits = model.apply(variables, inputs, tokens)  # [B, T, V]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(tokens != 0, logp, 0.0), axis=-1)  # [B]


def test_beam_scores_are_normalised_log_probs(transformer):
    model, _, trained, _ = transformer
    inputs = _unseen_inputs()
    alpha = 0.6
    beams, scores = beam_search(model, trained, inputs, max_len=MAX_LEN, beam_size=3,
                                alpha=alpha, return_all=True)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6)  # best first
    for j in range(3):
        tokens = beams[:, j]  # [B, T']
        ends = np.asarray(tokens == 3)
        assert ends.any(axis=1).all()  # the trained model finishes every beam
        length = ends.argmax(axis=1) + 1
        assert np.all(np.asarray(tokens)[np.arange(MAX_LEN)[None, :] >= length[:, None]] == 0)
        expected = _sequence_log_prob(model, trained, inputs, tokens) / length_penalty(length, alpha)
        np.testing.assert_allclose(scores[:, j], expected, atol=1e-4)
    # Beam search never returns a worse hypothesis than greedy.
    greedy = greedy_decode(model, trained, inputs, max_len=MAX_LEN)
    greedy_len = np.asarray(greedy == 3).argmax(axis=1) + 1
    greedy_score = _sequence_log_prob(model, trained, inputs, greedy) / length_penalty(greedy_len,
                                                                                      alpha)
    assert np.all(np.asarray(scores[:, 0]) >= np.asarray(greedy_score) - 1e-4)


def test_greedy_output_is_eos_terminated_and_padded(model_and_variables):
    model, variables = model_and_variables
    tokens = np.asarray(greedy_decode(model, variables, _unseen_inputs(), max_len=MAX_LEN))
    for row in tokens:
        eos = np.flatnonzero(row == 3)
        if eos.size:
            assert np.all(row[eos[0] + 1:] == 0)
            assert np.all(row[:eos[0]] != 0)


def test_sampling_follows_rng_and_top_k(transformer):
    model, variables, _, _ = transformer
    inputs = _unseen_inputs()
    sample = lambda seed: sample_decode(model, variables, inputs, jax.random.key(seed),  # noqa: E731
                                        max_len=MAX_LEN, top_k=2, temperature=2.0)
    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))
    # Every token sampled with top_k=2 is one of the two most likely given its prefix.
    tokens = sample(2)
    logits = model.apply(variables, inputs, tokens)  # [B, T, V]
    top2 = np.asarray(jax.lax.top_k(logits, 2)[1])  # [B, T, 2]
    emitted = np.asarray(tokens)
    for b_, t_ in zip(*np.nonzero(emitted)):
        assert emitted[b_, t_] in top2[b_, t_]


@pytest.mark.parametrize("call, match", [
    (lambda m, v, x: greedy_decode(m, v, x, max_len=0), "max_len"),
    (lambda m, v, x: beam_search(m, v, x, max_len=4, beam_size=0), "beam_size"),
    (lambda m, v, x: beam_search(m, v, x, max_len=4, alpha=-1.0), "alpha"),
    (lambda m, v, x: sample_decode(m, v, x, jax.random.key(0), max_len=4, temperature=0.0),
     "temperature"),
    (lambda m, v, x: sample_decode(m, v, x, jax.random.key(0), max_len=4, top_k=V + 1), "top_k"),
    (lambda m, v, x: greedy_decode(m, v, x[0], max_len=4), "inputs"),
])
def test_bad_arguments_raise(call, match, bahdanau):
    model, variables = bahdanau
    inputs = _unseen_inputs()
    with pytest.raises(ValueError, match=match):
        call(model, variables, inputs)
