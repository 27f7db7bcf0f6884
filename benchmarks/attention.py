"""Attention benchmark: jaxattn vs jax.nn vs flax.linen, and chunked vs dense.

Run (CPU, a few minutes):

    python benchmarks/attention.py

Table 1 (one process): dense attention at B=8, T=S=256, N=8, H=64, float32,
forward and forward+backward, without and with a causal mask. Each function
is jitted and compiled first, then timed round-robin (all implementations in
turn, so load drift hits them alike); the median of `--repeats` runs is
reported with the ratio best-peer-time / jaxattn-time (>= 1.0: jaxattn is at
least as fast as the fastest of jax.nn.dot_product_attention and
flax.linen.dot_product_attention).

Table 2: chunked vs dense forward+backward at B=1, N=8, H=64 and long T=S,
each case in a fresh subprocess under an address-space cap
(`--memory_cap_gib`), reporting time and the child's peak RSS
(`resource.getrusage(...).ru_maxrss`, which includes the ~0.3 GB JAX runtime).
A dense case that exceeds the cap is reported as failed.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

import jaxattn


def _time(fn, *args, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return times


def _fwd_bwd(attention):
    """Jitted forward+backward: gradients of <out, cotangent> wrt q, k, v."""
    def loss(q, k, v, mask, cot):
        return jnp.sum(attention(q, k, v, mask) * cot)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def dense_table(repeats: int) -> list[dict]:
    b, t, n, h = 8, 256, 8, 64
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, cot = (jax.random.normal(r, (b, t, n, h), jnp.float32) for r in keys)
    impls = {
        "jaxattn": lambda q, k, v, m: jaxattn.dot_product_attention(q, k, v, m),
        "jaxattn reference": lambda q, k, v, m: jaxattn.dot_product_attention(
            q, k, v, m, implementation="reference"),
        "jax.nn": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, mask=m),
        "flax.linen": lambda q, k, v, m: __import__("flax.linen").linen.dot_product_attention(
            q, k, v, mask=m),
    }
    peers = ("jax.nn", "flax.linen")
    rows = []
    for mask_name, mask in (("none", None), ("causal", jaxattn.causal_mask(t))):
        for mode in ("fwd", "fwd+bwd"):
            if mode == "fwd":
                fns = {name: jax.jit(f) for name, f in impls.items()}
                args = (q, k, v, mask)
            else:
                fns = {name: _fwd_bwd(f) for name, f in impls.items()}
                args = (q, k, v, mask, cot)
            for fn in fns.values():  # compile and warm up
                _time(fn, *args, repeats=2)
            times = {name: [] for name in fns}
            for _ in range(repeats):  # round-robin
                for name, fn in fns.items():
                    times[name] += _time(fn, *args, repeats=1)
            medians = {name: statistics.median(ts) for name, ts in times.items()}
            best_peer = min(medians[p] for p in peers)
            rows.append({"mask": mask_name, "mode": mode,
                         **{name: 1e3 * m for name, m in medians.items()},
                         "ratio": best_peer / medians["jaxattn"]})
    return rows


def long_case(impl: str, length: int, repeats: int) -> dict:
    """One chunked-vs-dense case; meant to run in a fresh child process."""
    b, n, h = 1, 8, 64
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v, cot = (jax.random.normal(r, (b, length, n, h), jnp.float32) for r in keys)
    if impl == "chunked":
        def attention(q, k, v, mask):
            del mask
            return jaxattn.chunked_dot_product_attention(
                q, k, v, query_chunk_size=512, key_chunk_size=512)
    else:
        def attention(q, k, v, mask):
            return jaxattn.dot_product_attention(q, k, v, mask)
    fn = _fwd_bwd(attention)
    result = {"impl": impl, "T": length}
    try:
        start = time.perf_counter()
        compiled = fn.lower(q, k, v, None, cot).compile()
        result["compile_s"] = time.perf_counter() - start
        result["times_s"] = _time(compiled, q, k, v, None, cot, repeats=repeats)
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 -- report the failure (OOM) instead of dying
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def run_child(impl: str, length: int, repeats: int, cap_gib: float) -> dict:
    cmd = [sys.executable, __file__, "--child", f"{impl}:{length}:{repeats}:{cap_gib}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:120]
    return {"impl": impl, "T": length, "ok": False, "peak_rss_gib": float("nan"),
            "error": f"child exited with {proc.returncode}: {tail}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per cell, table 1")
    parser.add_argument("--lengths", default="4096,8192,16384", help="T=S for table 2")
    parser.add_argument("--memory_cap_gib", type=float, default=8.0,
                        help="address-space cap of each table-2 child")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        impl, length, repeats, cap = args.child.split(":")
        cap_bytes = int(float(cap) * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap_bytes, cap_bytes))
        print(json.dumps(long_case(impl, int(length), int(repeats))))
        return

    print(f"# jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{platform.machine()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"\n## Dense, B=8 T=S=256 N=8 H=64 float32, median of {args.repeats} (ms)\n")
    cols = ["jaxattn", "jaxattn reference", "jax.nn", "flax.linen"]
    print("| mask | pass | " + " | ".join(cols) + " | best peer / jaxattn |")
    print("|---|---|" + "---:|" * (len(cols) + 1))
    for row in dense_table(args.repeats):
        cells = " | ".join(f"{row[c]:.2f}" for c in cols)
        print(f"| {row['mask']} | {row['mode']} | {cells} | {row['ratio']:.2f}x |", flush=True)

    print(f"\n## Chunked vs dense fwd+bwd, B=1 N=8 H=64 float32, one child process per case, "
          f"{args.memory_cap_gib:g} GiB address-space cap\n")
    print("| T=S | impl | time (s) | runs | compile (s) | peak RSS (GiB) |")
    print("|---:|---|---:|---:|---:|---:|")
    for length in (int(x) for x in args.lengths.split(",")):
        repeats = 3 if length <= 4096 else 1
        for impl in ("chunked", "dense"):
            r = run_child(impl, length, repeats, args.memory_cap_gib)
            if r["ok"]:
                print(f"| {length} | {impl} | {statistics.median(r['times_s']):.2f} | "
                      f"{len(r['times_s'])} | {r['compile_s']:.1f} | {r['peak_rss_gib']:.2f} |",
                      flush=True)
            else:
                print(f"| {length} | {impl} | failed: {r['error']} | | | "
                      f"{r['peak_rss_gib']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
