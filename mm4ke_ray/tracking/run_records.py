"""A trial's outcome in MLflow's shape: one row per candidate, and the params/metrics/tags of its run.

The Tune callback (search/callback.py) decides *when* a trial is recorded; this module decides
*what* each candidate or failure run holds, with the names of `schema`.
"""

from __future__ import annotations

import re

from mm4ke_ray.schema import (
    DENSITY,
    LAYER,
    LR,
    PRUNED,
    RSFT_PARAMS,
    SEARCH_PARAMS,
    THRESHOLD,
    Tag,
    delta_artifact_path,
)
from mm4ke_ray.tracking.system_samples import SYSTEM_METRICS, TRIAL_END_MS, TRIAL_START_MS

# Tune's experiment tag of a trial starts with the number it gave the trial: "3_alpha=0.44,...".
_TRIAL_NUMBER = re.compile(r"^(\d+)(?:_|$)")


def trial_label(trial_id: str, experiment_tag: str = "") -> str:
    """A trial as people read it in the MLflow UI: "t03" for the trial Tune numbered 3; its id
    when Tune gave it no number."""
    match = _TRIAL_NUMBER.match(experiment_tag or "")
    return f"t{int(match[1]):02d}" if match else trial_id


def candidate_run_name(label: str, index: int, alpha: float, sparsity: float) -> str:
    """A candidate run's display name, e.g. "α.30 s.57 t03c2": what tells a trial's candidates
    apart comes first, within the ~10 characters MLflow's runs table shows before "…" (the run
    sits under its trial's run); its id is the `mm4ke.candidate` tag."""
    return f"{merge_label(alpha, sparsity)} {label}c{index}"


def merge_label(alpha: float, sparsity: float) -> str:
    """"α.30 s.57": a merge's two numbers in the fewest characters."""
    return f"α{_short(alpha)} s{_short(sparsity)}"


def _short(fraction: float) -> str:
    """0.3 → ".30", 1.0 → "1.00": two decimals without the leading zero."""
    text = f"{fraction:.2f}"
    return text[1:] if text.startswith("0.") else text


def trial_run_name(label: str, params: dict) -> str:
    """An R-SFT trial run's display name, e.g. "t03 L1 lr3.2e-04 τ0.10" (layer, learning rate, τ)."""
    parts = [label]
    if params.get(LAYER) is not None:
        parts.append(f"L{params[LAYER]}")
    if isinstance(params.get(LR), int | float):
        parts.append(f"lr{params[LR]:.1e}")
    if isinstance(params.get(THRESHOLD), int | float):
        parts.append(f"τ{params[THRESHOLD]:.2f}")
    return " ".join(parts)


def trial_run(trial_id: str, label: str, params: dict, result: dict | None = None) -> dict:
    """What the tracker needs to group a trial's runs under one run: its id, name and R-SFT params;
    from the trial's `result`, when it ran (the run's start and end) and its system metrics."""
    rsft = {k: params[k] for k in RSFT_PARAMS if params.get(k) is not None}
    out = {"trial_id": trial_id, "name": trial_run_name(label, rsft), "params": rsft}
    for key in (TRIAL_START_MS, TRIAL_END_MS, SYSTEM_METRICS):
        if (result or {}).get(key):
            out[key] = result[key]
    return out


def failure_run_name(label: str, what: str) -> str:
    """A failed attempt's display name, e.g. "t03 diverged", "t03 attempt1 failed"."""
    return f"{label} {what}"


def candidate_rows(result: dict, trial_id: str, label: str | None = None, key: str = "candidates") -> list[dict]:
    """Flat rows (params + metrics + kind) for every candidate in a trial's final result;
    `label` names the trial in run names (`trial_label`; default its id). A candidate's id
    counts its place among all the trial's candidates (`index`; successive halving reports only
    the full-fidelity ones under `candidates`, the pruned ones under `key=PRUNED_CANDIDATES`)."""
    rows = []
    params = result.get("params", {})
    for i, cand in enumerate(result.get(key) or []):
        i = cand.get("index", i)
        row = {k: params.get(k) for k in RSFT_PARAMS}
        row.update(alpha=cand["alpha"], sparsity=cand["sparsity"], density=round(1 - cand["sparsity"], 6))
        # `candidate` is the stable id (pareto, export --pick, resume); `run_name` only what the UI shows.
        row.update(trial_id=trial_id, candidate=f"{trial_id}-c{i}", kind=cand["kind"],
                   run_name=candidate_run_name(label or trial_id, i, cand["alpha"], cand["sparsity"]))
        row.update({k: result.get(k) for k in ("rsft_updates", "rsft_seconds")})
        row.update(cand["metrics"])
        rows.append(row)
    return rows


def candidate_run(row: dict, trial_id: str) -> tuple[dict, dict, dict]:
    """(params, metrics, tags) of a candidate's MLflow run."""
    params = {k: row[k] for k in (*SEARCH_PARAMS, DENSITY)}
    metrics = {k: v for k, v in row.items()
               if k not in params and isinstance(v, int | float) and not isinstance(v, bool)}
    tags = {Tag.TRIAL_ID: trial_id, Tag.KIND: row["kind"], Tag.STATUS: "ok",
            Tag.DELTA_ARTIFACT: delta_artifact_path(trial_id)}
    return params, metrics, tags


def pruned_run(row: dict, trial_id: str) -> tuple[dict, dict, dict]:
    """(params, metrics, tags) of a candidate that successive halving stopped below the full
    rung: its `rung{r}.*` metrics, status `pruned` (no candidate row: not on the front, not
    picked, not exported) and the rung it reached."""
    params, metrics, tags = candidate_run(row, trial_id)
    tags[Tag.STATUS] = PRUNED
    tags[Tag.REASON] = (f"successive halving: dominated beyond doubt at rung {metrics.get('fidelity.rung')}; "
                        "not evaluated in full")
    return params, metrics, tags


def searched_params(config: dict) -> dict:
    """The searched parameters among a trial's config or result params (for a failure's run)."""
    return {k: v for k, v in config.items() if k in SEARCH_PARAMS}


def failure_tags(trial_id: str, status: str, reason: str, attempt: int | None = None,
                 retried: bool = False) -> dict:
    tags = {Tag.TRIAL_ID: trial_id, Tag.STATUS: status}
    if attempt is not None:
        tags[Tag.ATTEMPT] = attempt
    if retried:
        tags[Tag.RETRIED] = "true"
    tags[Tag.REASON] = reason
    return tags
