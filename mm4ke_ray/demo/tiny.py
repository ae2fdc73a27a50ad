"""Tiny causal LMs and word-level tokenizers built from configs, for tests, demos and benchmarks.

Nothing here downloads anything: the tokenizer is trained with `tokenizers` on the given texts.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>"]
# A minimal chat template so that prompt_format "chat" works with the tiny tokenizer too.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_word_tokenizer(texts: Iterable[str], min_frequency: int = 1):
    """A word-level tokenizer (split on whitespace and punctuation) trained on `texts`.

    Word-level keeps every prompt's tokens a prefix of prompt+answer tokens, which a small-vocab
    BPE does not guarantee.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # The chat template's own words are added so that prompt_format "chat" has no unknown tokens.
    # show_progress off: its "Pre-processing sequences" bar drew over the demo build's own lines
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=min_frequency, show_progress=False)
    tok.train_from_iterator([*texts, "user : assistant : system :"], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model(arch: str, vocab_size: int, hidden: int = 64, layers: int = 4, seed: int = 0):
    """A randomly initialised causal LM of architecture `arch` ('qwen2', 'llama' or 'gpt2')."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    if arch == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4, n_positions=256,
                            bos_token_id=2, eos_token_id=3, pad_token_id=0)
    elif arch in ("qwen2", "llama"):
        cls = Qwen2Config if arch == "qwen2" else LlamaConfig
        config = cls(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2,
                     num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=256, tie_word_embeddings=False,
                     bos_token_id=2, eos_token_id=3, pad_token_id=0)
    else:
        raise ValueError(f"arch must be 'qwen2', 'llama' or 'gpt2', got {arch!r}")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def save_pretrained_pair(model, tokenizer, out: str | Path) -> Path:
    """Save model (safetensors) and tokenizer side by side as a Hugging Face directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
