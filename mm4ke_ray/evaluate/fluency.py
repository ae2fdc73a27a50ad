"""Fluency: the n-gram entropy of a sampled generation, as EasyEdit/KnowEdit compute it.

EasyEdit (`compute_n_gram_entropy`, from ROME) takes bigram and trigram entropies H2, H3 (bits)
of the text's word tokens and returns mean([2/3 * H2, 4/3 * H3]) = H2/3 + 2*H3/3. The text is
the whole decoded sequence, prompt included, sampled with top-k 5 until it is 100 tokens long
(`generate_fast`; no stop at end-of-sequence). KnowEdit tables report the value x 100.

EasyEdit splits words with `nltk.word_tokenize`, which needs a data download; `word_tokens`
below is a regular expression that follows its main rules (punctuation split off, "don't" ->
"do" + "n't", "it's" -> "it" + "'s", hyphenated words and decimals kept whole).

In `chat` format the model is prompted through its chat template, but the scored text is the
prompt and the generated reply only: the template's role words and default system prompt (plain
text once special tokens are skipped) are the same in every sample and would otherwise add their
own n-grams to each. The budget stays EasyEdit's: 100 tokens counting the prompt's own tokens,
not the template's, so a chat sample generates as many tokens as a plain one. A chat reply ends
at the end of the assistant's turn (the template's end-of-turn token or EOS, `stop_token_ids`;
issue 23): what a chat model samples after its turn is no part of its answer. Plain format keeps
EasyEdit's rule (no stop at end-of-sequence).
"""

from __future__ import annotations

import inspect
import math
import re
import unicodedata
from collections import Counter

import torch

from mm4ke_ray.evaluate.accuracy import model_device
from mm4ke_ray.evaluate.stop_rules import stop_token_ids
from mm4ke_ray.modeling import format_prompt
from mm4ke_ray.modeling.encoding import PromptFormat

_WORD = re.compile(
    r"\w+(?=n't\b)"  # "do" of "don't" (Treebank splits the negation off)
    r"|n't\b"
    r"|'(?:s|re|ve|ll|d|m)\b"  # clitics: 's 're 've 'll 'd 'm
    r"|\w+(?:[-.]\w+)*"  # words, hyphenated words, decimals, "U.S"
    r"|\.\.\.|--"
    r"|[^\w\s]",  # any other punctuation mark, one at a time
    re.IGNORECASE,
)


def word_tokens(text: str) -> list[str]:
    """Split `text` into word tokens, approximating `nltk.word_tokenize` without its data files."""
    return _WORD.findall(text)


def _entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    # An empty distribution (text shorter than n words) counts as 0 bits, not NaN.
    return -sum(c / total * math.log2(c / total) for c in counts.values()) if total else 0.0


def ngram_entropy(text: str) -> float:
    """EasyEdit's n-gram entropy of one text: H2/3 + 2*H3/3 in bits (not scaled by 100)."""
    tokens = word_tokens(text)
    # zip of the n shifted copies stops at the shortest: exactly the text's n-grams.
    h = [_entropy_bits(Counter(zip(*(tokens[i:] for i in range(n)), strict=False))) for n in (2, 3)]
    weights = (2 / 3, 4 / 3)
    return (weights[0] * h[0] + weights[1] * h[1]) / 2


def cache_kwarg(model) -> str | None:
    # transformers 5 names the KV cache argument `cache`, 4.x `past_key_values`.
    params = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def _prompt_ids(tokenizer, prompt: str, prompt_format: PromptFormat) -> list[int]:
    text = format_prompt(tokenizer, prompt, prompt_format)
    # A chat template already carries its special tokens.
    return list(tokenizer(text, add_special_tokens=prompt_format == "plain")["input_ids"])


@torch.no_grad()
def generate_for_fluency(
    model,
    tokenizer,
    prompt: str,
    seed: int,
    max_length: int = 100,
    top_k: int = 5,
    prompt_format: PromptFormat = "plain",
) -> str:
    """Sample a continuation of `prompt` with top-k sampling until `max_length` tokens in total.

    Returns the decoded whole sequence, prompt included, NFKD-normalised with blank lines
    joined, as EasyEdit's `generate_fast` does; in `chat` format the prompt followed by the
    decoded reply up to the end of the assistant's turn (the template left out, see the module
    docstring). Sampling uses its own CPU generator seeded with `seed`, so the result repeats
    for the same model and seed on any device and leaves the global random state alone.
    """
    gen = torch.Generator().manual_seed(seed)
    device = model_device(model)
    ids = _prompt_ids(tokenizer, prompt, prompt_format)
    start = len(ids)
    stops: set[int] = set()
    if prompt_format == "chat":  # generate what plain would: max_length minus the prompt's tokens
        own = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        max_length = start + max(max_length - own, 1)
        stops = stop_token_ids(tokenizer, model)
    cache_name = cache_kwarg(model)
    step_input, cache = torch.tensor([ids], device=device), None
    while len(ids) < max_length:
        kwargs = {cache_name: cache, "use_cache": True} if cache_name else {}
        out = model(input_ids=step_input, **kwargs)
        if cache_name:
            cache = getattr(out, cache_name, None)
        last = out.logits[0, -1].float()
        # Softmax over the k best logits equals EasyEdit's renormalised top-k of the softmax.
        top = torch.topk(last, top_k)
        probs = torch.softmax(top.values, -1).cpu()
        token = int(top.indices[torch.multinomial(probs, 1, generator=gen).item()])
        if token in stops:  # the assistant's turn is over
            break
        ids.append(token)
        step_input = torch.tensor([[token]] if cache is not None else [ids], device=device)
    if prompt_format == "chat":
        text = prompt + " " + tokenizer.decode(ids[start:], skip_special_tokens=True)
    else:
        text = tokenizer.decode(ids, skip_special_tokens=True)
    return unicodedata.normalize("NFKD", text).replace("\n\n", " ")
