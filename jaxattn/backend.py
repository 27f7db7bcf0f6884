"""The backend an array is computed on, for the rewrites measured on one backend only.

A few formulas have a rewrite that gives the same values and that XLA:CPU runs faster than the
plain formula: the float32 XLA attention differentiated through plain einsums
(`jaxattn.attention`), the Transformer's tied output projection (`jaxattn.models.transformer`),
and the trainer's target logit and max/argmax (`train.losses`). Each was measured on XLA:CPU
only, so each applies only where `platform_of(x) == "cpu"`; every other backend gets the plain
formula.
"""

import jax

__all__ = ["platform_of"]


def platform_of(x: jax.Array) -> str:
    """Where `x` lives ("cpu", "gpu", "tpu"); under a trace, the default backend
    (what `jax.jit` compiles for unless told otherwise)."""
    try:
        return next(iter(x.devices())).platform
    except (AttributeError, jax.errors.ConcretizationTypeError):
        return jax.default_backend()
