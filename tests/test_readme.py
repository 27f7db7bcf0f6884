"""The README's Python examples run as written and print what their comments say."""

import contextlib
import io
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_opens_with_two_commands():
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
    assert len(commands) == 1, "one command block in the quick start"
    lines = [line for line in commands[0].splitlines() if line.strip()]
    assert len(lines) == 2 and "python -m train.translate" in lines[0] and lines[1].endswith("pytest")


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


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
