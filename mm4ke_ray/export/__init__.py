"""Export a sweep candidate from MLflow as a checked Hugging Face directory.

`export_candidate` rebuilds base + (1 − α) · sparsify(Δ) from what MLflow recorded, writes
weights, config, tokenizer, `README.md` (model card), `mm4ke_merge.json` (the recipe) and
`checksums.sha256`, reloads the directory, re-evaluates it and compares with the recorded
metrics, and optionally registers it in the MLflow Model Registry (`tracking.registry`).

Names load on first use, so `mm4ke-ray export --help` (which reads `DEFAULT_TOLERANCE`) does
not import torch or MLflow.

Flow: config → data → rsft → merge → evaluate → search → tracking → [export], commands on top.
"""

from __future__ import annotations

from mm4ke_ray.lazy import lazy_exports

# Each re-evaluated metric must be within this of the recorded one (absolute, metric's unit).
DEFAULT_TOLERANCE = 1e-6

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "verify": ("CHECKSUM_FILE", "ExportVerificationError", "verify_checksums"),
    "export_plan": ("ExportPlan", "plan_export"),
    "writer": ("FAILED_FILE", "ExportResult", "export_candidate"),
}, eager=["DEFAULT_TOLERANCE"])
