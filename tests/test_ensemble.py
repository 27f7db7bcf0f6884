"""`jaxattn.models.Ensemble`: the mean of its members' log-probabilities, decoded like one model."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import decoding
from jaxattn.models import Ensemble, RNNConfig, TransformerConfig, build_model, ensemble_params

V = 24
INPUTS = jnp.array([[5, 6, 7, 8, 3, 0], [9, 10, 3, 0, 0, 0]])  # [B, S]
TARGETS = jnp.array([[11, 12, 13, 3, 0], [14, 3, 0, 0, 0]])  # [B, T]


@pytest.fixture(scope="module")
def members():
    """A Transformer and a Bahdanau RNN of one vocabulary, with random parameters scaled up so that
    their distributions are far from uniform (decoding then has something to choose)."""
    models = [build_model(TransformerConfig(vocab_size=V, emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1,
                                            num_decoder_layers=1, dropout_rate=0.0)),
              build_model(RNNConfig(vocab_size=V, embed_dim=16, hidden_size=16, attention="bahdanau",
                                    dropout_rate=0.0))]
    params = [jax.tree.map(lambda x: 3 * x, m.init(jax.random.PRNGKey(i), INPUTS, TARGETS)["params"])
              for i, m in enumerate(models)]
    return models, params


def test_output_is_the_mean_of_the_members_log_probabilities(members):
    models, params = members
    ensemble = Ensemble(tuple(models))
    got = ensemble.apply({"params": ensemble_params(params)}, INPUTS, TARGETS)  # [B, T, V]
    chex.assert_shape(got, (2, 5, V))
    want = sum(jax.nn.log_softmax(m.apply({"params": p}, INPUTS, TARGETS)) for m, p in zip(models, params)) / 2
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_mixed_families_decode_cached_as_uncached(members):
    models, params = members
    ensemble, variables = Ensemble(tuple(models)), ensemble_params(params)
    cached = decoding.greedy_decode(ensemble, variables, INPUTS, max_len=8)
    np.testing.assert_array_equal(cached, decoding.greedy_decode(ensemble, variables, INPUTS, max_len=8, cached=False))
    beams = decoding.beam_search(ensemble, variables, INPUTS, max_len=8, beam_size=3)
    np.testing.assert_array_equal(beams, decoding.beam_search(ensemble, variables, INPUTS, max_len=8, beam_size=3,
                                                              cached=False))
    assert len({tuple(row) for row in np.asarray(cached).tolist()}) == 2  # not a constant output


def test_a_model_twice_decodes_as_the_model(members):
    (model, _), (params, _) = members
    twice = Ensemble((model, model))
    for search in (decoding.greedy_decode, lambda *a, **k: decoding.beam_search(*a, beam_size=3, **k)):
        np.testing.assert_array_equal(search(twice, ensemble_params([params, params]), INPUTS, max_len=8),
                                      search(model, params, INPUTS, max_len=8))


def test_bad_members_are_errors(members):
    models, _ = members
    with pytest.raises(ValueError, match=r"^members: got 1 model\(s\), expected at least 2"):
        Ensemble((models[0],))
    other = build_model(TransformerConfig(vocab_size=V + 1, emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1,
                                          num_decoder_layers=1))
    with pytest.raises(ValueError, match=r"^members: vocabulary sizes \[24, 25\] differ"):
        Ensemble((models[0], other))
