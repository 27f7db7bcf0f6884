"""Fixed-shape batches held in memory, for evaluation, decoding and scoring (no grain, no TFDS).

Translation, scoring and the server batch a user's sentences with these alone, so those modes
start without loading the training data pipeline (`train.data.batching`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from train.data.tokenizer import pad_rows
from train.errors import UserError

__all__ = ["default_bucket_lengths", "EvalBatch", "eval_batches"]


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


class EvalBatch(NamedTuple):
    """A model batch and, beside it, where each of its rows comes from.

    Attributes:
        batch: {"inputs": [B, L], "targets": [B, L] int32}, what the model takes.
        example_index: [B] int32, the position in the examples of each row, -1 for an all-zero
            padding row.
    """

    batch: dict[str, np.ndarray]
    example_index: np.ndarray


def eval_batches(examples: Sequence[dict[str, np.ndarray]], *, lengths: Sequence[int],
                 batch_size: int) -> list[EvalBatch]:
    """Length-sorted [batch_size, L] batches of all `examples` (L from `lengths`), in memory.

    Returns:
        `EvalBatch`es: the model batch and the position in `examples` of each of its rows.
    """
    if batch_size < 1:
        raise UserError(f"batch_size: got {batch_size}, expected >= 1")
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
        batch = {key: pad_rows([examples[i][key] for i in chunk], length, batch_size)  # [B, L]
                 for key in ("inputs", "targets")}
        batches.append(EvalBatch(batch, index))
    return batches

