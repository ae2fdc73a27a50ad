"""Evaluation: edit metrics (EasyEdit/KnowEdit definitions, batched; teacher-forced and
generation-based) and general ability.

Names are imported on first use, so `import mm4ke_ray.evaluate` loads neither torch-heavy
modules nor lm-eval (`mm4ke_ray.evaluate.general`, imported only when asked for).

Flow: config → data → rsft → merge → [evaluate] → search → tracking → export, commands on top.
"""

from __future__ import annotations

from mm4ke_ray.lazy import lazy_exports

_EXPORTS = {
    "EditEvaluator": "edit_metrics",
    "EditMetrics": "edit_metrics",
    "LocalityReference": "edit_metrics",
    "METRICS": "edit_metrics",
    "kind_means": "edit_metrics",
    "GenerationEvaluator": "generation",
    "GenerationMetrics": "generation",
    "GenerationReference": "generation",
    "answer_matches": "generation",
    "greedy_generate": "generation",
    "normalize_answer": "generation",
    "stop_token_ids": "stop_rules",
    "cut_answer": "stop_rules",
    "stop_index": "stop_rules",
    "record_score": "edit_metrics",
    "PaddedBatch": "accuracy",
    "build_batches": "accuracy",
    "predict_answer_tokens": "accuracy",
    "token_accuracy": "accuracy",
    "generate_for_fluency": "fluency",
    "ngram_entropy": "fluency",
    "word_tokens": "fluency",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
