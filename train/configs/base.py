"""Trainer fields shared by every experiment config (each one commented).

Experiment files call `get_base_config()` and then set `config.model` and
override what they need; the trainer reads every field as `config.x`.
"""

import ml_collections

from train.data.config import default_data_config


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults for the training, evaluation and checkpointing fields."""
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()  # set by the experiment file ("family" + fields)
    config.data = default_data_config()  # see train/data/config.py for every data field

    # --- Run ---------------------------------------------------------------------------------
    config.seed = 0  # parameter init and dropout; with data.seed it fixes the whole run
    # Budgets: training ends at whichever binds first, then evaluates and saves.
    config.num_train_steps = 2000  # optimizer steps (micro-steps with grad_accum_steps > 1)
    config.max_train_minutes = 0.0  # wall-clock minutes of training (this launch); 0 = no limit
    # (epochs: data.num_epochs, passes over the training data; 0 = no limit)
    # Fine-tuning (train.finetune): the workdir of a trained run whose parameters and vocabulary this run
    # starts from (same model config; fresh optimizer and schedule); "" = from scratch
    config.init_from = ""
    config.init_from_checkpoint = "latest"  # which of its checkpoints: "latest", "best" or "average"
    config.compute_dtype = "float32"  # "float32" or "bfloat16" activations; params stay float32
    # XLA programs compiled by `python -m train.translate` are kept here and reused by later launches
    # (JAX's persistent compilation cache; $JAX_COMPILATION_CACHE_DIR wins); "" = off
    config.compilation_cache_dir = "~/.cache/jaxattn/xla"
    config.parallel = "jit"  # "jit": Mesh + NamedSharding over all devices; "pmap": jax.pmap
    config.distributed = ml_collections.ConfigDict()
    # "" = single process; "auto" = detect (Cloud TPU, SLURM, MPI); else "host:port" of process 0
    config.distributed.coordinator_address = ""
    config.distributed.num_processes = 1  # processes in the job (explicit coordinator only)
    config.distributed.process_id = 0  # this process (explicit coordinator only)

    # --- Optimizer (Adam, Vaswani et al. 2017 sec. 5.3) ------------------------------------
    config.schedule = "noam"  # "noam" (warmup + rsqrt decay), "cosine" or "constant"
    config.learning_rate = 1e-3  # peak learning rate, reached after warmup_steps
    config.warmup_steps = 200  # linear warmup length in optimizer updates
    config.end_learning_rate_factor = 0.0  # cosine only: final lr = factor * learning_rate
    config.adam_b1 = 0.9  # Adam beta1
    config.adam_b2 = 0.98  # Adam beta2 (0.98 as in the paper, not 0.999)
    config.adam_eps = 1e-9  # Adam epsilon
    config.weight_decay = 0.0  # decoupled weight decay on matrices (AdamW); 0 = plain Adam
    config.grad_clip_norm = 1.0  # clip gradients to this global norm; 0 = no clipping
    config.grad_accum_steps = 1  # micro-batches per update (optax.MultiSteps)
    config.label_smoothing = 0.1  # eps of label-smoothed cross-entropy (training loss)
    config.scheduled_sampling = ml_collections.ConfigDict()  # RNN models only
    config.scheduled_sampling.kind = "none"  # "none", "linear" or "inverse_sigmoid"
    config.scheduled_sampling.max_probability = 0.25  # final P(feed the model's own token)
    config.scheduled_sampling.ramp_steps = 1000  # linear: steps to reach max_probability
    config.scheduled_sampling.k = 200.0  # inverse_sigmoid: k of k / (k + exp(step / k))

    # Early stopping (train.early_stopping): training ends when the validation metric has not improved
    # by more than min_delta for `patience` evaluations in a row (every eval_every_steps); the final
    # evaluation then reads the best checkpoint, which this metric picks (else validation BLEU)
    config.early_stopping = ml_collections.ConfigDict()
    config.early_stopping.metric = ""  # "" = off; "bleu", "chrf", "exact_match", "nll" or "loss" (validation)
    config.early_stopping.patience = 5  # evaluations without improvement before stopping
    config.early_stopping.min_delta = 0.0  # an improvement is larger than this (BLEU / chrF points, nats)

    # --- Evaluation and decoding -----------------------------------------------------------
    config.log_every_steps = 50  # training metrics to JSONL/TensorBoard every N steps
    config.eval_every_steps = 500  # validation loss + decoding (BLEU) every N steps
    config.eval_decode_examples = 200  # validation pairs decoded in the loop (0 = all)
    config.decode = ml_collections.ConfigDict()
    config.decode.strategy = "greedy"  # "greedy" or "beam"
    config.decode.beam_size = 4  # beam search width
    config.decode.alpha = 0.6  # beam length penalty ((5 + len) / 6) ** alpha (Wu et al. 2016)
    config.decode.max_length = 64  # hard cap on the target tokens generated (eos included)
    # Each sentence gets at most min(a * S + b, max_length) tokens, S = its source tokens (eos
    # included), as fairseq's --max-len-a/b; 2 * S + 10 is above every reference of the embedded data
    config.decode.max_length_a = 2.0  # a: output tokens allowed per source token
    config.decode.max_length_b = 10  # b: output tokens allowed on top
    config.num_samples = 5  # sample translations logged and saved per evaluation
    config.num_heatmaps = 3  # attention heatmap PNGs written after training
    config.progress_bar = True  # tqdm progress bar (process 0)

    # --- Checkpoints (Orbax) ---------------------------------------------------------------
    config.checkpoint_every_steps = 500  # asynchronous save every N steps (and at the end)
    config.keep_checkpoints = 2  # latest checkpoints kept; the best by validation BLEU is kept too
    # k > 1: the final evaluation (and --checkpoint=average) uses the mean parameters of the last k
    # checkpoints (Vaswani et al. 2017 sec. 6.1: last 5); needs keep_checkpoints >= k
    config.average_last_checkpoints = 0

    # --- Serving (`--mode=serve`; each may be changed at serve time) ---------------------------
    config.serve = ml_collections.ConfigDict()
    config.serve.max_sentences = 64  # sentences in one request (more: a 413 answer)
    config.serve.max_sentence_chars = 1000  # characters in one sentence (more: a 413 answer)
    config.serve.max_nbest = 8  # largest n-best list a request may ask for
    # Batch heights compiled at start-up, for every length bucket; requests that arrive together
    # are decoded as one batch of up to the largest
    config.serve.row_sizes = (1, 8, 32)
    config.serve.batch_wait_ms = 5.0  # under load, how long a batch's first request waits for others

    # --- Word alignments (`--mode=align`, `--mode=translate --align`; train.align) -------------
    config.align = ml_collections.ConfigDict()
    # Transformer: the decoder layer whose cross-attention aligns (-2: the penultimate, which aligns best
    # in docs/alignment.md; negative counts from the last, down to the first)
    config.align.layer = -2
    config.align.heads = ()  # Transformer: the heads averaged (empty: all of them)
    config.align.subwords = "sum"  # a word's weight on a source word: "sum" or "max" over its pieces
    # "target": one link per target word (fairseq, Marian); "source": one per source word; "union" of both
    # (the best or nearly best AER in docs/alignment.md); "intersection"
    config.align.method = "union"
    return config
