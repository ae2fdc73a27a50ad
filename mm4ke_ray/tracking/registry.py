"""An exported directory in MLflow 3: a LoggedModel of its candidate run, and with `--register` a
version of a named model in the Model Registry, pointed at by the alias `champion`.

The LoggedModel links the export to the run it came from (`source_run_id`), holds its merge
recipe as params, and has the candidate's recorded metrics linked to it (logged on the run with
the model's id), so the UI's "Logged models" tab of the run and experiment shows it with its
scores. A registered export uploads the directory (weights, tokenizer, card, recipe, checksums)
as the model's artifacts and the version is created from that model (`model_id`); an export that
is not registered records the model without uploading anything (its files stay in `--out`, named
by the `mm4ke.export_dir` tag). No MLflow flavour is imposed: the version is the plain Hugging
Face directory, loadable with `from_pretrained` after
`mlflow.artifacts.download_artifacts("models:/NAME@champion")`. Works with SQLite and `mlflow server`.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path

from mm4ke_ray.schema import Tag

CHAMPION = "champion"  # the alias the newest exported version gets
MODEL_TYPE = "knowledge-edited-llm"  # the LoggedModel's model_type, to search exports by
MLFLOW_MODEL_VERSIONS = "mlflow.modelVersions"  # a LoggedModel's registered versions, as MLflow writes it
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
_LINKED_METRICS = ("edit_succ", "generalization", "portability", "locality", "combined_score")


def _model_name(recipe: dict) -> str:
    # LoggedModel names are free text in MLflow, but they end up in paths and URLs: keep them plain.
    src = recipe["source"]
    return re.sub(r"[^\w.-]+", "-", f"{src['sweep_name']}-{src['candidate']}").strip("-")


def _unused_name(client, experiment_id: str, run_id: str, name: str) -> tuple[str, int]:
    """(`name` or `name-export2`, `-export3`, ... when earlier exports of the candidate hold it;
    the export's number): each export is its own LoggedModel, told apart in the UI by its name."""
    taken = {m.name for m in client.search_logged_models(experiment_ids=[experiment_id],
                                                         filter_string=f"source_run_id = '{run_id}'")}
    n = 1
    while (found := name if n == 1 else f"{name}-export{n}") in taken:
        n += 1
    return found, n


def _provenance_tags(recipe: dict) -> dict:
    src, m = recipe["source"], recipe["merge"]
    return {Tag.SWEEP: src["sweep_name"], Tag.SWEEP_RUN_ID: src["sweep_run_id"], Tag.CANDIDATE: src["candidate"],
            Tag.BASE_MODEL: recipe["base_model"], Tag.ALPHA: repr(m["alpha"]), Tag.SPARSITY: repr(m["sparsity"])}


def log_export_model(uri: str, out: str | Path, recipe: dict, upload: bool = True):
    """The export `out` as an MLflow 3 LoggedModel of its candidate run, with the candidate's
    recorded metrics linked to it; `upload` logs the directory as the model's artifacts."""
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelOutput, Metric

    run_id = recipe["source"]["candidate_run_id"]
    client = MlflowClient(tracking_uri=uri)
    m = recipe["merge"]
    params = {"base_model": recipe["base_model"], "alpha": repr(m["alpha"]), "sparsity": repr(m["sparsity"]),
              **{k: str(m[k]) for k in ("method", "dtype") if m.get(k) is not None},
              "edits": str(recipe["edits"]["count"]), "edits_source": str(recipe["edits"]["source"])}
    tags = _provenance_tags(recipe)
    if not upload:
        tags[Tag.EXPORT_DIR] = str(Path(out).resolve())
    experiment_id = client.get_run(run_id).info.experiment_id
    name, number = _unused_name(client, experiment_id, run_id, _model_name(recipe))
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=tags, params=params,
                                       model_type=MODEL_TYPE)
    try:
        # The run's "Logged models" field reads its outputs, as mlflow.<flavor>.log_model records
        # them; one per step is kept, so each export of the candidate has its own.
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=number - 1)])
        if upload:
            client.log_model_artifacts(model.model_id, str(out))
        now = int(time.time() * 1000)
        metrics = [Metric(k.replace("/", "."), float(v), now, 0, model_id=model.model_id)
                   for k, v in (recipe.get("recorded_metrics") or {}).items()
                   if isinstance(v, int | float) and v == v]
        if metrics:
            client.log_batch(run_id, metrics=metrics)
    except Exception:
        client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return client.finalize_logged_model(model.model_id, "READY")


def register_export(uri: str, out: str | Path, name: str, recipe: dict, alias: str = CHAMPION):
    """Log `out` as a LoggedModel of the candidate run (`log_export_model`), register it as a new
    version of model `name` created from that model, and point `alias` at it (MLflow 3 aliases;
    stages are deprecated); return the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    src, m = recipe["source"], recipe["merge"]
    model = log_export_model(uri, out, recipe, upload=True)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.create_registered_model(
            name,
            description="Knowledge-edited models exported by mm4ke-ray (R-SFT + merging).",
            tags={Tag.KIND: MODEL_TYPE},
        )
    except MlflowException as exc:
        if (
            "already exists" not in str(exc).lower()
            and getattr(exc, "error_code", "") != "RESOURCE_ALREADY_EXISTS"
        ):
            raise
    tags = {
        **_provenance_tags(recipe),
        **{
            f"{Tag.METRIC_PREFIX}{k}": f"{v:.6g}"
            for k, v in recipe["recorded_metrics"].items()
            if k in _LINKED_METRICS
        },
    }
    description = (
        f"{recipe['base_model']} + {recipe['edits']['count']} edits from {recipe['edits']['source']}, "
        f"α={m['alpha']:.4g}, sparsity={m['sparsity']:.4g}; sweep {src['sweep_name']} candidate {src['candidate']}. "
        "See README.md in the artifacts."
    )
    # Created from the model ("models:/<model id>", as mlflow.register_model does), so the UI links
    # the version and the model both ways (the model's mlflow.modelVersions tag, set below).
    with _process_tracking_uri(uri):
        version = client.create_model_version(
            name, f"models:/{model.model_id}", run_id=src["candidate_run_id"], tags=tags, description=description,
            model_id=model.model_id,
        )
    known = json.loads(client.get_logged_model(model.model_id).tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    client.set_logged_model_tags(model.model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(
        [*known, {"name": version.name, "version": version.version}])})
    client.set_registered_model_alias(name, alias, version.version)
    return version


@contextmanager
def _process_tracking_uri(uri: str):
    # A SQLite registry looks a "models:/<id>" source up through the process-wide tracking URI,
    # not through the client's (mlflow 3.17, model_registry/sqlalchemy_store.py): set it meanwhile.
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # Restored as it was (unset stays unset, so MLFLOW_TRACKING_URI set later still counts).
    saved, saved_env = tracking_utils._tracking_uri, os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved)
        if saved_env is not None:
            os.environ[TRACKING_URI_ENV] = saved_env
