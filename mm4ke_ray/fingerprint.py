"""A sweep's fingerprint: what must be equal for two sweeps' candidates to be comparable.

A candidate's objectives depend on the base model, the edit set, how it is evaluated and scored,
the merge method and the R-SFT optimizer, not on the search space, the sampler or the resources.
`--warm-start` tells an earlier sweep's candidates to a new study only when both sweeps have
the same fingerprint; the fields it is made from are stored beside it (MLflow parent run), so a
refusal names the field that differs instead of two opaque hashes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mm4ke_ray.cache import default_cache_root
from mm4ke_ray.config import SweepConfig
from mm4ke_ray.evaluate.definitions import EDIT_DEFINITIONS
from mm4ke_ray.evaluate.scores import RETENTION_DEFINITION
from mm4ke_ray.modeling.encoding import SUPERVISED
from mm4ke_ray.modeling.gguf import file_sha256, is_gguf

# Every field of these sections (a nested one as one value) and single fields. Left out: what
# changes speed or cost but not a full-fidelity result (evaluation.batch_size; evaluation.fidelity,
# since successive halving's full rung is the full evaluation) and what only gates loading.
_SECTIONS = ("model", "data", "evaluation")
_LEFT_OUT = {"model.trust_remote_code", "model.allow_pickle", "evaluation.batch_size", "evaluation.fidelity",
             "evaluation.general_se_threshold",  # only sets when plan/validate warn
             "evaluation.shared_context"}  # the same per-document results as lm-eval's HFLM, only faster
_LONGEST = 300  # characters of one field's JSON kept as is
_FIELDS = ("merge.method", "search.rsft.optimizer", "objectives.edit_weights", "objectives.combined_edit_weight")


def fingerprint_fields(config: SweepConfig) -> dict:
    """The fields (dotted name → JSON value) a sweep's fingerprint is made from."""
    data = config.model_dump(mode="json")
    out: dict = {}
    for section in _SECTIONS:
        out.update({f"{section}.{key}": value for key, value in data[section].items()})
    for dotted in _FIELDS:
        node = data
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    out["objectives.edit_mode"] = config.edit_mode  # resolved: unset and its default are the same scoring
    out["evaluation.general_chat_template"] = config.general_chat_template  # resolved, as edit_mode
    if is_gguf(config.model.name):  # a GGUF base is its content: digest and file name, not its path
        out["model.gguf_sha256"] = file_sha256(config.model.name)
        out["model.name"] = Path(config.model.name).name
    out["evaluation.definitions"] = EDIT_DEFINITIONS  # rules without a config field (aggregation, stops)
    if config.evaluation.general_tasks:  # how a task's retention is defined (older sweeps: raw ratio)
        out["objectives.general_retention"] = RETENTION_DEFINITION
    if config.data.prompt_format == "chat":  # issue 23: chat R-SFT now also supervises the newline after
        out["rsft.supervised"] = SUPERVISED["chat"]  # end-of-turn; plain (unchanged) adds no field
    if config.stream is not None:  # rounds change every number; a one-batch sweep's field set stays as it was
        out["stream"] = data["stream"]
    return {k: _bounded(_portable(out[k])) for k in sorted(out) if k not in _LEFT_OUT}


def _portable(value):
    """A demo asset's path without this machine's cache root (`demo-<key>/model`, ...): the
    build key names the content, so a laptop's demo sweep and a cluster's compare."""
    if isinstance(value, str):
        root = str(default_cache_root()).rstrip("/") + "/"
        if value.startswith(root):
            return DEMO_CACHE + value[len(root):]
    return value


DEMO_CACHE = "<demo cache>/"


def _bounded(value):
    """`value`, or its digest when its JSON is long: the fields go into one MLflow tag (8,000
    characters at most), and a long task list or metric map still compares exactly."""
    text = json.dumps(value, sort_keys=True)
    return value if len(text) <= _LONGEST else {"sha256": hashlib.sha256(text.encode()).hexdigest()[:16]}


def fingerprint(fields: dict) -> str:
    """A short, stable digest of `fingerprint_fields`."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(here: dict, there: dict) -> list[tuple[str, object, object]]:
    """(field, value here, value there) for every field that differs (a missing field: None).
    A field left out since (a sweep logged before, e.g. with evaluation.fidelity) is not compared,
    and a demo path logged in full is compared without this machine's cache root."""
    keys = (set(here) | set(there)) - _LEFT_OUT
    there = {k: _portable(v) for k, v in there.items()}  # a sweep logged with its demo paths in full
    return [(k, here.get(k), there.get(k)) for k in sorted(keys) if here.get(k) != there.get(k)]
