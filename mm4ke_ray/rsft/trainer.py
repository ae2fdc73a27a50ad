"""Algorithm 1 (R-SFT): train one block's MLP on the edits, return θ_sft − θ_base.

    for e in 1..E:
      for n in 1..N:                 # records in the given order
        for k in 1..K:
          L = mean token NLL of the answer tokens given the prompt
          if L < τ: break
          θ ← optimizer step on L      # batch size 1

Speed: the blocks below the trained one are frozen and see the same record on every step, so
their output is computed once per record (`capture_prefix`, kept for all epochs) and every step
runs only the blocks ≥ L (steppers.py). For Qwen2/Llama (`SuffixStepper`) a step calls those
blocks directly with the rotary tables and mask computed once per record too, and the final norm
and head run on the answer rows only (a contiguous 2-D slice: one `mm`); other models run their own forward
with the lower blocks replaced (`skip_prefix`, `ModelStepper`). `capture=True` additionally
compiles that suffix step (torch.compile, static shapes per length bucket; CUDA graphs on a GPU:
batch-1 steps there are bound by kernel launches and Python, not by arithmetic).
The loss after an edit's K-th update costs one more forward, so it is measured on request only
(`final_loss=True`); an early-stopped edit's last loss is the one that stopped it.

Precision: in bfloat16/float16 the trained MLP keeps float32 master weights and optimizer state
(as LLaMA-Factory upcasts trainable parameters): the forward and backward run in the model's own
dtype, the gradient is upcast, AdamW updates the float32 copy, and the model's tensor is that copy
rounded once per step. An update of lr 5e-5 on a weight of ~0.02 is below half a bfloat16 ulp and
would otherwise be rounded away. The delta is master − float32(base). Extra memory: one float32
copy of the trained MLP (plus AdamW's two float32 moments, which it would have in bf16 anyway).

The model is trained in place and given back exactly as it came: its MLP tensors are snapshotted
before and copied back after (also on error), as are `requires_grad` flags and train/eval mode.
Training runs in eval mode (no dropout), which keeps the cached prefix exact; Qwen2/Llama
configs have no dropout anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from mm4ke_ray.data.records import EditRecord
from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling import decoder_layers, mlp_parameter_names
from mm4ke_ray.modeling.encoding import (
    EVAL_SCORING,
    SUPERVISED,
    TRAIN_SUPERVISION,
    encode_training_example,
)
from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.rsft.steppers import Example, Stepper, make_stepper

LOSS_DEFINITION = "mean token NLL over the supervised tokens: the answer tokens, in chat format with the end of turn (see supervision)"


class DivergedError(RuntimeError):
    """The answer loss became NaN or infinite; a sweep records the trial as failed."""

    def __init__(
        self,
        index: int,
        epoch: int,
        step: int,
        loss: float,
        source: str = "",
        lr: float | None = None,
    ):
        self.index, self.epoch, self.step, self.loss = index, epoch, step, loss
        where = f"record {index}" + (f" ({source})" if source else "")
        hint = f"; lower lr (was {lr:g})" if lr is not None else ""
        super().__init__(
            f"R-SFT diverged: loss {loss} at {where}, epoch {epoch}, step {step}{hint}"
        )


@dataclass
class RSFTResult:
    """What R-SFT produced: the delta and a per-record, per-epoch log.

    `samples[j]` = {index (0-based record), epoch (1-based), steps (updates taken), losses}; with
    `losses[s]` the loss before update s+1. An edit that stopped early ends with the loss below τ
    that stopped it (`len(losses) == steps + 1`); one that used all K updates ends with the loss
    before the K-th update (K losses), or, run with `final_loss=True`, with the loss after it
    (K + 1 losses, one extra forward per such edit).
    """

    delta: dict[str, torch.Tensor]
    samples: list[dict]
    updates: int
    seconds: float
    layers: list[int]
    config: RSFTConfig
    num_records: int = 0
    trained_tensors: list[str] = field(default_factory=list)
    final_loss: bool = False  # whether losses[-1] is measured after an edit's K-th update
    master_dtype: str = "float32"  # dtype the optimizer updated (float32 also for a bf16 model)
    model_dtype: str = "float32"
    stepper: str = "model"  # "suffix" (blocks >= L called directly) or "model" (the model's forward)
    captured: bool = False  # whether the suffix step ran compiled (torch.compile / CUDA graphs)
    schedule_updates: int = 0  # E·N·K: the horizon of the learning-rate schedule

    def as_json(self) -> dict:
        """Everything but the tensors, JSON-serialisable (for rsft.json, MLflow, Tune results)."""
        reached = sum(1 for s in self.samples if s["losses"][-1] < self.config.threshold)
        return {
            "config": self.config.model_dump(),
            "layers": self.layers,
            "trained_tensors": self.trained_tensors,
            "loss": LOSS_DEFINITION,
            "num_records": self.num_records,
            "updates": self.updates,
            "seconds": self.seconds,
            "final_loss": self.final_loss,
            "supervision": {
                "train": TRAIN_SUPERVISION[self.config.prompt_format],
                "rule": SUPERVISED[self.config.prompt_format],
                "evaluation": EVAL_SCORING,
            },
            "precision": {"model": self.model_dtype, "master": self.master_dtype},
            "lr_schedule": {
                "kind": self.config.lr_schedule,
                "warmup_ratio": self.config.warmup_ratio,
                "horizon_updates": self.schedule_updates,
            },
            "stepper": self.stepper,
            "captured": self.captured,
            "below_threshold": reached,  # record-epochs whose last loss is below τ
            "samples": self.samples,
        }


def _check_layers(model: nn.Module, layers: list[int]) -> None:
    n = len(decoder_layers(model))
    bad = [x for x in layers if x >= n]
    if bad:
        raise UserError(
            f"rsft layer {bad[0]} is out of range: the model has {n} layers (0..{n - 1}); choose a layer below {n}"
        )


def _encode(tokenizer, records: Sequence[EditRecord], prompt_format: str, device) -> list[Example]:
    examples = []
    for i, rec in enumerate(records):
        try:
            enc = encode_training_example(tokenizer, rec.prompt, rec.target_new, prompt_format)
        except ValueError as exc:
            raise UserError(f"edit record {i} ({rec.source or 'no source'}): {exc}") from exc
        if enc.answer_start == 0:  # nothing precedes the first answer token to predict it
            raise UserError(
                f"edit record {i} ({rec.source or 'no source'}): the prompt encodes to no tokens; "
                "give a non-empty prompt"
            )
        ids = torch.tensor([enc.input_ids], dtype=torch.long, device=device)
        examples.append(Example(ids, enc.answer_start, rec.source))
    return examples


def _make_optimizer(params: list[torch.Tensor], config: RSFTConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)  # no momentum: eq. 2 of the paper
    try:
        # The fused kernel is one pass over the tensors: on CPU a 110M model's MLP step took
        # 3 ms instead of 18-30 ms, a visible share of a ~150 ms R-SFT step.
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0, fused=True)
    except RuntimeError:  # a device/dtype without a fused kernel
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)


def lr_factor(config: RSFTConfig, horizon: int) -> Callable[[int], float]:
    """η's multiplier before update `u + 1` (u = updates taken so far), as transformers'
    get_constant_schedule_with_warmup / get_linear_schedule_with_warmup /
    get_cosine_schedule_with_warmup compute it (LLaMA-Factory's schedules) over `horizon` = E·N·K."""
    warmup = math.ceil(config.warmup_ratio * horizon)
    kind = config.lr_schedule

    def factor(u: int) -> float:
        if u < warmup:
            return u / max(1, warmup)
        if kind == "constant":
            return 1.0
        progress = (u - warmup) / max(1, horizon - warmup)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return factor


class _Masters:
    """Float32 master copies of half-precision trained tensors (LLaMA-Factory upcasts trainable
    parameters): the optimizer updates `self.tensors`; after each step the model's tensor is the
    master rounded once. Float32 parameters are their own masters (no copy, no extra work)."""

    def __init__(self, trained: list[nn.Parameter]):
        self.trained = trained
        self.tensors = [p if p.dtype == torch.float32 else p.detach().float() for p in trained]
        self.upcast = any(m is not p for m, p in zip(self.tensors, trained, strict=True))

    def grads_to_masters(self) -> None:
        if not self.upcast:
            return
        for m, p in zip(self.tensors, self.trained, strict=True):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        if not self.upcast:
            return
        for m, p in zip(self.tensors, self.trained, strict=True):
            if m is not p:
                p.copy_(m)


def run_rsft(
    model: nn.Module,
    tokenizer,
    records: Sequence[EditRecord],
    config: RSFTConfig,
    progress: Callable[[dict], None] | None = None,
    *,
    final_loss: bool = False,
    use_prefix_cache: bool = True,
    capture: bool = False,
    length_bucket: int = 16,
    compile_backend: str | None = None,
) -> RSFTResult:
    """Run Algorithm 1 on `records` and return the delta of the trained MLP tensors.

    Only the MLP parameters of `config.layers` are trained (`mlp_parameter_names`); the model is
    restored bit-exactly before returning or raising. `progress`, if given, is called after each
    record of each epoch with that record's log entry plus `done`/`total`/`updates` counts.
    `final_loss=True` runs one more no-grad forward after an edit's K-th update to log the loss
    it reached (about 1/(2.5·K) of the run time; off by default: the delta is the same).
    `use_prefix_cache=False` runs every block on every step (for tests and benchmarks).
    `capture=True` compiles the suffix step (Qwen2/Llama; static shapes per `length_bucket`;
    CUDA graphs on a GPU, `compile_backend` elsewhere, default inductor); other models ignore it
    (`RSFTResult.captured` says whether it ran compiled).
    Raises `UserError` for a layer out of range or an unencodable record, `DivergedError` when
    the loss becomes NaN/inf.
    """
    layers = config.layers
    _check_layers(model, layers)
    if not records:
        raise UserError("no edit records to train on: check the data file and --limit")
    if length_bucket < 1:
        raise ValueError(f"length_bucket must be >= 1, got {length_bucket}")
    names = mlp_parameter_names(model, layers)
    params = dict(model.named_parameters())
    trained = [params[n] for n in names]
    device = trained[0].device
    start = time.perf_counter()
    examples = _encode(tokenizer, records, config.prompt_format, device)

    base = {n: p.detach().clone() for n, p in zip(names, trained, strict=True)}
    flags = {n: p.requires_grad for n, p in params.items()}
    was_training = model.training
    stepper = make_stepper(model, layers[0], use_prefix_cache, capture, length_bucket, compile_backend)
    loop = _Loop(stepper, examples, config, progress, final_loss)
    masters = _Masters(trained)
    delta: dict[str, torch.Tensor] = {}
    try:
        model.eval()
        for p in params.values():
            p.requires_grad_(False)
        for p in trained:
            p.requires_grad_(True)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            loop.run(_make_optimizer(masters.tensors, config), masters)
        delta = _delta(names, masters.tensors, base)
    finally:
        with torch.no_grad():
            for n, p in zip(names, trained, strict=True):
                p.copy_(base[n])
                p.grad = None
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)
    return RSFTResult(
        delta=delta,
        samples=loop.samples,
        updates=loop.updates,
        seconds=time.perf_counter() - start,
        layers=layers,
        config=config,
        num_records=len(examples),
        trained_tensors=names,
        final_loss=final_loss,
        master_dtype=str(masters.tensors[0].dtype).removeprefix("torch."),
        model_dtype=str(trained[0].dtype).removeprefix("torch."),
        stepper=stepper.kind,
        captured=stepper.captured,
        schedule_updates=loop.horizon,
    )


@torch.no_grad()
def _delta(names: list[str], trained: list[torch.Tensor], base: dict) -> dict[str, torch.Tensor]:
    """master − float32(base) in float32 on the CPU (exact in float32 for a bf16 base; the
    master is float32 for a half-precision model, so no update was rounded away).

    A plain `.cpu()`: page-locked memory copies a 7B model's 0.8 GB MLP delta 13x faster, but
    only once allocated, and allocating it cost ~1 s on an H200, more than the copy it saves in a
    fresh trial process (measured: pageable 0.5 s).
    """
    return {
        n: (p.detach().float() - base[n].float()).cpu() for n, p in zip(names, trained, strict=True)
    }


@dataclass
class _Loop:
    """The three nested loops of Algorithm 1 and their log."""

    stepper: Stepper
    examples: list[Example]
    config: RSFTConfig
    progress: Callable[[dict], None] | None
    final_loss: bool
    samples: list[dict] = field(default_factory=list)
    updates: int = 0

    @property
    def horizon(self) -> int:
        """E·N·K: the most updates a run can take, the horizon of the learning-rate schedule."""
        return self.config.epochs * len(self.examples) * self.config.steps

    def _checked(self, loss: torch.Tensor, index: int, epoch: int, step: int) -> float:
        value = loss.item()
        if not math.isfinite(value):
            source = self.examples[index].source
            raise DivergedError(index, epoch, step, value, source, self.config.lr)
        return value

    def run(self, optimizer: torch.optim.Optimizer, masters: _Masters) -> None:
        config, total = self.config, self.config.epochs * len(self.examples)
        scheduled = config.lr_schedule != "constant" or config.warmup_ratio > 0
        factor = lr_factor(config, self.horizon)
        for epoch in range(1, config.epochs + 1):
            for index, ex in enumerate(self.examples):
                losses: list[float] = []
                steps = 0
                for step in range(1, config.steps + 1):
                    loss = self.stepper.loss(ex)
                    losses.append(self._checked(loss, index, epoch, step))
                    if losses[-1] < config.threshold:
                        break
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    masters.grads_to_masters()
                    if scheduled:  # the constant schedule leaves lr untouched (bit-identical)
                        for group in optimizer.param_groups:
                            group["lr"] = config.lr * factor(self.updates + steps)
                    optimizer.step()
                    masters.masters_to_model()
                    steps += 1
                else:  # K updates taken: record where they left the loss, if asked
                    if self.final_loss:
                        with torch.no_grad():
                            loss = self.stepper.loss(ex)
                        losses.append(self._checked(loss, index, epoch, config.steps + 1))
                self.updates += steps
                entry = {"index": index, "epoch": epoch, "steps": steps, "losses": losses}
                self.samples.append(entry)
                if self.progress is not None:
                    done = len(self.samples)
                    self.progress({**entry, "updates": self.updates, "done": done, "total": total})
