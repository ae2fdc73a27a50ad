"""Model plumbing shared by R-SFT, merging and evaluation: loading, layer lookup, encoding.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, commands on top;
modeling/ serves rsft, merge and evaluate. Names load on first use, so a light module (preflight,
the planner) can import `modeling.gguf` or `modeling.tokenizer_check` without torch.
"""

from mm4ke_ray.lazy import lazy_exports

_EXPORTS = {
    "EncodedExample": "encoding",
    "encode_example": "encoding",
    "format_prompt": "encoding",
    "decoder_layers": "layers",
    "mlp_parameter_names": "layers",
    "mlp_prefix": "layers",
    "load_model": "loading",
    "load_tokenizer": "loading",
    "capture_prefix": "prefix_cache",
    "skip_prefix": "prefix_cache",
    "check_auto_tokenizer": "tokenizer_check",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
