"""Experiment configs (`ml_collections` Python files, loaded with `--config=<file>`).

One file per experiment; `base.py` holds the trainer fields every config shares.
"""
