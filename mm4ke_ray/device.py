"""`--device` / `device:` as torch wants it, the same for every command that loads a model."""

from __future__ import annotations

from mm4ke_ray.errors import UserError


def resolve_device(name: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; a CUDA device asked for where there is
    none is a clear error; anything else as given."""
    import torch  # here, not at the top: the CLI's --help must not wait for torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use --device cpu")
    return name
