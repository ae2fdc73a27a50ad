"""Models from GGUF files: dequantized once into a cached Hugging Face folder.

transformers reads a GGUF (`from_pretrained(folder, gguf_file=...)`, with the `gguf` package) and
dequantizes it, but such a model refuses `save_pretrained` and every load dequantizes again.
So a `.gguf` given as a model is turned, once, into a normal folder (config.json, float32
safetensors, tokenizer) under `<cache root>/gguf/<stem>-<sha256[:16]>`; every loader, command and
Ray worker then uses that folder (`resolve_model_source`). The folder is written in a hidden
sibling under a file lock and renamed into place, so two processes never race on it, and
`mm4ke_gguf.json` (written last) names the file's digest, architecture and quantization type.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from mm4ke_ray.cache import default_cache_root
from mm4ke_ray.digest import sha256_file
from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

SUFFIX = ".gguf"
INFO_FILE = "mm4ke_gguf.json"
CACHE_DIR = "gguf"
DEQUANTIZED_DTYPE = "float32"
_INSTALL = "pip install 'mm4ke-ray[gguf]' (or: pip install gguf)"


def is_gguf(name: str | os.PathLike) -> bool:
    """True when `name` names a GGUF file (by its suffix; whether it exists is checked later)."""
    return str(name).lower().endswith(SUFFIX)


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file is: its digest, architecture, layer count and quantization type."""

    file: str
    sha256: str
    architecture: str
    block_count: int | None
    quantization: str  # e.g. "Q4_1", from general.file_type (else the most common tensor type)
    dequantized_to: str = DEQUANTIZED_DTYPE


def _file(name: str | os.PathLike) -> Path:
    path = Path(name).expanduser()
    if not path.is_file():
        raise UserError(f"model path '{name}' does not exist or is not a file (a .gguf model must be a local file)")
    return path.resolve()


def file_sha256(name: str | os.PathLike) -> str:
    """The file's SHA-256 (hex); remembered per process while its size and mtime stay the same."""
    path = _file(name)
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def _reader(path: Path):
    try:
        import gguf
    except ImportError:
        raise UserError(f"model '{path}' is a GGUF file, which needs the gguf package: {_INSTALL}") from None
    try:
        return gguf, gguf.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:  # a truncated or non-GGUF file
        raise UserError(f"model '{path}' is not a readable GGUF file: {exc}") from None


def _quantization(gguf, reader) -> str:
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            return gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    kinds = [gguf.GGMLQuantizationType(t.tensor_type).name for t in reader.tensors if len(t.shape) > 1]
    return max(set(kinds), key=kinds.count) if kinds else "unknown"


def read_gguf_info(name: str | os.PathLike) -> GGUFInfo:
    """The GGUF's metadata (no tensor is read); from the cached folder's record when there is one."""
    path = _file(name)
    digest = file_sha256(path)
    cached = _recorded(cache_folder(path, digest), digest)
    if cached is not None:
        return GGUFInfo(**{k: cached[k] for k in GGUFInfo.__dataclass_fields__})
    gguf, reader = _reader(path)
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise UserError(f"model '{path}' has no general.architecture in its GGUF metadata; it is no model file")
    arch = str(arch_field.contents())
    blocks = reader.fields.get(f"{arch}.block_count")
    return GGUFInfo(
        file=path.name,
        sha256=digest,
        architecture=arch,
        block_count=int(blocks.contents()) if blocks is not None else None,
        quantization=_quantization(gguf, reader),
    )


def check_gguf_source(name: str | os.PathLike) -> GGUFInfo:
    """Fail early, naming the file, for a GGUF that cannot become a model here: missing, not a
    GGUF, the gguf package missing, or an architecture transformers cannot load."""
    info = read_gguf_info(name)
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    # transformers renames a few llama.cpp names (qwen2moe -> qwen2_moe, ...) before its own check.
    known = {a.replace("_", "") for a in GGUF_SUPPORTED_ARCHITECTURES} | set(GGUF_SUPPORTED_ARCHITECTURES)
    if info.architecture not in known and info.architecture.replace("-", "").replace("_", "") not in known:
        raise _unsupported(name, info.architecture)
    return info


def _unsupported(name, architecture: str) -> UserError:
    from transformers import __version__
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return UserError(
        f"model '{name}': GGUF architecture '{architecture}' cannot be loaded by transformers {__version__} "
        f"(it loads GGUF files of: {', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert the model to a "
        "Hugging Face folder (config.json + safetensors) or use a GGUF of a supported architecture"
    )


def cache_folder(name: str | os.PathLike, digest: str | None = None, cache_root: Path | None = None) -> Path:
    """Where the dequantized folder of this GGUF lives (whether or not it has been written)."""
    path = Path(name)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    return root / CACHE_DIR / f"{path.stem}-{(digest or file_sha256(path))[:16]}"


def _recorded(folder: Path, digest: str) -> dict | None:
    """The folder's record when it is a finished dequantization of the file with `digest`."""
    try:
        record = json.loads((folder / INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("sha256") == digest else None


def dequantized_folder(name: str | os.PathLike, cache_root: Path | None = None) -> Path:
    """The cached Hugging Face folder of GGUF file `name`, dequantizing it first if needed.

    Safe to call from several processes at once (Ray workers): one dequantizes under a file
    lock, the others wait and reuse its result.
    """
    from filelock import FileLock

    path = _file(name)
    digest = file_sha256(path)
    final = cache_folder(path, digest, cache_root)
    if _recorded(final, digest) is not None:
        return final
    info = check_gguf_source(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final.parent / f".{final.name}.lock")):
        if _recorded(final, digest) is not None:
            return final  # another process finished it while this one waited
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed process: the
            shutil.rmtree(stale, ignore_errors=True)  # lock is held, so no one is writing it
        tmp = final.parent / f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            _dequantize_into(path, tmp, info)
            if final.exists():  # an unfinished folder (no record): replaced whole
                shutil.rmtree(final)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _dequantize_into(path: Path, out: Path, info: GGUFInfo) -> None:
    """Write config, float32 safetensors and tokenizer of the GGUF model to `out`, record last."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, __version__

    where = dict(pretrained_model_name_or_path=str(path.parent), gguf_file=path.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**where)
        loaded = AutoModelForCausalLM.from_pretrained(**where, dtype=torch.float32)
    except ValueError as exc:
        if "not supported" in str(exc):
            raise _unsupported(path, info.architecture) from exc
        raise UserError(f"cannot load GGUF model '{path}': {str(exc).splitlines()[0]}") from exc
    # A GGUF-loaded model refuses save_pretrained; the same architecture built from its config
    # (without the quantization record) holding the dequantized weights saves normally. Built on
    # the meta device and given the loaded tensors themselves: no second copy of the weights.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.generation_config = loaded.generation_config
    del loaded
    out.mkdir(parents=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    check_auto_tokenizer(str(out), strict=False)  # warns, naming cause and fix, if it does not round-trip
    record = {**asdict(info), "source": str(path), "dequantized_by": f"transformers {__version__}"}
    (out / INFO_FILE).write_text(json.dumps(record, indent=2) + "\n")


def resolve_model_source(name: str) -> str:
    """`name` itself, or for a `.gguf` file its cached dequantized folder (made first if needed)."""
    return str(dequantized_folder(name)) if is_gguf(name) else name


def gguf_provenance(name: str) -> dict | None:
    """What an export's recipe and card say of a GGUF base (None for any other base)."""
    if not is_gguf(name):
        return None
    return asdict(read_gguf_info(name))
