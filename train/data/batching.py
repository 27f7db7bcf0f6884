"""Static-shape batches: length buckets under a token budget, or packed rows.

Every batch has one of a few fixed shapes, so the jitted step compiles once per shape:

* **Buckets.** A pair goes to the smallest bucket length L >= max(len(inputs), len(targets)),
  and a bucket's batch is [rows_L, L] for both sides, rows_L = tokens_per_batch // L (or a fixed
  `batch_size`), rounded down to a multiple of `batch_size_multiple`. Pairs are bucketed within a
  pool of consecutive (already shuffled) pairs; the pool's batches are emitted in a seeded random
  order; a bucket's last batch in a pool is completed with all-zero rows (weight 0 in a loss that
  masks targets == pad). The iterator's state is (parent state at the pool start, pool index,
  batches emitted), so restoring it re-reads the pool and yields exactly the batches that the
  saved run would have yielded next.
* **Packing.** Several pairs of a pool share rows of fixed length (best-fit decreasing), with
  `*_segmentation` ids (1..n per pair, 0 = pad) and `*_positions` (0-based, restarting per pair)
  that `jaxattn.masks.segment_mask` turns into the block-diagonal mask (Vaswani et al. 2017 train
  on batches of ~25k tokens; packing is how tensor2tensor/Flax WMT fill them without padding).
  Packed rows are shuffled into [rows, L] batches; the pool's last batch may have zero rows.
  (grain's FirstFitPackIterDataset packs per element, several times slower here.)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import grain
import numpy as np

from train.data.tokenizer import EOS_ID, pad_rows
from train.errors import UserError

__all__ = ["rows_per_batch", "fit_length", "BucketBatchIterDataset", "PackBatchIterDataset", "LENGTH_POLICIES"]

LENGTH_POLICIES = ("filter", "truncate")


def rows_per_batch(length: int, tokens_per_batch: int, batch_size: int, multiple: int) -> int:
    """Rows of a [rows, length] batch: `batch_size` if > 0, else the token budget's share."""
    if batch_size > 0:
        rows = batch_size
    else:
        rows = tokens_per_batch // length // multiple * multiple
    if rows < multiple or rows % multiple:
        raise UserError(f"tokens_per_batch/batch_size: length {length} gives {rows} rows per batch, "
                        f"expected a positive multiple of batch_size_multiple={multiple}")
    return rows


def fit_length(ids: np.ndarray, max_length: int, policy: str) -> np.ndarray | None:
    """[L] eos-terminated ids -> ids of length <= max_length, or None if filtered out."""
    if len(ids) <= max_length:
        return ids
    if policy == "filter":
        return None
    if policy == "truncate":
        return np.concatenate([ids[:max_length - 1], np.asarray([EOS_ID], ids.dtype)])  # [max_length]
    raise UserError(f"length_policy: got {policy!r}, expected one of {LENGTH_POLICIES}")


def _bucket_pool(examples: list[dict[str, np.ndarray]], lengths: Sequence[int],
                 rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
    """Pool -> [rows_L, L] batches per bucket; a bucket's last batch has zero rows at the end."""
    buckets: list[list[dict[str, np.ndarray]]] = [[] for _ in lengths]
    for example in examples:
        longest = max(len(example["inputs"]), len(example["targets"]))
        b = int(np.searchsorted(lengths, longest))
        if b == len(lengths):
            raise ValueError(f"example: length {longest} exceeds the largest bucket {lengths[-1]}; "
                             "filter or truncate before bucketing")
        buckets[b].append(example)
    batches = []
    for length, num_rows, members in zip(lengths, rows, buckets):
        for start in range(0, len(members), num_rows):
            chunk = members[start:start + num_rows]
            batches.append({key: pad_rows([e[key] for e in chunk], length, num_rows)  # [rows, L]
                            for key in ("inputs", "targets")})
    return batches


def _pack_pool(examples: list[dict[str, np.ndarray]], length: int, rows: int,
               rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Pool -> [rows, length] packed batches (best-fit decreasing; rows shuffled into batches)."""
    n = len(examples)
    if not n:
        return []
    size = np.asarray([[len(e["inputs"]), len(e["targets"])] for e in examples])  # [n, 2]
    if size.max() > length:
        raise ValueError(f"example: length {size.max()} exceeds the packed row length {length}; "
                         "filter or truncate before packing")
    order = np.lexsort((-size[:, 1], -size.max(axis=1))).tolist()  # longest first: tighter
    # Best fit on the source side: open bins are kept in stacks by free source slots, and a pair
    # goes to the fullest bin that has room on both sides (at most 8 bins tried per level).
    sizes = size.tolist()
    free: list[list[int]] = []  # [bins][2] free slots per side
    by_free: list[list[int]] = [[] for _ in range(length + 1)]
    bin_of = [0] * n
    for i in order:
        need_in, need_tgt = sizes[i]
        b = None
        for level in range(need_in, length + 1):
            stack = by_free[level]
            for j in range(len(stack) - 1, max(len(stack) - 9, -1), -1):
                if free[stack[j]][1] >= need_tgt:
                    b = stack.pop(j)
                    break
            if b is not None:
                break
        if b is None:
            b = len(free)
            free.append([length, length])
        free[b][0] -= need_in
        free[b][1] -= need_tgt
        bin_of[i] = b
        if free[b][0] and free[b][1]:
            by_free[free[b][0]].append(b)
    num_bins = len(free)
    # Rows of the pool, then batches of `rows` rows (the last one completed with zero rows).
    row_of_bin = rng.permutation(num_bins).tolist()
    num_batches = -(-num_bins // rows)
    out = {f"{side}{suffix}": np.zeros((num_batches * rows, length), np.int32)  # [R, L]
           for side in ("inputs", "targets") for suffix in ("", "_segmentation", "_positions")}
    positions = np.arange(length, dtype=np.int32)  # [L]
    used = [[0, 0] for _ in range(num_bins)]
    segments = [0] * num_bins
    for i in order:  # segment ids follow the order pairs were placed in the row
        b = bin_of[i]
        r = row_of_bin[b]
        segments[b] += 1
        for s, side in enumerate(("inputs", "targets")):
            ids = examples[i][side]
            start = used[b][s]
            stop = start + len(ids)
            out[side][r, start:stop] = ids
            out[f"{side}_segmentation"][r, start:stop] = segments[b]
            out[f"{side}_positions"][r, start:stop] = positions[:len(ids)]
            used[b][s] = stop
    return [{key: value[k * rows:(k + 1) * rows] for key, value in out.items()}  # [rows, L]
            for k in range(num_batches)]


class _PoolBatchIterator(grain.DatasetIterator):
    """Reads a pool of whole chunks, turns it into batches, emits them in a seeded order.

    State: the parent's state at the pool start, the pool index and the batches emitted from the
    pool; `set_state` re-reads the pool and drops what was emitted.
    """

    def __init__(self, parent: grain.DatasetIterator, ds: _PoolBatchIterDataset):
        super().__init__(parent)
        self._ds = ds
        self._pool_start_state = copy.deepcopy(parent.get_state())
        self._pool_index = 0
        self._emitted = 0
        self._pending: list[dict[str, np.ndarray]] = []

    def _fill(self) -> None:
        examples: list[dict[str, np.ndarray]] = []
        while len(examples) < self._ds.pool_size:
            try:
                examples.extend(next(self._parent))
            except StopIteration:
                break
        rng = np.random.default_rng([self._ds.seed, self._pool_index])
        batches = self._ds.make_batches(examples, rng)
        order = rng.permutation(len(batches))
        self._pending = [batches[i] for i in order[::-1]]  # popped from the end

    def __next__(self) -> dict[str, np.ndarray]:
        if not self._pending:
            self._pool_start_state = copy.deepcopy(self._parent.get_state())
            self._pool_index += 1 if self._emitted else 0
            self._emitted = 0
            self._fill()
            if not self._pending:
                raise StopIteration
        self._emitted += 1
        return self._pending.pop()

    def get_state(self) -> dict:
        return {"parent": copy.deepcopy(self._pool_start_state), "pool_index": self._pool_index,
                "emitted": self._emitted}

    def set_state(self, state: dict) -> None:
        self._parent.set_state(copy.deepcopy(state["parent"]))
        self._pool_start_state = copy.deepcopy(state["parent"])
        self._pool_index = state["pool_index"]
        self._emitted = state["emitted"]
        self._pending = []
        if self._emitted:
            self._fill()
            del self._pending[len(self._pending) - self._emitted:]


class _PoolBatchIterDataset(grain.IterDataset):
    """Base: parent yields chunks (lists) of {"inputs": [S], "targets": [T]} examples.

    Pairs are read and encoded in chunks because batched array_record reads are ~10x faster than
    single ones; a pool is whole chunks (>= pool_size pairs), so a pool always starts at a parent
    state and restoring never needs the contents of a buffer.
    """

    def __init__(self, parent: grain.IterDataset, *, pool_size: int, seed: int):
        super().__init__(parent)
        if pool_size < 1:
            raise UserError(f"pool_size: got {pool_size}, expected >= 1")
        self.pool_size = int(pool_size)
        self.seed = int(seed)

    def make_batches(self, examples: list[dict[str, np.ndarray]], rng: np.random.Generator
                     ) -> list[dict[str, np.ndarray]]:
        raise NotImplementedError

    def __iter__(self) -> _PoolBatchIterator:
        return _PoolBatchIterator(self._parent.__iter__(), self)


class BucketBatchIterDataset(_PoolBatchIterDataset):
    """Chunks of examples -> {"inputs": [rows_L, L], "targets": [rows_L, L]} int32 batches."""

    def __init__(self, parent: grain.IterDataset, *, lengths: Sequence[int], rows: Sequence[int],
                 pool_size: int, seed: int):
        """Builds the dataset.

        Args:
            parent: chunks (lists) of examples with 1-d "inputs", "targets" (<= lengths[-1] long).
            lengths: ascending bucket lengths.
            rows: rows per batch of each bucket.
            pool_size: pairs bucketed together (larger: fewer part-filled batches, slower restore).
            seed: seed of the batch order within a pool.
        """
        super().__init__(parent, pool_size=pool_size, seed=seed)
        if not lengths or list(lengths) != sorted(set(lengths)) or lengths[0] < 1:
            raise UserError(f"lengths: got {tuple(lengths)}, expected strictly ascending positive")
        if len(rows) != len(lengths):
            raise UserError(f"rows: got {len(rows)} entries, expected {len(lengths)} (one per bucket)")
        self.lengths = tuple(int(x) for x in lengths)
        self.rows = tuple(int(x) for x in rows)

    def make_batches(self, examples, rng):
        del rng  # The order of batches is shuffled by the iterator.
        return _bucket_pool(examples, self.lengths, self.rows)

    def __str__(self) -> str:
        return f"BucketBatchIterDataset(lengths={self.lengths}, rows={self.rows})"


class PackBatchIterDataset(_PoolBatchIterDataset):
    """Chunks of examples -> packed [rows, length] int32 batches (see the module docstring).

    Output keys: "inputs", "inputs_segmentation", "inputs_positions", "targets",
    "targets_segmentation", "targets_positions". A pair never spans two rows; segment ids are
    1..n per row (0 = pad) and the i-th segment holds the same pair on both sides.
    """

    def __init__(self, parent: grain.IterDataset, *, length: int, rows: int, pool_size: int,
                 seed: int):
        super().__init__(parent, pool_size=pool_size, seed=seed)
        if length < 1 or rows < 1:
            raise UserError(f"length, rows: got {length}, {rows}, expected positive")
        self.length = int(length)
        self.rows = int(rows)

    def make_batches(self, examples, rng):
        return _pack_pool(examples, self.length, self.rows, rng)

    def __str__(self) -> str:
        return f"PackBatchIterDataset(length={self.length}, rows={self.rows})"
