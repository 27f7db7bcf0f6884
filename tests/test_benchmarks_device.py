"""`python -m benchmarks.device --smoke`: every part runs at tiny sizes on the CPU.

The same code runs at full size on a GPU/TPU; this keeps it from rotting between the
sessions that have one. Timings are printed, never asserted.
"""

import importlib.util
import re

import numpy as np
import pytest

from device_smoke import REPO, run_device_benchmark

NUMBER = r"[\d,]+(?:\.\d+)?(?:e[-+]\d+)?"


def _part(markdown: str, letter: str) -> str:
    """The markdown of part `letter` (from its heading to the next part's)."""
    match = re.search(rf"^#### {letter}\. .*?(?=^#### |\Z)", markdown, flags=re.M | re.S)
    assert match, f"part {letter} missing"
    return match.group(0)


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_smoke_reports_every_part_with_numbers():
    run = run_device_benchmark(("--smoke",))
    assert run.returncode == 0, run.stderr[-3000:]
    md = run.markdown
    assert md.startswith("### Smoke run (tiny sizes, not performance figures): cpu x1, ")
    assert md in run.stdout  # the same section on stdout and in the file
    assert re.search(r"jax \d+\.\d+\.\d+, jaxlib \d+\.\d+\.\d+", md)
    for letter in "abcde":
        assert re.search(rf"^\| {letter} \| ok \| \d+ \| \d+ \|$", md, flags=re.M), letter

    a = _part(md, "a")
    cells = re.findall(rf"ok(?: \((?:xla|cudnn)\))? ({NUMBER}) / ({NUMBER})", a)
    # 2 dtypes x 4 masks x 4 implementations (cuDNN is n/a on a CPU).
    assert len(cells) == 32 and re.search(r"^32 checks: all passed\.$", a, flags=re.M)
    assert all(float(out) < 0.05 and float(grad) < 0.05 for out, grad in cells)
    assert a.count("n/a on cpu") == 8 and "FAIL" not in a
    assert "`auto` compiled to: float32: xla; bfloat16: xla" in a

    b = _part(md, "b")
    timed = rf"{NUMBER} \({NUMBER}x\)"
    rows = re.findall(rf"^\| 16 \| (none|causal) \| (fwd|fwd\+bwd) \| {NUMBER} \| {timed} \| "
                      rf"n/a on cpu \| {timed} \| {NUMBER}x \|$", b, flags=re.M)
    assert sorted(rows) == sorted((m, p) for m in ("none", "causal") for p in ("fwd", "fwd+bwd"))

    c = _part(md, "c")
    assert re.search(rf"^\| jaxattn \(train\.steps\.train_step\) \| {NUMBER}M \| {NUMBER} \| "
                     rf"{NUMBER} \| n/a \| {NUMBER} \|$", c, flags=re.M), c
    assert "| Flax WMT example (models.py) | not run (no --flax_wmt) |" in c
    assert re.search(rf"Model FLOP/step {NUMBER} G", c)

    d = _part(md, "d")
    for search in ("greedy", "beam-4"):
        assert re.search(rf"^\| {search} \| {NUMBER} \| {NUMBER} \|$", d, flags=re.M), search

    e = _part(md, "e")
    row = re.search(rf"^\| (\d+) \| (\d+) \| 2 \| ({NUMBER}) \| ({NUMBER}) \| ({NUMBER})% \|$", e,
                    flags=re.M)
    assert row, e
    assert 0.0 <= float(row.group(5)) <= 100.0


@pytest.mark.slow
def test_a_part_that_times_out_still_reports_the_others():
    run = run_device_benchmark(("--smoke", "--parts=e2e,decode", "--timeouts=e2e=1",
                                "--output=out.md"))
    assert run.returncode == 1
    assert re.search(r"^\| e \| timed out after 1 s \| \d+ \| 1 \|$", run.markdown, flags=re.M)
    assert "**timed out after 1 s**" in _part(run.markdown, "e")
    assert re.search(r"^\| d \| ok \|", run.markdown, flags=re.M)
    assert re.search(rf"^\| greedy \| {NUMBER} \| {NUMBER} \|$", _part(run.markdown, "d"),
                     flags=re.M)
    assert "#### a." not in run.markdown  # --parts chose d and e only


@pytest.mark.slow
def test_unknown_part_is_one_line_error():
    run = run_device_benchmark(("--parts=correctness,speed",))
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1].endswith(
        "--parts: got 'correctness,speed', expected a comma-separated subset of "
        "correctness,attention,train_step,decode,e2e")


def test_peak_table_by_device_kind():
    peak = _load("device_speed").peak_flops
    assert peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak("NVIDIA H100 PCIe") == 756e12  # the longer key wins over "h100"
    assert peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak("TPU v5 lite") == 197e12
    assert peak("cpu") is None


def test_float64_reference_matches_a_direct_computation():
    """The part-a reference: hand-written gradients vs finite differences, masked rows 0."""
    correctness = _load("device_correctness")
    rng = np.random.default_rng(0)
    b, t, n, h = 2, 5, 2, 3
    q, k, v, cot = (rng.standard_normal((b, t, n, h)) for _ in range(4))
    mask = correctness.masks(b, t)["causal + padding (fully masked rows)"]
    out, grads = correctness.reference(q, k, v, mask, cot)
    hidden = ~mask.any(-1)[:, 0]  # [B, T]
    assert hidden.any() and np.all(out[hidden] == 0.0)
    eps = 1e-6
    for arg, grad in enumerate(grads):
        direction = rng.standard_normal((b, t, n, h))
        args = [q, k, v]
        plus = [x + eps * direction if i == arg else x for i, x in enumerate(args)]
        minus = [x - eps * direction if i == arg else x for i, x in enumerate(args)]
        numeric = (np.sum(correctness.reference(*plus, mask, cot)[0] * cot)
                   - np.sum(correctness.reference(*minus, mask, cot)[0] * cot)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grad * direction), numeric, rtol=1e-6, atol=1e-8)
