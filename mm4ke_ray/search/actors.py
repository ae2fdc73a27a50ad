"""The merge-eval actor pool: long-lived Ray actors, each holding one resident base model."""

from __future__ import annotations

import os

import ray

from mm4ke_ray.evaluate.candidate import EvalSettings, Reference


@ray.remote
class MergeEvalActor:
    """Wraps a CandidateEvaluator. Restarted by Ray if its process dies; calls are retried."""

    def __init__(self, settings: EvalSettings, reference: Reference | None = None):
        import torch

        from mm4ke_ray.evaluate.candidate import CandidateEvaluator

        torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.evaluator = CandidateEvaluator(settings, reference)
        self.count = 0

    def reference(self) -> Reference:
        return self.evaluator.reference

    def evaluate(self, delta: dict, alpha: float, sparsity: float, seed: int = 0) -> dict:
        self.count += 1
        return self.evaluator.evaluate(delta, alpha, sparsity, seed=seed)

    def stats(self) -> dict:
        """Evaluations done and this process's resident memory (for leak checks)."""
        import psutil

        return {"count": self.count, "rss_bytes": psutil.Process().memory_info().rss, "pid": os.getpid()}


def start_pool(settings: EvalSettings, size: int, cpus: float, gpus: float, resource: str | None) -> tuple[list, Reference]:
    """Start `size` actors; the first computes the base reference, which the others reuse."""
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_restarts": 3, "max_task_retries": 3}
    if resource:
        options["resources"] = {resource: 1}
    first = MergeEvalActor.options(**options).remote(settings)
    reference = ray.get(first.reference.remote())
    others = [MergeEvalActor.options(**options).remote(settings, reference) for _ in range(size - 1)]
    return [first, *others], reference
