"""Part a of benchmarks/device.py: every attention implementation vs a float64 reference.

The reference is NumPy in float64 on the host, gradients written out by hand (for
out = P V with P = softmax(scale Q K^T) over visible keys):

    dV = P^T dO,  dP = dO V^T,  dL = P * (dP - rowsum(dP * P)),  dQ = scale dL K,  dK = scale dL^T Q

and a fully masked query row has output 0 and contributes no gradient (jaxattn's
contract). Inputs in bfloat16 are rounded first and the reference gets the rounded
values, so the errors measure the computation, not the input rounding.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

import jaxattn

# Largest allowed max|x - ref| / max|ref| for outputs and for each gradient. float32
# allows TF32 matmuls (10-bit mantissa), which XLA uses on NVIDIA GPUs by default.
TOLERANCES = {"float32": 5e-3, "bfloat16": 5e-2}
IMPLEMENTATIONS = {"auto": None, "reference": "reference", "xla": "xla", "cudnn": "cudnn",
                   "chunked": "chunked"}
assert set(IMPLEMENTATIONS.values()) == set(jaxattn.IMPLEMENTATIONS)  # a new one gets a column


def masks(b: int, t: int) -> dict[str, np.ndarray | None]:
    """The mask cases, each [B, 1, T, S] bool (S = T) or None."""
    lengths = t - (np.arange(b) * t) // (2 * b)  # row 0 full, the others padded
    valid = np.arange(t)[None, :] < lengths[:, None]  # [B, T]
    causal = np.tril(np.ones((t, t), bool))[None, None]  # [1, 1, T, S]
    padded = valid[:, None, :, None] & valid[:, None, None, :]  # [B, 1, T, S]
    return {
        "none": None,
        "key padding": np.broadcast_to(valid[:, None, None, :], (b, 1, t, t)),
        "causal": causal,
        "causal + padding (fully masked rows)": causal & padded,
    }


def reference(q, k, v, mask, cot):
    """float64 outputs [B, T, N, H] and gradients of sum(out * cot) wrt q, k, v."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = scale * np.einsum("BTNH,BSNH->BNTS", q, k)  # [B, N, T, S]
    visible = np.ones(logits.shape, bool) if mask is None else np.broadcast_to(mask, logits.shape)
    logits = np.where(visible, logits, -np.inf)
    row_max = np.max(logits, axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    p = np.where(visible, np.exp(logits - row_max), 0.0)  # [B, N, T, S]
    p = p / np.maximum(np.sum(p, axis=-1, keepdims=True), 1e-300)  # fully masked rows stay 0
    out = np.einsum("BNTS,BSNH->BTNH", p, v)  # [B, T, N, H]
    d_v = np.einsum("BNTS,BTNH->BSNH", p, cot)
    d_p = np.einsum("BTNH,BSNH->BNTS", cot, v)  # [B, N, T, S]
    d_logits = p * (d_p - np.sum(d_p * p, axis=-1, keepdims=True))
    d_q = scale * np.einsum("BNTS,BSNH->BTNH", d_logits, k)
    d_k = scale * np.einsum("BNTS,BTNH->BSNH", d_logits, q)
    return out, (d_q, d_k, d_v)


def _error(x, ref) -> float:
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return math.inf
    return float(np.max(np.abs(x - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def _compile(implementation, with_mask: bool, args):
    """(jit(value_and_grad) of sum(out * cot), whether it calls cuDNN fused attention).

    The mask is an argument, so one compile serves every mask case. cuDNN is detected in
    the program JAX hands to XLA (a `__cudnn$fmha...` custom call).
    """
    def loss(q, k, v, cot, mask):
        out = jaxattn.dot_product_attention(q, k, v, mask if with_mask else None,
                                            implementation=implementation)  # [B, T, N, H]
        return jnp.sum(out.astype(jnp.float32) * cot), out

    lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)).lower(*args)
    return lowered.compile(), "cudnn$fmha" in lowered.as_text()


def check_one(compiled, q, k, v, mask, cot):
    """(output error, largest gradient error, fully masked rows exactly 0)."""
    b, t = q.shape[:2]
    dense = np.ones((b, 1, t, t), bool) if mask is None else np.broadcast_to(mask, (b, 1, t, t))
    (_, out), grads = compiled(q, k, v, cot, dense)
    f64 = [np.asarray(x, np.float64) for x in (q, k, v, cot)]
    ref_out, ref_grads = reference(*f64[:3], mask, f64[3])
    out = np.asarray(out, np.float64)
    hidden = ~dense.any(-1)[:, 0]  # [B, T] fully masked query rows
    zero_rows = bool(np.all(out[hidden] == 0.0))
    grad_error = max(_error(g, r) for g, r in zip(grads, ref_grads))
    return _error(out, ref_out), grad_error, zero_rows


def correctness(shape: tuple[int, int, int, int], emit) -> bool:
    """Emits the part-a table; True when every check passed."""
    b, t, n, h = shape
    backend = jax.default_backend()
    emit(f"B {b}, T=S {t}, N {n}, H {h}, unit-normal q, k, v and output cotangent; errors "
         "are max|x - ref| / max|ref| against float64 NumPy (gradients: the largest of dq, "
         "dk, dv); a cell is `ok` when both are within the tolerance "
         f"({', '.join(f'{d} {tol:g}' for d, tol in TOLERANCES.items())}), nothing is NaN/Inf "
         "and fully masked rows are exactly 0. Default matmul precision.")
    emit("")
    emit("| dtype | mask | " + " | ".join(IMPLEMENTATIONS) + " |")
    emit("|---|---|" + "---|" * len(IMPLEMENTATIONS))
    rng = np.random.default_rng(0)
    passed, checks, picks = True, 0, {}
    for dtype_name, tol in TOLERANCES.items():
        dtype = jnp.dtype(dtype_name)
        # Round to the dtype first: the reference sees exactly the values the device sees.
        q, k, v = (jnp.asarray(rng.standard_normal((b, t, n, h)), dtype) for _ in range(3))
        cot = jnp.asarray(rng.standard_normal((b, t, n, h)), jnp.float32)
        args = (q, k, v, cot, np.ones((b, 1, t, t), bool))
        rows = {mask_name: [] for mask_name in masks(b, t)}
        for name, implementation in IMPLEMENTATIONS.items():
            if name == "cudnn" and backend != "gpu":
                for cells in rows.values():
                    cells.append(f"n/a on {backend}")
                continue
            compiled = {}
            for mask_name, mask in masks(b, t).items():
                try:
                    with_mask = mask is not None
                    if with_mask not in compiled:
                        compiled[with_mask] = _compile(implementation, with_mask, args)
                    out_err, grad_err, zero_rows = check_one(compiled[with_mask][0], q, k, v,
                                                             mask, cot)
                except Exception as e:  # noqa: BLE001 -- one cell fails, the table goes on
                    text = (str(e).strip().splitlines() or [""])[0][:80].replace("|", "/")
                    if name == "cudnn":  # cuDNN takes a subset of shapes and dtypes
                        rows[mask_name].append(f"not supported: {type(e).__name__}: {text}")
                    else:
                        passed = False
                        rows[mask_name].append(f"**FAIL** {type(e).__name__}: {text}")
                    continue
                ok = out_err <= tol and grad_err <= tol and zero_rows
                passed &= ok
                checks += 1
                label = "ok" if ok else "**FAIL**" + ("" if zero_rows else " (masked rows not 0)")
                if name == "auto":
                    pick = "cudnn" if compiled[with_mask][1] else "xla"
                    picks.setdefault(dtype_name, set()).add(pick)
                    label += f" ({pick})"
                rows[mask_name].append(f"{label} {out_err:.1e} / {grad_err:.1e}")
        for mask_name, cells in rows.items():
            emit(f"| {dtype_name} | {mask_name} | " + " | ".join(cells) + " |")
    emit("")
    emit("`auto` compiled to: " + "; ".join(
        f"{d}: {' and '.join(sorted(p))}" for d, p in picks.items())
        + " (cudnn = a cuDNN fused-attention custom call in the lowered program).")
    emit(f"{checks} checks: " + ("all passed." if passed else "**some FAILED** (see the table)."))
    return passed
