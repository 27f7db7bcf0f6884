"""Inputs that slip through, at the primitives: non-float queries/keys/values,
NaN/Inf at masked positions (values and gradients), zero-length T or S, a
traced dropout rate, the caller's names in errors, the CPU-only VJP trick, and
the shapes in the signatures (every letter in the axis alphabet)."""
import functools
import inspect
import pathlib
import re
import typing

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxattn
from jaxattn import attention as attention_module

B, T, S, N, H = 3, 5, 7, 2, 11
IMPLS = ("reference", "xla", "chunked", None)  # cuDNN needs a GPU


def _normal(i, shape, dtype=jnp.float32):
    # numpy draws: eager jax.random would compile a sampler per new shape.
    return jnp.asarray(np.random.default_rng(i).standard_normal(shape), dtype)


def _qkv(n=N, k=N, t=T, s=S):
    return _normal(0, (B, t, n, H)), _normal(1, (B, s, k, H)), _normal(2, (B, s, k, H))


def _naive(q, k, v, mask, bias=None):
    """Independent reference: repeat kv heads, einsum, -inf fill, zero empty rows."""
    g = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, g, axis=2), jnp.repeat(v, g, axis=2)  # [B, S, N, H]
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    logits = jnp.where(mask, logits, -1e30)
    w = jax.nn.softmax(logits, axis=-1) * jnp.any(mask, axis=-1, keepdims=True)
    return jnp.einsum("bnts,bsnh->btnh", w, v)


def _with_grads(fn, args, seed=9):
    """(output, gradients of <output, cotangent> w.r.t. every arg)."""
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(_normal(seed, out.shape, out.dtype))


# -- 1. Only floating queries, keys and values --------------------------------

_q, _k, _v = _qkv()
_i = jnp.ones((B, T, N, H), jnp.int32)
_ik = jnp.ones((B, S, N, H), jnp.int32)
_params = jaxattn.init_multi_head_params(jax.random.PRNGKey(0), 9, N, head_dim=H)
_x = _normal(3, (B, T, 9))
_cache = jaxattn.init_kv_cache(B, S, N, H)
_rnn = dict(query=_normal(4, (B, T, 4)), keys=_normal(5, (B, S, 6)), values=_normal(6, (B, S, 3)))
_additive_weights = dict(v=_normal(7, (8,)), w_query=_normal(8, (4, 8)), w_key=_normal(9, (6, 8)))


def _int_rnn(name):
    return {**_rnn, name: _rnn[name].astype(jnp.int32)}


@pytest.mark.parametrize("call, match", [
    *[(functools.partial(jaxattn.dot_product_attention, *qkv, implementation=impl), name)
      for impl in (*IMPLS, "cudnn")
      for qkv, name in (((_i, _k, _v), "query"), ((_q, _ik, _v), "key"), ((_q, _k, _ik), "value"))],
    (lambda: jaxattn.dot_product_attention(_q > 0, _k > 0, _v > 0), "query"),
    (lambda: jaxattn.chunked_dot_product_attention(_q, _k, _ik), "value"),
    *[(lambda name=name: jaxattn.additive_attention(**_int_rnn(name), **_additive_weights), name)
      for name in _rnn],
    *[(lambda name=name: jaxattn.luong_attention(**_int_rnn(name), score_fn=lambda q, k: q[..., :1] * k[:, None, :, 0]),
       name) for name in _rnn],
    (lambda: jaxattn.multi_head_attention(_params, _x.astype(jnp.int32)), "inputs_q"),
    (lambda: jaxattn.multi_head_attention(_params, _x, jnp.ones((B, S, 9), jnp.int32)), "inputs_kv"),
    (lambda: jaxattn.project_heads(_params["query"], _x.astype(jnp.int32)), "x"),
    (lambda: jaxattn.cached_attention(_i[:, :1], _cache, 0), "query_step"),
    (lambda: jaxattn.cached_attention(_q[:, :1], jax.tree.map(lambda c: c.astype(jnp.int32), _cache), 0),
     r"cache\['key'\]"),
])
def test_non_float_inputs_are_one_line_errors_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=f"^{match}: expected a floating dtype") as error:
        call()
    assert "\n" not in str(error.value)


# -- 2. Masked positions are inert, even as NaN/Inf ---------------------------

def _garbage(x, hidden, seed):
    """x with NaN, +Inf and -Inf (cycled) wherever `hidden` ([B, L] bool) is True."""
    junk = np.array([np.nan, np.inf, -np.inf], np.float32)[np.arange(x.size) % 3 - seed % 3]
    junk = jnp.asarray(junk.reshape(x.shape), x.dtype)
    return jnp.where(hidden.reshape(hidden.shape + (1,) * (x.ndim - 2)), junk, x)


def _padded_case(n=N, k=N):
    q, kk, v = _qkv(n, k)
    q_valid = jnp.ones((B, T), bool).at[0, 3:].set(False).at[2, 0].set(False)
    k_valid = jnp.ones((B, S), bool).at[0, 5:].set(False).at[1, :].set(False).at[2, 2].set(False)
    mask = jaxattn.combine_masks(jaxattn.cross_attention_mask(q_valid, k_valid),
                                 jaxattn.causal_mask(T, S))  # [B, 1, T, S]
    dirty = (_garbage(q, ~q_valid, 0), _garbage(kk, ~k_valid, 1), _garbage(v, ~k_valid, 2))
    return (q, kk, v), dirty, mask


def test_masked_garbage_never_reaches_values_or_grads():
    clean, dirty, mask = _padded_case()
    bias = _normal(5, (B, N, T, S))
    dirty_bias = jnp.where(mask, bias, jnp.nan)  # garbage in the bias too, where masked

    @jax.jit
    def everything(clean, dirty):
        got = {}
        for impl in IMPLS:
            got[str(impl)] = _with_grads(functools.partial(
                jaxattn.dot_product_attention, mask=mask, implementation=impl), dirty)
            if impl != "chunked":  # the chunked implementation takes no bias
                got[f"{impl} bias"] = _with_grads(lambda q, kk, v, b, impl=impl: jaxattn.dot_product_attention(
                    q, kk, v, mask, b, implementation=impl), (*dirty, dirty_bias))
        got["naive"] = _with_grads(lambda *a: _naive(*a, mask), clean)
        got["naive bias"] = _with_grads(lambda *a: _naive(*a[:3], mask, a[3]), (*clean, bias))
        return got

    results = everything(clean, dirty)
    for name, got in results.items():
        chex.assert_tree_all_finite(got)
        want = results["naive bias" if "bias" in name else "naive"]
        chex.assert_trees_all_close(got, want, atol=1e-5, custom_message=name)


def test_per_head_mask_with_grouped_kv_heads_hides_garbage_per_kv_head():
    n, k = 4, 2  # kv head 0 serves query heads 0, 1; kv head 1 serves 2, 3
    q, kk, v = _qkv(n, k)
    mask = jnp.ones((B, n, T, S), bool).at[:, :2, :, 4].set(False)  # key 4 hidden from kv head 0 only
    hidden = jnp.zeros((B, S), bool).at[:, 4].set(True)
    dirty = (q, kk.at[:, :, 0].set(_garbage(kk[:, :, 0], hidden, 1)),
             v.at[:, :, 0].set(_garbage(v[:, :, 0], hidden, 2)))

    @jax.jit
    def everything(clean, dirty):
        return {str(impl): _with_grads(functools.partial(
            jaxattn.dot_product_attention, mask=mask, implementation=impl), dirty)
            for impl in IMPLS} | {"naive": _with_grads(lambda *a: _naive(*a, mask), clean)}

    results = everything((q, kk, v), dirty)
    for name, got in results.items():
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, results["naive"], atol=1e-5, custom_message=name)


def test_chunked_structured_masks_hide_garbage():
    # Chunks (2, 3) divide neither length, so blocks are partly visible; T > S
    # under `causal` leaves the first T - S query rows with nothing to see.
    t, s = 7, 5
    q, kk, v = _qkv(t=t, s=s)
    key_valid = jnp.ones((B, s), bool).at[0, 3:].set(False)
    q_seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]] * B)
    k_seg = jnp.array([[1, 1, 2, 2, 0]] * B)
    early = jnp.arange(t)[None, :] < t - s  # [1, T]: causal rows with no key
    cases = {
        "causal+key_valid": (dict(causal=True, key_valid=key_valid),
                             jaxattn.combine_masks(jaxattn.causal_mask(t, s), jaxattn.key_padding_mask(key_valid)),
                             jnp.broadcast_to(early, (B, t)), ~key_valid),
        "segments": (dict(query_segment_ids=q_seg, key_segment_ids=k_seg),
                     jaxattn.segment_mask(q_seg, k_seg), q_seg == 0, k_seg == 0),
    }

    @jax.jit
    def everything(q, kk, v):
        out = {}
        for name, (kwargs, mask, q_hidden, k_hidden) in cases.items():
            fn = functools.partial(jaxattn.chunked_dot_product_attention, query_chunk_size=2,
                                   key_chunk_size=3, **kwargs)
            dirty = (_garbage(q, q_hidden, 0), _garbage(kk, k_hidden, 1), _garbage(v, k_hidden, 2))
            out[name] = (_with_grads(fn, dirty), _with_grads(lambda *a, mask=mask: _naive(*a, mask), (q, kk, v)))
        return out

    for name, (got, want) in everything(q, kk, v).items():
        chex.assert_tree_all_finite(got)
        chex.assert_trees_all_close(got, want, atol=1e-5, custom_message=name)


def test_rnn_attention_hides_garbage_in_values_and_parameter_grads():
    q_valid = jnp.ones((B, T), bool).at[1, 4].set(False)
    k_valid = jnp.ones((B, S), bool).at[0, 4:].set(False).at[2, 0].set(False)
    mask = q_valid[:, :, None] & k_valid[:, None, :]  # [B, T, S]: a fully masked query row
    clean = dict(_rnn)
    dirty = dict(query=_garbage(_rnn["query"], ~q_valid, 0), keys=_garbage(_rnn["keys"], ~k_valid, 1),
                 values=_garbage(_rnn["values"], ~k_valid, 2))
    w_general = _normal(10, (4, 6))

    def additive(inputs, weights):
        return jaxattn.additive_attention(**inputs, **weights, mask=mask)

    def luong(inputs, w):
        score = functools.partial(jaxattn.general_score, w=w)
        return jaxattn.luong_attention(**inputs, score_fn=score, mask=mask)

    @jax.jit
    def everything(clean, dirty):
        return {name: [_with_grads(lambda x, p, fn=fn: fn(x, p)[0], (inputs, params))
                       for inputs in (clean, dirty)]
                for name, fn, params in (("additive", additive, _additive_weights),
                                         ("luong general", luong, w_general))}

    for name, (from_clean, from_dirty) in everything(clean, dirty).items():
        chex.assert_tree_all_finite(from_dirty)
        chex.assert_trees_all_equal(from_dirty, from_clean, custom_message=name)
    # The context is still the weighted sum of the visible values.
    ctx, w = jaxattn.additive_attention(**dirty, **_additive_weights, mask=mask)
    np.testing.assert_allclose(ctx, jnp.einsum("BTS,BSU->BTU", w, clean["values"] * k_valid[..., None]),
                               atol=1e-6)
    np.testing.assert_array_equal(ctx[1, 4], 0.0)


def test_multi_head_attention_keeps_garbage_rows_out_of_parameter_grads():
    q_valid = jnp.ones((B, T), bool).at[0, 3:].set(False)
    k_valid = jnp.ones((B, S), bool).at[1, 5:].set(False)
    cross = jaxattn.cross_attention_mask(q_valid, k_valid)  # [B, 1, T, S]
    causal = jaxattn.combine_masks(jaxattn.cross_attention_mask(q_valid, q_valid),
                                   jaxattn.causal_mask(T))  # [B, 1, T, T]
    x_kv = _normal(11, (B, S, 9))
    dirty_q, dirty_kv = _garbage(_x, ~q_valid, 0), _garbage(x_kv, ~k_valid, 1)

    def cross_attention(params, x, x_kv):
        return jaxattn.multi_head_attention(params, x, x_kv, cross)

    def self_attention(params, x):
        return jaxattn.multi_head_attention(params, x, None, causal)

    @jax.jit
    def everything():
        return {"cross": [_with_grads(cross_attention, (_params, *x)) for x in ((_x, x_kv), (dirty_q, dirty_kv))],
                "self": [_with_grads(self_attention, (_params, x)) for x in (_x, dirty_q)]}

    for name, (from_clean, from_dirty) in everything().items():
        chex.assert_tree_all_finite(from_dirty)
        chex.assert_trees_all_equal(from_dirty[0], from_clean[0], custom_message=name)  # outputs
        chex.assert_trees_all_equal(from_dirty[1][0], from_clean[1][0], custom_message=name)  # params


def test_masked_softmax_ignores_garbage_logits():
    logits = _normal(0, (B, T, S))
    mask = jnp.ones((B, 1, S), bool).at[0, :, 2:].set(False).at[1].set(False)
    dirty = jnp.where(mask, logits, jnp.array([jnp.nan, jnp.inf, -jnp.inf])[jnp.arange(S) % 3])
    run = jax.jit(lambda x: _with_grads(lambda x: jaxattn.masked_softmax(x, mask), (x,)))
    chex.assert_trees_all_equal(run(dirty), run(logits))
    np.testing.assert_allclose(run(dirty)[0][0, :, :2], jax.nn.softmax(logits[0, :, :2]), atol=1e-7)


# -- 3. Zero-length queries or keys -------------------------------------------

@pytest.mark.parametrize("t, s", [(0, S), (T, 0)])
def test_zero_length_gives_shaped_zero_outputs_and_grads(t, s):
    q, kk, v = _qkv(6, 3, t=t, s=s)
    masks = {"no mask": None,
             "padding": jaxattn.cross_attention_mask(jnp.ones((B, t), bool), jnp.ones((B, s), bool))}

    @jax.jit
    def everything(q, kk, v):
        out = {}
        for (mask_name, mask), impl in ((m, i) for m in masks.items() for i in IMPLS):
            fn = functools.partial(jaxattn.dot_product_attention, mask=mask, implementation=impl)
            out[f"{impl} {mask_name}"] = _with_grads(fn, (q, kk, v))
        out["chunked flags"] = _with_grads(functools.partial(
            jaxattn.chunked_dot_product_attention, causal=True, key_valid=jnp.ones((B, s), bool)), (q, kk, v))
        others = {
            "weights": jaxattn.dot_product_attention(q, kk, v, masks["padding"], return_weights=True)[1],
            "additive": jaxattn.additive_attention(
                _rnn["query"][:, :t], _rnn["keys"][:, :s], _rnn["values"][:, :s], **_additive_weights,
                mask=jnp.ones((B, s), bool)),
            "mha": jaxattn.multi_head_attention(_params, _x[:, :t], _normal(1, (B, s, 9))),
        }
        return out, others

    results, others = everything(q, kk, v)
    for name, (out, grads) in results.items():
        chex.assert_shape([out, *grads], [(B, t, 6, H), (B, t, 6, H), (B, s, 3, H), (B, s, 3, H)])
        chex.assert_trees_all_equal((out, grads), jax.tree.map(jnp.zeros_like, (out, grads)),
                                    custom_message=name)
    ctx, w = others["additive"]
    chex.assert_shape([others["weights"], ctx, w, others["mha"]], [(B, 6, t, s), (B, t, 3), (B, t, s), (B, t, 9)])
    np.testing.assert_array_equal(ctx, 0.0)


@pytest.mark.parametrize("masked", [False, True])
def test_masked_softmax_over_an_empty_axis_is_empty(masked):
    mask = jnp.ones((B, 1, 0), bool) if masked else None
    w, (g,) = jax.jit(lambda x: _with_grads(lambda x: jaxattn.masked_softmax(x, mask), (x,)))(
        jnp.zeros((B, T, 0)))
    chex.assert_shape([w, g], [(B, T, 0)] * 2)
    chex.assert_shape(jaxattn.masked_softmax(jnp.zeros((0, S)), axis=0), (0, S))


# -- 4. A traced dropout rate ---------------------------------------------------

def test_traced_dropout_rate_works_under_jit_without_retracing():
    q, k, v = _qkv()
    mask = _padded_case()[2]
    rng = jax.random.PRNGKey(3)

    def attention(q, rate):
        return jaxattn.dot_product_attention(q, k, v, mask, dropout_rate=rate, dropout_rng=rng,
                                             return_weights=True)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(q, rate):
        loss = lambda q: jnp.sum(attention(q, rate)[0] ** 2)
        return {"traced": attention(q, rate), "static 0.4": attention(q, 0.4),
                "grad": jax.grad(loss)(q), "naive": _naive(q, k, v, mask),
                "mha": jaxattn.multi_head_attention(_params, _x, dropout_rate=rate, dropout_rng=rng)}

    at_04, at_0 = run(q, 0.4), run(q, 0.0)  # one trace for both rates
    chex.assert_trees_all_equal(at_04["traced"], at_04["static 0.4"])  # same keys, same drops
    assert 0.2 < np.mean(np.asarray(at_04["traced"][0]) == 0) < 0.6
    chex.assert_tree_all_finite(at_04["grad"])
    chex.assert_shape(at_04["mha"], (B, T, 9))
    np.testing.assert_allclose(at_0["traced"][0], at_0["naive"], atol=1e-5)  # a traced 0 drops nothing
    np.testing.assert_array_equal(at_0["traced"][1], at_04["traced"][1])  # weights: before dropout


@pytest.mark.parametrize("kwargs, match", [
    ({}, r"^dropout_rng: expected a PRNG key with a traced rate, got None"),
    ({"dropout_rng": jax.random.PRNGKey(0), "implementation": "xla"},
     r"^implementation: 'xla' cannot return weights or apply dropout"),
])
def test_traced_dropout_rate_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jax.jit(lambda rate: jaxattn.dot_product_attention(_q, _k, _v, dropout_rate=rate, **kwargs))(0.1)


@pytest.mark.parametrize("rate, match", [
    (jnp.array([0.1, 0.2]), r"^dropout_rate: expected a scalar, got shape \[2\]$"),
    ("0.1x", r"^dropout_rate: expected a float or a scalar array, got str '0.1x'$"),
    (jnp.float32(1.5), r"^dropout_rate: expected 0 <= rate < 1, got 1.5$"),
])
def test_bad_dropout_rates(rate, match):
    with pytest.raises(ValueError, match=match):
        jaxattn.dot_product_attention(_q, _k, _v, dropout_rate=rate, dropout_rng=jax.random.PRNGKey(0))


# -- 5. Errors name the caller's argument ---------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: jaxattn.multi_head_attention(_params, _x[..., :4]), r"^inputs_q: expected shape \[B, T, 9\], got \[3, 5, 4\]$"),
    (lambda: jaxattn.multi_head_attention(_params, _x, _normal(1, (B, S, 4))),
     r"^inputs_kv: expected shape \[B, T, 9\], got \[3, 7, 4\]$"),
    (lambda: jaxattn.cached_attention(_q[:, :1], {"key": _cache["key"], "value": _cache["value"].astype(jnp.bfloat16)}, 0),
     r"^cache\['value'\]: expected shape|^query_step, cache\['key'\], cache\['value'\]: expected one dtype"),
    (lambda: jaxattn.masked_softmax(jnp.zeros((B, S)), axis=2), r"^axis: expected an axis of logits with shape \[3, 7\], got 2$"),
])
def test_errors_name_the_callers_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- 6. The CPU-only VJP trick ---------------------------------------------------

def test_einsum_vjp_trick_is_used_on_cpu_only(monkeypatch):
    clean, _, mask = _padded_case()

    def xla(q, k, v):
        return jaxattn.dot_product_attention(q, k, v, mask, implementation="xla")

    def custom_vjps():  # a fresh function: make_jaxpr caches traces by function
        return str(jax.make_jaxpr(lambda *a: xla(*a))(*clean)).count("custom_vjp")

    assert attention_module.platform_of(clean[0]) == "cpu"
    assert custom_vjps() == 1
    on_cpu = jax.jit(lambda *a: _with_grads(xla, a))(*clean)
    monkeypatch.setattr(attention_module, "platform_of", lambda x: "tpu")
    assert custom_vjps() == 0  # elsewhere jax.nn is differentiated as it is
    elsewhere = jax.jit(lambda *a: _with_grads(lambda *b: xla(*b), a))(*clean)
    chex.assert_trees_all_close(elsewhere, on_cpu, atol=1e-5)


# -- 7. Shapes in the signatures, in the alphabet -------------------------------

def _alphabet():
    letters = re.findall(r"^\| ([A-Z])\s+\|", jaxattn.__doc__, flags=re.MULTILINE)
    assert len(letters) == len(set(letters)) >= 10
    return set(letters)


def _dims(hint):
    """Axis names in the jaxtyping annotations inside `hint` (unions, tuples, dicts)."""
    if hasattr(hint, "dim_str"):
        return hint.dim_str.split()
    return [d for arg in typing.get_args(hint) for d in _dims(arg)]


_ANNOTATED = [
    jaxattn.masked_softmax, jaxattn.weighted_context, jaxattn.additive_attention,
    jaxattn.luong_attention, jaxattn.dot_product_attention, jaxattn.chunked_dot_product_attention,
    jaxattn.multi_head_attention, jaxattn.project_heads, jaxattn.project_out,
    jaxattn.cached_attention, jaxattn.update_kv_cache, jaxattn.init_kv_cache,
    jaxattn.padding_mask, jaxattn.lengths_to_mask, jaxattn.key_padding_mask,
    jaxattn.cross_attention_mask, jaxattn.causal_mask, jaxattn.segment_mask,
]


def test_public_primitives_carry_shapes_in_the_alphabet():
    alphabet = _alphabet()
    public = [getattr(jaxattn, name) for name in jaxattn.__all__ if inspect.isfunction(getattr(jaxattn, name))]
    for fn in set(_ANNOTATED) | set(public):
        hints = typing.get_type_hints(fn)  # every annotation resolves
        dims = [d for hint in hints.values() for d in _dims(hint)]
        if fn in _ANNOTATED:
            assert dims, f"{fn.__name__}: no shape annotations"
            assert "return" in hints, f"{fn.__name__}: no return annotation"
        for dim in dims:
            name = dim.lstrip("#*")
            assert name in alphabet or name.isdigit() or name == "...", f"{fn.__name__}: {dim!r}"


def test_einsums_and_shape_comments_use_the_alphabet():
    alphabet = _alphabet()
    root = pathlib.Path(jaxattn.__file__).parent
    for module in ("attention", "chunked", "softmax", "masks", "cache", "multihead", "scores"):
        source = (root / f"{module}.py").read_text()
        for spec in re.findall(r'einsum\(\s*f?"([^"]+)"', source):
            stray = set(re.sub(r"\{[^}]*\}", "", spec)) - alphabet - set(",->.")
            assert not stray, f"{module}.py: einsum {spec!r} uses {sorted(stray)}"
        for comment in re.findall(r"# \[([^\]]*)\]", source):
            for axis in re.split(r"[,\s|·]+", comment):  # "[B|1, T or S, A]", "[B·T, N·H]"
                if axis[:1].isupper() and axis not in ("Tp", "Sp"):
                    assert axis in alphabet, f"{module}.py: shape comment [{comment}] uses {axis!r}"
