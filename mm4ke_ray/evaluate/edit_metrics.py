"""Edit metrics with EasyEdit/KnowEdit definitions, batched, for one resident model evaluated
many times (a sweep scores hundreds of merge candidates on one model).

Per record (all teacher-forced token accuracies, see `accuracy.py`):
- Edit Succ.      acc(prompt, target_new)
- Generalization  mean over its rephrase prompts of acc(rephrase, target_new)
- Portability     mean over its portability items of acc(item.prompt, item.answer)
- Locality        mean over its locality items of the fraction of answer positions where the
                  model's argmax equals the *base* model's argmax ("unchanged", not "correct")
- Fluency         n-gram entropy of a top-k sampled generation from the prompt (x 100)
A record's portability and locality are the mean of its per-kind means (`metric_rows.record_score`:
each kind's items averaged first, so a kind with many items weighs as much as one with few), as
KnowEdit's runner computes them (issue 23: pooling every item instead moved WikiData_recent by 2.7
points of portability and 4.1 of locality). Each metric is then the mean over the records that have
it (records without rephrases, portability or locality items are left out of that metric), in
percent (fluency x 100). `definitions.AGGREGATION` states this rule; runs record it.

Per-kind means (`metric_rows.kind_means`, EasyEdit's summary): for each portability/locality kind
of the data (Reasoning, Subject_Aliasing, Logical_Generalization, Relation_Specificity,
Forgetfulness, ...), per record the mean over its items of that kind, then the mean over the
records that have the kind; flat names `portability.<kind>` / `locality.<kind>` in
`EditMetrics.by_kind`.

All prompts are encoded and padded once, in `__init__`; `evaluate` only runs forward passes.
Every forward pass goes through `EditEvaluator._predict(model, batch)`.

`evaluate(..., records=ids)` scores the accuracy items (and fluency) of those records only and
locality of every record, e.g. a stream's edits made so far. The subset's accuracy prompts are
padded into their own batches on first use (the last subset's are kept); a scored record's values
are those of a full evaluation (argmax of right-padded rows, see `accuracy.py`).

Opt-in prefix cache (`prefix_cache=True`): `evaluate(model, ..., first_layer=L)` declares that
`model` differs from the model seen before only in blocks >= L (a merge candidate of a delta on
block L, applied in place). The hidden states entering block L are then the same for every such
candidate; they are captured once per (L, batch) and only blocks >= L run. Metrics are identical
to the uncached path's (a test checks this); the locality reference is always computed in full.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.accuracy import (
    PaddedBatch,
    PrefixCache,
    build_batches,
    model_device,
    predict_answer_tokens,
)
from mm4ke_ray.evaluate.fluency import generate_for_fluency, ngram_entropy
from mm4ke_ray.evaluate.metric_rows import ITEM_METRICS, RowMetrics, empty_row, score_rows
from mm4ke_ray.modeling import EncodedExample, encode_example
from mm4ke_ray.modeling.encoding import PromptFormat
from mm4ke_ray.modeling.modes import eval_mode

METRICS = (*ITEM_METRICS, "fluency")


@dataclass(frozen=True)
class _Probe:
    """One teacher-forced item: which record and metric it serves, and its answer tokens' span."""

    record: int
    metric: str  # "edit_succ" | "generalization" | "portability" | "locality"
    kind: str  # portability/locality kind from the data, e.g. "Reasoning"
    first: int  # first answer token in the flat numbering of its probe group
    count: int


@dataclass(frozen=True)
class _ProbeGroup:
    """Padded batches of some items, their probes and the answer tokens they are checked against."""

    name: str  # batch keys are "<name>:<i>" (the prefix cache's keys)
    batches: list[PaddedBatch]
    probes: list[_Probe]
    labels: torch.Tensor  # every probe's answer tokens, probe after probe


@dataclass(frozen=True)
class LocalityReference:
    """The base model's argmax at every locality answer position of one evaluator's records."""

    predictions: torch.Tensor  # (n locality answer tokens,) long, on CPU
    signature: str  # fingerprint of the evaluator's locality encodings it belongs to


@dataclass
class EditMetrics(RowMetrics):
    """Edit metrics in percent (fluency: n-gram entropy x 100); None where not applicable."""

    NAMES: ClassVar[tuple[str, ...]] = METRICS

    edit_succ: float | None
    generalization: float | None
    portability: float | None
    locality: float | None
    fluency: float | None
    per_record: list[dict] = field(default_factory=list)
    by_kind: dict[str, float] = field(default_factory=dict)  # "portability.Reasoning": mean, ...


def record_items(record: EditRecord, metric: str):
    """(prompt, answer, kind, field name for errors) of one record for one edit metric."""
    if metric == "edit_succ":
        yield record.prompt, record.target_new, "", "prompt/target_new"
    elif metric == "generalization":
        for j, rephrase in enumerate(record.rephrase_prompts):
            yield rephrase, record.target_new, "", f"rephrase_prompts[{j}]"
    else:
        for j, qa in enumerate(getattr(record, metric)):
            yield qa.prompt, qa.answer, qa.kind, f"{metric}[{j}]"


def encode_item(tokenizer, record: EditRecord, index: int, prompt: str, answer: str, where: str,
                prompt_format) -> EncodedExample:
    """`encode_example`, with an error naming the record and field it came from."""
    try:
        return encode_example(tokenizer, prompt, answer, prompt_format)
    except ValueError as exc:
        source = record.source or f"record {index}"
        raise UserError(f"{source}: field '{where}': {exc}; fix or drop the record (skip_invalid)") from exc


def check_evaluator_inputs(records: Sequence[EditRecord], batch_size: int) -> None:
    """UserError unless there are records to evaluate and batches hold at least one."""
    if not records:
        raise UserError("no edit records to evaluate: the data set is empty (check the file and --limit)")
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")


def record_subset(records: Collection[int], n_records: int) -> tuple[int, ...]:
    """`records` (indices into an evaluator's `n_records` records) sorted, without repeats;
    ValueError naming the valid range if one is outside it."""
    ids = tuple(sorted(set(records)))
    if ids and (ids[0] < 0 or ids[-1] >= n_records):
        raise ValueError(f"records must be indices 0..{n_records - 1}, got {list(ids)}")
    return ids


class EditEvaluator:
    """Scores models on a fixed list of edit records; build once, call `evaluate` per model."""

    def __init__(
        self,
        tokenizer,
        records: list[EditRecord],
        prompt_format: PromptFormat = "plain",
        batch_size: int = 32,
        prefix_cache: bool = False,
        prefix_cache_bytes: int = 2 << 30,
        record_ids: Sequence[int] | None = None,
    ):
        """`prefix_cache` keeps up to `prefix_cache_bytes` of hidden states (see the module doc).
        `record_ids`: each record's index in the whole edit set (default 0..n-1), which seeds its
        fluency sample, so a record samples the same text in every subset it is scored in."""
        check_evaluator_inputs(records, batch_size)
        self.tokenizer = tokenizer
        self.records = list(records)
        self.record_ids = list(range(len(self.records)) if record_ids is None else record_ids)
        if len(self.record_ids) != len(self.records):
            raise ValueError(f"{len(self.record_ids)} record_ids for {len(self.records)} records")
        self.prompt_format = prompt_format
        self.batch_size = batch_size
        self._acc_examples, self._acc_probes = self._encode(
            ("edit_succ", "generalization", "portability")
        )
        loc_examples, self._loc_probes = self._encode(("locality",))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._accuracy = self._group("accuracy", self._acc_examples, self._acc_probes)
        self._locality = self._group("locality", loc_examples, self._loc_probes)
        self._subset: tuple[tuple[int, ...], _ProbeGroup] | None = None  # the last `records` subset's
        self.accuracy_batches = self._accuracy.batches
        self.locality_batches = self._locality.batches
        digest = hashlib.sha1(prompt_format.encode())
        for ex in loc_examples:
            digest.update(repr((ex.input_ids, ex.answer_start)).encode())
        self.locality_signature = digest.hexdigest()
        self._on_device: dict[tuple[str, str], list[PaddedBatch]] = {}
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache else None
        self._first_layer: int | None = None  # set for the duration of one evaluate() call

    # -- construction -------------------------------------------------------------------------

    def _encode(self, metrics: tuple[str, ...]) -> tuple[list[EncodedExample], list[_Probe]]:
        examples, probes, first = [], [], 0
        for i, record in enumerate(self.records):
            for metric in metrics:
                for prompt, answer, kind, where in record_items(record, metric):
                    ex = encode_item(self.tokenizer, record, i, prompt, answer, where, self.prompt_format)
                    examples.append(ex)
                    probes.append(_Probe(i, metric, kind, first, len(ex.answer_ids)))
                    first += len(ex.answer_ids)
        return examples, probes

    def _group(self, name: str, examples: list[EncodedExample], probes: list[_Probe]) -> _ProbeGroup:
        labels = torch.tensor([t for ex in examples for t in ex.answer_ids], dtype=torch.long)
        return _ProbeGroup(name, build_batches(examples, self.batch_size, self.pad_id, name), probes, labels)

    def _accuracy_group(self, records: Collection[int] | None) -> _ProbeGroup:
        """The accuracy items of `records` (None: of every record), batched on first use."""
        if records is None:
            return self._accuracy
        ids = record_subset(records, len(self.records))
        if len(ids) == len(self.records):  # every record: the batches built in __init__
            return self._accuracy
        if self._subset is None or self._subset[0] != ids:
            if self._subset is not None:  # only the last subset's batches (and hidden states) are kept
                old = self._subset[1].name
                self._on_device = {k: v for k, v in self._on_device.items() if k[0] != old}
                if self.prefix_cache is not None:
                    self.prefix_cache.drop(old)
            keep = set(ids)
            picked = [i for i, p in enumerate(self._acc_probes) if p.record in keep]
            # Named by the subset, so the prefix cache never mixes up two subsets' batches.
            name = f"accuracy[{hashlib.sha1(repr(ids).encode()).hexdigest()[:12]}]"
            group = self._group(name, [self._acc_examples[i] for i in picked], [self._acc_probes[i] for i in picked])
            self._subset = (ids, group)
        return self._subset[1]

    # -- forward passes -----------------------------------------------------------------------

    def _predict(self, model, batch: PaddedBatch) -> torch.Tensor:
        """Argmax ids at `batch`'s answer positions, in `batch.labels` order: the one forward point."""
        layer = self._first_layer
        if self.prefix_cache is None or not layer:  # None or 0: nothing below to skip
            return predict_answer_tokens(model, batch)
        hidden = self.prefix_cache.hidden(model, layer, batch)
        return predict_answer_tokens(model, batch, prefix=(layer, hidden))

    def _batches(self, group: _ProbeGroup, device: torch.device) -> list[PaddedBatch]:
        key = (group.name, str(device))
        if key not in self._on_device:  # copy once per device, not once per candidate
            self._on_device[key] = [b.to(device) for b in group.batches]
        return self._on_device[key]

    def _predictions(self, model, group: _ProbeGroup) -> torch.Tensor:
        """Argmax ids at every answer position of one probe group, in flat numbering, on CPU."""
        device = model_device(model)
        flat = torch.empty(len(group.labels), dtype=torch.long, device=device)
        for batch in self._batches(group, device):
            flat[batch.token_index] = self._predict(model, batch)
        return flat.cpu()

    @staticmethod
    def _per_probe(hits: torch.Tensor, probes: list[_Probe]) -> list[float]:
        """Mean of `hits` (one bool per answer token) over each probe's span."""
        if not probes:
            return []
        owner = torch.repeat_interleave(
            torch.arange(len(probes)), torch.tensor([p.count for p in probes])
        )
        sums = torch.zeros(len(probes), dtype=torch.float64).index_add_(
            0, owner, hits.to(torch.float64)
        )
        counts = torch.tensor([p.count for p in probes], dtype=torch.float64)
        return (sums / counts).tolist()

    # -- public API ---------------------------------------------------------------------------

    def base_predictions(self, model) -> LocalityReference:
        """The base model's argmax on every locality item; compute once per sweep."""
        with eval_mode(model):
            preds = self._predictions(model, self._locality)
        return LocalityReference(predictions=preds, signature=self.locality_signature)

    def evaluate(
        self,
        model,
        reference: LocalityReference | None,
        fluency: bool = False,
        fluency_seed: int = 0,
        first_layer: int | None = None,
        records: Collection[int] | None = None,
    ) -> EditMetrics:
        """Score `model` on every record; locality needs the base model's `reference`.

        Fluency (optional, slow: 100-token sampled generations) samples record i's generation
        with seed `fluency_seed + i`, so a repeated call gives the same texts.
        `first_layer=L` (with `prefix_cache=True`): the caller vouches that blocks below L are
        the same as in every earlier call with this model, so their outputs are reused.
        `records` (indices into the evaluator's records; None: all): score the accuracy items and
        fluency of these records only; the others' rows hold locality alone. Locality is always
        scored on every record.
        """
        if first_layer is not None and first_layer < 0:
            raise ValueError(f"first_layer must be >= 0 (a block index), got {first_layer}")
        group = self._accuracy_group(records)
        self._first_layer = first_layer
        try:
            with eval_mode(model):
                return self._evaluate(model, reference, fluency, fluency_seed, group, records)
        finally:
            self._first_layer = None

    def _evaluate(self, model, reference, fluency: bool, fluency_seed: int, group: _ProbeGroup,
                  records: Collection[int] | None) -> EditMetrics:
        acc = self._per_probe(self._predictions(model, group) == group.labels, group.probes)
        rows = [empty_row(i, r, METRICS) for i, r in enumerate(self.records)]
        for probe, value in zip(group.probes, acc, strict=True):
            rows[probe.record]["items"][probe.metric].append(
                {"kind": probe.kind, "score": 100.0 * value}
            )
        if reference is not None:
            self._check_reference(reference)
            loc_preds = self._predictions(model, self._locality)
            agree = self._per_probe(loc_preds == reference.predictions, self._loc_probes)
            for probe, value in zip(self._loc_probes, agree, strict=True):
                rows[probe.record]["items"]["locality"].append(
                    {"kind": probe.kind, "score": 100.0 * value}
                )
        score_rows(rows)
        if fluency:
            scored = None if records is None else set(records)
            for i, (row, record) in enumerate(zip(rows, self.records, strict=True)):
                if scored is not None and i not in scored:
                    continue
                text = generate_for_fluency(
                    model,
                    self.tokenizer,
                    record.prompt,
                    fluency_seed + self.record_ids[i],
                    prompt_format=self.prompt_format,
                )
                row["fluency"], row["fluency_text"] = 100.0 * ngram_entropy(text), text
        return EditMetrics.from_rows(rows)

    def _check_reference(self, reference: LocalityReference) -> None:
        if (
            reference.signature != self.locality_signature
            or reference.predictions.numel() != len(self._locality.labels)
        ):
            raise ValueError(
                "the locality reference was computed by a different EditEvaluator (other records, "
                "tokenizer or prompt format); call base_predictions(base_model) on this evaluator"
            )
