"""masked_softmax: exact zeros, fully masked rows, float32 math, gradients."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattn


def _normal(i, shape):
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32)


class MaskedSoftmaxTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_hand_computed(self):
        logits = jnp.array([[0.0, jnp.log(3.0), 5.0]])
        mask = jnp.array([[True, True, False]])
        got = self.variant(jaxattn.masked_softmax)(logits, mask)
        chex.assert_shape(got, (1, 3))
        np.testing.assert_allclose(got, [[0.25, 0.75, 0.0]], rtol=1e-6)
        assert got[0, 2] == 0.0  # exactly, not 1e-9-ish

    @chex.variants(with_jit=True, without_jit=True)
    def test_no_mask_is_softmax(self):
        logits = _normal(0, (3, 2, 5, 7))
        got = self.variant(jaxattn.masked_softmax)(logits)
        chex.assert_shape(got, (3, 2, 5, 7))
        np.testing.assert_allclose(got, jax.nn.softmax(logits), atol=1e-7)
        got = self.variant(lambda x: jaxattn.masked_softmax(x, axis=1))(logits)
        np.testing.assert_allclose(got, jax.nn.softmax(logits, axis=1), atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_masked_matches_renormalised_softmax(self):
        logits = _normal(1, (3, 2, 5, 7))
        mask = jnp.asarray(np.random.default_rng(2).random((3, 1, 5, 7)) < 0.6)
        mask = mask.at[:, :, :, 0].set(True)  # no empty rows here
        got = self.variant(jaxattn.masked_softmax)(logits, mask)
        chex.assert_shape(got, (3, 2, 5, 7))
        e = np.exp(np.asarray(logits, np.float64)) * np.asarray(mask)
        np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), atol=1e-6)
        assert np.all(np.asarray(got)[np.broadcast_to(~np.asarray(mask), got.shape)] == 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_fully_masked_row_is_zero_with_finite_grads(self):
        logits = _normal(3, (2, 5, 7)) * 50.0
        mask = jnp.ones((2, 5, 7), bool).at[1, 3].set(False).at[0, 0, 2:].set(False)
        f = self.variant(jaxattn.masked_softmax)
        got = f(logits, mask)
        chex.assert_shape(got, (2, 5, 7))
        np.testing.assert_array_equal(got[1, 3], np.zeros(7))
        np.testing.assert_allclose(got.sum(-1).at[1, 3].set(1.0), np.ones((2, 5)), rtol=1e-6)
        cot = _normal(4, (2, 5, 7))
        grad = self.variant(jax.grad(lambda x: jnp.sum(jaxattn.masked_softmax(x, mask) * cot)))(logits)
        chex.assert_shape(grad, (2, 5, 7))
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(grad[1, 3], np.zeros(7))
        np.testing.assert_array_equal(grad[0, 0, 2:], np.zeros(5))

    def test_neg_inf_logits_and_all_masked(self):
        logits = jnp.array([[-jnp.inf, 0.0], [-jnp.inf, -jnp.inf]])
        got = jaxattn.masked_softmax(logits, jnp.ones((2, 2), bool))
        np.testing.assert_array_equal(got, [[0.0, 1.0], [0.0, 0.0]])
        got = jaxattn.masked_softmax(jnp.ones((2, 3)), jnp.zeros((1, 3), bool))
        np.testing.assert_array_equal(got, np.zeros((2, 3)))

    def test_low_precision_computed_in_float32(self):
        # Logits whose exp() overflows float16 and whose sum loses bf16 bits.
        logits32 = _normal(5, (3, 11)) * 4.0 + 20.0
        mask = jnp.ones((3, 11), bool).at[:, 0].set(False)
        want = jaxattn.masked_softmax(logits32, mask)
        for dtype in (jnp.bfloat16, jnp.float16):
            x = logits32.astype(dtype)
            got = jaxattn.masked_softmax(x, mask)
            assert got.dtype == dtype
            # Same as float32 math on the rounded inputs, rounded once at the end.
            ref = jaxattn.masked_softmax(x.astype(jnp.float32), mask).astype(dtype)
            np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(ref, np.float32))
            np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=2e-2)

    def test_grad_matches_jax_softmax(self):
        logits = _normal(6, (3, 5, 7))
        cot = _normal(7, (3, 5, 7))
        ours = jax.grad(lambda x: jnp.sum(jaxattn.masked_softmax(x, jnp.ones((7,), bool)) * cot))(logits)
        theirs = jax.grad(lambda x: jnp.sum(jax.nn.softmax(x) * cot))(logits)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("logits, mask, match", [
    (jnp.zeros((2, 3)), jnp.ones((2, 3), jnp.int32), "mask: expected a boolean mask"),
    (jnp.zeros((2, 3)), jnp.ones((2, 3)), "mask: expected a boolean mask"),
    (jnp.zeros((2, 3)), jnp.ones((2, 4), bool),
     r"mask: expected a shape broadcastable to \[\.\.\., S\] = \[2, 3\], got \[2, 4\]"),
    (jnp.zeros((2, 3)), jnp.ones((1, 2, 3), bool), r"mask: .* got \[1, 2, 3\]"),
    (jnp.zeros((2, 3), jnp.int32), None, "logits: expected a floating dtype"),
])
def test_errors(logits, mask, match):
    with pytest.raises(ValueError, match=match):
        jaxattn.masked_softmax(logits, mask)
