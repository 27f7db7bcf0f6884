"""SentencePiece tokenizers with fixed special ids, trained once per workdir and then reused.

SentencePiece (Kudo & Richardson 2018) with a unigram language model (Kudo 2018) or BPE
(Sennrich et al. 2016). The special ids are those of `jaxattn.tokens` (re-exported here), the same
for every vocabulary and every model:

    pad = 0, unk = 1, bos (<sos>) = 2, eos = 3

Sources and targets are encoded without bos and end with eos; the models prepend bos to the
decoder input themselves (shift right).

A vocabulary lives in ``<workdir>/vocab/`` as ``<role>.model`` (role = "shared", "source" or
"target") next to ``<role>.json``, which records the settings it was trained with. A later run
reuses it; a run whose settings differ raises instead of overwriting it. Checkpoints store
`Tokenizers.fingerprint()` and the trainer calls `Tokenizers.check(stored)` on restore, so a
checkpoint is never decoded with a vocabulary it was not trained with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import sentencepiece as spm

from jaxattn.tokens import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from train.errors import UserError, one_line

__all__ = ["PAD_ID", "UNK_ID", "BOS_ID", "EOS_ID", "Tokenizer", "Tokenizers", "pad_rows",
           "train_sentencepiece", "load_or_train_tokenizers", "load_tokenizers", "MODEL_TYPES"]

MODEL_TYPES = ("unigram", "bpe")
_SPACES = re.compile(" {2,}")
_log = logging.getLogger(__name__)


def pad_rows(rows: Sequence[Sequence[int] | np.ndarray], length: int | None = None,
             num_rows: int | None = None) -> np.ndarray:
    """B id rows of different lengths -> one [num_rows, length] int32 array, pad-filled at the end.

    Args:
        rows: B rows of token ids, each at most `length` long.
        length: L, the padded width; None = the longest row (0 without rows).
        num_rows: rows of the result (>= B); the rows after the B given are all pad. None = B.

    Returns:
        [num_rows, L] int32: row b holds `rows[b]` followed by PAD_ID.
    """
    longest = max((len(row) for row in rows), default=0)
    length = longest if length is None else length
    num_rows = len(rows) if num_rows is None else num_rows
    if longest > length:
        raise ValueError(f"rows: the longest has {longest} ids, expected at most length={length}")
    if num_rows < len(rows):
        raise ValueError(f"num_rows: got {num_rows}, expected at least the {len(rows)} rows given")
    out = np.full((num_rows, length), PAD_ID, np.int32)  # [rows, L]
    for i, row in enumerate(rows):
        out[i, :len(row)] = row
    return out


class Tokenizer:
    """A SentencePiece model: text <-> int32 ids with the fixed special ids."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        self._piece_scores: np.ndarray | None = None  # [V] log P of each piece (`sample_encode`)
        specials = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if specials != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise UserError(f"model_proto: special ids (pad, unk, bos, eos) got {specials}, "
                            f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Reads a `.model` file written by `save` or by SentencePiece."""
        with open(path, "rb") as f:
            proto = f.read()
        try:
            return cls(proto)
        except RuntimeError as e:  # SentencePiece cannot parse it
            raise UserError(f"vocabulary {path}: not a SentencePiece model ({one_line(e)[:200]}); "
                            "restore it from a copy of this workdir (its checkpoints were trained with it), "
                            "or train in a new --workdir") from None

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model proto atomically (temp file + rename)."""
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(self._proto)
        os.replace(tmp, path)

    @property
    def vocab_size(self) -> int:
        """V, the number of ids (specials included)."""
        return self._sp.get_piece_size()

    @property
    def fingerprint(self) -> str:
        """First 16 hex digits of the SHA-256 of the model proto: equal iff same vocabulary."""
        return hashlib.sha256(self._proto).hexdigest()[:16]

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def encode(self, text: str, *, add_eos: bool = True) -> np.ndarray:
        """Text -> [L] int32 ids, ending with eos unless `add_eos` is False."""
        ids = self._sp.encode(text, add_eos=add_eos)
        return np.asarray(ids, dtype=np.int32)  # [L]

    def sample_encode(self, text: str, *, alpha: float, nbest: int, rng: np.random.Generator,
                      add_eos: bool = True) -> np.ndarray:
        """Text -> [L] int32 ids of a sampled segmentation (subword regularization, Kudo 2018).

        One of the `nbest` best segmentations x of a unigram model, drawn with P(x) ~ P(x)^alpha
        by `rng` (so a seeded generator gives the same segmentation again); alpha -> 0 is uniform
        over them, a large alpha the best one (`encode`).
        """
        candidates = self._sp.nbest_encode_as_ids(text, nbest_size=nbest)  # best first
        if len(candidates) > 1:
            if self._piece_scores is None:
                self._piece_scores = np.array([self._sp.get_score(i) for i in range(self.vocab_size)])  # [V]
            logp = np.array([self._piece_scores[c].sum() for c in candidates])  # [n] log P_unigram(x)
            weights = np.exp(alpha * (logp - logp.max()))  # [n]
            ids = candidates[rng.choice(len(candidates), p=weights / weights.sum())]
        else:
            ids = candidates[0] if candidates else []
        return np.asarray(ids + [EOS_ID] if add_eos else ids, dtype=np.int32)  # [L]

    def encode_batch(self, texts: Sequence[str], *, add_eos: bool = True,
                     length: int | None = None) -> np.ndarray:
        """B texts -> [B, L] int32 ids (see `encode`), padded with PAD_ID (0) at the end.

        The format of the trainer's batches and of the models' inputs. Nothing is cut: a text
        longer than `length` raises (truncating or filtering is `data.length_policy`'s job).

        Args:
            texts: B sentences.
            add_eos: end every row's ids with eos.
            length: L, the padded width; None = the longest encoded text.

        Returns:
            [B, L] int32.
        """
        if isinstance(texts, str):
            raise ValueError(f"texts: expected a sequence of strings, got the string {texts[:40]!r}")
        return pad_rows([self.encode(text, add_eos=add_eos) for text in texts], length)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """[L] ids -> text; stops at the first eos and drops pad and bos.

        Spaces come out as SentencePiece's normaliser lets them in: single, none leading or
        trailing. A model may emit pieces that SentencePiece decodes to stray spaces: a lone "▁"
        before "▁word" or at the end, and `<unk>`, which decodes to " ⁇ ".
        """
        out = []
        for i in np.asarray(ids).reshape(-1).tolist():
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(i)
        return _SPACES.sub(" ", self._sp.decode(out)).strip(" ")

    def decode_batch(self, ids: np.ndarray) -> list[str]:
        """[B, L] ids -> B texts (see `decode`)."""
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"ids: got shape {ids.shape}, expected [B, L]")
        return [self.decode(row) for row in ids]

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        return self._sp.piece_to_id(piece)


@dataclasses.dataclass(frozen=True)
class Tokenizers:
    """Source and target tokenizers (the same object when the vocabulary is shared)."""

    source: Tokenizer
    target: Tokenizer

    @property
    def shared(self) -> bool:
        return self.source is self.target

    def fingerprint(self) -> dict[str, str | int]:
        """JSON-able identity of the vocabularies, to store in a checkpoint."""
        return {"source": self.source.fingerprint, "target": self.target.fingerprint,
                "source_vocab_size": self.source.vocab_size,
                "target_vocab_size": self.target.vocab_size}

    def check(self, stored: Mapping[str, str | int]) -> None:
        """Raises UserError if `stored` (a `fingerprint()` from a checkpoint) differs."""
        current = self.fingerprint()
        if dict(stored) != current:
            raise UserError(f"tokenizer: checkpoint was trained with vocabulary {dict(stored)}, "
                            f"the workdir has {current}; use the checkpoint's workdir/vocab")


def train_sentencepiece(texts: Iterable[str], *, vocab_size: int, model_type: str = "unigram",
                        character_coverage: float = 1.0) -> Tokenizer:
    """Trains a SentencePiece model in memory on `texts` with the fixed special ids.

    The vocabulary size is a soft limit: a corpus too small for `vocab_size` pieces gives a
    smaller vocabulary instead of an error, so read the size from `Tokenizer.vocab_size`.
    """
    if model_type not in MODEL_TYPES:
        raise UserError(f"model_type: got {model_type!r}, expected one of {MODEL_TYPES}")
    if vocab_size < 8:
        raise UserError(f"vocab_size: got {vocab_size}, expected >= 8")
    texts = [t for t in texts if t]
    if not texts:
        raise UserError("texts: got no non-empty sentence to train the vocabulary on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, character_coverage=character_coverage, hard_vocab_limit=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        pad_piece="<pad>", unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        input_sentence_size=0, shuffle_input_sentence=False, num_threads=2, minloglevel=2)
    return Tokenizer(model.getvalue())


def _load_or_train(vocab_dir: str, role: str, settings: dict, texts_fn: Callable[[], Iterable[str]]
                   ) -> Tokenizer:
    model_path = os.path.join(vocab_dir, f"{role}.model")
    settings_path = os.path.join(vocab_dir, f"{role}.json")
    if os.path.exists(model_path):
        recorded = None
        if os.path.exists(settings_path):
            try:
                with open(settings_path, "rb") as f:
                    recorded = json.loads(f.read())
            except ValueError as e:
                raise UserError(f"vocabulary settings {settings_path}: not valid JSON ({e}); restore it from a "
                                "copy of this workdir, or delete it (it is only checked, not needed)") from None
        if recorded is not None and recorded != settings:
            raise UserError(f"vocabulary {model_path}: was trained with {recorded}, config asks for "
                            f"{settings}; use another workdir (an existing vocabulary is never "
                            "overwritten)")
        tokenizer = Tokenizer.load(model_path)
        _log.info("Reusing vocabulary %s (V=%d)", model_path, tokenizer.vocab_size)
        return tokenizer
    tokenizer = train_sentencepiece(texts_fn(), vocab_size=settings["vocab_size"],
                                    model_type=settings["model_type"],
                                    character_coverage=settings["character_coverage"])
    os.makedirs(vocab_dir, exist_ok=True)
    tmp = f"{settings_path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
    os.replace(tmp, settings_path)
    tokenizer.save(model_path)
    _log.info("Trained vocabulary %s (V=%d)", model_path, tokenizer.vocab_size)
    return tokenizer


def load_or_train_tokenizers(vocab_dir: str, *, shared: bool, vocab_size: int, model_type: str,
                             character_coverage: float, dataset_id: str,
                             source_texts: Callable[[], Iterable[str]],
                             target_texts: Callable[[], Iterable[str]]) -> Tokenizers:
    """Loads the vocabularies in `vocab_dir`, training (and saving) the missing ones.

    Args:
        vocab_dir: directory of `<role>.model` / `<role>.json`.
        shared: one vocabulary trained on sources and targets together, or one per side.
        vocab_size: requested size per vocabulary (soft limit, see `train_sentencepiece`).
        model_type: "unigram" or "bpe".
        character_coverage: SentencePiece character coverage (1.0 for small alphabets).
        dataset_id: names the training data; recorded so that a vocabulary is not silently
            reused for another dataset or direction.
        source_texts: returns the source sentences to train on (called only when training).
        target_texts: same for targets.

    Returns:
        The tokenizers (`source is target` when shared).
    """
    settings = {"vocab_size": int(vocab_size), "model_type": model_type,
                "character_coverage": float(character_coverage), "dataset": dataset_id}
    if shared:
        tok = _load_or_train(vocab_dir, "shared", settings,
                             lambda: [*source_texts(), *target_texts()])
        return Tokenizers(tok, tok)
    return Tokenizers(_load_or_train(vocab_dir, "source", settings, source_texts),
                      _load_or_train(vocab_dir, "target", settings, target_texts))


def load_tokenizers(vocab_dir: str, *, shared: bool) -> Tokenizers:
    """The vocabularies a training run saved in `vocab_dir` (e.g. for translating later).

    Raises:
        UserError: if a `.model` file is missing.
    """
    roles = ("shared",) if shared else ("source", "target")
    paths = [os.path.join(vocab_dir, f"{role}.model") for role in roles]
    for path in paths:
        if not os.path.exists(path):
            raise UserError(f"vocab_dir: missing vocabulary file {path}; train in this workdir first")
    tokenizers = [Tokenizer.load(path) for path in paths]
    return Tokenizers(tokenizers[0], tokenizers[-1])
