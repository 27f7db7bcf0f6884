"""Multi-head attention as a pure function: layout and values equal to
flax.linen.MultiHeadDotProductAttention, grouped-query heads, properties, errors."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattn

B, T, S, N, H, D = 3, 5, 7, 2, 11, 9


def _normal(i, shape):
    # numpy draws: eager jax.random would compile a sampler per new shape.
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), jnp.float32)


# Jitted once: eager op-by-op dispatch compiles more, at these sizes, than one jit.
_mha = jax.jit(jaxattn.multi_head_attention,
               static_argnames=("return_weights", "implementation", "dropout_rate"))


def _flax_mha(**kw):
    return nn.MultiHeadDotProductAttention(num_heads=N, qkv_features=N * H, **kw)


class MultiHeadTest(chex.TestCase):

    def test_init_layout_matches_flax(self):
        xq, xkv = _normal(0, (B, T, D)), _normal(1, (B, S, 13))
        flax_params = _flax_mha(out_features=6).init(jax.random.PRNGKey(0), xq, xkv)["params"]
        ours = jaxattn.init_multi_head_params(
            jax.random.PRNGKey(0), D, N, head_dim=H, kv_features=13, out_features=6)
        chex.assert_trees_all_equal_shapes_and_dtypes(ours, flax_params)
        # LeCun-normal in the fan-in, as Flax: variance ~ 1 / fan_in.
        big = jaxattn.init_multi_head_params(jax.random.PRNGKey(1), 256, 4)
        np.testing.assert_allclose(np.var(big["query"]["kernel"]), 1 / 256, rtol=0.1)
        np.testing.assert_allclose(np.var(big["out"]["kernel"]), 1 / 256, rtol=0.1)
        np.testing.assert_array_equal(big["query"]["bias"], 0.0)

    def test_init_options(self):
        p = jaxattn.init_multi_head_params(jax.random.PRNGKey(0), 12, 6, num_kv_heads=2,
                                           use_bias=False, dtype=jnp.bfloat16)
        chex.assert_shape([p["query"]["kernel"], p["key"]["kernel"], p["value"]["kernel"],
                           p["out"]["kernel"]], [(12, 6, 2), (12, 2, 2), (12, 2, 2), (6, 2, 12)])
        assert all("bias" not in p[name] for name in p)
        assert p["query"]["kernel"].dtype == jnp.bfloat16

    @chex.variants(with_jit=True, without_jit=True)
    def test_matches_flax_values_and_grads(self):
        xq, xkv = _normal(0, (B, T, D)), _normal(1, (B, S, D))
        key_valid = jaxattn.lengths_to_mask(jnp.array([7, 4, 2]), S)
        mask = jaxattn.cross_attention_mask(jnp.ones((B, T), bool), key_valid)  # [B, 1, T, S]
        module = _flax_mha()
        params = module.init(jax.random.PRNGKey(2), xq, xkv)["params"]

        def flax_loss(p, xq, xkv):
            return jnp.sum(jnp.sin(module.apply({"params": p}, xq, xkv, mask=mask)))

        def our_loss(p, xq, xkv):
            out = jaxattn.multi_head_attention(p, xq, xkv, mask)
            chex.assert_shape(out, (B, T, D))
            return jnp.sum(jnp.sin(out))

        want = jax.value_and_grad(flax_loss, argnums=(0, 1, 2))(params, xq, xkv)
        got = self.variant(jax.value_and_grad(our_loss, argnums=(0, 1, 2)))(params, xq, xkv)
        chex.assert_trees_all_close(got, want, atol=1e-5)

    def test_self_attention_and_out_features(self):
        x = _normal(0, (B, T, D))
        module = _flax_mha(out_features=4)
        params = module.init(jax.random.PRNGKey(3), x)["params"]
        mask = jaxattn.causal_mask(T)
        out = _mha(params, x, mask=mask)
        chex.assert_shape(out, (B, T, 4))
        np.testing.assert_allclose(out, module.apply({"params": params}, x, mask=mask), atol=1e-5)

    def test_grouped_query_equals_repeated_heads(self):
        n, k = 6, 2
        x = _normal(0, (B, T, D))
        p = jaxattn.init_multi_head_params(jax.random.PRNGKey(4), D, n, head_dim=H, num_kv_heads=k)
        rep = {name: {"kernel": jnp.repeat(p[name]["kernel"], n // k, axis=1),
                      "bias": jnp.repeat(p[name]["bias"], n // k, axis=0)}
               for name in ("key", "value")}
        full = dict(p, **rep)  # the same model written with N kv heads
        mask = jaxattn.causal_mask(T)
        out, w = _mha(p, x, mask=mask, return_weights=True)
        chex.assert_shape([out, w], [(B, T, D), (B, n, T, T)])
        np.testing.assert_allclose(out, _mha(full, x, mask=mask), atol=1e-5)

    def test_self_attention_is_permutation_equivariant(self):
        x = _normal(0, (B, T, D))
        p = jaxattn.init_multi_head_params(jax.random.PRNGKey(5), D, N, head_dim=H)
        perm = np.array([3, 0, 4, 1, 2])
        out = _mha(p, x)
        np.testing.assert_allclose(_mha(p, x[:, perm]), out[:, perm], atol=1e-5)

    def test_dropout_is_passed_through(self):
        x = _normal(0, (B, T, D))
        p = jaxattn.init_multi_head_params(jax.random.PRNGKey(6), D, N, head_dim=H)
        a = _mha(p, x, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(0))
        b = _mha(p, x, dropout_rate=0.5, dropout_rng=jax.random.PRNGKey(1))
        assert not np.allclose(a, b)

    def test_project_heads_and_out(self):
        p = jaxattn.init_multi_head_params(jax.random.PRNGKey(7), D, N, head_dim=H)
        x = _normal(0, (B, T, D))
        heads = jaxattn.project_heads(p["query"], x)
        chex.assert_shape(heads, (B, T, N, H))
        np.testing.assert_allclose(
            heads[:, :, 1], x @ p["query"]["kernel"][:, 1] + p["query"]["bias"][1][None, None], atol=1e-5)
        out = jaxattn.project_out(p["out"], heads)
        chex.assert_shape(out, (B, T, D))
        # The concat of heads restores the model width: [B, T, N*H] @ [N*H, D].
        flat = heads.reshape(B, T, N * H) @ p["out"]["kernel"].reshape(N * H, D)
        np.testing.assert_allclose(out, flat + p["out"]["bias"][None, None], atol=1e-5)


_p = jaxattn.init_multi_head_params(jax.random.PRNGKey(0), D, N, head_dim=H)
_x = jnp.zeros((B, T, D))


@pytest.mark.parametrize("call, match", [
    (lambda: jaxattn.init_multi_head_params(jax.random.PRNGKey(0), 10, 3), "num_heads: expected a divisor of features=10"),
    (lambda: jaxattn.init_multi_head_params(jax.random.PRNGKey(0), 12, 6, num_kv_heads=4),
     "num_kv_heads: expected a divisor of num_heads=6, got 4"),
    (lambda: jaxattn.init_multi_head_params(jax.random.PRNGKey(0), 0, 3), "features: expected a positive int"),
    (lambda: jaxattn.init_multi_head_params(jax.random.PRNGKey(0), 12, 5, head_dim=0),
     "head_dim: expected a positive int or None, got 0"),
    (lambda: jaxattn.project_heads(_p["query"], jnp.zeros((B, T, 4))), r"x: expected shape \[B, T, 9\], got \[3, 5, 4\]"),
    (lambda: jaxattn.project_heads({"kernel": jnp.zeros((D, N * H))}, _x),
     r"proj_params\['kernel'\]: expected shape \[D, N, H\], got \[9, 22\]"),
    (lambda: jaxattn.project_heads({"kernel": _p["query"]["kernel"], "bias": jnp.zeros((N * H,))}, _x),
     r"proj_params\['bias'\]: expected shape \[2, 11\], got \[22\]"),
    (lambda: jaxattn.project_out({"kernel": _p["out"]["kernel"], "bias": jnp.zeros((4,))}, jnp.zeros((B, T, N, H))),
     r"out_params\['bias'\]: expected shape \[9\], got \[4\]"),
    (lambda: jaxattn.project_out(_p["out"], jnp.zeros((B, T, 3, H))), r"x: expected shape \[B, T, 2, 11\], got \[3, 5, 3, 11\]"),
    (lambda: jaxattn.multi_head_attention({"query": _p["query"]}, _x), "params: expected keys"),
    (lambda: jaxattn.multi_head_attention(_p, _x[0]), r"inputs_q: expected shape \[B, T, D\], got \[5, 9\]"),
    (lambda: jaxattn.multi_head_attention(_p, _x, jnp.zeros((2, S, D))), r"inputs_kv: expected shape \[3, S, C\], got \[2, 7, 9\]"),
    (lambda: jaxattn.multi_head_attention(_p, _x, mask=jnp.ones((B, 1, 1, T))), "mask: expected a boolean mask"),
])
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
