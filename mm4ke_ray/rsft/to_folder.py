"""R-SFT to a folder: load the base model and the edit set, train, write `delta.safetensors` and
`rsft.json`. The one implementation behind `mm4ke-ray rsft` and a sweep trial's R-SFT worker.

A diverged run (NaN/inf loss) is an outcome, not a crash: status 'diverged' with the reason,
and nothing is written.

`keep_loaded=True` keeps the last loaded model and tokenizer in this process for the next call
with the same model, dtype, device and loading flags: runner 'train-local' runs R-SFT in a trial
process that Tune keeps from trial to trial, and `run_rsft` gives the model back bit-exactly as
it came (its trained tensors, `requires_grad` flags and mode restored), so the next trial can
train the same loaded base instead of reading it again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from mm4ke_ray.data import EditDataset, load_edit_records
from mm4ke_ray.delta import DELTA_FILE, save_delta
from mm4ke_ray.modeling import load_model, load_tokenizer
from mm4ke_ray.rsft.config import RSFTConfig
from mm4ke_ray.rsft.trainer import DivergedError, RSFTResult, run_rsft

RSFT_LOG = "rsft.json"
_kept: dict[tuple, tuple] = {}  # at most one entry: loading key -> (tokenizer, model)


@dataclass
class RSFTRun:
    """What `rsft_to_folder` did: 'ok' (files written) or 'diverged' (nothing written)."""

    status: str
    dataset: EditDataset
    result: RSFTResult | None = None
    reason: str = ""

    def summary(self) -> dict:
        """The small status dict a Tune trial reports."""
        if self.result is None:
            return {"status": self.status, "reason": self.reason}
        return {"status": "ok", "rsft_updates": self.result.updates, "rsft_seconds": self.result.seconds}


def rsft_to_folder(out: str | Path, *, model: str, edits: str, config: RSFTConfig, device: str,
                   dtype: str = "float32", trust_remote_code: bool = False, allow_pickle: bool = False,
                   limit: int | None = None, skip_invalid: bool = False, data_format: str | None = None,
                   progress: Callable[[dict], None] | None = None, before_training: Callable[[int], object] | None = None,
                   keep_loaded: bool = False) -> RSFTRun:
    """Train R-SFT of `model` on `edits` and write the delta and its log into `out`.

    `before_training(total)` (optional) is called with the number of record-epochs once the data
    is read and returns a context manager (or None) held around training, e.g. a progress bar.
    """
    dataset = load_edit_records(edits, limit=limit, skip_invalid=skip_invalid, fmt=data_format)
    tokenizer, net = _load(model, dtype, device, trust_remote_code, allow_pickle, keep_loaded)
    around = before_training(config.epochs * len(dataset.records)) if before_training else None
    try:
        with around or nullcontext():
            result = run_rsft(net, tokenizer, dataset.records, config, progress=progress)
    except DivergedError as exc:
        return RSFTRun("diverged", dataset, reason=str(exc))
    out = Path(out)
    info = {"base_model": model, "data": dataset.source, "data_format": dataset.format,
            "skipped_records": len(dataset.skipped), "dtype": dtype, "device": device}
    # "rsft" is what export and the model card read; "config" what `mm4ke-ray rsft` always wrote.
    meta = {**info, "edits": edits, "num_edits": len(dataset.records), "layers": result.layers,
            "rsft": config.model_dump(), "config": config.model_dump()}
    save_delta(out, result.delta, meta)
    (out / RSFT_LOG).write_text(json.dumps({**info, **result.as_json()}, indent=2) + "\n")
    return RSFTRun("ok", dataset, result)


def _load(model: str, dtype: str, device: str, trust_remote_code: bool, allow_pickle: bool, keep: bool) -> tuple:
    key = (model, dtype, device, trust_remote_code, allow_pickle)
    if keep and key in _kept:
        return _kept[key]
    _kept.clear()  # another model replaces the kept one; a caller that keeps nothing frees it
    loaded = (load_tokenizer(model, trust_remote_code=trust_remote_code),
              load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                         allow_pickle=allow_pickle))
    if keep:
        _kept[key] = loaded
    return loaded


__all__ = ["DELTA_FILE", "RSFT_LOG", "RSFTRun", "rsft_to_folder"]
