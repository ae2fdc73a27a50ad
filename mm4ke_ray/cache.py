"""The project's cache root: $MM4KE_CACHE, else ~/.cache/mm4ke-ray.

The demo's builds (`demo-<key>/`), dequantized GGUF models (`gguf/`) and the SmolLM2 wheel
(`smollm2/`) live under it; nothing there is needed that cannot be rebuilt or fetched again.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_root() -> Path:
    """$MM4KE_CACHE, else ~/.cache/mm4ke-ray."""
    return Path(os.environ.get("MM4KE_CACHE") or "~/.cache/mm4ke-ray").expanduser()
