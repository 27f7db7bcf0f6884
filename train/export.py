r"""A trained Transformer as a CTranslate2 model: what `--mode=export --format=ctranslate2` writes.

    python -m train.translate --workdir=runs/default --mode=export --format=ctranslate2 \
        --output_dir=runs/default_ct2

CTranslate2 (https://opennmt.net/CTranslate2) is the inference engine that OpenNMT, fairseq and
Marian models convert to: int8 / float16 on CPU and GPU, one pip package (`pip install -e
".[ctranslate2]"`). The export builds its `TransformerSpec` from the run's `TransformerConfig` and
parameters (no second model definition: the spec is CTranslate2's own) and writes
`model.bin`, `config.json`, the vocabularies (SentencePiece pieces, one a line, in id order)
and the run's SentencePiece models (`source.model`, `target.model`) beside them, so that

    sp = sentencepiece.SentencePieceProcessor(model_file="runs/default_ct2/source.model")
    translator = ctranslate2.Translator("runs/default_ct2", compute_type="int8")
    pieces = translator.translate_batch([sp.encode("forty two", out_type=str)])[0].hypotheses[0]

translates as jaxattn does. The mapping, layer by layer:

- token embeddings x sqrt(D) (CTranslate2's `scale_embeddings`), plus the positions as a table of
  `POSITIONS` rows (sinusoidal: jaxattn's interleaved sin/cos, not CTranslate2's own layout;
  learned: the run's table); the source gets eos appended (`add_source_eos`), decoding starts
  from <s>, as in jaxattn;
- attention: query/key/value kernels [D, N, H] -> fused [3 D, D] (self) or query + fused
  key/value (cross) in PyTorch's [out, in] layout; out [N, H, D] -> [D, N H]; grouped-query
  attention through `num_heads_kv`;
- pre-LN (with the final LayerNorm of each stack) or post-LN, epsilon 1e-6 (Flax's);
- the output projection: the tied target embedding, or the untied Dense.

What the export does not map is refused with one line naming it: RNN families (CTranslate2's
encoder-decoder is the Transformer), ALiBi (only CTranslate2's decoder has it), and T5 buckets and
rotary positions (CTranslate2 has both, in layouts this exporter does not convert to).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from jaxattn.models.positional import sinusoidal_positions
from jaxattn.tokens import UNK_ID
from train.errors import UserError

__all__ = ["FORMATS", "POSITIONS", "check_output_dir", "export", "transformer_spec"]

FORMATS = ("ctranslate2",)
POSITIONS = 1024  # rows of the sinusoidal table (CTranslate2's default max_input_length)
LAYER_NORM_EPSILON = 1e-6  # flax.linen.LayerNorm's
_UNSUPPORTED_POSITIONS = {
    "alibi": "ALiBi biases in encoder self-attention",
    "t5": "T5 relative-position buckets, one table shared by every layer",
    "rotary": "rotary positions in jaxattn's channel layout, which the export does not convert",
}


def check_output_dir(output_dir: str) -> None:
    """Refuses a directory that exists (an export never overwrites) or whose parent does not."""
    if os.path.exists(output_dir):
        raise UserError(f"--output_dir: {output_dir!r} exists; the export writes a new directory")
    parent = os.path.dirname(os.path.abspath(output_dir))
    if not os.path.isdir(parent):
        raise UserError(f"--output_dir: directory {parent!r} does not exist")


def _check_exportable(config: Any) -> None:
    model = config.model
    if model.family != "transformer":
        raise UserError(f"--format=ctranslate2: model.family={model.family!r} cannot be exported; CTranslate2's "
                        "encoder-decoder is the Transformer (export a run of train/configs/transformer*.py)")
    if model.positional in _UNSUPPORTED_POSITIONS:
        raise UserError(f"--format=ctranslate2: model.positional={model.positional!r} cannot be exported "
                        f"({_UNSUPPORTED_POSITIONS[model.positional]}); sinusoidal and learned positions can")


def _linear(spec: Any, weight: np.ndarray, bias: np.ndarray | None) -> None:
    spec.weight = np.ascontiguousarray(weight, np.float32)
    if bias is not None:
        spec.bias = np.ascontiguousarray(bias, np.float32)


def _in_projection(p: dict) -> tuple[np.ndarray, np.ndarray]:
    """{"kernel" [D, N, H], "bias" [N, H]} -> weight [N H, D], bias [N H]."""
    kernel = np.asarray(p["kernel"])
    return kernel.reshape(kernel.shape[0], -1).T, np.asarray(p["bias"]).reshape(-1)


def _attention(spec: Any, p: dict, self_attention: bool) -> None:
    q, k, v = (_in_projection(p[name]) for name in ("query", "key", "value"))
    out_kernel = np.asarray(p["out"]["kernel"])  # [N, H, D]
    if self_attention:
        _linear(spec.linear[0], np.concatenate([q[0], k[0], v[0]]), np.concatenate([q[1], k[1], v[1]]))
    else:
        _linear(spec.linear[0], *q)
        _linear(spec.linear[1], np.concatenate([k[0], v[0]]), np.concatenate([k[1], v[1]]))
    _linear(spec.linear[-1], out_kernel.reshape(-1, out_kernel.shape[-1]).T, p["out"]["bias"])


def _norm(spec: Any, p: dict) -> None:
    spec.gamma = np.asarray(p["scale"], np.float32)
    spec.beta = np.asarray(p["bias"], np.float32)


def _feed_forward(spec: Any, p: dict) -> None:
    _linear(spec.linear_0, np.asarray(p["wi"]["kernel"]).T, p["wi"]["bias"])
    _linear(spec.linear_1, np.asarray(p["wo"]["kernel"]).T, p["wo"]["bias"])


def _position_table(model: Any, params: dict) -> np.ndarray:
    if model.positional == "learned":
        return np.asarray(params["positions"]["table"]["embedding"], np.float32)  # [max_len, D]
    positions = np.arange(POSITIONS, dtype=np.int32)[None]
    return np.asarray(sinusoidal_positions(positions, model.emb_dim)[0], np.float32)  # [POSITIONS, D]


def transformer_spec(trained: Any) -> Any:
    """The `ctranslate2.specs.TransformerSpec` of a trained Transformer, weights and vocabularies set."""
    try:
        from ctranslate2.specs import transformer_spec as ts  # noqa: PLC0415  (an optional extra)
    except ImportError:
        raise UserError('--format=ctranslate2: the ctranslate2 package is not installed; pip install -e '
                        '".[ctranslate2]"') from None

    _check_exportable(trained.config)
    model = trained.model.config
    params = jax.device_get(trained.params)
    pre = model.norm == "pre"
    kv = model.kv_heads if model.kv_heads != model.num_heads else None
    encoder = ts.TransformerEncoderSpec(model.num_encoder_layers, model.num_heads, pre_norm=pre, num_heads_kv=kv)
    decoder = ts.TransformerDecoderSpec(model.num_decoder_layers, model.num_heads, pre_norm=pre, num_heads_kv=kv)
    table = _position_table(model, params)
    target_embedding = np.asarray(params["target_embed"]["embedding"], np.float32)  # [V, D]
    source_embedding = (target_embedding if model.share_embeddings
                        else np.asarray(params["source_embed"]["embedding"], np.float32))
    encoder.embeddings[0].weight = source_embedding
    decoder.embeddings.weight = target_embedding
    encoder.position_encodings.encodings = table
    decoder.position_encodings.encodings = table
    for i, layer in enumerate(encoder.layer):
        p = params[f"encoder_layers_{i}"]
        _attention(layer.self_attention, p["self_attention"], self_attention=True)
        _norm(layer.self_attention.layer_norm, p["attention_residual"]["norm"])
        _feed_forward(layer.ffn, p["feed_forward"])
        _norm(layer.ffn.layer_norm, p["ffn_residual"]["norm"])
    for i, layer in enumerate(decoder.layer):
        p = params[f"decoder_layers_{i}"]
        _attention(layer.self_attention, p["self_attention"], self_attention=True)
        _norm(layer.self_attention.layer_norm, p["self_residual"]["norm"])
        _attention(layer.attention, p["cross_attention"], self_attention=False)
        _norm(layer.attention.layer_norm, p["cross_residual"]["norm"])
        _feed_forward(layer.ffn, p["feed_forward"])
        _norm(layer.ffn.layer_norm, p["ffn_residual"]["norm"])
    if pre:
        _norm(encoder.layer_norm, params["encoder_norm"])
        _norm(decoder.layer_norm, params["decoder_norm"])
    if model.tie_output:
        decoder.projection.weight = target_embedding
    else:
        _linear(decoder.projection, np.asarray(params["output"]["kernel"]).T, params["output"]["bias"])

    spec = ts.TransformerSpec(encoder, decoder)
    tok = trained.tokenizers
    pieces = {side: [getattr(tok, side).id_to_piece(i) for i in range(getattr(tok, side).vocab_size)]
              for side in ("source", "target")}
    spec.register_source_vocabulary(pieces["source"])
    spec.register_target_vocabulary(pieces["target"])
    spec.config.unk_token = pieces["target"][UNK_ID]
    spec.config.bos_token = spec.config.decoder_start_token = pieces["target"][model.bos_id]
    spec.config.eos_token = pieces["target"][model.eos_id]
    spec.config.add_source_eos = True  # jaxattn's sources end with eos
    spec.config.layer_norm_epsilon = LAYER_NORM_EPSILON
    return spec


def export(trained: Any, output_dir: str, output_format: str = "ctranslate2") -> None:
    """Writes `trained` (a Transformer `train.modes.Trained`) to the new directory `output_dir`.

    Written into a temporary directory beside it and renamed at the end: a failed export leaves
    nothing behind.
    """
    if output_format not in FORMATS:
        raise UserError(f"--format: got {output_format!r}, expected one of {list(FORMATS)}")
    check_output_dir(output_dir)
    spec = transformer_spec(trained)
    parent = os.path.dirname(os.path.abspath(output_dir))
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.partial-", dir=parent)
    try:
        spec.validate()
        spec.optimize(quantization=None)
        spec.save(partial)
        tok = trained.tokenizers
        for side in ("source", "target"):
            with open(os.path.join(partial, f"{side}.model"), "wb") as f:
                f.write(getattr(tok, side).model_proto)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o777 & ~umask)  # mkdtemp made it private; the export is an ordinary directory
        os.rename(partial, output_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


class CTranslate2Model:
    """An exported model loaded in CTranslate2, translating as `--mode=translate` does: the same
    SentencePiece pieces, eos on the source, and each sentence's length limit (`decode.max_length_a`,
    `.max_length_b`, `.max_length`, eos included), so that greedy search gives jaxattn's tokens.

    Args:
      model_dir: what `export` wrote.
      compute_type: CTranslate2's ("float32", "int8", ...; "default" keeps the saved float32).
      intra_threads: CPU threads per translation (0: CTranslate2's default).
    """

    def __init__(self, model_dir: str, compute_type: str = "float32", intra_threads: int = 0):
        import ctranslate2  # noqa: PLC0415  (an optional extra)

        from train.data.tokenizer import Tokenizer  # noqa: PLC0415

        self.translator = ctranslate2.Translator(model_dir, device="cpu", compute_type=compute_type,
                                                 intra_threads=intra_threads)
        self.source = Tokenizer.load(os.path.join(model_dir, "source.model"))
        self.target = Tokenizer.load(os.path.join(model_dir, "target.model"))

    def translate(self, sentences: list[str], decode_config: Any, max_batch_size: int = 32) -> list[str]:
        """Translations in order ("" for a blank sentence): greedy or beam search as
        `decode_config.strategy` says (beam: `beam_size`, and `alpha` as CTranslate2's length penalty)."""
        from train.evaluation import decode_lengths  # noqa: PLC0415

        beam = decode_config.beam_size if decode_config.strategy == "beam" else 1
        piece = self.source.id_to_piece
        pieces = [[piece(i) for i in self.source.encode(s, add_eos=False)] if s.strip() else None for s in sentences]
        groups: dict[int, list[int]] = {}  # one call per length limit: it is CTranslate2's per batch
        for i, p in enumerate(pieces):
            if p is not None:
                groups.setdefault(int(decode_lengths(len(p) + 1, decode_config)), []).append(i)
        out = [""] * len(sentences)
        for limit, members in groups.items():
            results = self.translator.translate_batch(
                [pieces[i] for i in members], max_batch_size=max_batch_size, beam_size=beam,
                length_penalty=decode_config.alpha, max_decoding_length=limit)
            for i, result in zip(members, results):  # detokenised as jaxattn does (Tokenizer.decode)
                out[i] = self.target.decode([self.target.piece_to_id(p) for p in result.hypotheses[0]])
        return out
