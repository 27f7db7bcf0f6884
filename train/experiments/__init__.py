"""Experiments: commands that vary configs and call the one trainer (`train.loop`).

Each experiment is a module run with `python -m train.experiments.<name>`; none has a
training loop of its own.

  * `length`: BLEU and exact match against source length for the plain RNN, Bahdanau,
    Luong and Transformer models (Bahdanau et al. 2014, Fig. 2); `length_report` holds
    its bucketing, scoring and plotting.
"""
