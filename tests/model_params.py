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
import optax


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


def toy_batch():
    """B, S, T = 3, 7, 5 (distinct so a swapped axis cannot pass), eos = 3, pad = 0."""
    inputs = np.array([[5, 6, 7, 8, 9, 4, 3],
                       [4, 5, 3, 0, 0, 0, 0],
                       [9, 8, 7, 3, 0, 0, 0]], np.int32)
    targets = np.array([[6, 7, 8, 9, 3],
                        [5, 3, 0, 0, 0],
                        [7, 8, 3, 0, 0]], np.int32)
    return jnp.asarray(inputs), jnp.asarray(targets)


def token_loss(model, variables, inputs, targets):
    """Cross-entropy per non-pad target token, teacher forced."""
    logits = model.apply(variables, inputs, targets)                        # [B, T, V]
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    weights = (targets != 0).astype(jnp.float32)
    return jnp.sum(losses * weights) / jnp.sum(weights)


def fit(model, variables, inputs, targets, *, steps: int, lr: float):
    """`steps` Adam updates on one fixed batch in one compiled scan.

    Returns:
      (trained variables, [steps] loss before each update).
    """
    optimizer = optax.adam(lr)

    @jax.jit
    def train(variables):
        def step(carry, _):
            v, s = carry
            loss, grads = jax.value_and_grad(token_loss, argnums=1)(model, v, inputs, targets)
            updates, s = optimizer.update(grads, s)
            return (optax.apply_updates(v, updates), s), loss
        (trained, _), losses = jax.lax.scan(step, (variables, optimizer.init(variables)), None, length=steps)
        return trained, losses

    return train(variables)


def shrink_model(config) -> None:
    """Test-size widths for a trainer config of any family (one layer, width 16), in place."""
    if config.model.family == "transformer":
        config.model.update(emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    else:
        config.model.update(embed_dim=16, hidden_size=16, num_layers=1)
        if config.model.decoder_hidden_size is not None:
            config.model.decoder_hidden_size = 16
