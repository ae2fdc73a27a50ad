"""Evaluation: edit metrics (EasyEdit/KnowEdit definitions, batched; teacher-forced and
generation-based) and general ability.

Names are imported on first use, so `import mm4ke_ray.evaluate` loads neither torch-heavy
modules nor lm-eval (`mm4ke_ray.evaluate.general`, imported only when asked for).

Flow: config → data → rsft → merge → [evaluate] → search → tracking → export, commands on top.
"""

from __future__ import annotations

from mm4ke_ray.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "edit_metrics": ("EditEvaluator", "EditMetrics", "LocalityReference", "METRICS"),
    "metric_rows": ("kind_means", "record_score"),
    "generation": ("GenerationEvaluator", "GenerationMetrics", "GenerationReference", "answer_matches",
                   "greedy_generate", "normalize_answer"),
    "stop_rules": ("stop_token_ids", "cut_answer", "stop_index"),
    "accuracy": ("PaddedBatch", "build_batches", "predict_answer_tokens", "token_accuracy"),
    "fluency": ("generate_for_fluency", "ngram_entropy", "word_tokens"),
})
