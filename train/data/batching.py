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
* **Packing.** Several pairs share a row of fixed length (grain's first-fit packing), with
  `*_segmentation` ids (1..n per pair, 0 = pad) and `*_position` (0-based, restarting per pair)
  that `jaxattn.masks.segment_mask` turns into the block-diagonal mask (Vaswani et al. 2017 train
  on batches of ~25k tokens; packing is how tensor2tensor/Flax WMT fill them without padding).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import grain
import numpy as np

from train.data.tokenizer import EOS_ID, PAD_ID

__all__ = ["default_bucket_lengths", "rows_per_batch", "fit_length", "BucketBatchIterDataset",
           "UnchunkIterDataset", "pack", "eval_batches", "LENGTH_POLICIES"]

LENGTH_POLICIES = ("filter", "truncate")


def default_bucket_lengths(max_length: int) -> tuple[int, ...]:
  """8, 12, 16, 24, 32, 48, ... (ratio <= 1.5, so <= 1/3 padding per row), ending at max_length."""
  lengths, base = [], 8
  while True:
    for length in (base, base * 3 // 2):
      if length < max_length:
        lengths.append(length)
    if base * 3 // 2 >= max_length:
      break
    base *= 2
  return (*lengths, max_length)


def rows_per_batch(length: int, tokens_per_batch: int, batch_size: int, multiple: int) -> int:
  """Rows of a [rows, length] batch: `batch_size` if > 0, else the token budget's share."""
  if batch_size > 0:
    rows = batch_size
  else:
    rows = tokens_per_batch // length // multiple * multiple
  if rows < multiple or rows % multiple:
    raise ValueError(f"tokens_per_batch/batch_size: length {length} gives {rows} rows per batch, "
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
  raise ValueError(f"length_policy: got {policy!r}, expected one of {LENGTH_POLICIES}")


def _pad_stack(rows: Sequence[np.ndarray], num_rows: int, length: int) -> np.ndarray:
  out = np.full((num_rows, length), PAD_ID, np.int32)  # [rows, L]
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


class _BucketBatchIterator(grain.DatasetIterator):
  """See `BucketBatchIterDataset`."""

  def __init__(self, parent: grain.DatasetIterator, ds: BucketBatchIterDataset):
    super().__init__(parent)
    self._ds = ds
    self._pool_start_state = copy.deepcopy(parent.get_state())
    self._pool_index = 0
    self._emitted = 0
    self._pending: list[dict[str, np.ndarray]] = []

  def _fill(self) -> None:
    ds = self._ds
    buckets: list[list[dict[str, np.ndarray]]] = [[] for _ in ds.lengths]
    count = 0
    while count < ds.pool_size:
      try:
        chunk = next(self._parent)
      except StopIteration:
        break
      count += len(chunk)
      for example in chunk:
        longest = max(len(example["inputs"]), len(example["targets"]))
        b = int(np.searchsorted(ds.lengths, longest))
        if b == len(ds.lengths):
          raise ValueError(f"example: length {longest} exceeds the largest bucket "
                           f"{ds.lengths[-1]}; filter or truncate before bucketing")
        buckets[b].append(example)
    batches = []
    for length, rows, examples in zip(ds.lengths, ds.rows, buckets):
      for start in range(0, len(examples), rows):
        chunk = examples[start:start + rows]
        batches.append({key: _pad_stack([e[key] for e in chunk], rows, length)  # [rows, L]
                        for key in ("inputs", "targets")})
    order = np.random.default_rng([ds.seed, self._pool_index]).permutation(len(batches))
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


class BucketBatchIterDataset(grain.IterDataset):
  """Batches chunks (lists) of {"inputs": [S], "targets": [T]} into [rows_L, L] batches.

  The parent yields lists of examples (pairs are read and encoded in chunks because batched
  array_record reads are ~10x faster than single ones); a pool is whole chunks, so the pool
  start is always a parent state.

  Output elements: {"inputs": [rows_L, L] int32, "targets": [rows_L, L] int32}, 0-padded.
  """

  def __init__(self, parent: grain.IterDataset, *, lengths: Sequence[int], rows: Sequence[int],
               pool_size: int, seed: int):
    """Args:
      parent: lists of examples with 1-d "inputs", "targets" of length <= lengths[-1].
      lengths: ascending bucket lengths.
      rows: rows per batch of each bucket.
      pool_size: pairs bucketed together (larger: fewer partly filled batches, slower restore).
      seed: seed of the batch order within a pool.
    """
    super().__init__(parent)
    if list(lengths) != sorted(set(lengths)) or not lengths or lengths[0] < 1:
      raise ValueError(f"lengths: got {tuple(lengths)}, expected strictly ascending positive")
    if len(rows) != len(lengths):
      raise ValueError(f"rows: got {len(rows)} entries, expected {len(lengths)} (one per bucket)")
    if pool_size < 1:
      raise ValueError(f"pool_size: got {pool_size}, expected >= 1")
    self.lengths = tuple(int(x) for x in lengths)
    self.rows = tuple(int(x) for x in rows)
    self.pool_size = int(pool_size)
    self.seed = int(seed)

  def __iter__(self) -> _BucketBatchIterator:
    return _BucketBatchIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"BucketBatchIterDataset(lengths={self.lengths}, rows={self.rows})"


class _UnchunkIterator(grain.DatasetIterator):
  """See `UnchunkIterDataset`."""

  def __init__(self, parent: grain.DatasetIterator):
    super().__init__(parent)
    self._chunk_state = copy.deepcopy(parent.get_state())
    self._chunk: list = []
    self._offset = 0

  def __next__(self):
    while self._offset >= len(self._chunk):
      self._chunk_state = copy.deepcopy(self._parent.get_state())
      self._chunk = next(self._parent)
      self._offset = 0
    self._offset += 1
    return self._chunk[self._offset - 1]

  def get_state(self) -> dict:
    return {"parent": copy.deepcopy(self._chunk_state), "offset": self._offset}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(copy.deepcopy(state["parent"]))
    self._chunk_state = copy.deepcopy(state["parent"])
    self._offset = state["offset"]
    self._chunk = next(self._parent) if self._offset else []


class UnchunkIterDataset(grain.IterDataset):
  """Flattens a dataset of lists into their elements (checkpointable: chunk state + offset)."""

  def __iter__(self) -> _UnchunkIterator:
    return _UnchunkIterator(self._parent.__iter__())

  def __str__(self) -> str:
    return "UnchunkIterDataset"


def _rename_packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {}
  for side in ("inputs", "targets"):
    out[side] = batch[side].astype(np.int32)  # [rows, L]
    out[f"{side}_segmentation"] = batch[f"{side}_segment_ids"].astype(np.int32)
    out[f"{side}_position"] = batch[f"{side}_positions"].astype(np.int32)
  return out


def _stack_padded(rows: int):
  def stack(elements: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {}
    for key in elements[0]:
      value = np.stack([e[key] for e in elements])  # [n, L]
      pad = np.zeros((rows - len(elements), value.shape[1]), value.dtype)  # [rows - n, L]
      out[key] = np.concatenate([value, pad])  # [rows, L]
    return out
  return stack


def pack(parent: grain.IterDataset, *, length: int, rows: int, seed: int) -> grain.IterDataset:
  """Packs chunks (lists) of examples into [rows, length] batches with segment keys.

  Output elements: {"inputs", "inputs_segmentation", "inputs_position", "targets",
  "targets_segmentation", "targets_position"}, each [rows, length] int32; a pair never spans
  two rows; the last batch of a finite stream is completed with all-zero rows.
  """
  packed = grain.experimental.FirstFitPackIterDataset(
      UnchunkIterDataset(parent), length_struct={"inputs": length, "targets": length},
      num_packing_bins=rows, seed=seed, shuffle_bins=True)
  return packed.batch(rows, batch_fn=_stack_padded(rows)).map(_rename_packed)


def eval_batches(examples: Sequence[dict[str, np.ndarray]], *, lengths: Sequence[int],
                 batch_size: int) -> list[dict[str, np.ndarray]]:
  """Length-sorted [batch_size, L] batches of all `examples` (L from `lengths`), in memory.

  Returns:
    Batches {"inputs": [B, L], "targets": [B, L] int32, "example_index": [B] int32}:
    `example_index` is the position in `examples` of each row, -1 for all-zero padding rows.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size: got {batch_size}, expected >= 1")
  longest = [max(len(e["inputs"]), len(e["targets"])) for e in examples]
  if longest and max(longest) > lengths[-1]:
    raise ValueError(f"examples: length {max(longest)} exceeds the largest bucket {lengths[-1]}")
  order = np.argsort(longest, kind="stable")
  batches = []
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    length = lengths[int(np.searchsorted(lengths, longest[chunk[-1]]))]
    index = np.full((batch_size,), -1, np.int32)  # [B]
    index[:len(chunk)] = chunk
    batch = {key: _pad_stack([examples[i][key] for i in chunk], batch_size, length)  # [B, L]
             for key in ("inputs", "targets")}
    batch["example_index"] = index
    batches.append(batch)
  return batches

