"""A model's size and shape without loading its weights: config.json + safetensors headers.

A safetensors file starts with an 8-byte little-endian header length and a JSON header that
lists every tensor's dtype and shape, so the parameter count and the bytes a load reads are
exact for a local checkpoint at the cost of reading a few kilobytes. A hub id is read from the
local Hugging Face cache (or the hub, when online); offline and uncached, a short built-in
table of the shipped configs' models stands in (`known_models.py`), and the plan says so.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling.gguf import resolve_model_source
from mm4ke_ray.planning.known_models import KNOWN_CONFIGS

# Bytes per element of the safetensors dtypes (a checkpoint's own dtype, not the run's).
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
RUN_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder-only model."""

    params: int  # every parameter (a tied head counted once)
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    tied_embeddings: bool
    source: str  # where these figures came from (file names, or "built-in table")

    @property
    def mlp_params_per_layer(self) -> int:
        """Gate, up and down projections (the tensors R-SFT trains and a delta holds)."""
        return 3 * self.hidden * self.intermediate

    @property
    def block_params(self) -> int:
        """One decoder block: attention (q, o full; k, v at the kv-head width) + MLP."""
        head_dim = self.hidden // max(1, self.heads)
        attn = 2 * self.hidden * self.hidden + 2 * self.hidden * head_dim * self.kv_heads
        return attn + self.mlp_params_per_layer

    def as_json(self) -> dict:
        return {**asdict(self), "mlp_params_per_layer": self.mlp_params_per_layer}


def safetensors_header(path: Path) -> dict:
    """The JSON header of one .safetensors file (tensor name → dtype, shape, offsets)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise UserError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (length,) = struct.unpack("<Q", raw)
        if length > 100_000_000:
            raise UserError(f"{path}: not a safetensors file (header length {length} is implausible)")
        try:
            return json.loads(f.read(length))
        except ValueError as exc:
            raise UserError(f"{path}: not a safetensors file (its header is not JSON: {exc})") from None


def checkpoint_params(folder: Path) -> tuple[int, int, list[str]] | None:
    """(parameters, bytes, file names) summed over a folder's *.safetensors; None if it has none."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    params = size = 0
    for path in files:
        for name, info in safetensors_header(path).items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            params += n
            size += n * _DTYPE_BYTES.get(info["dtype"], 4)
    return params, size, [p.name for p in files]


def shape_from_config(cfg: dict, source: str, params: int | None = None) -> ModelShape:
    """A ModelShape from a transformers config.json mapping (Qwen2/Llama/Mistral/GPT-2 names)."""
    text = cfg.get("text_config", cfg)  # multimodal configs nest the language model's

    def pick(*names, default=None):
        for n in names:
            if text.get(n) is not None:
                return text[n]
        if default is None:
            raise UserError(f"{source}: config.json has none of {', '.join(names)}; is this a causal LM?")
        return default

    hidden = int(pick("hidden_size", "n_embd", "d_model"))
    layers = int(pick("num_hidden_layers", "n_layer", "num_layers"))
    heads = int(pick("num_attention_heads", "n_head"))
    shape = dict(
        layers=layers, hidden=hidden, intermediate=int(pick("intermediate_size", "n_inner", default=4 * hidden)),
        vocab=int(pick("vocab_size")), heads=heads, kv_heads=int(pick("num_key_value_heads", default=heads)),
        tied_embeddings=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))),
    )
    if params is None:  # no weights at hand: count from the shape (biases and norms are noise)
        probe = ModelShape(params=0, source=source, **shape)
        head = 0 if probe.tied_embeddings else probe.vocab * hidden
        params = probe.vocab * hidden + head + layers * probe.block_params
    return ModelShape(params=params, source=source, **shape)


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub answers at all (its client would otherwise retry for ~25 s offline)."""
    import os
    import socket

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _hub_config(name: str) -> tuple[dict, Path | None] | None:
    """config.json of a hub model from the local cache or, when online, the hub; None if neither."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    path = None
    for local_only in (True, False):
        if not local_only and not hub_reachable():
            break
        try:
            path = Path(hf_hub_download(name, "config.json", local_files_only=local_only))
            break
        except Exception:  # noqa: BLE001 - not cached, offline, no such repo, any client's network error
            continue
    if path is None:
        return None
    return json.loads(path.read_text()), path.parent


def read_model_shape(name: str) -> ModelShape:
    """The shape and parameter count of `name`: a local model folder, a hub id or a .gguf file
    (read from its dequantized folder, made first if needed)."""
    folder = Path(resolve_model_source(name))
    if folder.is_dir():
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise UserError(f"model '{name}': the folder has no config.json (a Hugging Face model folder has one)")
        counted = checkpoint_params(folder)
        source = f"{config_file}" + (f" + safetensors headers ({len(counted[2])} file(s))" if counted else "")
        return shape_from_config(json.loads(config_file.read_text()), source, counted[0] if counted else None)
    found = _hub_config(name)
    if found is not None:
        cfg, snapshot = found
        counted = checkpoint_params(snapshot) if snapshot else None
        return shape_from_config(cfg, f"config.json of {name} (Hugging Face cache)", counted[0] if counted else None)
    if name in KNOWN_CONFIGS:
        return shape_from_config(KNOWN_CONFIGS[name], f"built-in copy of {name}'s config.json (hub not reachable)")
    raise UserError(
        f"model '{name}': no local folder, not in the Hugging Face cache, and the hub is not reachable; "
        "download its config.json (huggingface-cli download NAME config.json) or give a local folder"
    )


def go_offline() -> None:
    """Make the Hugging Face clients of this process read their caches only: offline, each hub
    read would otherwise retry for ~25 s (printing a line per retry) before failing."""
    import os
    import sys

    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    # the clients read these at import: a loaded one is told directly
    for module, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                         ("datasets.config", "HF_DATASETS_OFFLINE")):
        if module in sys.modules and hasattr(sys.modules[module], attr):
            setattr(sys.modules[module], attr, True)
