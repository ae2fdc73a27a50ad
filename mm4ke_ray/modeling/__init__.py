"""Model plumbing shared by R-SFT, merging and evaluation: loading, layer lookup, encoding.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, commands on top;
modeling/ serves rsft, merge and evaluate. Names load on first use, so a light module (preflight,
the planner) can import `modeling.gguf` or `modeling.tokenizer_check` without torch.
"""

from mm4ke_ray.lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "encoding": ("EncodedExample", "encode_example", "format_prompt"),
    "layers": ("decoder_layers", "mlp_parameter_names", "mlp_prefix"),
    "loading": ("load_model", "load_tokenizer"),
    "prefix_cache": ("capture_prefix", "skip_prefix"),
    "tokenizer_check": ("check_auto_tokenizer",),
})
