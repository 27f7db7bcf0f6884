"""The special token ids of every jaxattn model and vocabulary: pad 0, unk 1, <sos> 2, <eos> 3.

This is their one definition. The trainer's SentencePiece vocabularies are built with these ids
(`train.data`), the model configs' `pad_id`, `bos_id` and `eos_id` default to them
(`jaxattn.models.RNNConfig`, `TransformerConfig`), and the training code reads them from the
model config. Sources and targets end with <eos>, carry no <sos> (the models put it in front of
the decoder input, `jaxattn.models.shift_right`) and are padded at the end.
"""

__all__ = ["PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID"]

PAD_ID = 0  # padding: masked out of attention and of the loss
UNK_ID = 1  # a piece outside the vocabulary
BOS_ID = 2  # <sos>: the decoder's first input
EOS_ID = 3  # <eos>: ends every source and target
