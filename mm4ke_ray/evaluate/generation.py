"""Generation-based ("WILD") edit metrics: the model must produce the answer itself.

Teacher forcing scores each answer token given the gold prefix; here the model generates greedily
from the prompt and the whole answer is judged, as EasyEdit's WILD evaluation does (arXiv
2502.11177 measured single-edit success falling from 96.8% to 38.5% under it).

Generation (`greedy_generate`): greedy, batched with left padding and a KV cache, from exactly
the prompt tokens training and teacher forcing use (`encode_example(...)`'s ids before the
answer; in `chat` format the tokenizer's chat template with its own default system prompt, as
WILD prompts a chat model). A row stops at the first of: an end-of-sequence or end-of-turn token
(`stop_rules.stop_token_ids`), the token whose text completes a stop of the stop rule
(`stop_rules`: "wild", the default, stops at a sentence-ending "." or a newline, abbreviations
such as "Dr." and initials excepted; "newline" at a newline only), or the budget:
`max_new_tokens` (default 64, WILD's generous budget cut at the stop; with the pre-WILD
`extra_new_tokens` at most the answer's token count + that). A batch ends as soon as every row has
stopped. Rows are length-sorted into batches; the generations equal one-prompt-at-a-time ones
(tests and benchmarks/bench_generation.py check it).
`evaluate(..., records=ids)` generates the accuracy items of those records only (e.g. a stream's
edits made so far) and every locality item.

Answer text: the generated ids decoded without special tokens, cut at the stop, stripped.

Normalisation (`normalize_answer`, SQuAD's rules on Unicode): NFKC, lower case, punctuation
and symbols (Unicode categories P* and S*) removed, the articles "a", "an", "the" dropped,
whitespace collapsed; the result is a list of words. A target that normalises to nothing is
compared on its lower-cased words instead.

Hit (`answer_matches`), on those word lists, `match`:
- "equals" (default, WILD's exact match): the generation's words are exactly the target's;
- "starts_with" (lenient): the generation's first words are the target's words;
- "contains" (lenient): the target's words occur contiguously in the generation.

Metrics, per item 100 for a hit and 0 otherwise, then as the teacher-forced ones (per record the
mean of its per-kind means, then the mean over the records that have the metric;
`metric_rows.record_score`): Edit Succ. (prompt -> target_new), Generalization (rephrases ->
target_new), Portability (item prompt -> item answer). Locality: 100 when the edited model's
normalised answer to the locality prompt equals the base model's (`base_generations`, generated
and normalised alike), else 0 ("unchanged", not "correct"; the base against itself scores 100).
Per-kind means of portability and locality as in `metric_rows.kind_means`. Every per-record row
names its `match` and `stop`; `GenerationEvaluator.rules()` is what a run records.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.accuracy import model_device
from mm4ke_ray.evaluate.definitions import DEFAULT_MAX_NEW_TOKENS
from mm4ke_ray.evaluate.edit_metrics import (
    check_evaluator_inputs,
    encode_item,
    record_items,
    record_subset,
)
from mm4ke_ray.evaluate.fluency import cache_kwarg
from mm4ke_ray.evaluate.metric_rows import ITEM_METRICS, RowMetrics, empty_row, score_rows
from mm4ke_ray.evaluate.stop_rules import STOP_RULES, StopRule, TextStop, cut_answer, stop_token_ids
from mm4ke_ray.modeling.encoding import PromptFormat
from mm4ke_ray.modeling.modes import eval_mode

MatchMode = Literal["starts_with", "equals", "contains"]
MATCH_MODES: tuple[str, ...] = ("starts_with", "equals", "contains")
GENERATION_METRICS = ITEM_METRICS  # no fluency here
_ARTICLES = frozenset({"a", "an", "the"})

# -- normalisation and matching -------------------------------------------------------------------


def normalize_answer(text: str) -> list[str]:
    """SQuAD-style normalised words: NFKC, lower case, no punctuation/symbols, no articles."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PS")
    return [w for w in text.split() if w not in _ARTICLES]


def answer_matches(generated: str, target: str, match: MatchMode = "starts_with") -> bool:
    """Whether `generated` gives `target` under `match`, on normalised words (module doc)."""
    want = normalize_answer(target)
    got = normalize_answer(generated)
    if not want:  # e.g. a target that is only punctuation or an article: compare its words
        want, got = target.lower().split(), generated.lower().split()
    if match == "equals":
        return got == want
    if match == "starts_with":
        return got[: len(want)] == want
    if match == "contains":
        n = len(want)
        return any(got[i : i + n] == want for i in range(len(got) - n + 1))
    raise ValueError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")


def generation_rules(match: str, stop: str, max_new_tokens: int, extra_new_tokens: int | None) -> dict:
    """The rules a generated score was produced by, as recorded with it (MLflow params, JSON, card)."""
    return {"match": match, "stop": stop, "max_new_tokens": max_new_tokens, "extra_new_tokens": extra_new_tokens}


def answer_text(tokenizer, ids: Sequence[int], rule: StopRule = "wild") -> str:
    """The answer a generation gives: decoded without special tokens, cut at its stop (`rule`)."""
    return cut_answer(tokenizer.decode(list(ids), skip_special_tokens=True), rule)


# -- batched greedy generation ---------------------------------------------------------------------


def _forward(model, cache_name: str | None, cache, **inputs):
    kwargs = {cache_name: cache} if cache_name else {}
    try:
        out = model(**inputs, **kwargs, use_cache=True, logits_to_keep=1)
    except TypeError:  # a model without logits_to_keep: all positions' logits
        out = model(**inputs, **kwargs, use_cache=True)
    return out.logits[:, -1], (getattr(out, cache_name, None) if cache_name else None)


@torch.no_grad()
def _generate_batch(model, prompts, bounds, stops, pad_id, text_stop) -> list[list[int]]:
    device = model_device(model)
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):  # left padding: every row's last prompt token is at the end
        ids[b, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[b, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    # Real tokens keep the positions they have unpadded (what generate() computes, too).
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache_name = cache_kwarg(model)
    logits, cache = _forward(
        model, cache_name, None, input_ids=ids, attention_mask=mask, position_ids=positions
    )
    next_pos = positions[:, -1:] + 1
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    rows = list(range(len(prompts)))  # prompt index of each row still in the batch
    for _ in range(max(bounds)):
        tokens = logits.argmax(-1)
        for b, token in zip(rows, tokens.tolist(), strict=True):
            if done[b]:  # kept in the batch only by a cache that cannot drop rows
                continue
            if token in stops:
                done[b] = True
                continue
            out[b].append(token)
            done[b] = len(out[b]) >= bounds[b] or (text_stop is not None and text_stop.ended(out[b]))
        keep = [i for i, b in enumerate(rows) if not done[b]]
        if not keep:  # every row has stopped: no step more, whatever the budget
            break
        if len(keep) < len(rows) and (cache is None or hasattr(cache, "batch_select_indices")):
            # Finished rows leave the batch: later steps cost only what is still generating.
            index = torch.tensor(keep, device=device)
            rows = [rows[i] for i in keep]
            tokens, mask, next_pos = tokens[index], mask[index], next_pos[index]
            ids, positions = ids[index], positions[index]
            if cache is not None:
                cache.batch_select_indices(index)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        step = tokens.unsqueeze(1)
        if cache_name is None:  # no KV cache: feed the whole sequence again
            ids = torch.cat([ids, step], dim=1)
            positions = torch.cat([positions, next_pos], dim=1)
            logits, _ = _forward(
                model, None, None, input_ids=ids, attention_mask=mask, position_ids=positions
            )
        else:
            logits, cache = _forward(
                model, cache_name, cache, input_ids=step, attention_mask=mask, position_ids=next_pos
            )
        next_pos = next_pos + 1
    return out


def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: Sequence[int],
    stop_ids: Collection[int],
    pad_id: int,
    batch_size: int = 32,
    text_stop: TextStop | None = None,
) -> list[list[int]]:
    """Greedy continuations of token-id `prompts`, batched; returns the generated ids per prompt.

    Stop tokens are not included; a row also stops after `max_new_tokens[i]` tokens and, with
    `text_stop`, after the token whose text completes a stop ("." or newline; that token is kept).
    Prompts are sorted by length into batches of `batch_size`, left-padded, with a KV cache.
    """
    if len(prompts) != len(max_new_tokens):
        raise ValueError("prompts and max_new_tokens must have the same length")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    stops = set(stop_ids)
    order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), max_new_tokens[i]))
    result: list[list[int]] = [[] for _ in prompts]
    with eval_mode(model):
        for lo in range(0, len(order), batch_size):
            rows = order[lo : lo + batch_size]
            bounds = [max_new_tokens[i] for i in rows]
            if max(bounds) < 1:
                continue
            got = _generate_batch(
                model, [list(prompts[i]) for i in rows], bounds, stops, pad_id, text_stop
            )
            for i, ids in zip(rows, got, strict=True):
                result[i] = ids
    return result


# -- the evaluator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    record: int
    metric: str
    kind: str
    prompt: str
    target: str
    prompt_ids: tuple[int, ...]
    max_new_tokens: int


@dataclass(frozen=True)
class GenerationReference:
    """The base model's answers to every locality item of one evaluator."""

    answers: tuple[str, ...]
    signature: str


@dataclass
class GenerationMetrics(RowMetrics):
    """Generation-based edit metrics in percent; None where not applicable."""

    NAMES: ClassVar[tuple[str, ...]] = GENERATION_METRICS

    edit_succ: float | None
    generalization: float | None
    portability: float | None
    locality: float | None
    by_kind: dict[str, float] = field(default_factory=dict)  # "portability.Reasoning": mean, ...
    per_record: list[dict] = field(default_factory=list)


class GenerationEvaluator:
    """Generation metrics on a fixed list of records; build once, call `evaluate` per model."""

    def __init__(
        self,
        tokenizer,
        records: list[EditRecord],
        prompt_format: PromptFormat = "plain",
        batch_size: int = 32,
        match: MatchMode = "equals",
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        extra_new_tokens: int | None = None,
        stop: StopRule = "wild",
    ):
        """Every item may generate `max_new_tokens` (cut at its stop); with `extra_new_tokens`
        (the pre-WILD bound) at most its answer's token count + that."""
        check_evaluator_inputs(records, batch_size)
        if match not in MATCH_MODES:
            raise UserError(f"match must be one of {', '.join(MATCH_MODES)}, got {match!r}")
        if stop not in STOP_RULES:
            raise UserError(f"stop must be one of {', '.join(STOP_RULES)}, got {stop!r}")
        if max_new_tokens < 1:
            raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if extra_new_tokens is not None and extra_new_tokens < 0:
            raise UserError(f"extra_new_tokens must be >= 0, got {extra_new_tokens}")
        self.tokenizer = tokenizer
        self.records = list(records)
        self.prompt_format = prompt_format
        self.batch_size = batch_size
        self.match = match
        self.stop = stop
        self.max_new_tokens = max_new_tokens
        self.extra_new_tokens = extra_new_tokens
        self.items = [it for i, r in enumerate(self.records) for it in self._encode(i, r)]
        self._loc = [it for it in self.items if it.metric == "locality"]
        self._acc = [it for it in self.items if it.metric != "locality"]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.text_stop = TextStop(tokenizer, stop)
        digest = hashlib.sha1(f"{prompt_format}:{stop}".encode())
        for it in self._loc:
            digest.update(repr((it.prompt_ids, it.max_new_tokens)).encode())
        self.locality_signature = digest.hexdigest()

    def rules(self) -> dict:
        """The match, stop and budget rules that produce this evaluator's scores (recorded with them)."""
        return generation_rules(self.match, self.stop, self.max_new_tokens, self.extra_new_tokens)

    def _encode(self, index: int, record: EditRecord):
        for metric in ("edit_succ", "generalization", "portability", "locality"):
            for prompt, target, kind, where in record_items(record, metric):
                ex = encode_item(self.tokenizer, record, index, prompt, target, where, self.prompt_format)
                budget = self.max_new_tokens
                if self.extra_new_tokens is not None:
                    budget = min(budget, len(ex.answer_ids) + self.extra_new_tokens)
                yield _Item(index, metric, kind, prompt, target, tuple(ex.input_ids[: ex.answer_start]), budget)

    def generate(self, model, items: Sequence[_Item]) -> list[str]:
        """The answers `model` generates for `items` (see the module doc)."""
        ids = greedy_generate(
            model,
            [it.prompt_ids for it in items],
            [it.max_new_tokens for it in items],
            stop_token_ids(self.tokenizer, model),
            self.pad_id,
            self.batch_size,
            self.text_stop,
        )
        return [answer_text(self.tokenizer, x, self.stop) for x in ids]

    def base_generations(self, model) -> GenerationReference:
        """The base model's answers to every locality item; compute once per sweep."""
        return GenerationReference(tuple(self.generate(model, self._loc)), self.locality_signature)

    def evaluate(self, model, reference: GenerationReference | None,
                 records: Collection[int] | None = None) -> GenerationMetrics:
        """Generate every answer with `model` and score it; locality needs the base's `reference`.
        `records` (indices into the evaluator's records; None: all): generate the accuracy items of
        these records only; the others' rows hold locality alone, which is scored on every record."""
        acc = self._acc
        if records is not None:
            keep = set(record_subset(records, len(self.records)))
            acc = [it for it in acc if it.record in keep]
        items = acc + (self._loc if reference is not None else [])
        if reference is not None and (
            reference.signature != self.locality_signature
            or len(reference.answers) != len(self._loc)
        ):
            raise ValueError(
                "the generation reference was computed by a different GenerationEvaluator (other "
                "records, tokenizer, prompt format or bound); call base_generations(base_model) on it"
            )
        answers = self.generate(model, items)
        base = dict(zip(map(id, self._loc), reference.answers, strict=True)) if reference else {}
        rows = [
            empty_row(i, r, GENERATION_METRICS, match=self.match, stop=self.stop)
            for i, r in enumerate(self.records)
        ]
        for it, answer in zip(items, answers, strict=True):
            entry = {"kind": it.kind, "prompt": it.prompt, "target": it.target, "generated": answer}
            if it.metric == "locality":
                entry["base_generated"] = base[id(it)]
                hit = normalize_answer(answer) == normalize_answer(base[id(it)])
            else:
                hit = answer_matches(answer, it.target, self.match)
            entry["score"] = 100.0 if hit else 0.0
            rows[it.record]["items"][it.metric].append(entry)
        score_rows(rows)
        return GenerationMetrics.from_rows(rows)
