"""Reuse across rungs: a promoted candidate scores only the items its next rung adds.

Rungs are nested (`rung_plan.nested_subsets`): rung r's records and documents hold those of every
rung below it. A lower rung's evaluation returns, beside its metrics, what it scored item by item
(`REUSE`, not a metric: the edit metrics' per-record rows, and per lm-eval task each document's
value and chance share). The candidate's next rung gets it back (`prior`), scores only the new
items, and joins the two into the rows and task results that scoring the whole rung at once gives
(`join_rows`, `join_general`), so its metrics, the full rung's too, are the same numbers
(tests/test_rung_reuse.py). The rung then reports how many of its items were read back
(`REUSED_RECORDS`, `REUSED_DOCS`): evaluation compute counts only the scored ones (`scored_items`).

Where a lower rung already scored every document of every task (`rung_plan`: tasks with fewer
documents than the sign test needs), the next rung adds records only: its general result is the
lower rung's, read back whole (`general_whole`; any task, a perplexity too), and only the new
records are scored.

Not reused (the rung is scored whole, as before): an lm-eval group among the general outputs (its
score is lm-eval's own combination of its tasks), a task without a mean of per-document values
(halving refuses those anyway), or a rung that adds no record, or no document of some task while
adding documents of another.
Pure Python (lm-eval's `mean` is imported where a task's score is recomputed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict

from mm4ke_ray.evaluate.fidelity import EVAL_DOCS, EVAL_RECORDS
from mm4ke_ray.evaluate.general import GeneralResult
from mm4ke_ray.evaluate.task_stats import chance_floor, sample_stderr

# Recorded with every halving sweep (the parent run's param `fidelity_reuse`).
REUSE_RULE = "a promoted candidate scores only the items its next rung adds; lm-eval groups are scored whole"
REUSE = "rung_reuse"  # a lower rung's per-item results for the next rung: not a metric, never logged
REUSED_RECORDS = "reused_records"  # of the rung's records, those read back from the rung below
REUSED_DOCS = "reused_docs"  # of its lm-eval documents, likewise


def scored_items(metrics: Mapping) -> tuple[int, int]:
    """(records, documents) an evaluation actually scored: its rung's items less those reused."""
    return (int(metrics.get(EVAL_RECORDS, 0)) - int(metrics.get(REUSED_RECORDS, 0)),
            int(metrics.get(EVAL_DOCS, 0)) - int(metrics.get(REUSED_DOCS, 0)))


def slim_row(row: Mapping) -> dict:
    """What joining needs of a per-record row: its metric values and items' kinds and scores
    (prompts, targets and generated texts stay behind: they would only fill the payload)."""
    out = {k: v for k, v in row.items() if k not in ("items", "source", "prompt", "target_new", "fluency_text")}
    out["items"] = {m: [{"kind": it["kind"], "score": it["score"]} for it in items]
                    for m, items in row["items"].items()}
    return out


def general_payload(result: GeneralResult | None) -> dict | None:
    """Per output key its per-document values and chance shares, or None where the result cannot
    be joined with another (a group, a task without per-document means, a perplexity)."""
    if result is None or result.doc_weights or set(result.scores) != set(result.per_doc):
        return None
    return {key: {"values": list(result.per_doc[key]), "chance": result.doc_chance.get(key)}
            for key in result.scores}


def payload(rung: int, rows: Mapping[str, list[dict]], general: GeneralResult | None, has_tasks: bool,
            every_doc: bool = False) -> dict:
    """A lower rung's `REUSE` entry: the rung, per metric family its rows, its tasks' items, and
    with `every_doc` (the rung scored every document of every task) its whole general result."""
    whole = asdict(general) if has_tasks and every_doc and general is not None else None
    return {"rung": rung, "rows": {mode: [slim_row(r) for r in rs] for mode, rs in rows.items()},
            "general": general_payload(general) if has_tasks else None, "has_tasks": has_tasks,
            "general_whole": whole}


def whole_general(prior: Mapping) -> GeneralResult:
    """The general result a lower rung that scored every document kept (`payload(every_doc=True)`)."""
    return GeneralResult(**prior["general_whole"])


def can_join(prior: Mapping | None, new_records: Sequence[int], new_docs: Mapping[str, Sequence[int]]) -> bool:
    """Whether `prior` can be joined with a scoring of the new items only: it holds every task's
    items (when there are tasks) and the rung adds at least one record and one document per task;
    or it scored every document already (`general_whole`) and the rung adds records only."""
    if not prior or not new_records:
        return False
    if prior.get("has_tasks"):
        if prior.get("general_whole") is not None and not any(new_docs.values()):
            return True
        return prior.get("general") is not None and all(new_docs.get(t) for t in prior["general"]) \
            and set(prior["general"]) == set(new_docs)
    return True


def join_rows(old: Sequence[dict], old_ids: Sequence[int], new: Sequence[dict], new_ids: Sequence[int]) -> list[dict]:
    """Rows of two disjoint record subsets as one, in record order; `index` counts the joined
    rows (as in a scoring of the whole subset)."""
    if len(old) != len(old_ids) or len(new) != len(new_ids):
        raise ValueError(f"rows and ids differ in length: {len(old)}/{len(old_ids)}, {len(new)}/{len(new_ids)}")
    by_id = {**dict(zip(old_ids, old, strict=True)), **dict(zip(new_ids, new, strict=True))}
    if len(by_id) != len(old_ids) + len(new_ids):
        raise ValueError("the record subsets to join overlap")
    return [{**by_id[i], "index": k} for k, i in enumerate(sorted(by_id))]


def join_general(old: Mapping[str, dict], old_docs: Mapping[str, Sequence[int]], new: GeneralResult,
                 new_docs: Mapping[str, Sequence[int]]) -> GeneralResult:
    """The `GeneralResult` of two disjoint document subsets per task, as one lm-eval call on their
    union gives it: per task the values in document order, its score lm-eval's mean of them,
    their standard error and chance floor recomputed as `task_stats.leaf_stats` does."""
    from lm_eval.api.metrics import mean

    scores, stderr, chance, n_docs, per_doc, doc_chance = {}, {}, {}, {}, {}, {}
    for key in new.scores:
        pairs = sorted([*zip(old_docs[key], old[key]["values"], strict=True),
                        *zip(new_docs[key], new.per_doc[key], strict=True)])
        values = [v for _, v in pairs]
        if len({d for d, _ in pairs}) != len(pairs):
            raise ValueError(f"{key}: the document subsets to join overlap")
        scores[key], stderr[key], n_docs[key], per_doc[key] = mean(values), sample_stderr(values), len(values), values
        chance[key] = new.chance.get(key)
        if old[key].get("chance") is not None and key in new.doc_chance:
            shares = sorted([*zip(old_docs[key], old[key]["chance"], strict=True),
                             *zip(new_docs[key], new.doc_chance[key], strict=True)])
            doc_chance[key] = [c for _, c in shares]
            chance[key] = chance_floor(doc_chance[key])
    return GeneralResult(scores, stderr, chance, n_docs, dict(new.metrics), dict(new.higher_is_better),
                         dict(new.settings), per_doc, {}, dict(new.scale), doc_chance)
