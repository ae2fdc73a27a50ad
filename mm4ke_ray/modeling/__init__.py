"""Model plumbing shared by R-SFT, merging and evaluation: loading, layer lookup, encoding.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, commands on top;
modeling/ serves rsft, merge and evaluate.
"""

from mm4ke_ray.modeling.encoding import EncodedExample, encode_example, format_prompt
from mm4ke_ray.modeling.layers import decoder_layers, mlp_parameter_names, mlp_prefix
from mm4ke_ray.modeling.loading import load_model, load_tokenizer
from mm4ke_ray.modeling.prefix_cache import capture_prefix, skip_prefix
from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

__all__ = [
    "EncodedExample",
    "capture_prefix",
    "check_auto_tokenizer",
    "decoder_layers",
    "encode_example",
    "format_prompt",
    "load_model",
    "load_tokenizer",
    "mlp_parameter_names",
    "mlp_prefix",
    "skip_prefix",
]
