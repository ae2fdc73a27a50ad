"""`--warm-start TRACKING_URI:SWEEP`: an earlier sweep's candidates, read back from MLflow.

Read and checked before any Ray work (`load_warm_source`): the store must answer, the sweep
exist and carry a fingerprint (`mm4ke.fingerprint`, written when a sweep starts), and that
fingerprint must equal the new sweep's; otherwise a `UserError` (exit 2) says which and why,
naming every field that differs.

Once the new sweep's parent run is open, each earlier candidate is copied into it as a candidate
run directly under the parent (`log_warm_rows`): params and metrics as they were, the kind it had,
no trial id and no delta, tagged with where it came from (`mm4ke.warm_start_*`). So the front of
the new sweep (its `pareto/` artifacts, `mm4ke-ray pareto`, a resume) holds the earlier front
from MLflow alone, each such row marked by its `warm_start` column (the earlier sweep's name).
`mm4ke-ray export` refuses such a row and names the command that exports it from the sweep whose
delta it is. The parent run's `mm4ke.warm_start` tag lists the sources and what each gave.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mm4ke_ray.errors import UserError
from mm4ke_ray.fingerprint import differences
from mm4ke_ray.schema import ALPHA, DENSITY, PARAM_COLUMNS, SEARCH_PARAMS, SPARSITY, WARM_START, Tag
from mm4ke_ray.tracking.health import health_problem
from mm4ke_ray.tracking.query import Sweep, load_sweep
from mm4ke_ray.tracking.run_records import merge_label

FORMAT_HINT = "give TRACKING_URI:SWEEP, e.g. sqlite:///runs/mlflow.db:my-sweep (SWEEP: a sweep name or its parent run id)"


@dataclass
class WarmSource:
    """One earlier sweep given to --warm-start, checked; `rows` its evaluated edited candidates."""

    spec: str
    uri: str
    sweep: Sweep
    rows: list[dict]
    told: int = 0  # points the new study was told
    skipped: int = 0  # outside the new search space (or without objective values)
    logged: list[dict] = field(default_factory=list)  # the rows as copied into the new sweep

    @property
    def name(self) -> str:
        return self.sweep.name

    def summary(self) -> dict:
        return {"uri": self.uri, "sweep": self.name, "run_id": self.sweep.run_id, "candidates": len(self.rows),
                "told": self.told, "skipped": self.skipped}


def parse_spec(spec: str) -> tuple[str, str]:
    """(tracking URI, sweep) of `TRACKING_URI:SWEEP`: split at the last ':' (URIs hold colons)."""
    uri, _, sweep = spec.rpartition(":")
    if "://" not in uri or not sweep.strip() or sweep.startswith("/"):
        raise UserError(f"--warm-start {spec!r}: {FORMAT_HINT}")
    host = uri.split("://", 1)[1].split("/", 1)[0]
    if sweep.strip().isdigit() and uri.startswith(("http://", "https://")) and ":" not in host and "/" not in sweep:
        # `http://host:5000` alone would be read as server `http://host`, sweep `5000`: the port was lost.
        raise UserError(f"--warm-start {spec!r}: {sweep} looks like the server's port, and no sweep is named; "
                        f"{FORMAT_HINT}, e.g. {spec}:my-sweep")
    return uri, sweep.strip()


def _show(value) -> str:
    return repr(value) if value is not None else "not set"


def load_warm_source(spec: str, fields: dict) -> WarmSource:
    """The sweep `spec` names, with its candidates; `UserError` when it cannot be used to warm
    start a sweep whose fingerprint fields are `fields` (`fingerprint.fingerprint_fields`)."""
    uri, name = parse_spec(spec)
    if problem := health_problem(uri):
        raise UserError(f"--warm-start {spec}: cannot reach the MLflow server at {uri} ({problem})")
    try:
        sweep = load_sweep(uri, name)
    except UserError as exc:
        raise UserError(f"--warm-start {spec}: {str(exc).removeprefix(f'--sweep {name!r}: ')}") from None
    except Exception as exc:  # noqa: BLE001 - any store failure: say which store, exit 2
        raise UserError(f"--warm-start {spec}: cannot read sweep {name!r} from {uri} "
                        f"({type(exc).__name__}: {str(exc)[:300]})") from None
    stored = sweep.tags.get(Tag.FINGERPRINT_FIELDS)
    if not stored:
        raise UserError(f"--warm-start {spec}: sweep {sweep.name!r} (run {sweep.run_id}) has no fingerprint "
                        f"({Tag.FINGERPRINT} tag): it was logged by an older mm4ke-ray, so it cannot be checked to "
                        "use the same model, edits and evaluation; run it again with this version to warm start from it")
    try:
        there = json.loads(stored)
    except ValueError:
        raise UserError(f"--warm-start {spec}: the {Tag.FINGERPRINT_FIELDS} tag of run {sweep.run_id} is not JSON") from None
    if diffs := differences(fields, there):
        shown = "; ".join(f"{k} differs: {_show(a)} here, {_show(b)} in sweep {sweep.name}" for k, a, b in diffs)
        raise UserError(f"--warm-start {spec}: {shown}. Its candidates were evaluated otherwise, so they are not "
                        "comparable with this sweep's; warm start only from a sweep with the same model, edits, "
                        "evaluation and scoring")
    return WarmSource(spec, uri, sweep, [r for r in sweep.edited if not r.get(WARM_START)])


def load_warm_sources(specs: list[str], fields: dict) -> list[WarmSource]:
    """Every --warm-start source, checked; the same sweep given twice counts once."""
    out: list[WarmSource] = []
    for spec in specs:
        source = load_warm_source(spec, fields)
        if not any(s.sweep.run_id == source.sweep.run_id and s.uri == source.uri for s in out):
            out.append(source)
    return out


def _copy(row: dict, source: WarmSource) -> tuple[str, dict, dict, dict, str]:
    """(candidate id, params, metrics, tags, run name) of an earlier candidate's copy."""
    candidate = f"warm-{source.sweep.run_id[:8]}-{row['candidate']}"
    params = {k: row[k] for k in (*SEARCH_PARAMS, DENSITY) if row.get(k) is not None}
    metrics = {k: v for k, v in row.items() if k not in PARAM_COLUMNS and isinstance(v, float)}
    tags = {Tag.KIND: row.get("kind") or "", Tag.STATUS: "ok", Tag.WARM_START_FROM: source.name,
            Tag.WARM_START_URI: source.uri, Tag.WARM_START_SWEEP_RUN_ID: source.sweep.run_id,
            Tag.WARM_START_RUN_ID: row["run_id"]}
    name = f"{merge_label(row.get(ALPHA, 0), row.get(SPARSITY, 0))} warm {source.name}"  # as candidate_run_name
    return candidate, params, metrics, tags, name


def log_warm_rows(tracker, sources: list[WarmSource]) -> list[dict]:
    """Copy every source's candidates into the new sweep (candidate runs under its parent run); the
    rows as the front reads them (`warm_start` set). `record_warm_start` tags the parent once told."""
    out = []
    for source in sources:
        for row in source.rows:
            candidate, params, metrics, tags, name = _copy(row, source)
            run_id = tracker.log_candidate(candidate, params, metrics, tags, run_name=name)
            copied = {**params, **metrics, "candidate": candidate, "kind": row.get("kind"), "trial_id": None,
                      "run_id": run_id, WARM_START: source.name}
            source.logged.append(copied)
            out.append(copied)
    return out


def record_warm_start(tracker, sources: list[WarmSource]) -> None:
    """The parent run's `mm4ke.warm_start` tag: each source and the points it gave the study."""
    if sources:
        tracker.set_sweep_tags({Tag.WARM_START: json.dumps([s.summary() for s in sources])[:8000]})


def warm_rows(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the sweep's own rows, rows copied from earlier sweeps) of rows read back from MLflow."""
    return [r for r in rows if not r.get(WARM_START)], [r for r in rows if r.get(WARM_START)]
