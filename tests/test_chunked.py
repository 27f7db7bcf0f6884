"""Chunked (online-softmax) attention: equal to dense attention in values and
gradients at several chunk sizes, including lengths the chunks do not divide;
its backward pass never builds a [T, S] array."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jaxattn

B, T, S, N, K, H = 3, 5, 7, 6, 3, 11


def _normal(i, shape, dtype=jnp.float32):
    # numpy draws: eager jax.random would compile a sampler per new shape.
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), dtype)


def _qkv(t=T, s=S, n=N, k=K):
    return _normal(0, (B, t, n, H)), _normal(1, (B, s, k, H)), _normal(2, (B, s, k, H))


def _value_and_grads(fn, q, k, v, jit=True):
    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return (out, *vjp(jnp.cos(jnp.arange(out.size, dtype=out.dtype)).reshape(out.shape)))
    # One jit compiles much faster than eager scans at these sizes.
    return jax.jit(run)(q, k, v) if jit else run(q, k, v)


@jax.jit
def _dense(q, k, v, mask):
    return jaxattn.dot_product_attention(q, k, v, mask, implementation="reference")




class ChunkedParityTest(chex.TestCase):

    # (query_chunk_size, key_chunk_size) pairs: chunks dividing neither T = 5
    # nor S = 7, size 1, and larger than the sequence (clipped to one block).
    @parameterized.named_parameters(
        ("none", {}, N, K, [(2, 3), (64, 64)]),
        ("causal_padding", {"causal": True, "key_lengths": (7, 4, 3)}, N, K, [(2, 3), (1, 4)]),
        ("segments_mqa", {"segments": True}, N, 1, [(3, 2)]),
        ("dense_mask_mha", {"dense": True}, 2, 2, [(2, 3)]),
    )
    def test_matches_dense(self, case, n, k, chunks):
        q, kk, v = _qkv(n=n, k=k)
        kwargs, masks = {}, []
        if case.get("causal"):
            kwargs["causal"] = True
            masks.append(jaxattn.causal_mask(T, S))
        if "key_lengths" in case:
            kwargs["key_valid"] = jaxattn.lengths_to_mask(jnp.array(case["key_lengths"]), S)
            masks.append(jaxattn.key_padding_mask(kwargs["key_valid"]))
        if case.get("segments"):
            q_seg = jnp.array([[1, 1, 2, 2, 0], [1, 1, 1, 1, 1], [1, 2, 3, 3, 3]])
            k_seg = jnp.array([[1, 2, 2, 2, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1], [1, 1, 2, 3, 3, 0, 0]])
            kwargs.update(query_segment_ids=q_seg, key_segment_ids=k_seg)
            masks.append(jaxattn.segment_mask(q_seg, k_seg))
        if case.get("dense"):
            kwargs["mask"] = jnp.asarray(np.random.default_rng(3).random((B, n, T, S)) < 0.6)
            masks.append(kwargs["mask"])
        mask = jaxattn.combine_masks(*masks)

        @jax.jit  # one compilation for the dense reference and every chunking
        def everything(q, k, v):
            want = _value_and_grads(lambda *a: _dense(*a, mask), q, k, v, jit=False)
            return want, [_value_and_grads(functools.partial(
                jaxattn.chunked_dot_product_attention, **kwargs, query_chunk_size=qc,
                key_chunk_size=kc), q, k, v, jit=False) for qc, kc in chunks]

        want, results = everything(q, kk, v)
        for (qc, kc), got in zip(chunks, results):
            chex.assert_shape(got, [(B, T, n, H), (B, T, n, H), (B, S, k, H), (B, S, k, H)])
            chex.assert_trees_all_close(got, want, atol=1e-5, custom_message=f"chunks {qc}, {kc}")

    @chex.variants(with_jit=True, without_jit=True)
    def test_via_dot_product_attention_with_fully_masked_rows(self):
        q, k, v = _qkv()
        q_valid = jnp.ones((B, T), bool).at[0, 3:].set(False)
        k_valid = jnp.ones((B, S), bool).at[1].set(False)
        mask = jaxattn.combine_masks(jaxattn.cross_attention_mask(q_valid, k_valid),
                                     jaxattn.causal_mask(T, S))
        want = _value_and_grads(lambda *a: _dense(*a, mask), q, k, v)
        fn = self.variant(lambda q, k, v: _value_and_grads(
            lambda *a: jaxattn.dot_product_attention(*a, mask, implementation="chunked"),
            q, k, v, jit=False))
        got = fn(q, k, v)
        chex.assert_trees_all_close(got, want, atol=1e-5)
        assert all(np.all(np.isfinite(x)) for x in got)
        np.testing.assert_array_equal(got[0][0, 3:], 0.0)
        np.testing.assert_array_equal(got[0][1], 0.0)
        np.testing.assert_array_equal(got[1][0, 3:], 0.0)  # d query of empty rows

    def test_causal_with_more_keys_than_queries(self):
        q, k, v = _qkv(t=3, s=8)
        want = _dense(q, k, v, jaxattn.causal_mask(3, 8))
        got = jax.jit(functools.partial(jaxattn.chunked_dot_product_attention, causal=True,
                                        query_chunk_size=2, key_chunk_size=3))(q, k, v)
        np.testing.assert_allclose(got, want, atol=1e-5)

    def test_bf16(self):
        q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
        got = jax.jit(functools.partial(jaxattn.chunked_dot_product_attention, causal=True,
                                        query_chunk_size=2, key_chunk_size=3))(q, k, v)
        assert got.dtype == jnp.bfloat16
        want = _dense(*(x.astype(jnp.float32) for x in (q, k, v)), jaxattn.causal_mask(T, S))
        np.testing.assert_allclose(np.asarray(got, np.float32), want, atol=3e-2)
        grads = jax.jit(jax.grad(lambda q: jnp.sum(jaxattn.chunked_dot_product_attention(
            q, k, v, query_chunk_size=2, key_chunk_size=3).astype(jnp.float32))))(q)
        assert grads.dtype == jnp.bfloat16


def _all_shapes(jaxpr):
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            yield tuple(getattr(var.aval, "shape", ()))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else [param]):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _all_shapes(inner)


def test_backward_never_builds_t_by_s():
    t = s = 48  # chunks of 16: a [.., 48, 48] array would be the full matrix
    q, k, v = _qkv(t=t, s=s)

    def loss(q, k, v):
        out = jaxattn.chunked_dot_product_attention(
            q, k, v, causal=True, query_chunk_size=16, key_chunk_size=16)
        return jnp.sum(out ** 2)

    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v).jaxpr
    shapes = list(_all_shapes(jaxpr))
    assert any(sh[-2:] == (16, 16) for sh in shapes)  # blocks exist
    assert not [sh for sh in shapes if sh.count(48) >= 2], "a [T, S] intermediate was built"
    # The dense path does build one: the check would catch it.
    dense = jax.make_jaxpr(jax.grad(lambda *a: jnp.sum(_dense(*a, jaxattn.causal_mask(t)) ** 2),
                                    argnums=(0, 1, 2)))(q, k, v).jaxpr
    assert [sh for sh in _all_shapes(dense) if sh.count(48) >= 2]


_q, _k, _v = _qkv()
_chunked = jaxattn.chunked_dot_product_attention


@pytest.mark.parametrize("call, match", [
    (lambda: _chunked(_q[0], _k, _v), r"query: expected shape \[B, T, N, H\], got \[5, 6, 11\]"),
    (lambda: _chunked(_q, _k[..., :4], _v), r"key: expected shape \[3, S, K, 11\], got \[3, 7, 3, 4\]"),
    (lambda: _chunked(_q, _k, _v[:, :2]), r"value: expected shape \[3, 7, 3, 11\], got \[3, 2, 3, 11\]"),
    (lambda: _chunked(_q, jnp.zeros((B, S, 4, H)), jnp.zeros((B, S, 4, H))), "key: expected a number of kv heads K dividing"),
    (lambda: _chunked(_q, _k, _v.astype(jnp.bfloat16)), "query, key, value: expected one dtype"),
    (lambda: _chunked(_q, _k, _v, query_chunk_size=0), "query_chunk_size: expected a positive int, got 0"),
    (lambda: _chunked(_q, _k, _v, jnp.ones((B, 1, T, S))), "mask: expected a boolean mask"),
    (lambda: _chunked(_q, _k, _v, jnp.ones((B, 1, S, T), bool)), r"mask: expected a shape broadcastable"),
    (lambda: _chunked(_q, _k, _v, key_valid=jnp.ones((B, T), bool)), r"key_valid: expected shape \[3, 7\], got \[3, 5\]"),
    (lambda: _chunked(_q, _k, _v, query_segment_ids=jnp.ones((B, T), jnp.int32)), "expected both or neither"),
    (lambda: _chunked(_q, _k, _v, query_segment_ids=jnp.ones((B, T), jnp.int32),
                      key_segment_ids=jnp.ones((B, T), jnp.int32)),
     r"key_segment_ids: expected shape \[3, 7\], got \[3, 5\]"),
    (lambda: jaxattn.dot_product_attention(_q, _k, _v, None, jnp.zeros((1, 1, T, S)), implementation="chunked"),
     "bias: the chunked implementation takes no bias"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
