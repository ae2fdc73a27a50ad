"""Per-unit costs of a sweep on a target model: an R-SFT update, a candidate, a model load.

Two sources. `probe.py` measures them on the machine at hand with the project's own library
functions (exact for that machine and model). `stored_costs` scales the figures a GPU check
stored per GPU kind (`benchmarks/results/gpu_check.json`, measured on a reference shape) to the
target model with a small roofline: a step costs a fixed overhead per block it runs (kernel
launches and Python, which is what bounds batch-1 steps on a big GPU; issue 17.6) plus the
larger of its weight traffic over the memory bandwidth and its FLOPs over the achievable
compute. The overhead per block is what the reference measurement leaves after its own
roofline term. Published peak figures of the GPU are inputs, named in the plan's basis.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mm4ke_ray.errors import UserError
from mm4ke_ray.planning.model_size import RUN_DTYPE_BYTES, ModelShape, shape_from_config
from mm4ke_ray.planning.workload import Workload


@dataclass(frozen=True)
class GpuKind:
    name: str
    results: str  # file under benchmarks/results/ with this kind's measured figures
    bandwidth: float  # bytes/s, published peak
    flops: float  # dense bf16 FLOP/s, published peak
    efficiency: float = 0.5  # fraction of both peaks a real kernel reaches (assumed)


GPU_KINDS = {
    "h200": GpuKind("NVIDIA H200", "gpu_check.json", bandwidth=4.8e12, flops=989e12),
}


@dataclass
class UnitCosts:
    """Seconds per unit on the target; `basis` says where each figure came from."""

    update_s: dict[int, float]  # one R-SFT update at each searchable layer (final-loss forwards included)
    candidate_s: float  # one merge candidate: merge + edit metrics + general tasks
    pool_start_s: float  # one merge-eval actor: model load + tokenised edits + the base reference
    worker_load_s: float  # one R-SFT worker: model + edit records loaded, beyond the runner's start-up
    basis: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)  # the raw probe / reference figures

    def as_json(self) -> dict:
        return asdict(self)


# What an edit record and a general-ability document cost in tokens, when they cannot be read.
# ZsRE: edit prompt, rephrase, one portability and one locality item per record.
PROMPTS_PER_RECORD = 4
TOKENS_PER_PROMPT = {"plain": 24, "chat": 56}  # Qwen2.5's chat template adds ~30 tokens
# lm-eval tasks of the shipped configs: (forward tokens per document, generated tokens per document).
TASK_TOKENS = {
    "ceval-valid": (4 * 130, 0), "logiqa": (4 * 260, 0), "coqa": (520, 16), "drop": (380, 16),
    "squadv2": (220, 16), "arc_easy": (4 * 40, 0),
}
DEFAULT_TASK_TOKENS = (4 * 150, 0)
TASK_DOCS = {"ceval-valid": 1346}  # a group: its limit applies per subject, all 1,346 questions fit
LOAD_BYTES_PER_S = 2e9  # reading a checkpoint from local NVMe / page cache into the GPU (assumed)
GEN_BATCH = 8  # GeneralEvaluator's lm-eval batch size


def _roofline(kind: GpuKind, blocks: float, overhead: float, bytes_moved: float, flops: float) -> float:
    """Seconds of a step: a fixed overhead per block it runs + the larger of its memory and compute time."""
    memory = bytes_moved / (kind.bandwidth * kind.efficiency)
    return blocks * overhead + max(memory, flops / (kind.flops * kind.efficiency))


def _train_step_work(shape: ModelShape, layer: int, tokens: float, dtype_bytes: int) -> tuple[float, float, float]:
    """(blocks run, bytes moved, FLOPs) of one R-SFT update at `layer`: the blocks from `layer` up
    and the head, forward and backward (weights read twice), ~6 FLOPs per weight per token."""
    suffix = shape.layers - layer
    head = shape.vocab * shape.hidden
    weights = suffix * shape.block_params + head
    return suffix + 1, 2 * weights * dtype_bytes, 6 * suffix * shape.block_params * tokens + 6 * head * 4


def _forward_work(shape: ModelShape, first: int, tokens: float, dtype_bytes: int, batch: float) -> tuple:
    """(blocks, bytes, FLOPs) of one batched forward over `tokens` tokens from block `first` up."""
    suffix = shape.layers - first
    weights = suffix * shape.block_params + shape.vocab * shape.hidden
    return suffix + 1, weights * dtype_bytes, 2 * weights * tokens, batch


@dataclass(frozen=True)
class _Fit:
    """What the stored reference measurement says about the GPU kind."""

    ref: dict  # the stored JSON
    shape: ModelShape  # the reference shape it ran on
    update_s: float  # its seconds per R-SFT update
    layer: int  # the layer it trained
    step_overhead: float  # seconds per block and R-SFT step beyond the roofline
    fwd_overhead: float  # seconds per block and batched forward beyond the roofline


def _fit_reference(kind: GpuKind, results: Path) -> _Fit:
    path = results / kind.results
    if not path.is_file():
        raise UserError(f"{path}: no stored figures for the {kind.name}; run benchmarks/gpu_check.sh on one, "
                        "or plan with --probe on the machine itself")
    ref = json.loads(path.read_text())
    try:
        shape = shape_from_config(ref["config"], kind.results, ref.get("params"))
        rsft, ev = ref["rsft"], ref["eval"]
        update_s, layer = rsft["ours"]["seconds"] / rsft["ours"]["updates"], rsft["layer"]
        # gpu_check's records have PROMPTS_PER_RECORD prompts each, batched `batch_size` at a time.
        batches = -(-ev["records"] * PROMPTS_PER_RECORD // ev["batch_size"])
        batch_s, batch_tokens = ev["batched"]["seconds"] / batches, ev["tokens_per_evaluation"] / batches
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        raise UserError(f"{path}: missing field {exc}; rerun benchmarks/gpu_check.sh") from None
    ref_tokens = 14.0  # gpu_check's synthetic records: 8-16 prompt words + 1-3 answer words; bf16 (2 bytes)
    blocks, moved, flops = _train_step_work(shape, layer, ref_tokens, 2)
    step_overhead = max(0.0, update_s - _roofline(kind, 0, 0, moved, flops)) / blocks
    blocks, moved, flops, _ = _forward_work(shape, 0, batch_tokens, 2, ev["batch_size"])
    fwd_overhead = max(0.0, batch_s - _roofline(kind, 0, 0, moved, flops)) / blocks
    return _Fit(ref, shape, update_s, layer, step_overhead, fwd_overhead)


def _task_docs(task: str, limit: int | float | None) -> float:
    """Documents lm-eval runs for `task` per evaluation (500 assumed when not capped by a count)."""
    return TASK_DOCS.get(task, limit if isinstance(limit, int) else 500)


def _eval_seconds(kind: GpuKind, fit: _Fit, shape: ModelShape, work: Workload, dbytes: int,
                  tokens: int) -> tuple[float, float]:
    """(edit metrics, general tasks) seconds of one candidate on `shape`."""
    # Edit metrics: every record's prompts, batched, the prefix cache running from the layer up.
    mean_layer = round(sum(work.layers) / len(work.layers))
    batch_tokens = work.eval_batch_size * tokens
    b, m, f, _ = _forward_work(shape, mean_layer, batch_tokens, dbytes, work.eval_batch_size)
    edit_s = work.records * PROMPTS_PER_RECORD * tokens / batch_tokens * _roofline(kind, b, fit.fwd_overhead, m, f)
    general_s = 0.0
    for task in work.general_tasks:
        fwd_tokens, gen_tokens = TASK_TOKENS.get(task, DEFAULT_TASK_TOKENS)
        batches = _task_docs(task, work.general_limit) / GEN_BATCH
        b, m, f, _ = _forward_work(shape, 0, GEN_BATCH * fwd_tokens, dbytes, GEN_BATCH)
        general_s += batches * _roofline(kind, b, fit.fwd_overhead, m, f)
        if gen_tokens:  # each generated token: one more forward of the batch (launch-bound)
            b, m, f, _ = _forward_work(shape, 0, GEN_BATCH, dbytes, GEN_BATCH)
            general_s += batches * gen_tokens * _roofline(kind, b, fit.fwd_overhead, m, f)
    return edit_s, general_s


def stored_costs(kind_name: str, shape: ModelShape, work: Workload, dtype: str, prompt_format: str,
                 results: Path) -> UnitCosts:
    """Unit costs on `shape` scaled from the figures stored for GPU kind `kind_name`."""
    if kind_name not in GPU_KINDS:
        raise UserError(f"--gpu-kind {kind_name!r}: no stored figures for it; known kinds: {', '.join(GPU_KINDS)} "
                        "(or measure with --probe on the machine)")
    kind = GPU_KINDS[kind_name]
    fit = _fit_reference(kind, results)
    dbytes, tokens = RUN_DTYPE_BYTES[dtype], TOKENS_PER_PROMPT.get(prompt_format, 24)
    update_s = {}
    for layer in work.layers:
        b, m, f = _train_step_work(shape, layer, tokens, dbytes)
        update_s[layer] = _roofline(kind, b, fit.step_overhead, m, f)
    edit_s, general_s = _eval_seconds(kind, fit, shape, work, dbytes, tokens)
    merge_s = _merge_seconds(fit.ref, shape, fit.shape)
    load_s = shape.params * dbytes / LOAD_BYTES_PER_S
    candidate = merge_s + edit_s + general_s
    ref = fit.ref
    basis = [
        f"per-step figures of the {kind.name} measured on a random-init {ref.get('shape', '?')} shape "
        f"({fit.shape.params / 1e9:.2f}B; {kind.results}, {ref.get('machine', {}).get('date', '?')[:10]}: "
        f"{1 / fit.update_s:.1f} R-SFT updates/s at layer {fit.layer}, "
        f"{ref['eval']['batched']['tokens_per_s']:,.0f} eval tokens/s), scaled to this model's "
        f"{shape.params / 1e9:.2f}B shape",
        f"scaling: {fit.step_overhead * 1e3:.2f} ms per block and R-SFT step, {fit.fwd_overhead * 1e3:.2f} ms per "
        f"block and eval batch (launch-bound) + the larger of weight traffic at {kind.efficiency:.0%} of "
        f"{kind.bandwidth / 1e12:.1f} TB/s and FLOPs at {kind.efficiency:.0%} of {kind.flops / 1e12:.0f} TFLOP/s "
        "(published peaks)",
        f"assumed: {tokens} tokens per prompt, {PROMPTS_PER_RECORD} prompts per record, lm-eval token counts per "
        f"document of each task, model load at {LOAD_BYTES_PER_S / 1e9:.0f} GB/s",
    ]
    return UnitCosts(
        update_s=update_s, candidate_s=candidate, pool_start_s=load_s + 2 * candidate, worker_load_s=load_s,
        basis=basis,
        measured={"reference_update_s": fit.update_s, "reference_layer": fit.layer,
                  "step_overhead_per_block_s": fit.step_overhead, "forward_overhead_per_block_s": fit.fwd_overhead,
                  "edit_eval_s": edit_s, "general_eval_s": general_s, "merge_s": merge_s, "model_load_s": load_s,
                  "assumed_tokens_per_prompt": tokens, "assumed_prompts_per_record": PROMPTS_PER_RECORD,
                  "assumed_task_tokens": {t: TASK_TOKENS.get(t, DEFAULT_TASK_TOKENS) for t in work.general_tasks},
                  "assumed_task_docs": {t: _task_docs(t, work.general_limit) for t in work.general_tasks},
                  "assumed_load_bytes_per_s": LOAD_BYTES_PER_S},
    )


def _merge_seconds(ref: dict, shape: ModelShape, ref_shape: ModelShape) -> float:
    """A candidate's merge (sparsify + apply + restore) scaled by the delta's size."""
    merge = ref.get("merge", {})
    ms = merge.get("ours_ms_sparsity_0.2", 5.0)
    return ms / 1e3 * shape.mlp_params_per_layer / max(1, ref_shape.mlp_params_per_layer)
