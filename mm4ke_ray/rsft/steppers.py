"""One record's R-SFT answer loss, from the trained block up (see trainer.py, "Speed").

`make_stepper` picks one: `SuffixStepper` calls blocks ≥ L, the final norm and the head directly
on the cached hidden state (Qwen2/Llama; compiled with `capture`), `ModelStepper` runs the
model's own forward with the lower blocks replaced (any other model, or no prefix cache).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mm4ke_ray.modeling import capture_prefix, decoder_layers, skip_prefix


@dataclass
class Example:
    """One edit record encoded for R-SFT, with what the steppers cache for it across epochs."""

    ids: torch.Tensor  # (1, T) on the model's device
    answer_start: int
    source: str
    hidden: torch.Tensor | None = None  # input of the first trained block, cached across epochs
    suffix: dict | None = None  # what `SuffixStepper` caches per record (mask, rotary, targets)


class ModelStepper:
    """One record's answer loss through the model's own forward, from block `first_layer` up
    (the lower blocks replayed from the cached hidden state; all blocks without the cache)."""

    kind = "model"
    captured = False

    def __init__(self, model: nn.Module, first_layer: int, use_prefix_cache: bool):
        self.model, self.first_layer = model, first_layer
        self.cache = use_prefix_cache and first_layer > 0
        self.trim = "logits_to_keep" in inspect.signature(model.forward).parameters

    def loss(self, ex: Example) -> torch.Tensor:
        if self.cache and ex.hidden is None:
            ex.hidden = capture_prefix(self.model, self.first_layer, ex.ids)
        n_answer = ex.ids.shape[1] - ex.answer_start
        kwargs = {"use_cache": False}
        if self.trim:  # the answer is the tail: logits of the last n_answer+1 positions suffice
            kwargs["logits_to_keep"] = n_answer + 1
        ctx = skip_prefix(self.model, self.first_layer, ex.hidden) if self.cache else nullcontext()
        with ctx:
            logits = self.model(input_ids=ex.ids, **kwargs).logits[0]
        # Position t predicts token t+1: the answer tokens are predicted by the n_answer positions
        # just before them, i.e. logits[-n_answer-1:-1].
        return F.cross_entropy(logits[-n_answer - 1 : -1].float(), ex.ids[0, ex.answer_start :])


# Model types whose decoder (transformers 5) is `model.model` with `layers`, `norm`, `rotary_emb`
# and blocks called as block(h, attention_mask=, position_embeddings=, position_ids=), as
# Qwen2Model/LlamaModel.forward call them; tested on both.
SUFFIX_MODEL_TYPES = ("qwen2", "llama")


def _suffix_ok(model: nn.Module) -> bool:
    inner = getattr(model, "model", None)
    return (
        getattr(model.config, "model_type", None) in SUFFIX_MODEL_TYPES
        and all(hasattr(inner, a) for a in ("layers", "norm", "rotary_emb", "embed_tokens"))
        and isinstance(getattr(model, "lm_head", None), nn.Linear)
        and not getattr(model.config, "final_logit_softcapping", None)
    )


def _bucket(n: int, size: int) -> int:
    return -(-n // size) * size


class SuffixStepper:
    """One record's answer loss from blocks ≥ L on the cached hidden state: the blocks, the final
    norm and the head, called directly (the floor of a step; no model forward around them).

    Per record, once: the hidden state entering block L, the rotary tables, the mask per layer
    type and the rows/targets of the answer. With `capture`, the step is compiled with static
    shapes: the sequence is right-padded to a multiple of `length_bucket` (causal attention: the
    real rows never see the padding) and the answer rows to a multiple of 4 (padded targets are
    ignored by the loss), so a handful of graphs serve all records; on CUDA in
    "reduce-overhead" mode (CUDA graphs), elsewhere with `compile_backend`.
    """

    kind = "suffix"

    def __init__(self, model: nn.Module, first_layer: int, *, capture: bool, length_bucket: int,
                 compile_backend: str | None):
        self.model, self.first_layer = model, first_layer
        self.inner = model.model
        self.layer_types = getattr(model.config, "layer_types", None)
        self.captured = capture
        self.length_bucket = length_bucket
        self.step = _suffix_loss
        if capture:
            on_cuda = next(model.parameters()).device.type == "cuda"
            self.step = _compiled_suffix_loss(compile_backend, on_cuda)

    def _prepare(self, ex: Example) -> dict:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        ids, start = ex.ids, ex.answer_start
        total = ids.shape[1]
        rows = torch.arange(start - 1, total - 1, device=ids.device)
        targets = ids[0, start:]
        if self.captured:  # static shapes: pad the sequence and the answer rows to buckets
            length = _bucket(total, self.length_bucket)
            ids = torch.cat([ids, ids[:, -1:].expand(1, length - total)], dim=1)
            n = _bucket(rows.numel(), 4)
            pad = n - rows.numel()
            rows = torch.cat([rows, rows.new_zeros(pad)])
            targets = torch.cat([targets, targets.new_full((pad,), -100)])
        hidden = capture_prefix(self.model, self.first_layer, ids)
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        with torch.no_grad():
            pe = self.inner.rotary_emb(hidden, pos)
            kw = dict(config=self.inner.config, inputs_embeds=hidden, attention_mask=None, cache=None,
                      position_ids=pos)
            masks = {"full_attention": create_causal_mask(**kw)}
            if getattr(self.inner, "has_sliding_layers", False):
                masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
        blocks = decoder_layers(self.model)
        per_block = [
            masks[self.layer_types[i]] if self.layer_types else masks["full_attention"]
            for i in range(self.first_layer, len(blocks))
        ]
        return {"hidden": hidden, "pe": pe, "masks": per_block, "pos": pos, "rows": rows,
                "targets": targets}

    def loss(self, ex: Example) -> torch.Tensor:
        if ex.suffix is None:
            ex.suffix = self._prepare(ex)
        c = ex.suffix
        return self.step(self.model, self.first_layer, c["hidden"], c["pe"], c["masks"], c["pos"],
                         c["rows"], c["targets"])


def _suffix_loss(model, first_layer, hidden, pe, masks, pos, rows, targets) -> torch.Tensor:
    """Blocks ≥ `first_layer` on the cached hidden state, then norm + head on the answer rows."""
    h = hidden
    for block, mask in zip(decoder_layers(model)[first_layer:], masks, strict=True):
        h = block(h, attention_mask=mask, position_embeddings=pe, position_ids=pos, use_cache=False)
    # A 2-D, contiguous selection of the answer rows: the head is then one `mm` (a strided 3-D
    # view made torch.matmul fall back to a slower bmm on the 32k-vocab head).
    h = model.model.norm(h[0].index_select(0, rows))
    return F.cross_entropy(model.lm_head(h).float(), targets, ignore_index=-100)


_COMPILED: dict[tuple, Callable] = {}


def _compiled_suffix_loss(backend: str | None, on_cuda: bool) -> Callable:
    """One compiled `_suffix_loss` per (backend, device kind) for the process: its graphs are
    guarded on the model object, the layer and the bucketed shapes, so consecutive runs on the same
    model (a warm-up, the next trial in a long-lived worker) reuse them instead of recompiling."""
    key = (backend, on_cuda)
    if key not in _COMPILED:
        options: dict = {"dynamic": False}
        if backend is not None:
            options["backend"] = backend
        elif on_cuda:
            options["mode"] = "reduce-overhead"  # inductor + CUDA graphs
        _COMPILED[key] = torch.compile(_suffix_loss, **options)
    return _COMPILED[key]


def make_stepper(model, first_layer, use_prefix_cache, capture, length_bucket, compile_backend):
    """The suffix stepper where the model allows it and the prefix is cached, else the model's own."""
    if use_prefix_cache and _suffix_ok(model):
        return SuffixStepper(model, first_layer, capture=capture, length_bucket=length_bucket,
                              compile_backend=compile_backend)
    return ModelStepper(model, first_layer, use_prefix_cache)


Stepper = ModelStepper | SuffixStepper
