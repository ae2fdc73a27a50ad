"""config.json of the hub models the shipped search spaces name, for planning while offline.

Copied from the models' hub repositories (the fields the planner reads). Only a stand-in: a
local folder or the Hugging Face cache always wins, and the plan names which one it used.
"""

from __future__ import annotations

_QWEN25 = {"model_type": "qwen2", "hidden_act": "silu"}

KNOWN_CONFIGS: dict[str, dict] = {
    "Qwen/Qwen2.5-7B-Instruct": {
        **_QWEN25, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "Qwen/Qwen2.5-0.5B-Instruct": {
        **_QWEN25, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    # The real config's model (smollm2_zsre.yaml) and the reference of `plan --from-real` (scaled.py).
    "HuggingFaceTB/SmolLM2-135M-Instruct": {
        "model_type": "llama", "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
}
