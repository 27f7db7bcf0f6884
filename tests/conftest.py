"""Strict habits for the whole suite: implicit rank promotion is an error and float32 matmuls
run at full precision (warnings from jaxattn and train are errors too, by the filterwarnings of
pyproject.toml).

Eight fake CPU devices are made available for sharding and pmap tests; the flag
must be set before JAX is imported, which is why it lives here and nowhere in
library code.
"""
import os

os.environ.setdefault("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=8"
# XLA:CPU's older loop emitters instead of its MLIR fusion emitters: compiling is most of what a tiny
# test costs, and these compile the suite's programs in 0.55-0.7x the time (the test-size train step
# 4.1 -> 2.9 s, its greedy decode 1.0 -> 0.4 s, an eager op half), with every tolerance and bitwise
# check holding. Every subprocess and notebook kernel of the suite inherits it.
if "xla_cpu_use_fusion_emitters" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are kept in one persistent cache for the whole suite -- every test, pytest-xdist
# worker and `python -m train.translate` subprocess -- and across runs: a program compiled once
# (however fast) is read back instead of compiled again. XLA's cache key covers the program, the
# options and the jax version, so a stale entry is never used. JAX_COMPILATION_CACHE_DIR chooses
# another directory; tests never write to $HOME.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".pytest_cache", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA compiles with fewer optimisations, as JAX's own test suite does: the same results at these
# sizes (every tolerance and bitwise check holds), a quarter less time in the compile-bound files
# (test_models_transformer + test_decoding: 141 s -> 104 s on 2 cores), and compiling is most of what
# a tiny test costs. The notebooks run as a user runs them (tests/test_notebooks.py).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# A directory shared by the pytest-xdist workers of one run (they inherit the variable): what one
# worker computed for all (`shared_once`). Only the process that made it removes it.
if "JAXATTN_TEST_SHARED_DIR" not in os.environ:
    import atexit
    import functools
    import shutil
    import tempfile

    os.environ["JAXATTN_TEST_SHARED_DIR"] = tempfile.mkdtemp(prefix="jaxattn-tests-")
    atexit.register(functools.partial(shutil.rmtree, os.environ["JAXATTN_TEST_SHARED_DIR"], ignore_errors=True))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")


# --- Shared fixtures -------------------------------------------------------------------------
import shutil  # noqa: E402

import pytest  # noqa: E402
from shared import shared_once  # noqa: E402  (tests/ is on sys.path: pytest's rootdir conftest)


@pytest.fixture(scope="session")
def tiny_run() -> tuple[str, str]:
    """(workdir, data_dir) of the run's one tiny trained run, trained by the first worker that asks:
    `tiny.tiny(keep_checkpoints=3)`, checkpoints 2, 3 and 4 (step 4, the final one, with a validation
    BLEU). Never change it: copy it (`tiny_run_copy`)."""
    from tiny import tiny  # noqa: PLC0415
    from train import loop  # noqa: PLC0415

    def train(root: str) -> None:
        config = tiny(keep_checkpoints=3)
        config.data.data_dir = os.path.join(root, "tfds")
        loop.train_and_evaluate(config, os.path.join(root, "run"))

    root = shared_once("tiny_run", train)
    return os.path.join(root, "run"), os.path.join(root, "tfds")


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> str:
    """A private copy of `tiny_run`'s workdir, for a test that damages or extends it."""
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run[0], workdir)
    return workdir


@pytest.fixture(scope="module")
def tiny_run_reader(tiny_run, tmp_path_factory) -> str:
    """A copy of `tiny_run`'s workdir for one test file's readers (eval, translate, serve): reading a
    run leaves a snapshot directory in it while it reads, which another worker's copy would catch."""
    workdir = str(tmp_path_factory.mktemp("tiny_run_reader") / "run")
    shutil.copytree(tiny_run[0], workdir)
    return workdir


# --- Scheduling ------------------------------------------------------------------------------
# pytest-xdist hands out whole files (`--dist loadfile`) in collection order (`--no-loadscope-reorder`):
# the longest files go first, so that no worker sits idle while another finishes a long file at the
# end. Seconds per file from `--durations=0` of `CI=true .ci/run` on 2 cores (2026-12-07, de6d73e); a
# file not listed runs after these, in the usual order. Only the order changes, never what runs.
LONGEST_FIRST = (
    "test_readme_commands.py", "test_notebooks.py", "test_train_e2e.py", "test_train_budgets.py",  # 259 179 128 82
    "test_nnx.py", "test_server_cli.py", "test_recipes.py",  # 77 67 62 (test_recipes.py: -n 0, 2026-12-07)
    "test_experiments_length.py", "test_train_e2e_extensions.py",  # 59 56
    "test_translation.py", "test_faults.py", "test_models_transformer.py", "test_models_rnn.py",  # 54 51 45 42
    "test_decoding.py", "test_export.py", "test_server.py", "test_readme.py",  # 37 32 26 24
    "test_nnx_workdir.py", "test_train_bad_input.py", "test_align.py", "test_ensemble.py",  # 22 22 22 21
    "test_train_steps.py",  # 21
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept otherwise
