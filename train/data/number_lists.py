"""Sequences of numbers written out in English, German and French: long sources on demand.

``[21, 5, 340]`` becomes ``"twenty one then five then three hundred and forty"`` ->
``"einundzwanzig dann fünf dann dreihundertvierzig"`` (``"vingt et un puis cinq puis trois
cent quarante"``). Each number is written as in `number_words` (same `number_to_words`, same
normalisation) and the numbers are joined by a separator word ("then", "dann", "puis"; not a
comma, which the normalisation turns into a space). Within each number German still writes the
units before the tens, so the alignment is monotone across numbers and crossed inside them.

Its point is length. `number_words` stops at 17 English words (numbers below 10^9), too short
for a fixed-vector encoder-decoder to run out of room; here the source length is dialled by the
count of numbers, uniform in [min_count, max_count], up to the 50-60 words where the fixed-context
model of Bahdanau et al. 2014 (Fig. 2) has fallen off while RNNsearch holds up.

Counts and numbers come from a seeded generator, so the dataset is a pure function of its
builder config. The splits are disjoint by example: no number sequence occurs twice in the
dataset, so no test sequence is a training sequence (shorter sequences may still recur as
pieces of longer ones, as words do in sentences).

Builder configs (``tfds.data_source("number_lists/<config>")``, name = ``number_lists``):

| config | numbers   | per example | train  | validation | test  | source words (en) | build (2 CPU cores) |
|--------|-----------|-------------|--------|------------|-------|-------------------|---------------------|
| short  | [0, 10^3) | 1 to 3      | 300    | 50         | 50    | 1 to 17           | < 1 s (tests)       |
| long   | [0, 10^4) | 1 to 8      | 60,000 | 1,000      | 3,000 | 1 to 63 (mean 32) | ~ 7 s               |

(Words are computed once per distinct number, so the build costs little more than writing. With the
shared V=256 SentencePiece vocabulary of the length experiment, `long` sources are at most 80
tokens (mean 42) and German targets at most 51 (mean 26), eos included.)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from train.data.number_words import LANGUAGES, number_dataset_info, number_to_words, split_draws

__all__ = ["NumberLists", "NumberListsConfig", "SEPARATORS", "numbers_to_words",
           "sample_split_sequences"]

# The word between two numbers, per language ("and" would clash with "forty and five").
SEPARATORS = {"en": "then", "de": "dann", "fr": "puis"}


def numbers_to_words(numbers, lang: str, normalize: bool = True,
                     cache: dict[tuple[int, str], str] | None = None) -> str:
    """Writes each number out in `lang` and joins them with `SEPARATORS[lang]`.

    Args:
        numbers: a sequence of non-negative ints.
        lang: "en", "de" or "fr".
        normalize: lower-case, hyphens and commas -> spaces (as `number_words`).
        cache: optional {(number, lang): words} filled and reused across calls.

    Returns:
        The text, e.g. ``"einundzwanzig dann fünf"`` for ``[21, 5]`` in German.
    """
    if lang not in SEPARATORS:
        raise ValueError(f"lang: got {lang!r}, expected one of {tuple(SEPARATORS)}")
    numbers = [int(n) for n in numbers]
    if not numbers:
        raise ValueError("numbers: got an empty sequence, expected at least one number")
    cache = {} if cache is None else cache
    words = []
    for n in numbers:
        if (n, lang) not in cache:
            cache[n, lang] = number_to_words(n, lang, normalize)
        words.append(cache[n, lang])
    return f" {SEPARATORS[lang]} ".join(words)


@dataclasses.dataclass(eq=False)
class NumberListsConfig(tfds.core.BuilderConfig):
    """A number range, a range of numbers per example and split sizes.

    Attributes:
        low: smallest number (inclusive).
        high: largest number (exclusive).
        min_count: fewest numbers in one example (inclusive).
        max_count: most numbers in one example (inclusive).
        num_train: training pairs.
        num_validation: validation pairs.
        num_test: test pairs.
        seed: seed of the draw; a different seed is a different dataset.
        normalize: lower-case, hyphens and commas -> spaces.
    """

    low: int = 0
    high: int = 10**4
    min_count: int = 1
    max_count: int = 8
    num_train: int = 60_000
    num_validation: int = 1_000
    num_test: int = 3_000
    seed: int = 0
    normalize: bool = True


def _check(config: NumberListsConfig) -> int:
    """Validates `config`'s ranges; the total number of examples."""
    if not 0 <= config.low < config.high:
        raise ValueError(f"low, high: got [{config.low}, {config.high}), expected 0 <= low < high")
    if not 1 <= config.min_count <= config.max_count:
        raise ValueError(f"min_count, max_count: got {config.min_count}, {config.max_count}, "
                         "expected 1 <= min_count <= max_count")
    return config.num_train + config.num_validation + config.num_test


def sample_split_sequences(config: NumberListsConfig) -> dict[str, list[tuple[int, ...]]]:
    """Draws the number sequences of every split; no sequence twice, a function of `config`.

    Returns:
        {"train": [num_train] tuples of ints, "validation": [...], "test": [...]}.
    """
    total = _check(config)
    rng = np.random.default_rng(config.seed)
    counts = rng.integers(config.min_count, config.max_count + 1, size=total)     # [total]
    # Without repeats a count k can supply at most (high - low)^k sequences; stay well below it,
    # where redrawing repeats is cheap.
    per_count = np.bincount(counts, minlength=config.max_count + 1)
    for k in range(config.min_count, config.max_count + 1):
        if per_count[k] > 0.9 * (config.high - config.low) ** k:
            raise ValueError(f"num_train + num_validation + num_test: got {total}, too many for the "
                             f"{(config.high - config.low) ** k} distinct {k}-number sequences of "
                             f"[{config.low}, {config.high}) ({per_count[k]} drawn)")
    seen: set[tuple[int, ...]] = set()
    sequences = []
    for count in counts.tolist():
        while True:  # rejection: a repeat is redrawn (rare except for one-number sequences)
            seq = tuple(rng.integers(config.low, config.high, size=count).tolist())
            if seq not in seen:
                break
        seen.add(seq)
        sequences.append(seq)
    return split_draws(sequences, config)


class NumberLists(tfds.core.GeneratorBasedBuilder):
    """Sequences of numbers written out in English, German and French (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        NumberListsConfig(name="short", description="1-3 numbers in [0, 10^3), 300/50/50 pairs: tests.",
                          low=0, high=10**3, min_count=1, max_count=3, num_train=300,
                          num_validation=50, num_test=50),
        NumberListsConfig(name="long", description="1-8 numbers in [0, 10^4), 60000/1000/3000 pairs.",
                          low=0, high=10**4, min_count=1, max_count=8, num_train=60_000,
                          num_validation=1_000, num_test=3_000),
    ]
    DEFAULT_CONFIG_NAME = "long"

    def _info(self) -> tfds.core.DatasetInfo:
        return number_dataset_info(self, "numbers", tfds.features.Tensor(shape=(None,), dtype=np.int64))

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        sequences = sample_split_sequences(self.builder_config)
        cache: dict[tuple[int, str], str] = {}  # shared by the splits: each number is written once
        return {split: self._generate_examples(seqs, cache) for split, seqs in sequences.items()}

    def _generate_examples(self, sequences: list[tuple[int, ...]], cache: dict[tuple[int, str], str]):
        normalize = self.builder_config.normalize
        for index, seq in enumerate(sequences):
            example = {lang: numbers_to_words(seq, lang, normalize, cache) for lang in LANGUAGES}
            example["numbers"] = np.asarray(seq, dtype=np.int64)
            yield index, example
