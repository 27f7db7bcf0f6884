"""Two processes on loopback (JAX multi-controller, gloo CPU collectives) train in lockstep.

Each process feeds its half of the global batch through the trainer's Mesh
data parallelism (`train.sharding.MeshParallel`, `train.steps.train_step`) on a
real (tiny) Transformer; both must end with identical parameters, equal to one
process training on the whole global batch.
"""

import functools
import os
import socket
import subprocess
import sys
import textwrap

import chex
import jax
import numpy as np
import pytest
from shared import one_device_xla_flags

pytestmark = pytest.mark.slow  # two processes (see pyproject.toml's markers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import functools, sys
    import jax
    import numpy as np

    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    sys.path.insert(0, sys.argv[4])
    from test_train_multihost import make_batches, make_step_inputs
    from train import sharding

    assert jax.process_count() == 2 and jax.device_count() == 2
    parallel = sharding.MeshParallel()
    init_fn, step_fn = make_step_inputs()
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    train_step = parallel.compile_train_step(step_fn)
    rng = parallel.put_rng(jax.random.PRNGKey(1))
    losses = []
    for batch in make_batches():
        half = {k: v[process_id * 4:(process_id + 1) * 4] for k, v in batch.items()}  # this host's rows
        state, metrics = train_step(state, parallel.put_batch(half), rng)
        losses.append(float(parallel.fetch(metrics)["loss_sum"]))
    params = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), state.params)
    leaves = {str(i): leaf for i, leaf in enumerate(jax.tree.leaves(params))}
    np.savez(out, losses=np.asarray(losses), **leaves)
    jax.distributed.shutdown()
""")


def make_step_inputs():
    """(init_fn, train_step with static arguments bound) for a tiny real Transformer."""
    from jaxattn.models import Transformer, TransformerConfig
    from train import optim, steps
    from train.configs import base

    config = base.get_base_config()
    config.warmup_steps = 1
    # Attention key biases have an exactly-zero gradient (softmax is shift invariant), so
    # theirs is round-off noise, which Adam with eps=1e-9 would blow up to lr-sized steps
    # that differ between reduction orders; eps=1e-6 keeps the comparison meaningful.
    config.adam_eps = 1e-6
    model = Transformer(TransformerConfig.tiny(vocab_size=13, emb_dim=16, num_heads=2, mlp_dim=16,
                                               num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.1))
    tx = optim.make_optimizer(config)
    init_fn = functools.partial(steps.init_state, model=model, tx=tx, input_shape=(1, 6), target_shape=(1, 5))
    step_fn = functools.partial(steps.train_step, model=model, label_smoothing=0.1,
                                learning_rate_fn=optim.make_schedule(config))
    return init_fn, step_fn


def make_batches(num_steps: int = 3, rows: int = 8):
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(num_steps):
        inputs = rng.integers(4, 13, size=(rows, 6)).astype(np.int32)                   # [B, S]
        targets = rng.integers(4, 13, size=(rows, 5)).astype(np.int32)                  # [B, T]
        targets[: rows // 2, 3:] = 0  # the two hosts hold different token counts
        batches.append({"inputs": inputs, "targets": targets})
    return batches



def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    port = str(_free_port())
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=one_device_xla_flags() + " --xla_force_host_platform_device_count=1",
               PYTHONPATH=REPO)
    workers = [
        subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path / f"p{i}.npz"),
                          os.path.dirname(os.path.abspath(__file__))], cwd=REPO, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]
    try:
        outputs = [w.communicate(timeout=240)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out[-3000:]
    p0, p1 = (np.load(tmp_path / f"p{i}.npz") for i in range(2))
    assert set(p0.files) == set(p1.files)
    for name in p0.files:  # lockstep: bitwise-identical replicas
        np.testing.assert_array_equal(p0[name], p1[name])

    # One process, one device, the whole global batch.
    from train import sharding

    parallel = sharding.MeshParallel(jax.devices()[:1])
    init_fn, step_fn = make_step_inputs()
    state = parallel.create_state(init_fn, jax.random.PRNGKey(0))
    train_step = parallel.compile_train_step(step_fn)
    rng = parallel.put_rng(jax.random.PRNGKey(1))
    losses = []
    for batch in make_batches():
        state, metrics = train_step(state, parallel.put_batch(batch), rng)
        losses.append(float(parallel.fetch(metrics)["loss_sum"]))
    np.testing.assert_allclose(p0["losses"], losses, rtol=1e-5)
    leaves = jax.tree.leaves(jax.device_get(state.params))
    chex.assert_trees_all_close([p0[str(i)] for i in range(len(leaves))], leaves, atol=1e-5, rtol=1e-5)
