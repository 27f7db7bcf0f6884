"""The fixed-context encoder-decoder (Sutskever et al. 2014; Cho et al. 2014): no attention.

The baseline that attention was invented to beat: every target token sees the
source only through one vector.

    python -m train.translate --config=train/configs/rnn_plain.py --workdir=runs/plain
"""

import ml_collections

from train.configs import rnn_bahdanau


def get_config() -> ml_collections.ConfigDict:
    """Bahdanau's architecture with the attention removed."""
    config = rnn_bahdanau.get_config()
    config.model.attention = "none"  # fixed context vector fed at every decoder step
    config.num_heatmaps = 0  # no attention, nothing to plot
    return config
