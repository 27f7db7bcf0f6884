"""Masks: hand-computed cases, broadcasting, and every documented error."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattn


class MaskTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_padding_mask(self):
        tokens = jnp.array([[5, 3, 0, 0], [7, 8, 9, 3], [0, 0, 0, 0]])
        got = self.variant(jaxattn.padding_mask)(tokens)
        chex.assert_shape(got, (3, 4))
        np.testing.assert_array_equal(
            got, [[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
        got = self.variant(lambda t: jaxattn.padding_mask(t, pad_id=3))(tokens)
        np.testing.assert_array_equal(got, tokens != 3)

    @chex.variants(with_jit=True, without_jit=True)
    def test_lengths_to_mask(self):
        got = self.variant(lambda l: jaxattn.lengths_to_mask(l, 5))(jnp.array([0, 2, 5]))
        chex.assert_shape(got, (3, 5))
        np.testing.assert_array_equal(
            got, [[0, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])

    def test_key_padding_and_cross_masks(self):
        q_valid = jnp.array([[True, True, False], [True, False, False]])  # [2, 3]
        k_valid = jnp.array([[True, False, True, True, False],
                             [True, True, True, True, True]])  # [2, 5]
        kp = jaxattn.key_padding_mask(k_valid)
        chex.assert_shape(kp, (2, 1, 1, 5))
        np.testing.assert_array_equal(kp[:, 0, 0], k_valid)
        cross = jaxattn.cross_attention_mask(q_valid, k_valid)
        chex.assert_shape(cross, (2, 1, 3, 5))
        for b in range(2):
            for t in range(3):
                for s in range(5):
                    assert cross[b, 0, t, s] == (q_valid[b, t] and k_valid[b, s])

    def test_causal_mask(self):
        square = jaxattn.causal_mask(3)
        chex.assert_shape(square, (1, 1, 3, 3))
        np.testing.assert_array_equal(square[0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
        # S > T: queries are the last T positions, so the diagonal shifts by S - T.
        wide = jaxattn.causal_mask(2, 4)
        chex.assert_shape(wide, (1, 1, 2, 4))
        np.testing.assert_array_equal(wide[0, 0], [[1, 1, 1, 0], [1, 1, 1, 1]])

    def test_causal_mask_is_not_a_constant_under_jit(self):
        # A [T, S] constant would be embedded in every program that uses the mask
        # (and constant-folded by XLA at compile time); iotas keep the program small.
        mask = jax.jit(lambda: jaxattn.causal_mask(512, 640))
        np.testing.assert_array_equal(mask()[0, 0], np.tri(512, 640, 128, dtype=bool))
        assert len(mask.lower().as_text()) < 10_000

    @chex.variants(with_jit=True, without_jit=True)
    def test_segment_mask(self):
        q = jnp.array([[1, 1, 2, 0]])
        k = jnp.array([[1, 2, 2, 0, 0]])
        got = self.variant(jaxattn.segment_mask)(q, k)
        chex.assert_shape(got, (1, 1, 4, 5))
        np.testing.assert_array_equal(got[0, 0], [
            [1, 0, 0, 0, 0],
            [1, 0, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],  # padding (0) matches nothing, not even padding
        ])

    def test_combine_masks(self):
        assert jaxattn.combine_masks() is None
        assert jaxattn.combine_masks(None, None) is None
        a = jnp.array([[True, False, True]])  # [1, 3]
        np.testing.assert_array_equal(jaxattn.combine_masks(None, a, None), a)
        causal = jaxattn.causal_mask(3)  # [1, 1, 3, 3]
        got = jaxattn.combine_masks(causal, None, a)  # ranks 4 and 2
        chex.assert_shape(got, (1, 1, 3, 3))
        np.testing.assert_array_equal(got[0, 0], [[1, 0, 0], [1, 0, 0], [1, 0, 1]])


@pytest.mark.parametrize("call, match", [
    (lambda: jaxattn.padding_mask(jnp.zeros((2, 3, 4), jnp.int32)),
     r"tokens: expected shape \[B, S\], got \[2, 3, 4\]"),
    (lambda: jaxattn.padding_mask(jnp.zeros((2, 3))), "tokens: expected an integer"),
    (lambda: jaxattn.lengths_to_mask(jnp.zeros((2, 1), jnp.int32), 4),
     r"lengths: expected shape \[B\], got \[2, 1\]"),
    (lambda: jaxattn.lengths_to_mask(jnp.zeros((2,)), 4), "lengths: expected an integer"),
    (lambda: jaxattn.lengths_to_mask(jnp.zeros((2,), jnp.int32), -1), "max_len"),
    (lambda: jaxattn.key_padding_mask(jnp.ones((2, 3), jnp.int32)),
     "key_valid: expected a boolean mask"),
    (lambda: jaxattn.key_padding_mask(jnp.ones((3,), bool)),
     r"key_valid: expected shape \[B, S\], got \[3\]"),
    (lambda: jaxattn.cross_attention_mask(jnp.ones((2, 3), bool), jnp.ones((3, 4), bool)),
     r"key_valid: expected shape \[2, S\], got \[3, 4\]"),
    (lambda: jaxattn.cross_attention_mask(jnp.ones((2, 3)), jnp.ones((2, 4), bool)),
     "query_valid: expected a boolean mask"),
    (lambda: jaxattn.causal_mask(3.5), "T: expected a static int"),
    (lambda: jaxattn.causal_mask(3, -2), "S: expected a static int"),
    (lambda: jaxattn.segment_mask(jnp.ones((2, 3), jnp.int32), jnp.ones((1, 3), jnp.int32)),
     r"key_segments: expected shape \[2, S\], got \[1, 3\]"),
    (lambda: jaxattn.segment_mask(jnp.ones((2, 3), bool), jnp.ones((2, 3), jnp.int32)),
     "query_segments: expected an integer"),
    (lambda: jaxattn.combine_masks(jnp.ones((2, 3), bool), jnp.ones((2, 3))),
     r"masks\[1\]: expected a boolean mask"),
    (lambda: jaxattn.combine_masks(jnp.ones((2, 3), bool), jnp.ones((4, 3), bool)),
     r"masks: expected shapes broadcastable .* \[2, 3\], \[4, 3\]"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
