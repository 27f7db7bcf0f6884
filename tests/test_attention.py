"""Attention: RNN-style attention and dot_product_attention, hand-computed,
parity (values and gradients) against a naive einsum, jax.nn and flax.linen,
properties, and every documented error."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxattn

B, T, S, N, H = 3, 5, 7, 2, 11
IMPLS = ("reference", "xla", None)


def _normal(i, shape, dtype=jnp.float32):
    # numpy draws: eager jax.random would compile a sampler per new shape.
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), dtype)


def _qkv(n=N, k=N, t=T, s=S, seed=0):
    return _normal(seed, (B, t, n, H)), _normal(seed + 1, (B, s, k, H)), _normal(seed + 2, (B, s, k, H))


def _masks():
    key_valid = jaxattn.lengths_to_mask(jnp.array([7, 4, 3]), S)  # >= 3 keys: no empty causal row
    padding = jaxattn.key_padding_mask(key_valid)  # [B, 1, 1, S]
    causal = jaxattn.causal_mask(T, S)  # [1, 1, T, S]
    return {"none": None, "padding": padding, "causal": causal,
            "combined": jaxattn.combine_masks(padding, causal)}


def _naive(q, k, v, mask=None, bias=None):
    """Independent reference: repeat kv heads, einsum, -inf fill, zero empty rows."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)  # [B, S, N, H]
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    if mask is not None:
        logits = jnp.where(mask, logits, -1e30)
    w = jax.nn.softmax(logits, axis=-1)
    if mask is not None:
        w = w * jnp.any(mask, axis=-1, keepdims=True)
    return jnp.einsum("bnts,bsnh->btnh", w, v)


def _flax(q, k, v, mask=None, bias=None):
    g = q.shape[2] // k.shape[2]  # flax.linen has no GQA: repeat the kv heads
    return nn.dot_product_attention(q, jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2),
                                    bias=bias, mask=mask)


def _jax_nn(q, k, v, mask=None, bias=None):
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask)


def _value_and_grads(fn, q, k, v, cot, jit=True):
    def run(q, k, v, cot):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(cot))
    # One jit compiles faster than eager op-by-op dispatch at these sizes.
    return jax.jit(run)(q, k, v, cot) if jit else run(q, k, v, cot)


class DotProductParityTest(chex.TestCase):

    @parameterized.named_parameters(
        [(name, name, N, N) for name in ("none", "padding", "causal", "combined")]
        + [("gqa_combined", "combined", 6, 3), ("mqa_causal", "causal", 6, 1)])
    def test_values_and_grads(self, mask_name, n, k):
        q, kk, v = _qkv(n, k)
        mask = _masks()[mask_name]
        cot = _normal(9, (B, T, n, H))
        fns = {"naive": _naive, "jax.nn": _jax_nn, "flax.linen": _flax}
        for impl in IMPLS:
            fns[f"jaxattn {impl}"] = functools.partial(
                jaxattn.dot_product_attention, implementation=impl)

        @jax.jit  # one compilation for all of them
        def everything(q, k, v, cot):
            return {name: _value_and_grads(lambda *a, fn=fn: fn(*a, mask), q, k, v, cot, jit=False)
                    for name, fn in fns.items()}

        results = everything(q, kk, v, cot)
        for name, got in results.items():
            chex.assert_shape(got, [(B, T, n, H), (B, T, n, H), (B, S, k, H), (B, S, k, H)])
            chex.assert_trees_all_close(got, results["naive"], atol=1e-5, custom_message=name)

    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_and_eager_agree(self):
        q, k, v = _qkv(6, 3)
        mask = _masks()["combined"]
        cot = _normal(9, (B, T, 6, H))
        want = _value_and_grads(lambda *a: _naive(*a, mask), q, k, v, cot)
        for impl in IMPLS:
            fn = self.variant(lambda q, k, v, impl=impl: _value_and_grads(
                lambda *a: jaxattn.dot_product_attention(*a, mask, implementation=impl),
                q, k, v, cot, jit=False))
            chex.assert_trees_all_close(fn(q, k, v), want, atol=1e-5, custom_message=str(impl))

    def test_bias_parity(self):
        q, k, v = _qkv()
        bias = _normal(5, (1, N, T, S))
        mask = _masks()["combined"]
        want = _naive(q, k, v, mask, bias)
        np.testing.assert_allclose(_flax(q, k, v, mask, bias), want, atol=1e-5)
        for impl in IMPLS:
            got = jaxattn.dot_product_attention(q, k, v, mask, bias, implementation=impl)
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(impl))
        g_ref = jax.jit(jax.grad(lambda b: jnp.sum(_naive(q, k, v, mask, b) ** 2)))(bias)
        for impl in IMPLS:
            g = jax.jit(jax.grad(lambda b: jnp.sum(jaxattn.dot_product_attention(
                q, k, v, mask, b, implementation=impl) ** 2)))(bias)
            np.testing.assert_allclose(g, g_ref, atol=1e-5, err_msg=str(impl))

    def test_scale(self):
        q, k, v = _qkv()
        want = _naive(q * 0.3 * np.sqrt(H), k, v)
        for impl in IMPLS:
            got = jaxattn.dot_product_attention(q, k, v, scale=0.3, implementation=impl)
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=str(impl))


class DotProductPropertiesTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_fully_masked_rows_are_zero_with_finite_grads(self):
        q, k, v = _qkv(6, 3)
        q_valid = jnp.ones((B, T), bool).at[0, 3:].set(False).at[2, 0].set(False)
        k_valid = jnp.ones((B, S), bool).at[1].set(False)  # row 1: nothing to see
        mask = jaxattn.cross_attention_mask(q_valid, k_valid)  # [B, 1, T, S]
        empty = ~jnp.any(mask[:, 0], axis=-1)  # [B, T]
        assert int(empty.sum()) == 2 + 1 + T
        cot = _normal(9, (B, T, 6, H))
        for impl in IMPLS:
            fn = self.variant(functools.partial(jaxattn.dot_product_attention, implementation=impl))
            out, dq, dk, dv = _value_and_grads(lambda *a: fn(*a, mask), q, k, v, cot, jit=False)
            chex.assert_shape(out, (B, T, 6, H))
            np.testing.assert_array_equal(np.asarray(out)[np.asarray(empty)], 0.0)
            for g in (dq, dk, dv):
                assert np.all(np.isfinite(g)), impl
            np.testing.assert_array_equal(np.asarray(dq)[np.asarray(empty)], 0.0)
            np.testing.assert_array_equal(dk[1], 0.0)  # batch 1 attends nothing
            np.testing.assert_allclose(out, _naive(q, k, v, mask), atol=1e-5)

    def test_causal_outputs_ignore_the_future(self):
        q, k, v = _qkv(t=S)
        mask = jaxattn.causal_mask(S)
        t = 3
        noise = [_normal(20 + i, x.shape) for i, x in enumerate((q, k, v))]
        changed = [x.at[:, t + 1:].add(n[:, t + 1:]) for x, n in zip((q, k, v), noise)]
        for impl in IMPLS:
            before = jaxattn.dot_product_attention(q, k, v, mask, implementation=impl)
            after = jaxattn.dot_product_attention(*changed, mask, implementation=impl)
            np.testing.assert_array_equal(before[:, :t + 1], after[:, :t + 1])
            assert not np.allclose(before[:, t + 1:], after[:, t + 1:])

    def test_return_weights(self):
        q, k, v = _qkv(6, 3)
        mask = _masks()["combined"]
        out, w = jaxattn.dot_product_attention(q, k, v, mask, return_weights=True)
        chex.assert_shape(w, (B, 6, T, S))
        np.testing.assert_allclose(w, jaxattn.masked_softmax(
            jaxattn.scaled_dot_product_score(q, k), mask), atol=1e-7)
        np.testing.assert_allclose(out, jaxattn.dot_product_attention(q, k, v, mask), atol=1e-5)
        assert np.all(np.asarray(w)[np.broadcast_to(~np.asarray(mask), w.shape)] == 0)

    def test_dropout(self):
        # value = identity, so each output row is the dropped-out weight row.
        q, k, _ = _qkv(s=H)
        v = jnp.broadcast_to(jnp.eye(H)[None, :, None, :], (B, H, N, H))
        rate = 0.4
        drop = jax.jit(functools.partial(jaxattn.dot_product_attention, dropout_rate=rate,
                                         return_weights=True))
        out, w = drop(q, k, v, dropout_rng=jax.random.PRNGKey(1))
        w = np.transpose(np.asarray(w), (0, 2, 1, 3))  # [B, T, N, S]
        kept = np.isclose(np.asarray(out), w / (1 - rate), rtol=1e-5)
        dropped = np.asarray(out) == 0
        assert np.all(kept | dropped)
        assert 0.2 < dropped.mean() < 0.6
        out2, _ = drop(q, k, v, dropout_rng=jax.random.PRNGKey(1))
        out3, _ = drop(q, k, v, dropout_rng=jax.random.PRNGKey(2))
        np.testing.assert_array_equal(out, out2)
        assert not np.array_equal(out, out3)

    def test_bf16(self):
        q, k, v = _qkv(6, 3)
        mask = _masks()["combined"]
        want = _naive(q, k, v, mask)
        for impl in IMPLS:
            got = jaxattn.dot_product_attention(
                *(x.astype(jnp.bfloat16) for x in (q, k, v)), mask, implementation=impl)
            assert got.dtype == jnp.bfloat16
            np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=6e-2)

    def test_jit_traces_once_per_shape(self):
        q, k, v = _qkv()
        f = jax.jit(chex.assert_max_traces(jaxattn.dot_product_attention, n=1))
        f(q, k, v, _masks()["padding"])
        f(q + 1.0, k, v, _masks()["padding"] & False)


class RnnAttentionTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_weighted_context_hand(self):
        w = jnp.array([[[0.25, 0.75, 0.0]]])  # [1, 1, 3]
        vals = jnp.array([[[4.0, 0.0], [0.0, 8.0], [100.0, 100.0]]])  # [1, 3, 2]
        got = self.variant(jaxattn.weighted_context)(w, vals)
        chex.assert_shape(got, (1, 1, 2))
        np.testing.assert_allclose(got, [[[1.0, 6.0]]])

    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_attention(self):
        dq, dk, dv, a = 11, 13, 9, 4
        q, keys, vals = _normal(0, (B, T, dq)), _normal(1, (B, S, dk)), _normal(2, (B, S, dv))
        v, wq, wk = _normal(3, (a,)), _normal(4, (dq, a)), _normal(5, (dk, a))
        key_valid = jaxattn.lengths_to_mask(jnp.array([7, 4, 0]), S)  # batch 2: no keys
        ctx, w = self.variant(jaxattn.additive_attention)(q, keys, vals, v, wq, wk, key_valid)
        chex.assert_shape([ctx, w], [(B, T, dv), (B, T, S)])
        e = jaxattn.additive_score(q, keys, v, wq, wk)
        ew = np.exp(np.asarray(e, np.float64)) * np.asarray(key_valid)[:, None, :]
        want_w = ew / np.maximum(ew.sum(-1, keepdims=True), 1e-300)
        np.testing.assert_allclose(w, want_w, atol=1e-6)
        np.testing.assert_allclose(ctx, np.einsum("bts,bsv->btv", want_w, vals), atol=1e-5)
        np.testing.assert_array_equal(ctx[2], 0.0)
        # A [B, T, S] mask is used as given.
        mask3 = jnp.broadcast_to(key_valid[:, None, :], (B, T, S)).at[0, 1, :3].set(False)
        _, w3 = self.variant(jaxattn.additive_attention)(q, keys, vals, v, wq, wk, mask3)
        np.testing.assert_array_equal(w3[0, 1, :3], 0.0)

    def test_luong_attention_each_score(self):
        d, a = 11, 4
        q, keys = _normal(0, (B, T, d)), _normal(1, (B, S, d))
        params = {"dot": {}, "general": {"w": _normal(2, (d, d))},
                  "concat": {"v": _normal(3, (a,)), "w_query": _normal(4, (d, a)),
                             "w_key": _normal(5, (d, a))},
                  "location": {"w": _normal(6, (d, S))}}
        key_valid = jaxattn.lengths_to_mask(jnp.array([7, 4, 2]), S)
        for name, score_fn in jaxattn.LUONG_SCORES.items():
            fn = functools.partial(score_fn, **params[name])
            ctx, w = jaxattn.luong_attention(q, keys, keys, fn, key_valid)
            chex.assert_shape([ctx, w], [(B, T, d), (B, T, S)])
            want_w = jaxattn.masked_softmax(fn(q, keys), key_valid[:, None, :])
            np.testing.assert_allclose(w, want_w, atol=1e-6)
            np.testing.assert_allclose(ctx, jnp.einsum("BTS,BSD->BTD", want_w, keys), atol=1e-5)


_q, _k, _v = _qkv()


@pytest.mark.parametrize("call, match", [
    (lambda: jaxattn.dot_product_attention(_q[0], _k, _v), r"query: expected shape \[B, T, N, H\], got \[5, 2, 11\]"),
    (lambda: jaxattn.dot_product_attention(_q, _k[:2], _v), r"key: expected shape \[3, S, K, 11\], got \[2, 7, 2, 11\]"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v[:, :3]), r"value: expected shape \[3, 7, 2, 11\], got \[3, 3, 2, 11\]"),
    (lambda: jaxattn.dot_product_attention(_normal(0, (B, T, 3, H)), _k, _v),
     "key: expected a number of kv heads K dividing the query heads N=3"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v.astype(jnp.bfloat16)), "query, key, value: expected one dtype"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, jnp.ones((B, 1, 1, S))), "mask: expected a boolean mask"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, jnp.ones((B, 1, 1, T), bool)),
     r"mask: expected a shape broadcastable to \[B, N, T, S\] = \[3, 2, 5, 7\], got \[3, 1, 1, 5\]"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, None, jnp.ones((2, 1, 1, S))),
     r"bias: expected a shape broadcastable to \[B, N, T, S\] = \[3, 2, 5, 7\], got \[2, 1, 1, 7\]"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, implementation="flash"), "implementation: expected one of"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, implementation="xla", return_weights=True),
     "implementation: 'xla' cannot return weights"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, dropout_rate=1.0, dropout_rng=jax.random.PRNGKey(0)),
     "dropout_rate: expected 0 <= rate < 1, got 1.0"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, dropout_rate=0.1), "dropout_rng: expected a PRNG key"),
    (lambda: jaxattn.weighted_context(jnp.zeros((3, 5)), jnp.zeros((3, 5, 2))), r"weights: expected shape \[B, T, S\], got \[3, 5\]"),
    (lambda: jaxattn.weighted_context(jnp.zeros((3, 5, 7)), jnp.zeros((3, 6, 2))),
     r"values: expected shape \[3, 7, U\], got \[3, 6, 2\]"),
    (lambda: jaxattn.additive_attention(jnp.zeros((3, 5, 4)), jnp.zeros((3, 7, 4)), jnp.zeros((3, 7, 2)),
                                        jnp.zeros(4), mask=jnp.ones((3, 5), bool)),
     r"mask: expected shape \[3, 7\], got \[3, 5\]"),
    (lambda: jaxattn.additive_attention(jnp.zeros((3, 5, 4)), jnp.zeros((3, 7, 4)), jnp.zeros((3, 7, 2)),
                                        jnp.zeros(4), mask=jnp.ones((3, 1, 7), bool)),
     r"mask: expected shape \[3, 5, 7\], got \[3, 1, 7\]"),
    (lambda: jaxattn.additive_attention(jnp.zeros((3, 5, 4)), jnp.zeros((3, 7, 4)), jnp.zeros((3, 6, 2)),
                                        jnp.zeros(4)),
     r"values: expected shape \[3, 7, U\], got \[3, 6, 2\]"),
    (lambda: jaxattn.luong_attention(jnp.zeros((3, 5, 4)), jnp.zeros((3, 7, 4)), jnp.zeros((3, 7, 2)),
                                     lambda q, k: jnp.zeros((3, 7, 5))),
     r"score_fn\(query, keys\): expected shape \[3, 5, 7\], got \[3, 7, 5\]"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_platform_of_is_the_arrays_backend_and_the_default_under_a_trace():
    from jaxattn import attention
    x = jnp.ones((2, 3))
    assert jaxattn.platform_of(x) == "cpu"
    seen = []
    jax.jit(lambda y: seen.append(jaxattn.platform_of(y)) or y)(x)
    assert seen == [jax.default_backend()]
    assert jaxattn.platform_of(np.ones(3)) == jax.default_backend()  # a NumPy array has no device
    assert attention.platform_of is jaxattn.platform_of  # one helper for every CPU-only rewrite
