"""Decode-time kv cache: writes, and step-by-step decoding equal to full
causal attention."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattn

B, L, N, K, H = 3, 7, 6, 2, 5


def _normal(i, shape):
    # numpy draws: eager jax.random would compile a sampler per new shape.
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32)


class CacheTest(chex.TestCase):

    def test_init(self):
        cache = jaxattn.init_kv_cache(B, L, K, H, jnp.bfloat16)
        chex.assert_shape([cache["key"], cache["value"]], [(B, L, K, H)] * 2)
        assert cache["key"].dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(cache["value"], np.float32), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_update_writes_one_position(self):
        cache = jaxattn.init_kv_cache(B, L, K, H)
        k, v = _normal(0, (B, 1, K, H)), _normal(1, (B, 1, K, H))
        new = self.variant(jaxattn.update_kv_cache)(cache, k, v, jnp.int32(4))
        chex.assert_shape([new["key"], new["value"]], [(B, L, K, H)] * 2)
        np.testing.assert_array_equal(new["key"][:, 4], k[:, 0])
        np.testing.assert_array_equal(new["value"][:, 4], v[:, 0])
        np.testing.assert_array_equal(np.delete(np.asarray(new["key"]), 4, axis=1), 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_step_by_step_equals_causal_attention(self):
        q, k, v = _normal(0, (B, L, N, H)), _normal(1, (B, L, K, H)), _normal(2, (B, L, K, H))
        key_valid = jnp.ones((B, L), bool).at[1, 0].set(False)  # e.g. a left-padded prompt
        mask = jaxattn.combine_masks(jaxattn.causal_mask(L), jaxattn.key_padding_mask(key_valid))
        want = jaxattn.dot_product_attention(q, k, v, mask, implementation="reference")

        @self.variant
        def step(cache, i, q_i, k_i, v_i):
            cache = jaxattn.update_kv_cache(cache, k_i, v_i, i)
            return cache, jaxattn.cached_attention(q_i, cache, i, key_valid)

        cache = jaxattn.init_kv_cache(B, L, K, H)
        for i in range(L):
            sl = slice(i, i + 1)
            cache, out = step(cache, jnp.int32(i), q[:, sl], k[:, sl], v[:, sl])
            chex.assert_shape(out, (B, 1, N, H))
            np.testing.assert_allclose(out[:, 0], want[:, i], atol=1e-5, err_msg=f"step {i}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_step_by_step_with_bias_equals_full_attention(self):
        q, k, v = _normal(0, (B, L, N, H)), _normal(1, (B, L, K, H)), _normal(2, (B, L, K, H))
        offset = jnp.abs(jnp.arange(L)[:, None] - jnp.arange(L)[None, :])  # [T, S]
        biases = {
            "[B, N, T, S], random at the future positions too": _normal(3, (B, N, L, L)),
            # ALiBi-like, without the batch axis: broadcast as in the uncached call.
            "[N, T, S]": -jnp.arange(1.0, N + 1.0)[:, None, None] * offset[None],
        }

        @self.variant
        def step(cache, i, q_i, k_i, v_i, bias_i):
            cache = jaxattn.update_kv_cache(cache, k_i, v_i, i)
            return cache, jaxattn.cached_attention(q_i, cache, i, bias=bias_i)

        for name, bias in biases.items():
            want = jaxattn.dot_product_attention(q, k, v, jaxattn.causal_mask(L), bias,
                                                 implementation="reference")  # [B, T, N, H]
            cache = jaxattn.init_kv_cache(B, L, K, H)
            for i in range(L):
                sl = slice(i, i + 1)
                cache, out = step(cache, jnp.int32(i), q[:, sl], k[:, sl], v[:, sl],
                                  bias[..., sl, :])  # bias [..., 1, L]
                chex.assert_shape(out, (B, 1, N, H))
                np.testing.assert_allclose(out[:, 0], want[:, i], atol=1e-5,
                                           err_msg=f"bias {name}, step {i}")

    def test_future_positions_are_ignored(self):
        # Garbage beyond index must not leak in.
        q = _normal(0, (B, 1, N, H))
        cache = {"key": _normal(1, (B, L, K, H)), "value": _normal(2, (B, L, K, H))}
        dirty = {name: x.at[:, 3:].set(1e4) for name, x in cache.items()}
        attend = jax.jit(jaxattn.cached_attention)
        np.testing.assert_allclose(attend(q, cache, jnp.int32(2)), attend(q, dirty, jnp.int32(2)),
                                   atol=1e-6)


_c = jaxattn.init_kv_cache(B, L, K, H)
_step = jnp.zeros((B, 1, K, H))


@pytest.mark.parametrize("call, match", [
    (lambda: jaxattn.init_kv_cache(B, 0, K, H), "max_len: expected a positive int, got 0"),
    (lambda: jaxattn.update_kv_cache({"key": _c["key"]}, _step, _step, 0), r"cache: expected keys \['key', 'value'\]"),
    (lambda: jaxattn.update_kv_cache(_c, jnp.zeros((B, 2, K, H)), _step, 0),
     r"key_step: expected shape \[3, 1, 2, 5\], got \[3, 2, 2, 5\]"),
    (lambda: jaxattn.update_kv_cache(_c, _step, jnp.zeros((B, 1, K, 4)), 0),
     r"value_step: expected shape \[3, 1, 2, 5\], got \[3, 1, 2, 4\]"),
    (lambda: jaxattn.update_kv_cache(_c, _step, _step, jnp.zeros((2,), jnp.int32)),
     r"index: expected an integer scalar, got dtype int32 with shape \[2\]"),
    (lambda: jaxattn.update_kv_cache(_c, _step, _step, 1.0), "index: expected an integer scalar"),
    (lambda: jaxattn.cached_attention(jnp.zeros((B, 2, N, H)), _c, 0), r"query_step: expected shape \[3, 1, N, 5\]"),
    (lambda: jaxattn.cached_attention(jnp.zeros((B, 1, N, H)), _c, 0, jnp.ones((B, L))),
     "key_valid: expected a boolean mask"),
    (lambda: jaxattn.cached_attention(jnp.zeros((B, 1, N, H)), _c, 0, jnp.ones((B, 3), bool)),
     r"key_valid: expected shape \[3, 7\], got \[3, 3\]"),
    (lambda: jaxattn.cached_attention(jnp.zeros((B, 1, N, H)), _c, 0, bias=jnp.zeros((B, N, 2, L))),
     r"bias: expected a shape broadcastable to \[B, N, T, S\] = \[3, 6, 1, 7\], got \[3, 6, 2, 7\]"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
