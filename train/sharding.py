"""Data parallelism: `jax.jit` over a device Mesh (default) or `jax.pmap`.

Both strategies run the same pure `train.steps` functions and expose the same
small interface to the training loop, chosen by `config.parallel` through the
`PARALLEL` dict:

* `MeshParallel` ("jit"): a 1-D `jax.sharding.Mesh` over every device of every
  process, axis "data". The state is replicated (`NamedSharding(mesh, P())`),
  the batch is split along B (`P("data")`), and XLA inserts the gradient
  all-reduce. The state is created directly with its sharding:
  `jax.eval_shape(init)` gives the shapes, `jax.jit(init, out_shardings=...)`
  materialises it (big_vision's recipe). Multi-host works unchanged: each
  process feeds its own slice of the global batch
  (`jax.make_array_from_process_local_data`).
* `PmapParallel` ("pmap"): the classic `jax.pmap` with `axis_name="batch"`; the
  state carries a leading device axis and the step all-reduces explicitly.

Multi-host runs use JAX's own multi-controller runtime
(`jax.distributed.initialize`, see `initialize_distributed`).
"""

import functools
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from train.errors import UserError

__all__ = [
    "DATA_AXIS",
    "PMAP_AXIS",
    "MeshParallel",
    "PmapParallel",
    "PARALLEL",
    "make_parallel",
    "initialize_distributed",
    "global_rng",
]

DATA_AXIS = "data"
PMAP_AXIS = "batch"


def _donated_state(device: jax.Device) -> tuple[int, ...]:
    """The train step's donated arguments: the state, except on CPU.

    XLA:CPU copies every donated parameter into fresh, page-faulted memory
    before updating it in place (the base Transformer: 145 copies, 168 MiB and
    ~11% of its step time; benchmarks/RESULTS.md, "Train step at real
    vocabulary sizes"). Donation saves accelerator memory; a CPU has plenty.
    """
    return () if device.platform == "cpu" else (0,)


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Starts JAX's multi-controller runtime when `config.distributed` asks for it.

    `coordinator_address == ""` and `num_processes == 1` (the default): single
    process, nothing to do. `coordinator_address == "auto"`: let JAX detect the
    cluster (Cloud TPU, SLURM, Open MPI). Otherwise the explicit address,
    process count and this process's id are passed through.

    Args:
      config: the training config (`distributed.coordinator_address`,
        `.num_processes`, `.process_id`).
    """
    dist = config.distributed
    if dist.coordinator_address == "auto":
        try:
            jax.distributed.initialize()
        except ValueError as e:  # no cluster environment (Cloud TPU, SLURM, Open MPI) was detected
            raise UserError(f"distributed.coordinator_address: 'auto' found no cluster to join ({e}); "
                            "give the coordinator's host:port, num_processes and process_id") from None
    elif dist.coordinator_address:
        jax.distributed.initialize(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
        )


class MeshParallel:
    """`jax.jit` data parallelism over a 1-D device mesh (the default)."""

    name = "jit"

    def __init__(self, devices: list[jax.Device] | None = None):
        devices = jax.devices() if devices is None else devices
        self.mesh = Mesh(np.asarray(devices), (DATA_AXIS,))
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
        self.num_devices = len(devices)
        self.rng_sharding = self.replicated  # where the run's base key lives
        self.decode_sharding = self.replicated  # decoded tokens: readable on every host
        # The whole train state is replicated: this one sharding is a pytree prefix for any state.
        self.state_sharding = self.replicated

    def create_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        """Builds the state directly on the devices, replicated."""
        return jax.jit(init_fn, out_shardings=self.state_sharding)(rng)

    def abstract_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        """Shapes, dtypes and shardings of the state, as the restore target."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.state_sharding),
            jax.eval_shape(init_fn, rng),
        )

    def place_state(self, state: Any) -> Any:
        """A restored (already correctly sharded) state, unchanged."""
        return state

    def host_state(self, state: Any) -> Any:
        """The state as host numpy arrays, as saved in checkpoints.

        One copy of the replicated state; Orbax would make the same copy, and
        handing it numpy spares it slicing every array per device.
        """
        return jax.device_get(state)

    def put_rng(self, rng: jax.Array) -> jax.Array:
        return jax.device_put(rng, self.replicated)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's slice of the global batch -> global arrays split along B."""
        return {
            k: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(v))
            for k, v in batch.items()
        }

    def compile_train_step(self, step_fn: Callable[..., Any]) -> Callable[..., Any]:
        """Jits `step_fn(state, batch, rng)` once, donating the state (not on CPU)."""
        return jax.jit(
            step_fn,
            in_shardings=(self.state_sharding, self.batch_sharding, self.replicated),
            out_shardings=(self.state_sharding, self.replicated),
            donate_argnums=_donated_state(self.mesh.devices.flat[0]),
        )

    def compile_eval_step(self, step_fn: Callable[..., Any]) -> Callable[..., Any]:
        """Jits `step_fn(params, batch)`; metrics come back replicated."""
        return jax.jit(step_fn, out_shardings=self.replicated)

    def params(self, state: Any) -> Any:
        return state.params

    def fetch(self, tree: Any) -> Any:
        """Device metrics -> host numpy (replicated, so any process can read them)."""
        return jax.device_get(tree)


class PmapParallel:
    """`jax.pmap` data parallelism over the local devices, axis "batch"."""

    name = "pmap"

    def __init__(self, devices: list[jax.Device] | None = None):
        self.devices = jax.local_devices() if devices is None else devices
        self.num_devices = len(self.devices)
        self.rng_sharding = jax.sharding.SingleDeviceSharding(self.devices[0])
        self.decode_sharding = None  # decoding runs on the first local device

    def _replicate(self, tree: Any) -> Any:
        return jax_utils.replicate(tree, self.devices)

    def create_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        return self._replicate(jax.jit(init_fn)(rng))

    def abstract_state(self, init_fn: Callable[[jax.Array], Any], rng: jax.Array) -> Any:
        abstract = jax.eval_shape(init_fn, rng)
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.rng_sharding), abstract
        )

    def place_state(self, state: Any) -> Any:
        return self._replicate(state)

    def host_state(self, state: Any) -> Any:
        """The state as host numpy arrays without the device axis (device 0's copy)."""
        return jax.tree.map(_first_replica, state)

    def put_rng(self, rng: jax.Array) -> jax.Array:
        return self._replicate(rng)

    def put_batch(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """[B, ...] -> [devices, B / devices, ...], one slice per local device."""
        def split(x):
            x = np.asarray(x)
            return x.reshape((self.num_devices, x.shape[0] // self.num_devices) + x.shape[1:])

        return jax.tree.map(split, batch)

    def compile_train_step(self, step_fn: Callable[..., Any]) -> Callable[..., Any]:
        return jax.pmap(
            functools.partial(step_fn, axis_name=PMAP_AXIS),
            axis_name=PMAP_AXIS,
            devices=self.devices,
            donate_argnums=_donated_state(self.devices[0]),
        )

    def compile_eval_step(self, step_fn: Callable[..., Any]) -> Callable[..., Any]:
        return jax.pmap(
            functools.partial(step_fn, axis_name=PMAP_AXIS), axis_name=PMAP_AXIS, devices=self.devices
        )

    def params(self, state: Any) -> Any:
        """One copy of the parameters, on the first device (for decoding)."""
        return jax.device_put(jax.tree.map(_first_replica, state.params), self.devices[0])

    def fetch(self, tree: Any) -> Any:
        # Metrics are all-reduced inside the step: every device holds the total.
        return jax.tree.map(_first_replica, tree)


def _first_replica(x: jax.Array) -> np.ndarray:
    # Read device 0's shard on the host: indexing x[0] would compile a slice per array.
    return np.asarray(x.addressable_shards[0].data)[0]


PARALLEL: dict[str, Callable[[], Any]] = {"jit": MeshParallel, "pmap": PmapParallel}


def make_parallel(config: ml_collections.ConfigDict) -> MeshParallel | PmapParallel:
    """The strategy named by `config.parallel` ("jit" or "pmap")."""
    if config.parallel not in PARALLEL:
        raise UserError(f"config.parallel: got {config.parallel!r}, expected one of {sorted(PARALLEL)}")
    return PARALLEL[config.parallel]()


def global_rng(seed: int) -> jax.Array:
    """The run's base key (a raw uint32 key, so checkpoints store it as plain data)."""
    return jax.random.PRNGKey(seed)

