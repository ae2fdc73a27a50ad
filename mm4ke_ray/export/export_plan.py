"""What to export, resolved from MLflow alone: the candidate, its delta, the base model, the edit set.

The parent run's params name the base model (`model`: a local path or hub id), the edit set
(`edits`), the prompt format, the merge method and the seed the sweep merged with; its
`config.yaml` artifact gives the rest of the evaluation settings (dtype, record limit, batch
size, general tasks, objective weights). The candidate run gives α, sparsity and the R-SFT
hyperparameters; its `mm4ke.delta_artifact` tag names the delta among the parent's artifacts.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from mm4ke_ray.config import validate_config
from mm4ke_ray.delta import DELTA_FILE
from mm4ke_ray.device import resolve_device
from mm4ke_ray.errors import ConfigError, UserError
from mm4ke_ray.evaluate.candidate import EvalSettings, eval_settings
from mm4ke_ray.evaluate.pareto_front import best_candidate, describe_minimums, minimums_from_params
from mm4ke_ray.schema import (
    ALPHA,
    BASE,
    CONFIG_ARTIFACT,
    MERGE_PARAMS,
    PURE_RSFT,
    SPARSITY,
    WARM_START,
    Tag,
    delta_artifact_path,
)
from mm4ke_ray.tracking.query import Sweep, download_parent_artifact, load_sweep

DELTA_TAG = Tag.DELTA_ARTIFACT
REQUIRED_PARENT_PARAMS = ("model", "edits", "prompt_format", "merge_method", "seed")


@dataclass
class ExportPlan:
    """Everything needed to rebuild one candidate and check it, with where each piece came from."""

    sweep: Sweep
    candidate: dict
    base: dict | None  # the base model's recorded metrics
    pure_rsft: dict | None  # the pure R-SFT candidate (α=0, sparsity=0) of the same R-SFT run
    settings: EvalSettings  # the sweep's evaluation settings, on the export's device
    config: dict  # the sweep's config.yaml, parsed
    delta_artifact: str  # path among the parent run's artifacts
    alpha: float
    sparsity: float
    method: str
    seed: int

    @property
    def model(self) -> str:
        return self.settings.model

    def download_delta(self, dst: str | Path) -> Path:
        """Fetch the delta's folder (delta.safetensors and rsft.json) into `dst`; return the folder."""
        folder = (
            self.delta_artifact.rsplit("/", 1)[0]
            if self.delta_artifact.endswith(".safetensors")
            else self.delta_artifact
        )
        local = download_parent_artifact(self.sweep.uri, self.sweep.run_id, folder, str(dst))
        if not (Path(local) / DELTA_FILE).is_file():
            raise UserError(
                f"artifact {folder!r} of sweep run {self.sweep.run_id} holds no {DELTA_FILE} "
                f"(found: {sorted(p.name for p in Path(local).iterdir())})"
            )
        return Path(local)


def _pick(sweep: Sweep, pick: str) -> dict:
    if pick == "best":
        mins = minimums_from_params(sweep.params)
        row = best_candidate(sweep.candidates, mins)
        if row is None and best_candidate(sweep.candidates) is not None:
            # Candidates exist, none meets the sweep's minimums: say so rather than export one.
            raise UserError(
                f"no candidate of sweep {sweep.name!r} (run {sweep.run_id}) meets its minimums "
                f"({describe_minimums(mins)}), so there is no best feasible candidate; export one anyway "
                "with --pick <candidate or run id> (`mm4ke-ray pareto --all` lists them)"
            )
        if row is None:
            raise UserError(
                f"sweep {sweep.name!r} (run {sweep.run_id}) has no evaluated edited candidate yet; nothing to export"
            )
        return row
    row = sweep.find(pick)
    if row.get("kind") == BASE:
        raise UserError(
            f"{pick!r} is the unedited base model of sweep {sweep.name!r}; pick an edited candidate"
        )
    return row


def _refuse_warm_start(sweep: Sweep, row: dict) -> None:
    """A candidate copied from an earlier sweep (--warm-start) has its delta there: say how to export it."""
    tags = sweep.run_tags.get(row["run_id"], {})
    uri, parent = tags.get(Tag.WARM_START_URI, "?"), tags.get(Tag.WARM_START_SWEEP_RUN_ID, "?")
    run_id = tags.get(Tag.WARM_START_RUN_ID, "?")
    raise UserError(
        f"candidate {row['candidate']!r} of sweep {sweep.name!r} is a warm-start point from the earlier sweep "
        f"{row[WARM_START]!r}: its delta is stored with that sweep, not this one. Export it from there: "
        f"mm4ke-ray export --tracking-uri {uri} --sweep {parent} --pick {run_id} --out DIR"
    )


def _sweep_config(sweep: Sweep) -> dict:
    with tempfile.TemporaryDirectory(prefix="mm4ke-export-") as tmp:
        path = download_parent_artifact(sweep.uri, sweep.run_id, CONFIG_ARTIFACT, tmp)
        data = yaml.safe_load(Path(path).read_text()) or {}
    try:
        validate_config(data, f"{CONFIG_ARTIFACT} of run {sweep.run_id}")
    except ConfigError as exc:
        raise UserError(
            f"the sweep's {CONFIG_ARTIFACT} no longer validates with this mm4ke-ray version: {exc}"
        ) from exc
    return data


def _settings(sweep: Sweep, config: dict, device: str) -> EvalSettings:
    missing = [p for p in REQUIRED_PARENT_PARAMS if p not in sweep.params]
    if missing:
        raise UserError(
            f"sweep run {sweep.run_id} lacks the param(s) {', '.join(missing)}: was it logged by mm4ke-ray sweep?"
        )
    settings = eval_settings(validate_config(config), device)
    # The parent's params are what the MLflow UI shows and what the sweep ran with: they win.
    return dataclasses.replace(
        settings,
        model=sweep.params["model"],
        edits=sweep.params["edits"],
        prompt_format=sweep.params["prompt_format"],
        merge_method=sweep.params["merge_method"],
    )


def plan_export(
    uri: str, sweep: str, pick: str = "best", experiment: str | None = None, device: str = "auto"
) -> ExportPlan:
    """Resolve which candidate to export and how to rebuild it, reading MLflow only."""
    record = load_sweep(uri, sweep, experiment)
    row = _pick(record, pick)
    if row.get(WARM_START):
        _refuse_warm_start(record, row)
    for key in MERGE_PARAMS:
        if not isinstance(row.get(key), int | float):
            raise UserError(
                f"candidate run {row['run_id']} has no numeric param {key!r}; it cannot be rebuilt"
            )
    config = _sweep_config(record)
    settings = _settings(record, config, resolve_device(device))
    tags = record.run_tags.get(row["run_id"], {})
    delta = tags.get(DELTA_TAG) or (
        delta_artifact_path(row["trial_id"]) if row.get("trial_id") else None
    )
    if not delta:
        raise UserError(
            f"candidate run {row['run_id']} has neither a {DELTA_TAG!r} tag nor a trial id: its delta cannot be found"
        )
    pure = next(
        (
            r
            for r in record.candidates
            if r.get("kind") == PURE_RSFT and r.get("trial_id") == row.get("trial_id")
        ),
        None,
    )
    if pure is None and float(row[ALPHA]) == 0.0 and float(row[SPARSITY]) == 0.0:
        pure = row  # the candidate is itself the pure R-SFT point
    return ExportPlan(
        sweep=record,
        candidate=row,
        base=record.base,
        pure_rsft=pure,
        settings=settings,
        config=config,
        delta_artifact=delta,
        alpha=float(row[ALPHA]),
        sparsity=float(row[SPARSITY]),
        method=settings.merge_method,
        seed=int(record.params["seed"]),
    )
