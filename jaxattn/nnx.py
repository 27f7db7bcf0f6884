"""Every jaxattn model as a Flax NNX module, from its one Linen definition.

    from flax import nnx
    from jaxattn.models import TransformerConfig
    from jaxattn.nnx import Model

    model = Model(TransformerConfig.tiny(vocab_size=32), rngs=nnx.Rngs(0))   # built eagerly
    logits = model(inputs, targets)                        # [B, T, V], as the Linen model's apply
    encoded = model.encode(inputs)                         # every method of the model's interface
    tokens = beam_search(model, inputs, max_len=32)        # jaxattn.decoding takes it, params left out

`Model(config, rngs=...)` wraps the module `jaxattn.models.build_model(config)` builds in
`flax.nnx.bridge.ToNNX` and initializes it at once, so there is no second copy of any layer: the
NNX model runs the Linen model's own code, and its `nnx.Param` tree is the Linen params tree, path
for path (`linen_params`, `from_linen_params` move weights between the two).

`train=True` runs dropout (and scheduled sampling) with keys drawn from `rngs`: its `dropout`
(`sampling`) stream when it has one, else its default stream, as Linen falls back to `params`.
A call that leaves `train` out follows NNX's switches: `model.train()`, `model.eval()` (the default).
The trainer's workdirs read and write NNX models through `train.nnx_weights`.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from jaxattn.models import build_model

__all__ = ["Model", "as_linen", "from_linen_params", "is_nnx", "linen_params"]

# The shapes `Model` initializes with: any length works for every family and position scheme
# (a learned position table is sized by the config's max_len, not by the sample).
_SAMPLE_SHAPE = (1, 2)


@functools.partial(jax.jit, static_argnums=0)
def _init(module, rngs, inputs, targets):
    return module.init(rngs, inputs, targets)


# The calls that take `train=` (the others, `init_cache` and `decode_step`, never drop out).
_TAKES_TRAIN = {None: True, "__call__": True, "encode": True, "decode": True}


class Model(bridge.ToNNX):
    """A jaxattn model (any family, any config) as an NNX module.

    Args:
      config: a `TransformerConfig` or `RNNConfig` (`jaxattn.models`).
      rngs: `nnx.Rngs`; its default (or `params`) stream initializes the weights, its `dropout` /
        `sampling` streams (or the default) drive `train=True`.

    Calls take the Linen model's arguments: `model(inputs, targets, train=False, **kwargs)`
    (`train` defaults to NNX's mode: `model.train()` turns dropout on, `model.eval()` off),
    `model.encode(inputs)`, `model.decode(encoded, targets)`, `model.init_cache(encoded, max_len)`,
    `model.decode_step(memory, state, tokens, index)`, and `mutable=["intermediates"]` with a
    `config.replace(capture_attention=True)` model for attention maps (`model.attention_maps`).
    """

    def __init__(self, config: Any, *, rngs: nnx.Rngs):
        super().__init__(build_model(config), rngs=rngs)
        # What `bridge.lazy_init` does, compiled: Linen's init run op by op takes seconds.
        streams = {name: stream() for name, stream in self.to_nnx__rngs.items()}
        streams.setdefault("params", streams.pop("default", None))
        sample = jnp.ones(_SAMPLE_SHAPE, jnp.int32)
        variables = _init(self.linen, streams, sample, sample)
        for name, value in bridge.variables.linen_vars_to_nnx_attrs(variables).items():
            setattr(self, name, nnx.data(value))
        self.to_nnx__deterministic = True  # what a call without `train=` runs: model.eval() / model.train()

    @property
    def deterministic(self) -> bool:
        """False after `model.train()`, True after `model.eval()` (and at first): whether calls that
        leave out `train=` run without dropout. An explicit `train=` always wins."""
        return self.to_nnx__deterministic

    @deterministic.setter
    def deterministic(self, value: bool) -> None:
        self.to_nnx__deterministic = bool(value)

    def __call__(self, *args, method=None, **kwargs):
        if _TAKES_TRAIN.get(getattr(method, "__name__", method), False) and "train" not in kwargs:
            kwargs["train"] = not self.to_nnx__deterministic
        return super().__call__(*args, method=method, **kwargs)

    @property
    def config(self):
        """The model's config (`TransformerConfig` or `RNNConfig`)."""
        return self.to_nnx__module.config

    @property
    def linen(self):
        """The Linen module this model runs (`jaxattn.models.build_model(config)`)."""
        return self.to_nnx__module

    def attention_maps(self, intermediates) -> dict[str, jax.Array]:
        """{kind: [L, B, N, rows, cols]} from the `Intermediate` state of a capturing call."""
        return self.linen.attention_maps(_linen_collection(intermediates))

    def attention_map(self, intermediates) -> jax.Array | None:
        """[B, N, T, S]: what a heatmap shows (None for a model without attention)."""
        return self.linen.attention_map(_linen_collection(intermediates))


def _linen_collection(tree) -> Any:
    """An NNX state or Variable tree (or a plain dict) as the plain dict Linen returns."""
    if isinstance(tree, nnx.State):
        return nnx.to_pure_dict(tree)
    return jax.tree.map(lambda v: v.get_value() if isinstance(v, nnx.Variable) else v, tree,
                        is_leaf=lambda v: isinstance(v, nnx.Variable))


def is_nnx(model: Any) -> bool:
    """Whether `model` is an NNX module (decoding then reads its weights from it)."""
    return isinstance(model, nnx.Module)


def linen_params(model: Model) -> dict:
    """The model's weights as the Linen model's params tree (`{"params": ...}`'s value)."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def from_linen_params(config: Any, params: Any, *, rngs: nnx.Rngs | None = None) -> Model:
    """The NNX model of `config` holding the Linen `params` tree (e.g. a trained checkpoint's).

    Raises:
      ValueError: `params` is not this config's tree (names the first path or shape that differs).
    """
    model = nnx.eval_shape(lambda: Model(config, rngs=nnx.Rngs(0)))
    state = nnx.state(model, nnx.Param)
    want, have = _shapes(nnx.to_pure_dict(state)), _shapes(params)
    if want.keys() != have.keys():
        path = sorted(want.keys() ^ have.keys())[0]
        raise ValueError(f"params: not the tree of this {type(model.linen).__name__} config "
                         f"({path} is {'missing' if path in want else 'not one of its weights'})")
    for path, shape in want.items():
        if have[path] != shape:
            raise ValueError(f"params: {path} has shape {have[path]}, this config expects {shape}")
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
    nnx.update(model, state)
    # The abstract model's key streams are shapes only: give it real ones.
    model.to_nnx__rngs = (nnx.Rngs(0) if rngs is None else rngs).fork()
    return model


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}


def as_linen(model: Any, params: Any = None) -> tuple[Any, Any]:
    """(Linen module, params) for a Linen model and its params, or for an NNX model alone."""
    if is_nnx(model):
        if not isinstance(model, Model):
            raise TypeError(f"model: an NNX {type(model).__name__} is not a jaxattn.nnx.Model")
        return model.linen, linen_params(model)
    return model, params
