"""TFDS datasets by name, prepared as array_record and read without TensorFlow.

Every dataset (the embedded `number_words` and `number_lists`, a user's corpus, any TFDS translation dataset such as
``wmt14_translate/de-en``, ``wmt_t2t_translate/de-en`` or ``ted_hrlr_translate/pt_to_en``) takes
the same path: ``builder.download_and_prepare(file_format="array_record")`` (a no-op once the
data dir holds it) and then ``builder.as_data_source(split)``, a random-access source that grain
reads with no TensorFlow installed. Text comes back as ``bytes`` from real files and as ``str``
from ``tfds.testing.mock_data``; `record_text` accepts both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import filelock
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.proto import tf_example_pb2
# The legacy translation builders (wmt14_translate, wmt_t2t_translate, ...) are registered only
# when their module is imported; `tfds.builder` does not find them otherwise.
import tensorflow_datasets.translate  # noqa: F401

from train.data import number_lists  # noqa: F401  (registers the `number_lists` builder)
from train.data import number_words  # noqa: F401  (registers the `number_words` builder)
from train.errors import UserError

__all__ = ["check_name", "prepare_builder", "prepare", "split_sources", "record_text", "record_pair",
           "feature_keys", "PairReader"]


def check_name(name: str) -> None:
    """Raises `UserError` unless `name` ("dataset[/config][:version]") names a TFDS dataset and config.

    Reads no data and writes nothing: the trainer calls it before it creates its workdir.
    """
    try:
        dataset, kwargs = naming.parse_builder_name_kwargs(name)
        builder_cls = tfds.builder_cls(str(dataset))
    except (tfds.core.registered.DatasetNotFoundError, ValueError):
        raise UserError(f"dataset: {name!r} is not a TFDS dataset (expected e.g. "
                        "'number_words/medium', 'wmt14_translate/de-en' or 'tsv')") from None
    configs = list(getattr(builder_cls, "builder_configs", {}) or {})
    if "config" in kwargs and configs and kwargs["config"] not in configs:
        raise UserError(f"dataset: {name!r}: {dataset} has no config {kwargs['config']!r}, expected one of "
                        f"{configs}")


def prepare_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Returns the prepared builder of TFDS dataset `name` ("dataset[/config][:version]")."""
    check_name(name)
    return prepare(lambda: tfds.builder(name, data_dir=data_dir or None))


def prepare(make: Callable[[], tfds.core.DatasetBuilder]) -> tfds.core.DatasetBuilder:
    """The builder `make()` returns, its data written as array_record unless its data dir holds it.

    Trainers launched together on the same new data (two seeds of one corpus) take turns: the
    first writes it, the others wait on a file lock beside it, then make their builder afresh,
    which reads what the first wrote.
    """
    path = make().data_dir
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with filelock.FileLock(f"{path}.lock"):
        builder = make()
        builder.download_and_prepare(file_format="array_record")
    return builder


def split_sources(builder: tfds.core.DatasetBuilder, splits: Sequence[str]
                  ) -> dict[str, Sequence[Mapping]]:
    """Random-access array_record sources of `splits` ({split: source}, `len` and `[i]`)."""
    known = list(builder.info.splits.keys())
    sources = {}
    for split in splits:
        bases = [part.split("[")[0] for part in split.split("+")]  # "train[:90%]+validation"
        if known and any(base not in known for base in bases):
            raise UserError(f"split: got {split!r}, expected one of {known} for {builder.name}")
        try:
            sources[split] = builder.as_data_source(split=split)
        except (NotImplementedError, ValueError):
            file_format = str(getattr(builder.info.file_format, "value", builder.info.file_format))
            if "array_record" in file_format:
                raise
            # Prepared earlier (e.g. by TensorFlow users) in another format.
            raise UserError(f"data_dir: {builder.data_dir} holds {builder.name} as {file_format}, "
                            "expected array_record; use another data_dir") from None
    return sources


def feature_keys(builder: tfds.core.DatasetBuilder) -> list[str]:
    """Top-level feature names (language keys for translation datasets)."""
    return list(builder.info.features.keys())


def record_text(value) -> str:
    """One text feature as `str`: bytes (real data), str (mock data) or a 0-d numpy array."""
    if isinstance(value, np.ndarray):
        value = value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, str):
        return value
    raise ValueError(f"record_text: got {type(value).__name__}, expected bytes or str")


def record_pair(record: Mapping, source_key: str, target_key: str) -> tuple[str, str]:
    """(source_text, target_text) of one record."""
    return record_text(record[source_key]), record_text(record[target_key])


class PairReader:
    """Batched reads of (source_text, target_text) pairs from a TFDS data source.

    Reading one array_record record at a time costs ~100 us and TFDS's generic decoding ~70 us
    more; reading indices in batches straight from the array_record files and pulling the two
    text features out of the tf.train.Example proto costs ~15 us per pair (2 CPU cores). The fast
    path is used only when it reproduces TFDS's own decoding of the first record; otherwise
    (e.g. `tfds.testing.mock_data`) pairs go through the data source's `__getitem__`.
    """

    def __init__(self, source: Sequence[Mapping], source_key: str, target_key: str):
        self._source = source
        self._keys = (source_key, target_key)
        self._raw = getattr(source, "data_source", None)
        if self._raw is not None and len(source):
            try:
                fast = self._read_fast([0])[0]
            except Exception:  # pylint: disable=broad-except  (any failure: use the generic path)
                fast = None
            if fast != record_pair(source[0], *self._keys):
                self._raw = None

    def __len__(self) -> int:
        return len(self._source)

    @property
    def uses_fast_path(self) -> bool:
        """Whether records are read straight from the array_record files."""
        return self._raw is not None

    def _read_fast(self, indices: Sequence[int]) -> list[tuple[str, str]]:
        pairs = []
        for raw in self._raw.__getitems__(indices):
            feature = tf_example_pb2.Example.FromString(raw).features.feature
            pairs.append(tuple(feature[key].bytes_list.value[0].decode("utf-8") for key in self._keys))
        return pairs

    def read(self, indices: Sequence[int]) -> list[tuple[str, str]]:
        """(source_text, target_text) of each record index."""
        indices = [int(i) for i in indices]
        if self._raw is not None:
            return self._read_fast(indices)
        return [record_pair(self._source[i], *self._keys) for i in indices]
