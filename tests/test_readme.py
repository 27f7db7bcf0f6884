"""The README's Python examples run as written and print what their comments say."""

import contextlib
import io
import pathlib
import re
import tomllib

import pytest
from device_smoke import run_device_benchmark

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# The CTranslate2 example reads an exported run: tests/test_export.py runs it on one.
BLOCKS = [block for block in re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
          if "ctranslate2" not in block]


def test_readme_opens_with_two_commands():
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert len(commands) == 1, "one command block in the quick start"
    lines = [line for line in commands[0].splitlines() if line.strip()]
    assert len(lines) == 2 and "python -m train.translate" in lines[0] and lines[1].endswith("pytest")


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.slow  # a user's snippets as written: one builds, runs and decodes a Transformer eagerly
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index):
    source = BLOCKS[index]
    # "print(x)  # (2, 5, 4, 8) ..." promises that the printed line starts with "(2, 5, 4, 8)".
    promised = [m.group(1).strip() for m in re.finditer(r"^print\(.*\)\s+#\s*((?:\([^)]*\) ?)+)", source, flags=re.M)]
    assert promised, "each example shows its output in a comment"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(source, f"README.md python block {index}", "exec"), {})
    printed = out.getvalue().splitlines()
    for promise in promised:
        assert any(line.startswith(promise) for line in printed), (promise, printed)


# --- "On a GPU / TPU": each command line is an install extra or the device benchmark -----

PIP_EXTRA = re.compile(r'pip install -e "\.\[(\w+)\]"')
DEVICE_BENCHMARK = re.compile(r"python -m benchmarks\.device(?: --\S+)*")


def _accelerator_commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = re.split(r"\n##+ ", text.split("### On a GPU / TPU", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()
            if line.strip()]


def test_accelerator_commands_are_all_checked():
    commands = _accelerator_commands()
    assert commands and all(PIP_EXTRA.fullmatch(c) or DEVICE_BENCHMARK.fullmatch(c)
                            for c in commands), commands


def test_accelerator_extras_pull_jax_with_the_same_bounds():
    project = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (jax_bounds,) = [d[len("jax"):] for d in project["dependencies"] if re.match(r"jax[<>=]", d)]
    extras = [m.group(1) for c in _accelerator_commands() if (m := PIP_EXTRA.fullmatch(c))]
    assert {"cuda12", "tpu"} <= set(extras)
    for extra in extras:  # pip cannot install CUDA/TPU wheels in CI: check what it would install
        assert project["optional-dependencies"][extra] == [f"jax[{extra}]{jax_bounds}"], extra


@pytest.mark.slow
def test_accelerator_device_benchmark_command_runs():
    commands = [c for c in _accelerator_commands() if DEVICE_BENCHMARK.fullmatch(c)]
    assert commands
    for command in commands:  # at smoke size: CI has no accelerator
        args = tuple(command.split()[3:])
        run = run_device_benchmark(args if "--smoke" in args else args + ("--smoke",))
        assert run.returncode == 0, run.stderr[-3000:]
        assert re.search(r"^\d+ checks: all passed\.$", run.markdown, flags=re.M)
