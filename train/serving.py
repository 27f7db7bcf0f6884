"""A trained model as a service: what `--mode=serve` answers, without the HTTP (`train.server`).

    service = Service(modes.load_trained(config, workdir), workdir)
    service.warm_up()                                    # compiles the shapes requests will have
    request = service.translate_request({"sentences": ["forty two"], "nbest": 2})
    service.translate(request.key, request.items)        # what `train.batcher` calls, batched
    service.attention(service.attention_request({"sentence": "forty two"}))

Requests are JSON objects; `*_request` checks one against the limits in `config.serve` and raises
`RequestError` (a 4xx answer naming the field) for anything else. Translation and scoring are
`train.translation.Translator`'s, so an answer holds exactly what `--mode=translate` / `--mode=score`
print for the same input: translations, n-best (score null where the command line prints -inf),
and log-probabilities. The attention of a sentence is a teacher-forced pass of the model, built
to capture its weights, over the sentence and its translation.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxattn.models import count_params
from train.attention_pass import attention_pass
from train.data.tokenizer import pad_rows
from train.evaluation import until_eos
from train.translation import Translator

__all__ = ["RequestError", "Request", "Service", "DECODE_OPTIONS"]

# Decode-time settings a request may change (`config.decode` fields), with their types.
DECODE_OPTIONS = {"strategy": str, "beam_size": int, "alpha": float, "max_length": int,
                  "max_length_a": float, "max_length_b": int}
STRATEGIES = ("greedy", "beam")
_KIND_NAMES = {str: "string", list: "list"}
# What each kind of attention relates, (rows, columns), in the order the explorer lists them.
KIND_AXES = {"cross": ("target", "source"), "alignment": ("target", "source"),
             "encoder_self": ("source", "source"), "decoder_self": ("target", "target")}


class RequestError(Exception):
    """A request the service does not take: the HTTP status and a one-line message naming the field."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Request:
    """A checked request: `items` (sentences or pairs) and the `key` of the batch it may join."""

    key: Hashable
    items: list[Any]


def _typed(body: dict, name: str, kind: type, default: Any) -> Any:
    value = body.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise RequestError(f"{name}: got {type(value).__name__} {str(value)[:40]!r}, expected {kind.__name__}")
    return value


class Service:
    """Translation, n-best, scoring and attention maps of one trained model, within `config.serve`."""

    def __init__(self, trained: Any, workdir: str = "", checkpoint_name: str = "latest"):
        self.trained, self.workdir, self.checkpoint_name = trained, workdir, checkpoint_name
        self.limits = trained.config.serve
        self.translator = Translator(trained, row_sizes=tuple(self.limits.row_sizes))
        self._attention = attention_pass(trained.model)  # [1, L] each -> {kind: [L, 1, N, rows, cols]}

    # --- Checking requests -------------------------------------------------------------------

    def _decode_config(self, body: dict) -> ml_collections.ConfigDict:
        given = {name: _typed(body, name, kind, None) for name, kind in DECODE_OPTIONS.items() if name in body}
        if given.get("strategy", "greedy") not in STRATEGIES:
            raise RequestError(f"strategy: got {given['strategy']!r}, expected one of {list(STRATEGIES)}")
        for name in ("beam_size", "max_length"):
            if given.get(name, 1) < 1:
                raise RequestError(f"{name}: got {given[name]}, expected >= 1")
        for name in ("alpha", "max_length_a", "max_length_b"):  # finite, >= 0
            if not math.isfinite(given.get(name, 0.0)) or given.get(name, 0.0) < 0:
                raise RequestError(f"{name}: got {given[name]}, expected a number >= 0")
        if given.get("beam_size", 1) > self.limits.max_nbest * 4:
            raise RequestError(f"beam_size: got {given['beam_size']}, expected at most "
                               f"{self.limits.max_nbest * 4} (4 x serve.max_nbest)", 413)
        return self.translator.decode_config(**given)

    def _nbest(self, body: dict) -> int:
        nbest = _typed(body, "nbest", int, 0)
        if not 0 <= nbest <= self.limits.max_nbest:
            raise RequestError(f"nbest: got {nbest}, expected 0 to {self.limits.max_nbest} (serve.max_nbest)",
                               413 if nbest > 0 else 400)
        return nbest

    def _sized(self, value: Any, where: str, kind: type, limit: str, unit: str) -> Any:
        """`value` if it is a `kind` no longer than `serve.<limit>` (in `unit`s), else the 4xx that says so."""
        if not isinstance(value, kind):
            raise RequestError(f"{where}: got {type(value).__name__}, expected a {_KIND_NAMES[kind]}")
        if len(value) > self.limits[limit]:
            raise RequestError(f"{where}: {len(value)} {unit}, more than serve.{limit}={self.limits[limit]}", 413)
        return value

    def _sentence(self, value: Any, where: str) -> str:
        return self._sized(value, where, str, "max_sentence_chars", "characters")

    def _list(self, body: dict, name: str) -> list:
        if name not in body:
            raise RequestError(f"{name}: missing, expected a list")
        return self._sized(body[name], name, list, "max_sentences", "items")

    @staticmethod
    def _only(body: Any, allowed: set[str]) -> dict:
        if not isinstance(body, dict):
            raise RequestError(f"body: got a JSON {type(body).__name__}, expected an object")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise RequestError(f"{unknown[0]}: unknown field, expected some of {sorted(allowed)}")
        return body

    def translate_request(self, body: Any) -> Request:
        """`{"sentences": [...], "nbest": K, <decode options>}` -> sentences batched by settings."""
        body = self._only(body, {"sentences", "nbest", *DECODE_OPTIONS})
        sentences = [self._sentence(s, f"sentences[{i}]") for i, s in enumerate(self._list(body, "sentences"))]
        decode_config = self._decode_config(body)
        return Request(("translate", self._nbest(body), _frozen(decode_config)), sentences)

    def score_request(self, body: Any) -> Request:
        """`{"pairs": [[source, target], ...]}` (null for a blank line) -> pairs."""
        body = self._only(body, {"pairs"})
        pairs = []
        for i, pair in enumerate(self._list(body, "pairs")):
            if pair is not None and not (isinstance(pair, list) and len(pair) == 2):
                raise RequestError(f"pairs[{i}]: expected [source, target] or null")
            pairs.append(None if pair is None else tuple(self._sentence(s, f"pairs[{i}]") for s in pair))
        return Request(("score",), pairs)

    def attention_request(self, body: Any) -> tuple[str, int, ml_collections.ConfigDict]:
        """`{"sentence": "...", "nbest": K, <decode options>}`."""
        body = self._only(body, {"sentence", "nbest", *DECODE_OPTIONS})
        if "sentence" not in body:
            raise RequestError("sentence: missing, expected a string")
        sentence = self._sentence(body["sentence"], "sentence")
        if not sentence.strip():
            raise RequestError("sentence: blank, expected words to translate")
        return sentence, self._nbest(body), self._decode_config(body)

    # --- Answers -----------------------------------------------------------------------------

    def run_batch(self, key: Hashable, items: list[Any]) -> list[Any]:
        """One batched model call for the items of requests with `key` (see `train.batcher`)."""
        if key[0] == "score":
            return [None if s is None else {"total": s.total, "mean": s.mean} for s in self.translator.score(items)]
        _, nbest, frozen = key
        decode_config = ml_collections.ConfigDict(dict(frozen))
        if not nbest:
            return [{"translation": t} for t in self.translator.translate(items, decode_config)]
        return [{"translation": hypotheses[0].text, "nbest": _nbest_json(hypotheses)}
                for hypotheses in self.translator.nbest(items, nbest, decode_config)]

    def attention(self, sentence: str, nbest: int, decode_config: ml_collections.ConfigDict) -> dict[str, Any]:
        """The translation of `sentence` and every attention map behind it, for the explorer page."""
        tok = self.trained.tokenizers
        (row,) = self.translator.decode_rows([sentence], decode_config)
        ids = self.trained.model.config
        target = until_eos(row, pad_id=ids.pad_id, eos_id=ids.eos_id)
        source = tok.source.encode(sentence)
        longest = max(len(source), len(target), 1)
        length = next(n for n in self.translator.lengths_for(longest) if n >= longest)
        maps = jax.device_get(self._attention(self.trained.params, pad_rows([source], length),
                                              pad_rows([target], length)))
        sizes = {"source": len(source), "target": len(target)}
        attention = {}
        for kind in sorted(maps, key=list(KIND_AXES).index):
            rows, cols = KIND_AXES[kind]
            weights = np.asarray(maps[kind], np.float32)[:, 0, :, :sizes[rows], :sizes[cols]]  # [L, N, R, C]
            attention[kind] = {"rows": rows, "cols": cols, "layers": weights.shape[0], "heads": weights.shape[1],
                               "weights": np.round(weights, 4).tolist()}
        answer = {"sentence": sentence, "translation": tok.target.decode(target),
                  "source_tokens": [tok.source.id_to_piece(i) for i in source],
                  "target_tokens": [tok.target.id_to_piece(i) for i in target], "attention": attention}
        if nbest:
            answer["nbest"] = _nbest_json(self.translator.nbest([sentence], nbest, decode_config)[0])
        return answer

    def warm_up(self) -> int:
        """Compiles translation (the run's decode settings) and scoring for every batch height of
        `serve.row_sizes` and length bucket, and the attention pass for each bucket: the first
        request is then as fast as the next ones. Returns the number of shapes run."""
        lengths = self.translator.lengths_for(0)
        for rows in self.limits.row_sizes:
            for length in lengths:
                self.translator.compile_shape(rows, length)
        eos = self.trained.model.config.eos_id
        for length in lengths:
            ids = pad_rows([[eos]], length)                                       # [1, L]
            jax.block_until_ready(self._attention(self.trained.params, ids, ids))
        return len(lengths) * (2 * len(self.limits.row_sizes) + 1)

    def info(self) -> dict[str, Any]:
        """What `GET /info` answers: the model, its run and the service's limits."""
        config, tok = self.trained.config, self.trained.tokenizers
        return {
            "family": config.model.family,
            "parameters": count_params(self.trained.params),
            "step": self.trained.step,
            "checkpoint": self.checkpoint_name,
            "workdir": self.workdir,
            "vocabulary": {"source": tok.source.vocab_size, "target": tok.target.vocab_size, "shared": tok.shared},
            "attention_kinds": sorted(jax.eval_shape(
                self._attention, self.trained.params, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.int32)),
                key=list(KIND_AXES).index),
            "config": {"model": config.model.to_dict(), "data": {k: config.data[k] for k in (
                "dataset", "source_lang", "target_lang", "vocab_size", "max_source_length", "max_target_length")},
                "decode": config.decode.to_dict()},
            "limits": {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.limits.to_dict().items()},
        }


def _frozen(decode_config: ml_collections.ConfigDict) -> tuple:
    return tuple(sorted(decode_config.to_dict().items()))


def _nbest_json(hypotheses: Sequence[Any]) -> list[dict[str, Any]]:
    """N-best entries as JSON: the score is null where the command line prints -inf."""
    return [{"translation": h.text, "score": h.score if math.isfinite(h.score) else None} for h in hypotheses]
