"""Find the transformer blocks and the MLP (FFN) of one block in any Hugging Face causal LM."""

from __future__ import annotations

from torch import nn

# Where common architectures keep their blocks; checked in order before the generic fallback.
_LAYER_PATHS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers")
# Names the FFN sub-module carries across architectures (Qwen2/Llama: mlp, GPT-2: mlp, ...).
_MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe")


def _get(module: nn.Module, dotted: str) -> nn.Module | None:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _layers_path(model: nn.Module) -> str:
    for path in _LAYER_PATHS:
        if isinstance(_get(model, path), nn.ModuleList):
            return path
    # Fallback: the longest ModuleList in the model is the stack of blocks.
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__}: no ModuleList of transformer blocks found")
    return max(lists, key=lambda nm: len(nm[1]))[0]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's stack of transformer blocks."""
    return _get(model, _layers_path(model))


def mlp_prefix(model: nn.Module, layer: int) -> str:
    """Parameter-name prefix of the MLP of block `layer`, e.g. 'model.layers.5.mlp'."""
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is out of range: the model has {len(layers)} layers (0..{len(layers) - 1})")
    block = layers[layer]
    for name in _MLP_NAMES:
        if isinstance(getattr(block, name, None), nn.Module):
            return f"{_layers_path(model)}.{layer}.{name}"
    raise ValueError(f"{type(block).__name__}: no MLP sub-module among {_MLP_NAMES}")


def mlp_parameter_names(model: nn.Module, layers: int | list[int]) -> list[str]:
    """Names (as in `model.named_parameters()`) of every parameter in the MLPs of `layers`."""
    layers = [layers] if isinstance(layers, int) else list(layers)
    prefixes = tuple(mlp_prefix(model, layer) + "." for layer in layers)
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]
