"""A trial's finished rungs, kept in the sweep's folder so a restarted trial does not score them again.

Successive halving scores a trial's candidates rung by rung. A trial that dies on the way (its
process or node lost, the driver killed and the sweep resumed) is started again by Tune under
the same trial id, from the top: R-SFT gets its delta back from Ray Train's checkpoint or trains
it again (seeded), and without this record every rung would be scored again. After each rung the
trial writes what that rung returned to `<sweep folder>/rungs/<trial id>.json`; a restarted trial
reads it and evaluates only what is missing.

A record is used only for the very same work: the same delta (a digest of its tensors), the same
candidates (α, sparsity per index) and the same fidelity plan. Anything else, or a file that
cannot be read, is ignored (and overwritten by the next rung), so a stale record can cost an
evaluation but never change a result.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping

import torch

from mm4ke_ray.atomic_write import write_bytes_atomic
from mm4ke_ray.storage import filesystem, is_uri

log = logging.getLogger(__name__)

FORMAT = 1


def delta_digest(delta: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a delta's names, dtypes, shapes and bytes (any dtype, bf16 included)."""
    h = hashlib.sha256()
    for name in sorted(delta):
        t = delta[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _rungs(raw) -> dict[int, dict[int, dict]]:
    """{rung: {candidate index: metrics}} from a record's `rungs`; TypeError/ValueError when any
    part has another shape (`null`, a list, keys that are not numbers, metrics that are not a
    mapping of numbers): a half-valid record is ignored whole, as an absent one."""
    if not isinstance(raw, dict):
        raise TypeError(f"rungs is {type(raw).__name__}, not a mapping")
    out: dict[int, dict[int, dict]] = {}
    for rung, got in raw.items():
        if not isinstance(got, dict):
            raise TypeError(f"rung {rung!r} is {type(got).__name__}, not a mapping")
        out[int(rung)] = {}
        for index, metrics in got.items():
            if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
                raise TypeError(f"rung {rung!r} candidate {index!r} has no metrics mapping")
            out[int(rung)][int(index)] = metrics
    return out


class RungStore:
    """The rung results of one trial's candidates, read back and written after every rung.

    `key` identifies the work (delta digest, candidates, plan); results are
    {rung: {candidate index: the metrics its evaluation returned}}.
    """

    def __init__(self, folder: str, trial_id: str, key: dict):
        self.path = f"{folder.rstrip('/')}/{trial_id}.json"
        self.key = key
        self.results: dict[int, dict[int, dict]] = self._read()

    def _read(self) -> dict[int, dict[int, dict]]:
        import pyarrow.fs

        fs, path = filesystem(self.path)
        try:
            if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
                return {}
            with fs.open_input_stream(path) as f:
                doc = json.loads(f.read().decode())
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable rung record %s: %s", self.path, exc)
            return {}
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("key") != self.key:
            return {}  # not a record, another delta, other candidates or another plan: nothing applies
        try:
            return _rungs(doc.get("rungs"))
        except (TypeError, ValueError, AttributeError) as exc:
            log.warning("ignoring the rung record %s of the wrong shape: %s", self.path, exc)
            return {}

    def get(self, rung: int) -> dict[int, dict]:
        """What rung `rung` already scored, by candidate index (empty when nothing)."""
        return dict(self.results.get(rung, {}))

    def put(self, rung: int, got: Mapping[int, dict]) -> None:
        """Add rung `rung`'s results and write the record (atomically where the filesystem allows)."""
        self.results.setdefault(rung, {}).update(got)
        doc = {"format": FORMAT, "key": self.key,
               "rungs": {str(r): {str(i): m for i, m in got.items()} for r, got in sorted(self.results.items())}}
        data = json.dumps(doc).encode()
        fs, path = filesystem(self.path)
        parent = path.rsplit("/", 1)[0]
        try:
            fs.create_dir(parent, recursive=True)
            if is_uri(self.path):
                with fs.open_output_stream(path) as f:  # an object store writes an object whole
                    f.write(data)
                return
            write_bytes_atomic(path, data)
        except OSError as exc:  # a lost record costs a re-evaluation on restart, never the trial
            log.warning("could not write the rung record %s: %s", self.path, exc)
