"""Export one sweep candidate as a Hugging Face directory, checked against what MLflow recorded.

Atomic: everything is written into a hidden sibling of the target (`export.atomic`) and renamed
to it only at the end, so a killed export leaves the target absent (or the earlier export); the
next export removes the sibling. The weights are written tensor by tensor from the base's
safetensors (`export.merged_weights`; no model built for the write). The model card and
`checksums.sha256` are written only after every check passed; an export that does not reproduce
its candidate is still renamed into place for inspection, with `VERIFICATION_FAILED.json` and
without them, so a directory without them was never verified.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mm4ke_ray import __version__
from mm4ke_ray.delta import DELTA_FILE
from mm4ke_ray.digest import sha256_file
from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.candidate import CandidateEvaluator
from mm4ke_ray.export import DEFAULT_TOLERANCE
from mm4ke_ray.export.atomic import clean_leftovers, new_staging_dir, publish
from mm4ke_ray.export.card import model_card
from mm4ke_ray.export.examples import edit_examples
from mm4ke_ray.export.export_plan import ExportPlan, plan_export
from mm4ke_ray.export.merged_weights import write_merged
from mm4ke_ray.export.verify import (
    ExportVerificationError,
    check_weights,
    compare_metrics,
    verify_checksums,
    write_checksums,
)
from mm4ke_ray.merge.merged_model import MERGE_INFO_FILE, merge_params
from mm4ke_ray.modeling.gguf import gguf_provenance
from mm4ke_ray.schema import EDIT_METRICS, FLUENCY, GEN_PREFIX, LAYER, RSFT_PARAMS, Tag
from mm4ke_ray.storage import check_out_dir
from mm4ke_ray.tracking.query import normalize_row
from mm4ke_ray.tracking.registry import register_export

FAILED_FILE = "VERIFICATION_FAILED.json"
# The recipe's R-SFT hyperparameters in the order the recipe has always listed them.
_RECIPE_RSFT = (LAYER, *(p for p in RSFT_PARAMS if p != LAYER))
_METRIC_PREFIXES = ("general.", "retention.")
_METRICS = (
    *EDIT_METRICS,
    FLUENCY,
    "edit_score",
    "general_score",
    "combined_score",
)


@dataclass
class ExportResult:
    out: Path
    plan: ExportPlan
    recipe: dict
    model_version: object | None = None


def _metrics_only(row: dict | None) -> dict | None:
    if row is None:
        return None
    return {k: v for k, v in row.items() if k in _METRICS or k.startswith(_METRIC_PREFIXES) or _is_edit_metric(k)}


def _is_edit_metric(key: str) -> bool:
    """An edit metric of either family, or its per-kind mean ("gen.portability.Reasoning"): the
    card shows generated (WILD) beside teacher-forced, and the export re-checks both (issue 26 §3)."""
    return key.removeprefix(GEN_PREFIX).split(".")[0] in EDIT_METRICS


def _recipe(
    plan: ExportPlan, info: dict, delta_file: Path, delta_meta: dict, num_edits: int
) -> dict:
    c, sweep = plan.candidate, plan.sweep
    data = plan.config.get("data", {})
    return {
        "format": "mm4ke-ray export recipe",
        "format_version": 1,
        "mm4ke_ray_version": __version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": plan.model,
        "base_gguf": gguf_provenance(plan.model),  # None unless the base is a .gguf file
        "merge": {
            "formula": "theta = theta_base + (1 - alpha) * sparsify(delta)",
            **merge_params(plan.alpha, plan.sparsity, plan.method, plan.seed),
            "dtype": plan.settings.dtype,
            "tensors": info["tensors"],
            "kept_entries": info["kept_entries"],
            "total_entries": info["total_entries"],
        },
        "rsft": {
            # A sweep logged before lr_schedule/warmup_ratio were search parameters: rsft.json's values.
            **{k: c.get(k) if c.get(k) is not None else (delta_meta.get("rsft") or {}).get(k) for k in _RECIPE_RSFT},
            **{k: v for k, v in (delta_meta.get("rsft") or {}).items() if k not in _RECIPE_RSFT},
        },
        "delta": {
            "file": delta_file.name,
            "sha256": sha256_file(delta_file),
            "metadata": delta_meta,
        },
        "edits": {
            "source": plan.settings.edits,
            "format": data.get("format"),
            "limit": data.get("limit"),
            "skip_invalid": data.get("skip_invalid", False),
            "count": num_edits,
        },
        "evaluation": {
            "protocol": sweep.params.get("protocol", "sequential"),
            "prompt_format": plan.settings.prompt_format,
            **{k: v for k, v in plan.config.get("evaluation", {}).items() if k != "protocol"},
            "objectives": plan.config.get("objectives", {}),
            # Which definitions produced the numbers (issue 23); a sweep from before them says so.
            "edit_mode": sweep.params.get("edit_mode"),
            "aggregation": sweep.params.get("edit_aggregation", "items pooled per record (before issue 23)"),
            "edit_definitions": sweep.params.get("edit_definitions", "1"),
            "generation_stop_rule": sweep.params.get("generation_stop_rule"),
        },
        "source": {
            "tracking_uri": sweep.uri,
            "experiment_id": sweep.experiment_id,
            "experiment_name": sweep.experiment_name,
            "sweep_name": sweep.name,
            "sweep_run_id": sweep.run_id,
            "candidate": c["candidate"],
            "candidate_run_id": c["run_id"],
            "kind": c.get("kind"),
            "trial_id": c.get("trial_id"),
            "delta_artifact": plan.delta_artifact,
            "git_revision": sweep.tags.get(Tag.GIT_REVISION),
        },
        "recorded_metrics": _metrics_only(c),
        "compared": {"base": _metrics_only(plan.base), "pure_rsft": _metrics_only(plan.pure_rsft)},
        "verification": {"status": "pending"},
    }


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _reevaluate(plan: ExportPlan, out: Path, update: dict, log) -> tuple[dict, dict, int, list[dict]]:
    """(weights check, re-evaluated metrics as MLflow keys, number of edits, edited facts with the
    written model's answers for the card) for the written directory."""
    import warnings

    from mm4ke_ray.modeling.tokenizer_check import TokenizerMismatchWarning

    with warnings.catch_warnings():
        # The export ships the base's tokenizer files and `_tokenizer_check` reported them once,
        # under the export's name: loading base and staging folder would repeat it twice more.
        warnings.simplefilter("ignore", TokenizerMismatchWarning)
        log(f"computing the base model's reference ({plan.model})")
        base_eval = CandidateEvaluator(plan.settings)
        weights = check_weights(out, base_eval.model, update)
        reference = base_eval.reference
        del base_eval  # one model resident at a time
        log(f"reloading the written model and re-evaluating {plan.settings.edits}")  # not the hidden stage's name
        reloaded = CandidateEvaluator(replace(plan.settings, model=str(out)), reference)
        measured = normalize_row(
            reloaded.evaluate({}, 0.0, 0.0)
        )  # empty delta: the directory's own weights
        examples = edit_examples(reloaded.tokenizer, reloaded.model, reloaded.records, plan.settings.prompt_format)
    return weights, measured, len(reloaded.edit_eval.records), examples


def export_candidate(
    uri: str,
    sweep: str,
    out: str | Path,
    *,
    pick: str = "best",
    experiment: str | None = None,
    register: str | None = None,
    force: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    device: str = "auto",
    strict_tokenizer: bool = False,
    log: Callable[[str], None] = lambda msg: None,
) -> ExportResult:
    """Rebuild a candidate from MLflow, write it to `out`, verify it, optionally register it.

    Raises UserError for bad input (nothing written) and ExportVerificationError when the written
    directory does not reproduce the recorded candidate (the directory is left for inspection,
    with `VERIFICATION_FAILED.json` and without a model card or checksums). The directory is
    written in a hidden sibling and renamed to `out` at the end (`export.atomic`): killed at any
    point, the export leaves `out` absent or as it was.
    """
    out = Path(out).expanduser()
    check_out_dir(out, force, replaces=MERGE_INFO_FILE)
    if not tolerance >= 0:
        raise UserError(f"--tolerance must be >= 0, got {tolerance}")
    for p in clean_leftovers(out):
        log(f"removed {p}, left by an export that was killed")
    plan = plan_export(uri, sweep, pick, experiment, device)
    c = plan.candidate
    log(
        f"exporting {c['candidate']} (run {c['run_id']}, combined_score {c.get('combined_score', float('nan')):.4f}) "
        f"of sweep {plan.sweep.name}: alpha={plan.alpha:g}, sparsity={plan.sparsity:g}, method={plan.method}"
    )
    # Everything is written and verified in a hidden sibling, renamed to `out` only when done:
    # a killed export leaves `out` absent (or the earlier export), never half-written.
    stage = new_staging_dir(out)
    try:
        recipe = _write_and_verify(plan, stage, out, tolerance, strict_tokenizer, log)
    except ExportVerificationError:
        if (stage / FAILED_FILE).is_file():  # complete but not reproduced: left for inspection
            publish(stage, out)
        raise
    finally:
        if stage.exists() and not (stage / FAILED_FILE).is_file():
            shutil.rmtree(stage, ignore_errors=True)
    bad = verify_checksums(out)
    if bad:
        raise ExportVerificationError(f"checksums of {out} do not verify after the rename: {bad}")
    version = None
    if register:
        version = register_export(uri, out, register, recipe)
        log(f"registered as model {register!r} version {version.version}")
    return ExportResult(out=out, plan=plan, recipe=recipe, model_version=version)


def _write_and_verify(
    plan: ExportPlan, stage: Path, out: Path, tolerance: float, strict_tokenizer: bool, log
) -> dict:
    """Write the candidate into `stage`, verify it; publish it to `out` when every check passed."""
    c, s = plan.candidate, plan.settings
    with tempfile.TemporaryDirectory(prefix="mm4ke-export-") as tmp:
        delta_dir = plan.download_delta(tmp)
        # Tensor by tensor from the base's safetensors (no model built for the write); a base
        # with .bin weights only is built and saved as before.
        written = write_merged(
            plan.model,
            stage,
            delta_dir=delta_dir,
            alpha=plan.alpha,
            sparsity=plan.sparsity,
            method=plan.method,
            seed=plan.seed,
            dtype=s.dtype,
            device=s.device,
            trust_remote_code=s.trust_remote_code,
        )
        log(
            f"wrote the merged weights {'tensor by tensor' if written.streamed else 'from the built model'}"
        )
        delta_meta = written.info["delta_metadata"]
        recipe = _recipe(plan, written.info, delta_dir / DELTA_FILE, delta_meta, num_edits=0)
        _write_json(stage / MERGE_INFO_FILE, recipe)
    recipe["tokenizer_check"] = _tokenizer_check(stage, out, strict_tokenizer, log)
    weights, measured, num_edits, examples = _reevaluate(plan, stage, written.update, log)
    table, problems = compare_metrics(_metrics_only(c), measured, tolerance)
    recipe["edits"]["count"] = num_edits
    recipe["edits"]["examples"] = examples
    recipe["verification"] = {
        "status": "failed" if problems else "passed",
        "tolerance": tolerance,
        "max_abs_diff": max((v["abs_diff"] for v in table.values()), default=0.0),
        "device": s.device,
        "weights": weights,
        "metrics": table,
    }
    if problems:
        _write_json(stage / FAILED_FILE, {"problems": problems, **recipe["verification"]})
        _write_json(stage / MERGE_INFO_FILE, recipe)
        raise ExportVerificationError(
            f"the exported model in {out} does NOT reproduce candidate {c['candidate']} (run {c['run_id']}):\n  "
            + "\n  ".join(problems)
            + f"\nDo not ship it; details in {out / FAILED_FILE}."
        )
    _write_json(stage / MERGE_INFO_FILE, recipe)
    (stage / "README.md").write_text(model_card(recipe))
    write_checksums(stage)
    bad = verify_checksums(stage)
    if bad:
        raise ExportVerificationError(f"checksums of {out} do not verify: {bad}")
    log(
        f"verified: {len(table)} metrics within {tolerance:g} of MLflow's; {weights['unchanged']} tensors equal the base"
    )
    publish(stage, out)
    return recipe


def _tokenizer_check(stage: Path, out: Path, strict: bool, log) -> dict:
    """Does plain AutoTokenizer on the export give its tokenizer.json's ids? Warn (or refuse,
    `strict`) with the cause and the fix; the result goes into the recipe."""
    import warnings

    from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mismatch = check_auto_tokenizer(str(stage), strict=strict)
        except UserError as exc:
            raise UserError(
                str(exc).replace(str(stage), str(out))
                + " (refused by --strict-tokenizer; nothing was exported)"
            ) from exc
    if mismatch is None:
        return {"status": "passed"}
    message = mismatch.message().replace(str(stage), str(out))
    log(f"WARNING: {message}")
    return {"status": "mismatch", "message": message}
