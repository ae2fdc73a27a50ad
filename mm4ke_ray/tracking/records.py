"""A trial's outcome in MLflow's shape: one row per candidate, and the params/metrics/tags of its run.

The Tune callback (search/callback.py) decides *when* a trial is recorded; this module decides
*what* each candidate or failure run holds, with the names of `schema`.
"""

from __future__ import annotations

from mm4ke_ray.schema import DENSITY, RSFT_PARAMS, SEARCH_PARAMS, Tag, delta_artifact_path


def candidate_rows(result: dict, trial_id: str) -> list[dict]:
    """Flat rows (params + metrics + kind) for every candidate in a trial's final result."""
    rows = []
    params = result.get("params", {})
    for i, cand in enumerate(result.get("candidates") or []):
        row = {k: params.get(k) for k in RSFT_PARAMS}
        row.update(alpha=cand["alpha"], sparsity=cand["sparsity"], density=round(1 - cand["sparsity"], 6))
        row.update(trial_id=trial_id, candidate=f"{trial_id}-c{i}", kind=cand["kind"])
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
