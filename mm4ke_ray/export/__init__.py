"""Export a sweep candidate from MLflow as a checked Hugging Face directory.

`export_candidate` rebuilds base + (1 − α) · sparsify(Δ) from what MLflow recorded, writes
weights, config, tokenizer, `README.md` (model card), `mm4ke_merge.json` (the recipe) and
`checksums.sha256`, reloads the directory, re-evaluates it and compares with the recorded
metrics, and optionally registers it in the MLflow Model Registry.
"""

from mm4ke_ray.export.plan import ExportPlan, plan_export
from mm4ke_ray.export.verify import (
    CHECKSUM_FILE,
    DEFAULT_TOLERANCE,
    ExportVerificationError,
    verify_checksums,
)
from mm4ke_ray.export.writer import FAILED_FILE, ExportResult, export_candidate

__all__ = [
    "CHECKSUM_FILE",
    "DEFAULT_TOLERANCE",
    "FAILED_FILE",
    "ExportPlan",
    "ExportResult",
    "ExportVerificationError",
    "export_candidate",
    "plan_export",
    "verify_checksums",
]
