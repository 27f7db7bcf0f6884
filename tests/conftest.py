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
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# `python -m train.translate` keeps compiled programs in a persistent cache (default under ~/.cache);
# the suite's subprocesses share one of their own instead, so tests never write to $HOME.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import functools
    import shutil
    import tempfile

    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxattn-test-xla-cache-")
    # Only the process that made it removes it (pytest-xdist workers inherit the variable).
    atexit.register(functools.partial(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"],
                                      ignore_errors=True))

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_default_matmul_precision", "highest")
