"""Orbax checkpoints: async saves, keep the last k and the best by a validation metric, exact resume.

A checkpoint (`<workdir>/checkpoints/<step>/`) holds three items:

* `state`: parameters, optimizer state, step (the `TrainState`) and the run's
  base PRNG key; with the step, the key fixes every later dropout mask
  (`fold_in(rng, step)`), so a resumed run replays exactly;
* `data`: the grain iterator state (one JSON file per process), so the input
  pipeline resumes at the next unseen batch;
* `config`: the resolved config, to refuse resuming into a different model.

Saves are asynchronous: Orbax copies the arrays to host memory before `save`
returns (so the next step may donate the state's buffers), then writes in a
background thread. `close()` waits for the writes to finish. A full disk is
one `UserError` (what, where, how much is free, which checkpoint is the last
complete one); the half-written step never replaces a complete one.

Reading picks a checkpoint with `select`: it is checked file by file first
(`checkpoint_files.check_step`); a damaged one is reported (step and file) and
the newest intact one is used instead. A resumed run sets damaged steps aside
as `damaged-<step>/` (so that its own saves cannot land on them); readers
(`read_only`) work on a private hard-link snapshot and touch nothing.

A restore that fails says why: damaged files (`DamagedCheckpointError`), or a
state of another structure than the code builds (`CheckpointMismatchError`,
naming the differing arrays); any other error is a bug and keeps its traceback.
"""

import errno
import logging
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp

from train import checkpoint_files
from train.checkpoint_files import DamagedCheckpointError
from train.errors import UserError

__all__ = ["CHECKPOINT_DIR", "RESUME_ITEMS", "READ_ITEMS", "CheckpointMismatchError", "Checkpointer",
           "DamagedCheckpointError", "DiskFullError", "is_disk_full"]

_log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
BEST_METRIC = "bleu"  # what picks the best checkpoint unless the run says otherwise (`best_metric`)
RESUME_ITEMS = ("state", "data", "config")  # what a resumed run restores
READ_ITEMS = ("state", "config")  # what eval and translate restore


class DiskFullError(UserError):
    """A save ran out of disk space: says where, how much is free and which checkpoint is complete."""


class CheckpointMismatchError(UserError):
    """An intact checkpoint whose state differs from what the code builds: names what differs."""


def is_disk_full(error: BaseException | None) -> bool:
    """True if `error` (or what caused it) is "no space left" / "quota exceeded" (tensorstore included)."""
    while error is not None:
        if isinstance(error, DiskFullError):
            return True
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if any(s in text for s in ("No space left on device", "Disk quota exceeded", "os_error_code='28'")):
            return True
        error = error.__cause__ or error.__context__
    return False


def _size(num_bytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    return ""


class _Best:
    """Checkpoint metrics -> the value the best checkpoint maximizes (a loss negated; absent: -inf)."""

    def __init__(self, name: str, larger_is_better: bool):
        self.name, self._sign = name, 1.0 if larger_is_better else -1.0

    def __call__(self, metrics: dict[str, float]) -> float:
        value = metrics.get(self.name)
        return float("-inf") if value is None else self._sign * value


class Checkpointer:
    """A thin `ocp.CheckpointManager` for the trainer's three items.

    Args:
      directory: where step directories go (`<workdir>/checkpoints`).
      keep: how many of the latest checkpoints to keep; the best one by
        `best_metric` is kept in addition.
      read_only: open existing checkpoints without creating anything (used by
        the eval and translate modes).
      best_metric: the validation metric saved with a checkpoint that picks the best
        ("bleu", or the run's `early_stopping.metric`); `larger_is_better` is its direction.
    """

    def __init__(self, directory: str, keep: int, read_only: bool = False, best_metric: str = BEST_METRIC,
                 larger_is_better: bool = True):
        self.directory = os.path.abspath(directory)
        self.best_metric = best_metric
        best = _Best(best_metric, larger_is_better)
        self.read_only = read_only
        self._checked: set[tuple[int, tuple[str, ...]]] = set()
        self._excluded: set[int] = set()
        self._pending: int | None = None  # the step of the save still being written
        self._snapshot = None
        if read_only:
            self._snapshot = checkpoint_files.Snapshot(self.directory)
            damaged = checkpoint_files.unreadable(self._snapshot.path, self._snapshot.steps)
            for e in damaged:
                self._exclude(e.step)
            newest = max(self._snapshot.steps, default=None)
            for e in damaged:
                _log.warning("%s; %s", e, f"falling back to checkpoint {newest}" if newest is not None
                             and e.step > newest else "leaving it out")
        else:
            self._set_aside_unreadable()
            if jax.process_index() == 0:
                checkpoint_files.purge_rotated(self.directory)
        policies = ocp.checkpoint_managers
        options = ocp.CheckpointManagerOptions(
            best_fn=best,
            best_mode="max",
            preservation_policy=policies.AnyPreservationPolicy(
                [
                    policies.LatestN(keep),
                    policies.BestN(get_metric_fn=best, n=1, keep_checkpoints_without_metrics=False),
                ]
            ),
            create=not read_only,
            read_only=read_only,
            save_interval_steps=0 if read_only else 1,  # Orbax warns when it has to change it itself
            # Rotation is one rename (readers never see half a step); purged before each save.
            todelete_subdir=None if read_only else checkpoint_files.ROTATED_DIR,
            cleanup_tmp_directories=not read_only,  # half-written saves (a full disk, a kill) free their space
        )
        root = self._snapshot.path if read_only else self.directory
        self.manager = ocp.CheckpointManager(root, options=options, item_names=("state", "data", "config"))

    def _set_aside_unreadable(self) -> None:
        """Moves steps with unreadable metadata aside (Orbax itself would stop on them).

        Only if an intact-looking step remains: a run never restarts from scratch
        because every checkpoint it had was damaged.
        """
        steps = checkpoint_files.step_dirs(self.directory)
        damaged = checkpoint_files.unreadable(self.directory, steps)
        if damaged and len(damaged) == len(steps):
            raise self._none_intact(damaged)
        newest = max(set(steps) - {e.step for e in damaged}, default=None)
        for e in damaged:
            self._move_aside(e, f"falling back to checkpoint {newest}" if e.step > newest else "")

    def _move_aside(self, error: DamagedCheckpointError, note: str = "") -> None:
        if jax.process_index() == 0:
            target = checkpoint_files.move_aside(self.directory, error.step)
            _log.warning("%s; %smoved it to %s (kept, never overwritten)", error, f"{note}; " if note else "",
                         target)

    def _none_intact(self, damaged: list[DamagedCheckpointError]) -> UserError:
        return UserError(f"no intact checkpoint in {self.directory}: {'; '.join(str(e) for e in damaged[:3])}; "
                         f"move the damaged step directories out of {self.directory} to start afresh, "
                         "or use a new --workdir")

    def _exclude(self, step: int) -> None:
        self._excluded.add(step)
        if self._snapshot is not None:
            self._snapshot.drop(step)

    def steps(self) -> list[int]:
        """The steps that can be read, ascending (damaged ones found so far left out)."""
        return [s for s in self.manager.all_steps() if s not in self._excluded]

    def latest_step(self) -> int | None:
        steps = self.steps()
        return max(steps) if steps else None

    def best_step(self) -> int | None:
        step = self.manager.best_step()
        return None if step in self._excluded else step

    def check(self, step: int, items: tuple[str, ...] = READ_ITEMS) -> None:
        """Raises `DamagedCheckpointError` if any file of `step` cannot be read (checked once)."""
        if (step, items) not in self._checked:
            checkpoint_files.check_step(self._snapshot.path if self._snapshot else self.directory, step, items)
            self._checked.add((step, items))

    def select(self, which: str = "latest", items: tuple[str, ...] = READ_ITEMS) -> int | None:
        """The intact checkpoint to read: the newest ("latest") or best by `best_metric` ("best").

        A damaged one is reported with its step and file and the next one is
        tried; a resuming trainer then moves the damaged ones aside. Returns None
        only if there is no checkpoint at all ("latest").

        Raises:
          UserError: no best checkpoint, or none intact.
        """
        damaged: list[DamagedCheckpointError] = []
        step = self._pick(which)
        while step is not None:
            try:
                self.check(step, items)
                break
            except DamagedCheckpointError as e:
                damaged.append(e)
                self._exclude(step)
                if self._snapshot is not None:
                    self.manager.reload()
                step = self._pick(which)
                _log.warning("%s; %s", e, f"falling back to checkpoint {step}" if step is not None
                             else "no other checkpoint to fall back to")
        if step is None and damaged:
            if which == "best" and self.latest_step() is not None:
                raise UserError(f"{damaged[-1]}; no other checkpoint holds a validation {self.best_metric}; "
                                f"--checkpoint=latest reads step {self.latest_step()}")
            raise self._none_intact(damaged)
        if not self.read_only and damaged:
            for e in damaged:
                self._move_aside(e)
            self.manager.reload()
        return step

    def _pick(self, which: str) -> int | None:
        if which == "latest":
            return self.latest_step()
        step = self.manager.best_step()
        if step in self._excluded:
            return None
        if step is None and self.latest_step() is not None:
            raise UserError(f"checkpoint: no best checkpoint in {self.directory} (steps {self.steps()} hold no "
                            f"validation {self.best_metric}: it is recorded at eval_every_steps and at the end of training); "
                            f"--checkpoint=latest reads step {self.latest_step()}")
        return step

    def save(
        self,
        step: int,
        state: Any,
        rng: jax.Array,
        data_iterator: Any | None,
        config: dict[str, Any],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Starts an asynchronous save (returns once arrays are on the host)."""
        self.wait()  # the previous save's error, if any, surfaces here with its own step
        if jax.process_index() == 0:
            checkpoint_files.purge_rotated(self.directory)
        items = {
            "state": ocp.args.StandardSave({"state": state, "rng": rng}),
            "config": ocp.args.JsonSave(config),
        }
        if data_iterator is not None:
            import grain  # noqa: PLC0415  (the training data's position: grain loads only where there is one)

            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        try:
            self.manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
        except Exception as e:
            self._raise_if_disk_full(e, step)
            raise
        self._pending = step

    def _raise_if_disk_full(self, error: BaseException, step: int | None) -> None:
        if not is_disk_full(error):
            return
        try:
            free = f"{_size(shutil.disk_usage(self.directory).free)} free"
        except OSError:
            free = "free space unknown"
        complete = checkpoint_files.step_dirs(self.directory)
        last = f"checkpoint {complete[-1]} is the last complete one" if complete else "no checkpoint is complete"
        raise DiskFullError(f"disk full: no space left on the device of {self.directory} ({free}) while saving "
                        f"checkpoint {step}; {last}; free some space and re-run to resume") from None

    def restore(
        self, step: int, abstract_state: Any, abstract_rng: Any, data_iterator: Any | None = None
    ) -> tuple[Any, jax.Array]:
        """Restores state and rng into the given abstract targets (shardings included).

        If `data_iterator` is given, its position is restored in place.

        Raises:
          DamagedCheckpointError: a file of the checkpoint cannot be read.
          CheckpointMismatchError: the saved state has other arrays or shapes than the targets.
        """
        target = {"state": abstract_state, "rng": abstract_rng}
        restored = self._restore_item(step, "state", ocp.args.StandardRestore(target), target)
        if data_iterator is not None:
            import grain  # noqa: PLC0415

            self._restore_item(step, "data", grain.checkpoint.CheckpointRestore(data_iterator))
        return restored["state"], restored["rng"]

    def _restore_item(self, step: int, item: str, args: Any, target: Any = None) -> Any:
        try:
            return self.manager.restore(step, args=ocp.args.Composite(**{item: args}))[item]
        except Exception as e:
            root = self._snapshot.path if self._snapshot else self.directory
            checkpoint_files.check_step(root, step, (item,))  # damaged files: DamagedCheckpointError
            if target is not None:
                differences = checkpoint_files.state_differences(root, step, item, target)
                if differences:
                    more = f"; and {len(differences) - 5} more" if len(differences) > 5 else ""
                    raise CheckpointMismatchError(
                        f"checkpoint {step} holds a different state structure than this code builds: "
                        f"{'; '.join(differences[:5])}{more}") from e
            raise  # intact and of the expected structure: a bug, with its traceback

    def restore_config(self, step: int) -> dict[str, Any]:
        """The config saved with checkpoint `step` (`{"config": ..., "vocab": ...}` for the trainer's)."""
        stored = self._restore_item(step, "config", ocp.args.JsonRestore())
        if not isinstance(stored, dict):
            raise DamagedCheckpointError(step, f"{step}/config/metadata", f"got {type(stored).__name__}, "
                                         "expected a JSON object")
        return stored

    def wait(self) -> None:
        """Waits for the pending save; a full disk is one `UserError`."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            self._raise_if_disk_full(e, self._pending)
            raise
        self._pending = None

    def close(self) -> None:
        """Waits for pending saves, then releases the manager (and a reader's snapshot)."""
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception as e:
                self._raise_if_disk_full(e, self._pending)
                raise
            finally:
                if self._snapshot is not None:
                    self._snapshot.close()
                elif jax.process_index() == 0:
                    checkpoint_files.purge_rotated(self.directory)
