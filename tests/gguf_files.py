"""Small GGUF files written by the tests themselves (gguf's GGUFWriter), in llama.cpp's layout.

`write_llama_gguf` stores a Hugging Face Llama model the way llama.cpp's convert_hf_to_gguf.py
does: llama.cpp tensor names, q/k rows permuted for its rotary layout (transformers undoes that
when it loads), F32 tensors, and a byte-level BPE tokenizer as `tokenizer.ggml.*` metadata
('gpt2' model, as SmolLM2's GGUF has).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def train_byte_bpe(texts: list[str], vocab_size: int = 400):
    """A byte-level BPE (GPT-2's pre-tokenizer) trained on `texts`, its special tokens first."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return tok


def _permute(w, n_head: int):
    # llama.cpp's convert_hf_to_gguf.py LlamaModel.permute: rotary halves interleaved per head.
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, tokenizer, path: Path, architecture: str = "llama") -> Path:
    """Write `model` (a transformers LlamaForCausalLM) and `tokenizer` (a `tokenizers` byte-level
    BPE) as an F32 GGUF file. `architecture` is what general.architecture says (tests of an
    unsupported one pass another name; the tensors stay llama's)."""
    import json

    import gguf

    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny test llama")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(c.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    spec = json.loads(tokenizer.to_str())
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types([gguf.TokenType.CONTROL if t in SPECIALS else gguf.TokenType.NORMAL for t, _ in vocab])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.token_to_id("<|im_start|>"))
    writer.add_eos_token_id(tokenizer.token_to_id("<|im_end|>"))
    writer.add_pad_token_id(tokenizer.token_to_id("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, c.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        data = tensor.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            data = _permute(data, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, c.num_key_value_heads)
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def zsre_texts(records: list[dict]) -> list[str]:
    """Text to train a test BPE on: every prompt and answer of the (raw KnowEdit) records."""
    texts = []
    for r in records:
        texts += [r["prompt"], r["target_new"], r.get("rephrase_prompt", ""), *r.get("ground_truth", [])]
        for kind in ("locality", "portability"):
            for items in (r.get(kind) or {}).values():
                for it in items:
                    gt = it["ground_truth"]
                    texts += [it["prompt"], gt if isinstance(gt, str) else " ".join(map(str, gt))]
    return texts


def tiny_llama_gguf(folder: Path, texts: list[str], layers: int = 2, seed: int = 0):
    """(source model, BPE, path): a tiny Llama with a BPE trained on `texts`, written as F32 GGUF."""
    from mm4ke_ray.demo.tiny import build_tiny_model

    bpe = train_byte_bpe(texts)
    model = build_tiny_model("llama", bpe.get_vocab_size(), hidden=64, layers=layers, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    return model, bpe, write_llama_gguf(model, bpe, folder / "tiny-llama.F32.gguf")
