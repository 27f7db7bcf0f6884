"""A user's own parallel corpus (TSV or two aligned text files) as a cached TFDS dataset.

The files are read, never written. They are fingerprinted by content, so the prepared
array_record copy in the data dir (``parallel_corpus/corpus_<sha256 prefix>/``) is reused until a
file changes, and the corpus then takes the same grain path as every other dataset.

Lines that cannot be used (wrong column count, an empty side, bytes that are not UTF-8) are
skipped and counted in one log line per file; a missing file or a file with no usable line is a
one-line UserError.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from train.data.config import default_data_config
from train.errors import UserError

__all__ = ["ParallelCorpus", "ParallelCorpusConfig", "corpus_builder", "read_pairs"]

_log = logging.getLogger(__name__)


def _lines(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        content = f.read()
    lines = content.removeprefix(b"\xef\xbb\xbf").split(b"\n")  # UTF-8 byte order mark
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    return lines


def read_pairs(files: Sequence[str], skipped: collections.Counter, max_chars: int = 0
               ) -> Iterator[tuple[int, str, str]]:
    """Yields (line number, source, target) of usable lines; counts the others in `skipped`.

    Args:
        files: (tsv_path,) with "source<TAB>target" lines, or (source_path, target_path).
        skipped: incremented per reason: "columns", "empty", "utf8", "longer than <max_chars> chars".
        max_chars: longest usable side in characters (0: no limit). A megabyte-long line would
            otherwise go whole into vocabulary training and tokenization before any length filter.
    """
    if len(files) == 1:
        columns = (raw.split(b"\t") for raw in _lines(files[0]))
        rows = (cols if len(cols) == 2 else None for cols in columns)
    elif len(files) == 2:
        src, tgt = _lines(files[0]), _lines(files[1])
        if len(src) != len(tgt):
            raise UserError(f"files: {files[0]} has {len(src)} lines, {files[1]} has {len(tgt)}; "
                            "expected aligned files with equal line counts")
        rows = zip(src, tgt)
    else:
        raise UserError(f"files: got {len(files)} paths, expected 1 (TSV) or 2 (aligned texts)")
    for number, row in enumerate(rows):
        if row is None:
            skipped["columns"] += 1
            continue
        try:
            source, target = (side.decode("utf-8").strip() for side in row)
        except UnicodeDecodeError:
            skipped["utf8"] += 1
            continue
        if not source or not target:
            skipped["empty"] += 1
            continue
        if max_chars and max(len(source), len(target)) > max_chars:
            skipped[f"longer than {max_chars} chars"] += 1
            continue
        yield number, source, target


def _fingerprint(paths: Sequence[str], extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for path in paths:
        digest.update(b"\0file\0")
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclasses.dataclass(eq=False)
class ParallelCorpusConfig(tfds.core.BuilderConfig):
    """Files of one corpus.

    Attributes:
        train_files: (tsv,) or (source, target) paths of the training pairs.
        eval_files: the same for the "validation" split; () for none.
        eval_holdout: when `eval_files` is empty, this many training pairs (a seeded choice) form
            "validation" instead of "train".
        test_files: (tsv,) or (source, target) paths of an optional "test" split; () for none.
        max_line_chars: lines with a side longer than this are skipped and counted (0: no limit).
    """

    train_files: tuple[str, ...] = ()
    eval_files: tuple[str, ...] = ()
    eval_holdout: int = 0
    test_files: tuple[str, ...] = ()
    max_line_chars: int = 0


class ParallelCorpus(tfds.core.GeneratorBasedBuilder):
    """Source/target pairs from a user's files; see `corpus_builder`."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = []

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({"source": tfds.features.Text(),
                                                 "target": tfds.features.Text()}),
            supervised_keys=("source", "target"))

    def _scan(self, files: Sequence[str]) -> int:
        skipped = collections.Counter()
        total = sum(1 for _ in read_pairs(files, skipped, self.builder_config.max_line_chars))
        if not total:
            raise UserError(f"files: no usable 'source<TAB>target' line in {', '.join(files)} "
                            f"(skipped: {dict(skipped)})")
        if skipped:
            _log.warning("parallel_corpus: skipped %d of %d lines in %s (%s)", sum(skipped.values()),
                         total + sum(skipped.values()), ", ".join(files),
                         ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
        return total

    def _split_generators(self, dl_manager):
        del dl_manager  # Local files only.
        config = self.builder_config
        num_train = self._scan(config.train_files)
        splits = {}
        holdout = frozenset()
        if config.eval_files:
            self._scan(config.eval_files)
            splits["validation"] = self._generate_examples(config.eval_files, None, True)
        elif config.eval_holdout:
            if config.eval_holdout >= num_train:
                raise UserError(f"eval_holdout: got {config.eval_holdout}, expected fewer than the "
                                f"{num_train} usable training pairs")
            rng = np.random.default_rng(0)
            holdout = frozenset(rng.choice(num_train, config.eval_holdout, replace=False).tolist())
            splits["validation"] = self._generate_examples(config.train_files, holdout, True)
        splits["train"] = self._generate_examples(config.train_files, holdout, False)
        if config.test_files:
            self._scan(config.test_files)
            splits["test"] = self._generate_examples(config.test_files, None, True)
        return splits

    def _generate_examples(self, files, holdout, in_holdout):
        # `holdout` indexes usable pairs, so it is independent of where the skipped lines sit.
        pairs = read_pairs(files, collections.Counter(), self.builder_config.max_line_chars)  # counted by _scan
        for i, (number, source, target) in enumerate(pairs):
            if holdout is None or (i in holdout) == in_holdout:
                yield number, {"source": source, "target": target}


def corpus_builder(train_files: Sequence[str], eval_files: Sequence[str] = (),
                   eval_holdout: int = 0, data_dir: str | None = None,
                   test_files: Sequence[str] = (), max_line_chars: int = 0) -> ParallelCorpus:
    """The (not yet prepared) builder of a corpus, named after the content of its files.

    Args:
        train_files: (tsv,) or (source, target) paths.
        eval_files: (tsv,), (source, target) or () for no separate validation file.
        eval_holdout: validation pairs held out of training when `eval_files` is empty.
        data_dir: TFDS data dir of the prepared copy (None: the TFDS default).
        test_files: (tsv,), (source, target) or () for no "test" split.
        max_line_chars: longest usable side in characters (0: no limit); part of the corpus's
            identity unless it is the config default.
    """
    for arg, files in (("train_files", train_files), ("eval_files", eval_files), ("test_files", test_files)):
        if len(files) not in ((1, 2) if arg == "train_files" else (0, 1, 2)):
            raise UserError(f"{arg}: got {len(files)} paths, expected 1 (TSV) or 2 (aligned texts)")
        for path in files:
            if not os.path.isfile(path):
                raise UserError(f"{arg}: {path} does not exist or is not a file")
    if eval_holdout < 0:
        raise UserError(f"eval_holdout: got {eval_holdout}, expected >= 0")
    if max_line_chars < 0:
        raise UserError(f"max_line_chars: got {max_line_chars}, expected >= 0 (0: no limit)")
    train_files = tuple(os.path.abspath(p) for p in train_files)
    eval_files = tuple(os.path.abspath(p) for p in eval_files)
    test_files = tuple(os.path.abspath(p) for p in test_files)
    # The name's first part is the corpus's identity (a vocabulary is bound to it); test files only
    # add a suffix, so a test set can be added to a trained run without changing its identity.
    identity = f"{len(train_files)}:{len(eval_files)}:{eval_holdout}"
    if max_line_chars != default_data_config().max_line_chars:  # the default keeps older corpora's names
        identity += f":max_line_chars={max_line_chars}"
    name = f"corpus_{_fingerprint(train_files + eval_files, identity)}"
    if test_files:
        name += f"_test_{_fingerprint(test_files, str(len(test_files)))}"
    config = ParallelCorpusConfig(name=name, train_files=train_files,
                                  eval_files=eval_files, eval_holdout=eval_holdout, test_files=test_files,
                                  max_line_chars=max_line_chars,
                                  description=f"train {train_files}, eval {eval_files}, test {test_files}")
    return ParallelCorpus(config=config, data_dir=data_dir or None)
