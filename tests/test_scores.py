"""Energies: hand-computed tiny cases, odd-size parity with numpy loops,
check_grads on each score, and every documented error."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxattn
from jaxattn.scores import location_score

B, T, S, DQ, DK, A = 3, 5, 7, 11, 13, 9


def _normal(i, shape, dtype=jnp.float32):
    # numpy draws: eager jax.random would compile a sampler per new shape.
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), dtype)


class HandComputedTest(chex.TestCase):
    """1 query, 2 keys, numbers small enough to check on paper."""

    q = jnp.array([[[1.0, 2.0]]])  # [1, 1, 2]
    k = jnp.array([[[3.0, 4.0], [-1.0, 0.0]]])  # [1, 2, 2]

    @chex.variants(with_jit=True, without_jit=True)
    def test_dot(self):
        got = self.variant(jaxattn.dot_score)(self.q, self.k)
        chex.assert_shape(got, (1, 1, 2))
        np.testing.assert_allclose(got, [[[11.0, -1.0]]])  # 1*3+2*4, 1*-1+2*0

    @chex.variants(with_jit=True, without_jit=True)
    def test_general(self):
        w = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # q^T W = [1, 4]
        got = self.variant(jaxattn.general_score)(self.q, self.k, w)
        chex.assert_shape(got, (1, 1, 2))
        np.testing.assert_allclose(got, [[[19.0, -1.0]]])  # 1*3+4*4, 1*-1+4*0

    @chex.variants(with_jit=True, without_jit=True)
    def test_additive_and_concat(self):
        v = jnp.array([1.0, -1.0])
        w_q = jnp.array([[0.5, 0.0], [0.0, 0.0]])  # W q = [0.5, 0]
        w_k = jnp.array([[0.0, 0.5], [0.0, 0.0]])  # U k = [0, 1.5], [0, -0.5]
        want = [[[np.tanh(0.5) - np.tanh(1.5), np.tanh(0.5) - np.tanh(-0.5)]]]
        got = self.variant(jaxattn.additive_score)(self.q, self.k, v, w_q, w_k)
        chex.assert_shape(got, (1, 1, 2))
        np.testing.assert_allclose(got, want, rtol=1e-6)
        got = self.variant(jaxattn.concat_score)(self.q, self.k, v, w_q, w_k)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        # Pre-projected keys (w_key=None) give the same energies.
        uk = jnp.einsum("BSC,CA->BSA", self.k, w_k)
        got = self.variant(jaxattn.additive_score)(self.q, uk, v, w_q, None)
        np.testing.assert_allclose(got, want, rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_location(self):
        w = jnp.array([[1.0, 0.0, 5.0], [0.0, -1.0, 5.0]])  # W_a for L = 3 source positions
        got = self.variant(location_score)(self.q, self.k, w)
        chex.assert_shape(got, (1, 1, 2))  # S = 2 keys: the first 2 columns of W_a
        np.testing.assert_allclose(got, [[[1.0, -2.0]]])  # [1*1+2*0, 1*0+2*-1]
        # The keys' contents do not matter, only their number.
        got = self.variant(location_score)(self.q, 7.0 * self.k, w)
        np.testing.assert_allclose(got, [[[1.0, -2.0]]])


def _loop_additive(q, k, v, wq, wk):
    q, k, v, wq, wk = map(np.asarray, (q, k, v, wq, wk))
    out = np.zeros((q.shape[0], q.shape[1], k.shape[1]))
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            for s in range(k.shape[1]):
                out[b, t, s] = v @ np.tanh(q[b, t] @ wq + k[b, s] @ wk)
    return out


def _loop_general(q, k, w):
    q, k, w = map(np.asarray, (q, k, w))
    out = np.zeros((q.shape[0], q.shape[1], k.shape[1]))
    for b in range(q.shape[0]):
        for t in range(q.shape[1]):
            for s in range(k.shape[1]):
                out[b, t, s] = q[b, t] @ w @ k[b, s]
    return out


class OddSizesTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_rnn_scores(self):
        q, k = _normal(0, (B, T, DQ)), _normal(1, (B, S, DK))
        v, wq, wk, w = _normal(2, (A,)), _normal(3, (DQ, A)), _normal(4, (DK, A)), _normal(5, (DQ, DK))
        got = self.variant(jaxattn.additive_score)(q, k, v, wq, wk)
        chex.assert_shape(got, (B, T, S))
        np.testing.assert_allclose(got, _loop_additive(q, k, v, wq, wk), atol=1e-5)
        got = self.variant(jaxattn.concat_score)(q, k, v, wq, wk)
        np.testing.assert_allclose(got, _loop_additive(q, k, v, wq, wk), atol=1e-5)
        got = self.variant(jaxattn.general_score)(q, k, w)
        chex.assert_shape(got, (B, T, S))
        np.testing.assert_allclose(got, _loop_general(q, k, w), atol=1e-4, rtol=1e-5)
        got = self.variant(jaxattn.dot_score)(q, k[..., :DQ])
        chex.assert_shape(got, (B, T, S))
        np.testing.assert_allclose(got, _loop_general(q, k[..., :DQ], np.eye(DQ)), atol=1e-5)
        w_location = _normal(6, (DQ, S + 4))  # L = S + 4: the first S columns are read
        got = self.variant(location_score)(q, k, w_location)
        chex.assert_shape(got, (B, T, S))
        want = np.einsum("btq,qs->bts", np.asarray(q), np.asarray(w_location)[:, :S])
        np.testing.assert_allclose(got, want, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_scaled_dot_product_gqa(self):
        n, kh, h = 6, 2, 11
        q, k = _normal(6, (B, T, n, h)), _normal(7, (B, S, kh, h))
        got = self.variant(jaxattn.scaled_dot_product_score)(q, k)
        chex.assert_shape(got, (B, n, T, S))
        qn, kn = np.asarray(q), np.asarray(k)
        for head in range(n):  # query head n reads kv head n // (N / K)
            want = np.einsum("btd,bsd->bts", qn[:, :, head], kn[:, :, head // (n // kh)])
            np.testing.assert_allclose(got[:, head], want / np.sqrt(h), atol=1e-5)
        got = self.variant(functools.partial(jaxattn.scaled_dot_product_score, scale=0.5))(q, k)
        np.testing.assert_allclose(got[:, 0], 0.5 * np.einsum("btd,bsd->bts", qn[:, :, 0], kn[:, :, 0]),
                                   atol=1e-5)

    def test_bf16_energies_are_float32(self):
        q, k = _normal(8, (1, 3, 2, 8), jnp.bfloat16), _normal(9, (1, 4, 2, 8), jnp.bfloat16)
        assert jaxattn.scaled_dot_product_score(q, k).dtype == jnp.float32

    def test_luong_registry(self):
        energies = {name: score.energy for name, score in jaxattn.LUONG_SCORES.items()}
        assert energies == {"dot": jaxattn.dot_score, "general": jaxattn.general_score,
                            "concat": jaxattn.concat_score, "location": location_score}
        q, c, a, length = 3, 4, 5, 7
        query, keys = _normal(10, (2, 1, q)), _normal(11, (2, 6, c))
        for name, score in jaxattn.LUONG_SCORES.items():
            shapes = score.weight_shapes(q, c, a, length)
            weights = {kw: _normal(12 + i, shape) for i, (kw, shape) in enumerate(shapes.items())}
            keys_ = keys[..., :q] if name == "dot" else keys  # dot: one width for both
            # The declared shapes are the ones the energy accepts; the entry calls the energy.
            chex.assert_shape(score(query, keys_, **weights), (2, 1, 6))
            np.testing.assert_array_equal(score(query, keys_, **weights),
                                          score.energy(query, keys_, **weights))


def test_check_grads_every_score():
    with jax.enable_x64(True):
        f64 = functools.partial(_normal, dtype=jnp.float64)
        q, k = f64(0, (2, 3, 5)), f64(1, (2, 4, 7))
        v, wq, wk, w = f64(2, (3,)), f64(3, (5, 3)), f64(4, (7, 3)), f64(5, (5, 7))
        kw = dict(order=1, modes=("fwd", "rev"), atol=1e-6, rtol=1e-6)
        check_grads(jax.jit(jaxattn.additive_score), (q, k, v, wq, wk), **kw)
        check_grads(jax.jit(jaxattn.concat_score), (q, k, v, wq, wk), **kw)
        check_grads(jax.jit(jaxattn.general_score), (q, k, w), **kw)
        check_grads(jax.jit(jaxattn.dot_score), (q, k[..., :5]), **kw)
        check_grads(jax.jit(location_score), (q, k, f64(8, (5, 6))), **kw)
        check_grads(jax.jit(jaxattn.scaled_dot_product_score),
                    (f64(6, (2, 3, 4, 5)), f64(7, (2, 4, 2, 5))), **kw)


_q, _k = jnp.zeros((2, 3, 5)), jnp.zeros((2, 4, 7))


@pytest.mark.parametrize("call, match", [
    (lambda: jaxattn.dot_score(jnp.zeros((3, 5)), _k), r"query: expected shape \[B, T, Q\], got \[3, 5\]"),
    (lambda: jaxattn.dot_score(_q, jnp.zeros((3, 4, 5))), r"keys: expected shape \[2, S, C\], got \[3, 4, 5\]"),
    (lambda: jaxattn.dot_score(_q, _k), r"keys: expected shape \[2, 4, 5\] .*got \[2, 4, 7\]"),
    (lambda: jaxattn.general_score(_q, _k, jnp.zeros((7, 5))), r"w: expected shape \[5, 7\], got \[7, 5\]"),
    (lambda: jaxattn.additive_score(_q, _k, jnp.zeros((3,)), jnp.zeros((5, 4)), jnp.zeros((7, 3))),
     r"w_query: expected shape \[5, 3\], got \[5, 4\]"),
    (lambda: jaxattn.additive_score(_q, _k, jnp.zeros((3,)), jnp.zeros((5, 3)), None),
     "w_key: is None so the input must already have the attention width A=3 .* got last axis 7"),
    (lambda: jaxattn.additive_score(_q, _k, jnp.zeros((3, 1)), None, None), r"v: expected shape \[A\], got \[3, 1\]"),
    (lambda: jaxattn.concat_score(_q, _k, jnp.zeros((3,)), None, jnp.zeros((7, 3))), "w_query, w_key"),
    (lambda: location_score(_q, _k, jnp.zeros((4, 9))), r"w: expected shape \[5, L\], got \[4, 9\]"),
    (lambda: location_score(_q, _k, jnp.zeros((5, 3))),
     r"keys: location_score has weights for L=3 source positions .* got S=4"),
    (lambda: jaxattn.scaled_dot_product_score(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4, 5))),
     r"query: expected shape \[B, T, N, H\], got \[2, 3, 4\]"),
    (lambda: jaxattn.scaled_dot_product_score(jnp.zeros((2, 3, 4, 5)), jnp.zeros((2, 3, 4, 6))),
     r"key: expected shape \[2, S, K, 5\], got \[2, 3, 4, 6\]"),
    (lambda: jaxattn.scaled_dot_product_score(jnp.zeros((2, 3, 4, 5)), jnp.zeros((2, 3, 3, 5))),
     "key: expected a number of kv heads K dividing the query heads N=4"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
