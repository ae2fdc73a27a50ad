"""Run a causal LM from a cached hidden state: skip the frozen blocks below layer L.

R-SFT trains one block's MLP; every block below it is frozen and sees the same sample on every
step, so its output can be computed once (`capture_prefix`) and replayed (`skip_prefix`). The
same holds for evaluation of merge candidates that differ only in layer L and above.

How: `capture_prefix` runs the model until the input of block L and stops it there (a forward
pre-hook raises). `skip_prefix` temporarily puts, in the model's own `ModuleList` of blocks, a tiny
module in place of each block below L that returns the cached tensor and ignores its inputs. The
model's forward therefore runs unchanged (embeddings, rotary tables, masks, final norm, head) and
only the blocks ≥ L cost anything. This works for any model whose blocks return the hidden state
as a plain tensor (Qwen2, Llama, GPT-2 in transformers 5); a guard raises when a model transforms
a block's output before passing it on (e.g. older transformers whose blocks return tuples).

Use only for teacher-forced forwards without a KV cache (`use_cache=False`): the skipped blocks
write nothing into a cache, and the outputs the model records per block (`output_hidden_states`)
are missing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from mm4ke_ray.modeling.layers import decoder_layers

__all__ = ["capture_prefix", "skip_prefix"]


class _StopForward(Exception):
    """Raised by the capture hook to end the forward pass at the input of block L."""


def _check_layer(model: nn.Module, layer: int) -> nn.ModuleList:
    blocks = decoder_layers(model)
    if not 0 <= layer < len(blocks):
        raise ValueError(
            f"layer {layer} is out of range: the model has {len(blocks)} layers (0..{len(blocks) - 1})"
        )
    return blocks


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    # Qwen2/Llama/GPT-2 pass the hidden state positionally; accept the keyword too.
    return args[0] if args else kwargs["hidden_states"]


@torch.no_grad()
def capture_prefix(
    model: nn.Module,
    layer: int,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    **forward_kwargs,
) -> torch.Tensor:
    """The hidden state entering block `layer` for this batch, shape (batch, seq, hidden).

    Runs only the embeddings and blocks `0..layer-1` (the forward stops at block `layer`), under
    `no_grad`, so the result carries no autograd graph. Pass the same `input_ids`,
    `attention_mask` (and e.g. `position_ids`) to the later forward under `skip_prefix`.
    """
    blocks = _check_layer(model, layer)
    captured: list[torch.Tensor] = []

    def hook(_module, args, kwargs):
        captured.append(_hidden_arg(args, kwargs))
        raise _StopForward

    handle = blocks[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **forward_kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(
            f"{type(model).__name__}: block {layer} was never called; cannot capture its input"
        )
    return captured[0].detach()


class _Replay(nn.Module):
    """Stands in for a skipped block: returns the cached hidden state, ignoring its inputs."""

    def __init__(self, hidden: torch.Tensor):
        super().__init__()
        self.hidden = hidden

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        # A cache captured for another batch would silently produce wrong logits: refuse it.
        if hidden_states.shape[:-1] != self.hidden.shape[:-1]:
            raise ValueError(
                f"cached prefix has shape {tuple(self.hidden.shape)} but this forward's hidden state is "
                f"{tuple(hidden_states.shape)}: capture the prefix for the same input_ids"
            )
        return self.hidden


@contextmanager
def skip_prefix(model: nn.Module, layer: int, hidden: torch.Tensor) -> Iterator[nn.Module]:
    """Within the block, forwards of `model` skip blocks `0..layer-1` and start block `layer`
    from `hidden` (from `capture_prefix` on the same inputs). At `layer == 0` nothing is skipped
    (the embedding is a lookup) and `hidden` is not used. Restores the original blocks on exit.
    """
    blocks = _check_layer(model, layer)
    if layer == 0:
        yield model
        return
    originals = [blocks[i] for i in range(layer)]
    replay = _Replay(hidden)

    def guard(_module, args, kwargs):
        # The model must hand block L exactly what block L-1 returned; a model that unpacks or
        # post-processes block outputs (tuple-returning blocks) would corrupt the cached state.
        if _hidden_arg(args, kwargs) is not hidden:
            raise RuntimeError(
                f"{type(model).__name__}: block {layer} did not receive block {layer - 1}'s output "
                "unchanged; prefix skipping needs blocks that return a plain tensor (transformers >= 5)"
            )

    handle = blocks[layer].register_forward_pre_hook(guard, with_kwargs=True)
    try:
        for i in range(layer):
            blocks[i] = replay
        yield model
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
        handle.remove()
