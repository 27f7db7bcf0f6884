"""The suite's tiny run config: a config file's config at test size, as a user would shrink it with flags.

`tiny()` trains in seconds on `number_words/tiny` (built in the config's data dir):
one batch shape of 8 rows (one per fake device), a 16-wide one-layer Transformer
(the RNN configs keep their own widths), 4 steps with a checkpoint at each.
tests/conftest.py trains it once per session (`tiny_run`).
"""

from train.configs import transformer


def tiny(module=transformer, **overrides):
    config = module.get_config()
    config.data.update(dataset="number_words/tiny", vocab_size=48, max_source_length=24, max_target_length=24,
                       bucket_lengths=(24,), tokens_per_batch=192, batch_size_multiple=8, eval_batch_size=16,
                       eval_max_examples=16, read_threads=1)
    if config.model.family == "transformer":
        config.model.update(emb_dim=16, num_heads=2, mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1)
    config.update(num_train_steps=4, warmup_steps=1, log_every_steps=1, eval_every_steps=100,
                  checkpoint_every_steps=1, num_heatmaps=0, progress_bar=False)
    config.decode.max_length = 8
    config.update(overrides)
    return config
