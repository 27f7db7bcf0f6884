"""The loss gives the values and gradients of the textbook formulas, on CPU with its XLA:CPU
rewrites and elsewhere with the plain formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxattn import PAD_ID
from train import losses

PLATFORMS = ["cpu", "gpu"]  # "gpu": any backend but CPU, where the plain formulas run


def _reference_sums(logits, targets, eps):
    """Label-smoothed KL with an explicit [B, T, V] target distribution, and jnp.argmax."""
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits)                                          # [B, T, V]
    one_hot = jax.nn.one_hot(targets, vocab)                                        # [B, T, V]
    q = one_hot * (1 - eps) + (1 - one_hot) * eps / (vocab - 1)                     # [B, T, V]
    entropy = -jnp.sum(jnp.where(q > 0, q * jnp.log(q), 0.0), -1)                   # [B, T]
    weights = (targets != PAD_ID).astype(jnp.float32)                               # [B, T]
    loss = -jnp.sum(q * log_probs, -1) - entropy                                    # [B, T]
    nll = -jnp.sum(one_hot * log_probs, -1)                                         # [B, T]
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)               # [B, T]
    return {"loss_sum": jnp.sum(loss * weights), "nll_sum": jnp.sum(nll * weights),
            "correct_sum": jnp.sum(correct * weights), "weight_sum": jnp.sum(weights)}


def _sums(logits, targets, eps):
    return losses.cross_entropy_sums(logits, targets, eps, pad_id=PAD_ID)


@pytest.fixture(params=PLATFORMS)
def platform(request, monkeypatch):
    """The backend the loss believes it runs on (the computation itself stays on the CPU)."""
    monkeypatch.setattr(losses, "platform_of", lambda x: request.param)
    return request.param


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("vocab", [72, 13])  # 72: two-level argmax (8 blocks of 9); 13: prime, one level
def test_sums_and_gradients_match_reference(eps, vocab, platform):
    rng = np.random.default_rng(vocab)
    logits = jnp.asarray(3 * rng.normal(size=(3, 5, vocab)), jnp.float32)          # [B, T, V]
    targets = jnp.asarray(rng.integers(1, vocab, size=(3, 5)), jnp.int32)          # [B, T]
    targets = targets.at[0, 3:].set(PAD_ID).at[1, 0].set(int(jnp.argmax(logits[1, 0])))
    got = _sums(logits, targets, eps)
    want = _reference_sums(logits, targets, eps)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert float(got["correct_sum"]) >= 1.0  # the planted argmax counts
    grad = jax.grad(lambda x: _sums(x, targets, eps)["loss_sum"])(logits)
    want_grad = jax.grad(lambda x: _reference_sums(x, targets, eps)["loss_sum"])(logits)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)
    grad = jax.jit(jax.grad(lambda x: _sums(x, targets, eps)["nll_sum"]))(logits)
    want_grad = jax.grad(lambda x: _reference_sums(x, targets, eps)["nll_sum"])(logits)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)


def test_rewrites_apply_on_cpu_only(platform):
    logits = jnp.zeros((2, 3, 72), jnp.float32)                                     # [B, T, V]
    targets = jnp.ones((2, 3), jnp.int32)                                           # [B, T]
    jaxpr = str(jax.make_jaxpr(lambda x: _sums(x, targets, 0.1)["loss_sum"])(logits))
    # The select backward is a custom VJP; the two-level argmax reduces [B, T, 8, 9] tiles.
    assert ("custom_vjp" in jaxpr) == (platform == "cpu")
    assert ("2,3,8,9" in jaxpr.replace(" ", "")) == (platform == "cpu")


def test_pad_id_is_the_callers():
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))        # [1, 2, 3]
    targets = jnp.array([[2, 1]])                                                   # [1, 2]
    sums = losses.cross_entropy_sums(logits, targets, pad_id=2)  # the first is padding
    np.testing.assert_allclose(sums["nll_sum"], np.log(3.0), rtol=1e-6)
    assert float(sums["weight_sum"]) == 1.0
    with pytest.raises(TypeError, match="pad_id"):
        losses.cross_entropy_sums(logits, targets)  # no default: the model config gives it


@pytest.mark.parametrize("vocab", [64, 72, 13])
def test_max_and_argmax_equal_jnp_with_ties_inf_and_nan(vocab):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, vocab)).astype(np.float32)                           # [B, T, V]
    x[0, 0, :] = 1.0                                  # all tied: the first index wins
    x[0, 1, [vocab - 1, 5, 2 * vocab // 3]] = 9.0     # ties in different blocks
    x[0, 2, [7, 8]] = 9.0                             # ties inside one block
    x[0, 3, :] = -np.inf
    x[0, 3, vocab - 2] = 0.0
    x[0, 4, [3, vocab - 3]] = np.inf
    x[0, 5, [vocab - 4, 6]] = np.nan                  # NaN is the maximum, the first one wins
    got_max, got_arg = losses._max_and_argmax_cpu(jnp.asarray(x))
    np.testing.assert_array_equal(got_max, jnp.max(jnp.asarray(x), -1))
    np.testing.assert_array_equal(got_arg, jnp.argmax(jnp.asarray(x), -1))
    assert int(got_arg[0, 0]) == 0 and int(got_arg[0, 2]) == 7 and int(got_arg[0, 5]) == 6
