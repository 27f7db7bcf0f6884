"""The embedded default dataset: numbers written out in English, German and French.

``345`` becomes ``"three hundred and forty five"`` -> ``"dreihundertfünfundvierzig"``
(``"trois cent quarante cinq"``). It is small, builds offline in seconds and is real language
with real reordering: German writes the units before the tens ("fünfundvierzig" = five-and-forty),
the alignment pattern that attention was introduced to learn (Bahdanau et al. 2014, Fig. 3),
and its length is dialled by the number range.

Numbers are drawn without replacement from a seeded generator, so the dataset is a pure
function of its builder config, and the train/validation/test splits are disjoint *by number*:
the test set asks for numbers the model has never seen, not for memorised strings.

Builder configs (``tfds.data_source("number_words/<config>")``, name = ``number_words``):

| config | numbers      | sampling | train   | validation | test  | build (2 CPU cores) |
|--------|--------------|----------|---------|------------|-------|---------------------|
| tiny   | [0, 10^3)    | uniform  | 300     | 50         | 50    | < 1 s (tests)       |
| small  | [0, 10^4)    | uniform  | 8,000   | 1,000      | 1,000 | ~ 5 s               |
| medium | [0, 10^5)    | uniform  | 30,000  | 1,000      | 1,000 | ~ 13 s (default)    |
| long   | [0, 10^9)    | digits   | 100,000 | 2,000      | 5,000 | ~ 85 s              |

(num2words takes ~0.1 ms per number and language; a build happens once per data dir.)

``digits`` sampling draws the same number of examples for every digit count (1 to 9 digits)
where the population allows it, so lengths spread from 1 word to ~20: the config for
length-bucketed experiments. ``uniform`` sampling over [0, 10^5) is mostly five-digit numbers.

Text is normalised to lower case, with hyphens and commas turned into spaces
(``"forty-five thousand, six hundred"`` -> ``"forty five thousand six hundred"``) so that
SentencePiece sees words; German compounds stay one word and are split by SentencePiece.
"""

from __future__ import annotations

import dataclasses

import num2words
import numpy as np
import tensorflow_datasets as tfds

__all__ = ["NumberWords", "NumberWordsConfig", "normalize_number_text", "number_to_words",
           "sample_split_numbers", "LANGUAGES"]

LANGUAGES = ("en", "de", "fr")
_SAMPLINGS = ("uniform", "digits")


def normalize_number_text(text: str) -> str:
    """Lower-cases and turns hyphens and commas into single spaces."""
    return " ".join(text.lower().replace("-", " ").replace(",", " ").split())


def number_to_words(number: int, lang: str, normalize: bool = True) -> str:
    """Writes `number` out in language `lang` ("en", "de" or "fr") with num2words."""
    if lang not in LANGUAGES:
        raise ValueError(f"lang: got {lang!r}, expected one of {LANGUAGES}")
    text = num2words.num2words(int(number), lang=lang)
    return normalize_number_text(text) if normalize else text


@dataclasses.dataclass(eq=False)
class NumberWordsConfig(tfds.core.BuilderConfig):
    """A number range, split sizes and sampling scheme.

    Attributes:
        low: smallest number (inclusive).
        high: largest number (exclusive).
        num_train: training pairs.
        num_validation: validation pairs.
        num_test: test pairs.
        sampling: "uniform" over [low, high), or "digits" (equal share per digit count).
        seed: seed of the number draw; a different seed is a different dataset.
        normalize: lower-case, hyphens and commas -> spaces.
    """

    low: int = 0
    high: int = 10**5
    num_train: int = 30_000
    num_validation: int = 1_000
    num_test: int = 1_000
    sampling: str = "uniform"
    seed: int = 0
    normalize: bool = True


def _digit_groups(low: int, high: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of numbers in [low, high) that share a digit count."""
    groups = []
    start = 0
    for digits in range(1, 20):
        stop = 10**digits
        lo, hi = max(low, start), min(high, stop)
        if lo < hi:
            groups.append((lo, hi))
        start = stop
        if start >= high:
            break
    return groups


def sample_split_numbers(config: NumberWordsConfig) -> dict[str, np.ndarray]:
    """Draws the numbers of every split; disjoint by construction, a function of `config`.

    Returns:
        {"train": [num_train] int64, "validation": [num_validation], "test": [num_test]}.
    """
    if config.sampling not in _SAMPLINGS:
        raise ValueError(f"sampling: got {config.sampling!r}, expected one of {_SAMPLINGS}")
    if not 0 <= config.low < config.high:
        raise ValueError(f"low, high: got [{config.low}, {config.high}), expected 0 <= low < high")
    total = config.num_train + config.num_validation + config.num_test
    if total > config.high - config.low:
        raise ValueError(f"num_train + num_validation + num_test: got {total}, expected at most "
                         f"{config.high - config.low} numbers in [{config.low}, {config.high})")
    rng = np.random.default_rng(config.seed)
    if config.sampling == "uniform":
        numbers = config.low + rng.choice(config.high - config.low, size=total, replace=False)
    else:
        groups = sorted(_digit_groups(config.low, config.high), key=lambda g: g[1] - g[0])
        # Water-filling: small digit groups are taken whole, the rest share what is left equally.
        counts, left = {}, total
        for i, (lo, hi) in enumerate(groups):
            counts[lo] = min(hi - lo, left // (len(groups) - i))
            left -= counts[lo]
        counts[groups[-1][0]] += left  # rounding remainder, goes to the largest group
        numbers = np.concatenate([lo + rng.choice(hi - lo, size=counts[lo], replace=False)
                                  for lo, hi in sorted(groups)])
        numbers = rng.permutation(numbers)
    return split_draws(numbers.astype(np.int64), config)


def split_draws(draws, config):
    """The first `num_test` draws are the test split, the next `num_validation` validation, the rest train."""
    n_test, n_val = config.num_test, config.num_validation
    return {"test": draws[:n_test], "validation": draws[n_test:n_test + n_val], "train": draws[n_test + n_val:]}


def number_dataset_info(builder: tfds.core.GeneratorBasedBuilder, name: str,
                        feature: tfds.features.FeatureConnector) -> tfds.core.DatasetInfo:
    """DatasetInfo of a number builder: one text feature per language, the drawn numbers as `name`."""
    features = {lang: tfds.features.Text() for lang in LANGUAGES}
    features[name] = feature
    return builder.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=("en", "de"),
        homepage="https://github.com/savoirfairelinux/num2words",
    )


class NumberWords(tfds.core.GeneratorBasedBuilder):
    """Numbers written out in English, German and French (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        NumberWordsConfig(name="tiny", description="[0, 10^3), 300/50/50 pairs: tests.",
                          low=0, high=10**3, num_train=300, num_validation=50, num_test=50),
        NumberWordsConfig(name="small", description="[0, 10^4), 8000/1000/1000 pairs.",
                          low=0, high=10**4, num_train=8_000, num_validation=1_000, num_test=1_000),
        NumberWordsConfig(name="medium", description="[0, 10^5), 30000/1000/1000 pairs: default.",
                          low=0, high=10**5, num_train=30_000, num_validation=1_000,
                          num_test=1_000),
        NumberWordsConfig(name="long", description="[0, 10^9), equal share per digit count.",
                          low=0, high=10**9, num_train=100_000, num_validation=2_000,
                          num_test=5_000, sampling="digits"),
    ]
    DEFAULT_CONFIG_NAME = "medium"

    def _info(self) -> tfds.core.DatasetInfo:
        return number_dataset_info(self, "number", tfds.features.Scalar(dtype=np.int64))

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        numbers = sample_split_numbers(self.builder_config)
        return {split: self._generate_examples(nums) for split, nums in numbers.items()}

    def _generate_examples(self, numbers: np.ndarray):
        normalize = self.builder_config.normalize
        for number in numbers.tolist():
            example = {lang: number_to_words(number, lang, normalize) for lang in LANGUAGES}
            example["number"] = number
            yield number, example
