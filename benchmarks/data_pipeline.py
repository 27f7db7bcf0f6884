"""Throughput of the training data pipeline alone (no model): pairs/s and tokens/s.

Builds (or reuses) a number-words dataset and its vocabulary, then times `next()` on the
training iterator for bucketed and packed batches.

    python -m benchmarks.data_pipeline --dataset=number_words/medium --data_dir=/tmp/tfds \\
        --workdir=/tmp/data_bench --batches=300

The first batches (pool fill, thread start) are excluded as warm-up. With --cold the first row's
setup time is a first run's: building the dataset and training the vocabulary (then cached).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from absl import app
from absl import flags

from train import data

_DATASET = flags.DEFINE_string("dataset", "number_words/medium", "config.data.dataset")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data dir ('' = TFDS default)")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/jaxattn_data_bench", "vocabulary directory")
_BATCHES = flags.DEFINE_integer("batches", 300, "timed batches per setting")
_WARMUP = flags.DEFINE_integer("warmup", 20, "untimed batches first")
_COLD = flags.DEFINE_bool("cold", False, "first build into empty data/work dirs (setup = dataset "
                          "build + vocabulary training)")


def _time(config, workdir: str) -> dict[str, float]:
    start = time.perf_counter()
    datasets = data.make_datasets(config, workdir, process_index=0, process_count=1)
    setup = time.perf_counter() - start
    it = iter(datasets.train)
    for _ in range(_WARMUP.value):
        next(it)
    pairs = tokens = slots = 0
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        batch = next(it)
        if "targets_segmentation" in batch:
            pairs += sum(int(row.max()) for row in batch["targets_segmentation"])
        else:
            pairs += int((batch["targets"][:, 0] != data.PAD_ID).sum())
        tokens += int((batch["inputs"] != 0).sum() + (batch["targets"] != 0).sum())
        slots += batch["inputs"].size + batch["targets"].size
    elapsed = time.perf_counter() - start
    return {"setup_s": setup, "pairs_per_s": pairs / elapsed, "tokens_per_s": tokens / elapsed,
            "batches_per_s": _BATCHES.value / elapsed, "fill": tokens / slots}


def main(argv):
    del argv
    print(f"dataset={_DATASET.value} batches={_BATCHES.value} cpu_count={os.cpu_count()}")
    print("| setting | setup s | pairs/s | tokens/s | batches/s | non-pad fill |")
    print("|---|---|---|---|---|---|")
    settings = {
        "buckets, read_threads=0, prefetch_batches=0": dict(read_threads=0, prefetch_batches=0),
        "buckets, read_threads=1, prefetch_batches=2": dict(read_threads=1, prefetch_batches=2),
        "packed, read_threads=1, prefetch_batches=2": dict(read_threads=1, prefetch_batches=2,
                                                           packing=True),
    }
    cold = tempfile.mkdtemp(prefix="jaxattn_data_bench_") if _COLD.value else ""
    for name, overrides in settings.items():
        config = data.default_data_config()
        config.dataset = _DATASET.value
        config.data_dir = os.path.join(cold, "tfds") if cold else _DATA_DIR.value
        config.update(overrides)
        r = _time(config, os.path.join(cold, "work") if cold else _WORKDIR.value)
        print(f"| {name} | {r['setup_s']:.1f} | {r['pairs_per_s']:,.0f} | {r['tokens_per_s']:,.0f} "
              f"| {r['batches_per_s']:.1f} | {r['fill']:.2f} |")
    if cold:
        shutil.rmtree(cold)


if __name__ == "__main__":
    app.run(main)
