"""Checks a sweep config against the world before any Ray work: paths, weights, data, tasks, methods.

Every problem is collected and reported at once, each naming the config field (and the file or
record) and saying how to fix it. Nothing here starts Ray, loads weights or writes to MLflow:
a sweep that fails here leaves no trace.

The checks that need transformers or torch (model folders, sparsifier names, lm-eval tasks)
import them where they run, so `mm4ke-ray validate --help` and a config typo answer at once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mm4ke_ray.config import DEMO, ModelConfig, SweepConfig
from mm4ke_ray.data import load_edit_records
from mm4ke_ray.data.sources import HUB_ID
from mm4ke_ray.errors import ConfigError, UserError
from mm4ke_ray.evaluate.evidence import min_sign_items
from mm4ke_ray.evaluate.real_tasks import build_local_task, local_task_specs, task_cache_root
from mm4ke_ray.evaluate.rung_plan import plan_rungs
from mm4ke_ray.modeling.gguf import is_gguf, read_gguf_info
from mm4ke_ray.storage import storage_problem
from mm4ke_ray.tracking.health import health_problem
from mm4ke_ray.tracking.store_check import store_problem

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def _read_model_config(folder: Path) -> tuple[dict | None, str | None]:
    """(config.json as a dict, problem) for a local model folder."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None, (f"model.name: '{folder}' has no config.json, so it is not a Hugging Face model folder; "
                      "give the folder that holds config.json and the *.safetensors weights")
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        return None, f"model.name: {cfg} is not valid JSON ({exc}); re-save the model with save_pretrained"
    if not isinstance(data, dict):
        return None, f"model.name: {cfg} must hold a JSON object; re-save the model with save_pretrained"
    return data, None


def _tokenizer_auto_map(folder: Path) -> dict | None:
    """tokenizer_config.json's auto_map ({"AutoTokenizer": ...}) when it has one (else None)."""
    try:
        data = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        return None  # absent or unreadable: the tokenizer load names it
    auto_map = data.get("auto_map") if isinstance(data, dict) else None
    return {f"{k} (tokenizer_config.json)": v for k, v in auto_map.items()} if isinstance(auto_map, dict) else None


def _num_layers(data: dict | None) -> int | None:
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if data and isinstance(data.get(key), int):
            return int(data[key])
    return None


def _native_architecture(model_type) -> bool:
    """True when transformers has its own classes for `model_type` (then auto_map's code is not run)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return isinstance(model_type, str) and model_type in CONFIG_MAPPING_NAMES


def local_task_folders(config: SweepConfig) -> tuple[list[Path], list[str]]:
    """(task folders, problems) of `evaluation.local_tasks`: each file is read and converted
    (into the task cache) here, so a bad line is named before any Ray work."""
    if not config.evaluation.local_tasks:
        return [], []
    folders, problems = [], []
    for spec in local_task_specs(config):
        try:
            folders.append(build_local_task(spec, task_cache_root()))
        except UserError as exc:
            problems.append(str(exc) if str(exc).startswith("evaluation.") else f"evaluation.local_tasks.{spec.name}: {exc}")
    return folders, problems


def model_problems(model: ModelConfig) -> tuple[list[str], int | None]:
    """(problems, number of layers) for `model.name` when it is a local folder; a hub id passes
    when it can be had from here (cached, or the hub reachable)."""
    from mm4ke_ray.modeling.loading import check_model_source  # loads torch: `validate` stays light

    if model.name == DEMO:
        return [], None
    try:
        check_model_source(model.name)
    except UserError as exc:
        return [f"model.name: {exc}"], None
    if is_gguf(model.name):  # checked (architecture included); dequantized when first loaded
        return [], read_gguf_info(model.name).block_count
    folder = Path(model.name).expanduser()
    if not folder.is_dir():
        return [], None  # a hub id: checked when it is downloaded
    data, problem = _read_model_config(folder)
    if problem:
        return [problem], None
    problems = []
    auto_map = data.get("auto_map") or _tokenizer_auto_map(folder)  # the tokenizer may bring code of its own
    if auto_map and not model.trust_remote_code and not _native_architecture(data.get("model_type")):
        classes = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
        problems.append(
            f"model.name: '{model.name}' needs its own Python code (auto_map: {classes}; "
            f"model_type {data.get('model_type')!r} is not one transformers knows) and "
            "model.trust_remote_code is off; set model.trust_remote_code: true only if you have read and "
            "trust that code, or use a model transformers supports natively"
        )
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if not pickles:
            problems.append(f"model.name: '{model.name}' holds no weights (*.safetensors); "
                            "save the model there with save_pretrained(safe_serialization=True)")
        elif not model.allow_pickle:
            problems.append(
                f"model.name: '{model.name}' has only pickle weights ({', '.join(pickles[:3])}), which can run "
                "arbitrary code when loaded; convert them to safetensors, or set model.allow_pickle: true "
                "if you trust the file"
            )
    return problems, _num_layers(data)


def is_hub_dataset(edits: str) -> bool:
    if edits.startswith("hf:"):
        return True
    if Path(edits).expanduser().exists() or edits.startswith((".", "/", "~")):
        return False
    hub = HUB_ID.match(edits)
    # "org/name/path/file.json" names a file inside a hub dataset repo; a bare "dir/file.json"
    # that does not exist is a missing local file (the reader draws the same line).
    return bool(hub) and (hub["file"] is not None or not edits.lower().endswith(_DATA_SUFFIXES))


def data_problems(config: SweepConfig) -> list[str]:
    """Read the edit set as the sweep will (a local file only; hub datasets are read later)."""
    data = config.data
    if data.edits == DEMO or is_hub_dataset(data.edits):
        return []
    try:
        dataset = load_edit_records(data.edits, limit=data.limit, skip_invalid=data.skip_invalid, fmt=data.format)
    except UserError as exc:
        return [f"data.edits: {exc}"]
    return [msg] if (msg := _rungs_problem(config, len(dataset.records))) else []


def _rungs_problem(config: SweepConfig, n_records: int) -> str | None:
    """An edit set too small for halving to drop anything: with fewer records than the sign test
    needs at the error rate, every rung below the full one is skipped (`rung_plan.py`)."""
    fid = config.evaluation.fidelity
    if not fid.enabled or fid.rungs < 2:
        return None
    need = min_sign_items(fid.error_rate)
    if n_records >= need:
        return None
    return (f"evaluation.fidelity: the edit set has {n_records} record(s), fewer than the {need} differing items "
            f"the sign test needs at error_rate {fid.error_rate:g}, so no rung below the full one could show a "
            f"candidate worse and every one would be skipped; use at least {need} records, an error_rate of at "
            f"least {0.5 ** max(n_records, 1):g}, or set evaluation.fidelity.enabled: false")


def halving_warnings(config: SweepConfig) -> list[str]:
    """Halving rungs beyond what a local edit set supports (`RungPlan.cap_warning`). From the
    records alone: with general tasks their documents are counted when the sweep starts, which
    says it then."""
    fid, data = config.evaluation.fidelity, config.data
    if (not fid.enabled or fid.rungs < 2 or config.evaluation.general_tasks or data.edits == DEMO
            or is_hub_dataset(data.edits)):
        return []
    n = len(load_edit_records(data.edits, limit=data.limit, skip_invalid=data.skip_invalid, fmt=data.format).records)
    plan = plan_rungs(n, {}, fid.rungs, fid.reduction_factor, seed=0, min_items=min_sign_items(fid.error_rate))
    return [w] if (w := plan.cap_warning()) else []


def _check_tracking(uri: str, existing_store: bool = False) -> str | None:
    if uri.startswith("sqlite:///") and (problem := store_problem(uri, create=not existing_store)):
        return f"tracking.uri: {problem}"
    if uri.startswith(("http://", "https://")):
        if problem := health_problem(uri):
            return (f"tracking.uri: cannot reach the MLflow server at {uri} ({problem}); start it "
                    f"(mlflow server --host 127.0.0.1 --port PORT ...) or fix the URI")
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        probe = folder
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            return f"tracking.uri: cannot create the SQLite file's folder {folder}; choose a writable path"
    elif "://" not in uri:
        return f"tracking.uri: {uri!r} is not a URI; use sqlite:///path/mlflow.db or http://host:port"
    return None


def _layer_problem(config: SweepConfig, num_layers: int | None) -> str | None:
    if num_layers is None:
        return None
    bad = [layer for layer in config.search.space.layers() if layer >= num_layers]
    if not bad:
        return None
    return (f"search.space.layer: {bad} out of range: the model has {num_layers} layers; "
            f"use layers 0..{num_layers - 1}")


def preflight(config: SweepConfig, source: str, num_layers: int | None = None, check_tracking: bool = True,
              existing_store: bool = False) -> None:
    """Raise one ConfigError listing every problem found (no Ray, no model weights loaded).
    `existing_store`: the MLflow store must already exist (a resume)."""
    problems, found_layers = model_problems(config.model)
    if msg := _layer_problem(config, num_layers or found_layers):
        problems.append(msg)
    problems += data_problems(config)
    try:
        from mm4ke_ray.merge.methods import get_sparsifier

        get_sparsifier(config.merge.method)
    except UserError as exc:
        problems.append(f"merge.method: {exc}")
    tasks = config.evaluation.general_tasks
    local, local_problems = local_task_folders(config)
    problems += local_problems
    if tasks and config.model.name != DEMO and not local_problems:
        try:
            from mm4ke_ray.evaluate.general import validate_tasks

            include = [config.evaluation.task_include_path] if config.evaluation.task_include_path else []
            validate_tasks(tasks, include + local or None)
        except UserError as exc:
            problems.append(f"evaluation.general_tasks: {exc}")
    if msg := storage_problem(config.storage_path):
        problems.append(msg)
    if check_tracking and (msg := _check_tracking(config.tracking.uri, existing_store)):
        problems.append(msg)
    if problems:
        raise ConfigError(source, problems)
