"""Register an exported directory in the MLflow Model Registry, as a version of a named model.

The directory (weights, tokenizer, card, recipe, checksums) is logged as artifacts of the
candidate's own run under `export/`, and a model version is created whose source is that
artifact folder and whose run is the candidate run, so the registry links back to the sweep. No
MLflow model flavour is imposed: the version is the plain Hugging Face directory, loadable with
`from_pretrained` after `mlflow.artifacts.download_artifacts(version.source)`. Works with a
SQLite backend and with `mlflow server`.
"""

from __future__ import annotations

from pathlib import Path

from mm4ke_ray.schema import EXPORT_ARTIFACT, Tag

CHAMPION = "champion"  # the alias the newest exported version gets


def register_export(uri: str, out: str | Path, name: str, recipe: dict, alias: str = CHAMPION):
    """Log `out` to the candidate run, register it as a new version of model `name` and point
    `alias` at it (MLflow 3 aliases; stages are deprecated); return the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    src = recipe["source"]
    run_id = src["candidate_run_id"]
    client = MlflowClient(tracking_uri=uri)
    client.log_artifacts(run_id, str(out), EXPORT_ARTIFACT)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{EXPORT_ARTIFACT}"
    try:
        client.create_registered_model(
            name,
            description="Knowledge-edited models exported by mm4ke-ray (R-SFT + merging).",
            tags={Tag.KIND: "knowledge-edited-llm"},
        )
    except MlflowException as exc:
        if (
            "already exists" not in str(exc).lower()
            and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS"
        ):
            raise
    m = recipe["merge"]
    tags = {
        Tag.SWEEP: src["sweep_name"],
        Tag.SWEEP_RUN_ID: src["sweep_run_id"],
        Tag.CANDIDATE: src["candidate"],
        Tag.BASE_MODEL: recipe["base_model"],
        Tag.ALPHA: repr(m["alpha"]),
        Tag.SPARSITY: repr(m["sparsity"]),
        **{
            f"{Tag.METRIC_PREFIX}{k}": f"{v:.6g}"
            for k, v in recipe["recorded_metrics"].items()
            if k in ("edit_succ", "generalization", "portability", "locality", "combined_score")
        },
    }
    description = (
        f"{recipe['base_model']} + {recipe['edits']['count']} edits from {recipe['edits']['source']}, "
        f"α={m['alpha']:.4g}, sparsity={m['sparsity']:.4g}; sweep {src['sweep_name']} candidate {src['candidate']}. "
        "See README.md in the artifacts."
    )
    version = client.create_model_version(
        name, source, run_id=run_id, tags=tags, description=description
    )
    client.set_registered_model_alias(name, alias, version.version)
    return version
