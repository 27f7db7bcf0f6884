"""`python tests/mock_tfds_run.py <module> [args...]` = `python -m <module> [args...]` on mock TFDS data.

The README's TFDS catalog commands (WMT14) need a download the tests cannot make; the
tests run the same command, flags and all, under `tfds.testing.mock_data`: random records
with the dataset's real features, so everything after the download path is exercised.
"""

import runpy
import sys

import tensorflow_datasets as tfds

NUM_EXAMPLES = 24  # records per split: enough for a few tiny batches and an eval


def main() -> None:
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
