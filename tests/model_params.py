"""Cheap parameters for model tests.

Compiling a model's `init` (truncated-normal initialisers) costs seconds on CPU,
more than the tests themselves. The properties under test (causality, padding,
cache == recomputation, ...) hold for any parameters, so most tests draw them with
NumPy at Flax-like scales from the shapes `jax.eval_shape` reports; each family
still runs its real `init` in at least one test.
"""
import jax
import jax.numpy as jnp
import numpy as np


def numpy_init(model, inputs, targets, seed: int = 0):
    """Variables with the structure of `model.init(rng, inputs, targets)`."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), inputs, targets)
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        names = [getattr(p, "key", "") for p in path]
        if names[-1] == "scale":  # LayerNorm gain
            return jnp.ones(spec.shape, spec.dtype)
        if names[-1] == "bias":
            return jnp.zeros(spec.shape, spec.dtype)
        if names[-1] == "embedding":
            fan_in = spec.shape[1]
        elif len(spec.shape) == 3 and names[-2] == "out":  # [N, H, D]
            fan_in = spec.shape[0] * spec.shape[1]
        else:  # [D_in, ...] kernels and 1-D energy vectors
            fan_in = spec.shape[0]
        return jnp.asarray(rng.normal(size=spec.shape) / np.sqrt(fan_in), spec.dtype)

    return jax.tree_util.tree_map_with_path(leaf, shapes)
