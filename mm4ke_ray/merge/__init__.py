"""Merge: θ_edited = θ_base + (1 − α) · Top_p(θ_sft − θ_base), as pure tensor ops.

- `sparsify`: per-tensor sparsifiers (`magnitude` = the paper's Top_p, `dare`).
- `methods`: the sparsifiers by name (`SPARSIFIERS`, a `mm4ke_ray.named_registry.Registry`;
  `get_sparsifier`).
- `apply`: `prepare_delta`, in-place `apply_delta_` / `restore_` on a resident model.
- `merged_model`: a merged model from a base + delta (or fine-tuned model), saved as an HF directory.

Flow: config → data → rsft → [merge] → evaluate → search → tracking → export, commands on top.
"""

from mm4ke_ray.merge.apply import (
    Snapshot,
    add_update_,
    apply_delta_,
    apply_update_,
    delta_from_models,
    merged_in_place,
    prepare_delta,
    restore_,
    validate_merge_params,
)
from mm4ke_ray.merge.merged_model import (
    MERGE_INFO_FILE,
    MergeResult,
    build_merged,
    build_merged_model,
    save_merged,
)
from mm4ke_ray.merge.methods import DEFAULT_SPARSIFIER, SPARSIFIERS, get_sparsifier
from mm4ke_ray.merge.sparsify import dare, kept_count, magnitude, magnitude_mask
from mm4ke_ray.named_registry import Registry  # public here since it lived in merge.methods

__all__ = [
    "DEFAULT_SPARSIFIER",
    "MERGE_INFO_FILE",
    "SPARSIFIERS",
    "MergeResult",
    "Registry",
    "Snapshot",
    "add_update_",
    "apply_delta_",
    "apply_update_",
    "build_merged",
    "build_merged_model",
    "dare",
    "delta_from_models",
    "get_sparsifier",
    "kept_count",
    "magnitude",
    "magnitude_mask",
    "merged_in_place",
    "prepare_delta",
    "restore_",
    "save_merged",
    "validate_merge_params",
]
