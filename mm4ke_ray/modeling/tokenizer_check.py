"""Does `AutoTokenizer.from_pretrained(dir)` give the ids of the tokenizer.json saved in `dir`?

transformers 5 picks the tokenizer class from config.json's `model_type`, and for some types
(qwen2 among them: `MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS` in
`transformers/models/auto/tokenization_auto.py`) it ignores `tokenizer_class` in
tokenizer_config.json, takes only the vocabulary and merges from tokenizer.json and rebuilds the
rest (normalizer, pre-tokenizer, decoder) the way that model family's own tokenizer is built. A
tokenizer of another kind saved next to such a model then loads without an error and encodes
wrongly (a word-level tokenizer under Qwen2Tokenizer turns every word into 'a'). The only way to
see it is to compare: this module encodes sample texts with both and reports the first difference,
its cause and the fix.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from mm4ke_ray.errors import UserError

# Plain text with the pieces tokenizers disagree on: casing, digits, punctuation, spacing.
FIXED_SAMPLES = (
    "The quick brown fox jumps over the lazy dog.",
    "In which city does Brenal Tosk live ? Varnholm",
    "Marie Curie was born in 1867 in Warsaw, Poland; she won two Nobel prizes.",
    "What is the capital of France?  Paris.",
)
_VOCAB_SAMPLES = 64  # vocabulary entries joined into one more sample text


class TokenizerMismatchWarning(UserWarning):
    """AutoTokenizer encodes differently from the tokenizer.json saved with the model."""


@dataclass(frozen=True)
class TokenizerMismatch:
    """The first sample text on which AutoTokenizer and the saved tokenizer.json disagree."""

    model_dir: str
    auto_class: str
    model_type: str | None
    text: str
    auto_ids: list[int]
    saved_ids: list[int]

    def message(self) -> str:
        overridden = self.model_type in _overridden_model_types()
        cause = (
            f"transformers maps model_type '{self.model_type}' to {self.auto_class} whatever "
            "tokenizer_config.json says, and rebuilds that class's own pre-tokenizer and decoder "
            "around the saved vocabulary"
            if overridden
            else f"AutoTokenizer chose {self.auto_class}, which does not reproduce tokenizer.json"
        )
        fix = (
            f"save a tokenizer of the kind {self.auto_class} builds (for qwen2: a byte-level BPE "
            "like Qwen's), or a model type whose tokenizer_class transformers honours (e.g. llama "
            "with tokenizer_class 'TokenizersBackend'); until then users must load it with "
            f"transformers.TokenizersBackend.from_pretrained('{self.model_dir}')"
        )
        return (
            f"AutoTokenizer.from_pretrained('{self.model_dir}') does not give the saved "
            f"tokenizer's ids: {self.text!r} encodes to {_head(self.auto_ids)} with "
            f"{self.auto_class} but to {_head(self.saved_ids)} with tokenizer.json. Cause: "
            f"{cause}. Fix: {fix}."
        )


def _head(ids: list[int], n: int = 12) -> str:
    return str(ids[:n])[:-1] + (", ...]" if len(ids) > n else "]")


def _overridden_model_types() -> set[str]:
    from transformers.models.auto import tokenization_auto

    return set(getattr(tokenization_auto, "MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS", ()))


def saved_tokenizer_file(name: str) -> Path | None:
    """tokenizer.json of a local directory or of a hub id already in the local cache, else None."""
    local = Path(name).expanduser() / "tokenizer.json"
    if local.is_file():
        return local
    try:
        from transformers.utils import cached_file

        found = cached_file(
            name,
            "tokenizer.json",
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, ValueError):
        return None
    return Path(found) if found else None


def sample_texts(saved) -> list[str]:
    """The fixed samples plus one text made of (seeded) entries of the saved vocabulary, so a
    tokenizer with a small domain vocabulary is exercised on words it knows."""
    special = {t.content for t in saved.get_added_tokens_decoder().values() if t.special}
    vocab = [t for t, _ in sorted(saved.get_vocab().items(), key=lambda kv: kv[1])]
    words = [t for t in vocab if t not in special]
    picked = random.Random(0).sample(words, min(_VOCAB_SAMPLES, len(words)))
    ids = [saved.token_to_id(t) for t in picked]
    return [*FIXED_SAMPLES, saved.decode(ids, skip_special_tokens=True)]


def compare_with_saved(tokenizer, name: str) -> TokenizerMismatch | None:
    """The first sample text on which `tokenizer` (as AutoTokenizer loaded it from `name`) and
    `name`'s saved tokenizer.json give different ids (with and without special tokens), or None
    when they agree or there is no tokenizer.json to compare with."""
    from tokenizers import Tokenizer

    path = saved_tokenizer_file(name)
    if path is None:
        return None
    saved = Tokenizer.from_file(str(path))
    for text in sample_texts(saved):
        for special in (False, True):
            auto_ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
            saved_ids = saved.encode(text, add_special_tokens=special).ids
            if auto_ids != saved_ids:
                return TokenizerMismatch(
                    model_dir=name,
                    auto_class=type(tokenizer).__name__,
                    model_type=_model_type(name),
                    text=text,
                    auto_ids=auto_ids,
                    saved_ids=saved_ids,
                )
    return None


def _model_type(name: str) -> str | None:
    config = Path(name).expanduser() / "config.json"
    try:
        return json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def check_auto_tokenizer(name: str, *, strict: bool, tokenizer=None) -> TokenizerMismatch | None:
    """Load `name` with plain AutoTokenizer (unless `tokenizer` is that already) and compare it
    with the saved tokenizer.json. On a difference: raise UserError (`strict`, e.g. before an
    export is published) or warn with TokenizerMismatchWarning and return the mismatch."""
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name)
    mismatch = compare_with_saved(tokenizer, name)
    if mismatch is None:
        return None
    if strict:
        raise UserError(mismatch.message())
    warnings.warn(mismatch.message(), TokenizerMismatchWarning, stacklevel=2)
    return mismatch
