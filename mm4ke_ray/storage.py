"""`storage_path`: where Tune keeps trial results and R-SFT deltas (a folder or a URI); Ray-free.

Locally a folder; on a cluster shared storage every node can write: an NFS mount (a plain path
or `file:///mnt/...`), `s3://bucket/prefix` or `gs://bucket/prefix`. Ray Train resolves URIs
with pyarrow filesystems, so the check here is the same one Ray will make later, only earlier:
a typo'd scheme or a pyarrow built without S3 fails before any trial starts, naming the field.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mm4ke_ray.errors import UserError

FIELD = "storage_path"
# scheme -> the pyarrow.fs class that serves it (None: the local filesystem).
SCHEMES: dict[str, str | None] = {"file": None, "s3": "S3FileSystem", "gs": "GcsFileSystem"}
_SUGGEST = {"gcs": "gs", "s3a": "s3", "s3n": "s3"}


def is_uri(value: str) -> bool:
    """True for `scheme://...`; a plain (possibly relative) path otherwise."""
    return "://" in value


def storage_problem(value: str) -> str | None:
    """What is wrong with `value` as a storage_path (naming the field and the fix), or None."""
    if not value or not value.strip():
        return f"{FIELD}: empty; give a folder (runs/ray) or a URI (s3://bucket/prefix, gs://bucket/prefix)"
    if not is_uri(value):
        return None
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    known = ", ".join(f"{s}://" for s in SCHEMES)
    if scheme not in SCHEMES:
        hint = f"; did you mean {_SUGGEST[scheme]}://?" if scheme in _SUGGEST else ""
        return f"{FIELD}: unsupported scheme '{scheme}://' in {value!r}; use a folder or one of {known}{hint}"
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            return (
                f"{FIELD}: {value!r} is not an absolute file URI; write file:///absolute/path "
                "(three slashes) or just the folder path"
            )
        return None
    if not parts.netloc:
        return f"{FIELD}: {value!r} names no bucket; write {scheme}://BUCKET/prefix"
    try:
        import pyarrow.fs

        getattr(pyarrow.fs, SCHEMES[scheme])
    except (ImportError, AttributeError):
        return (
            f"{FIELD}: {value!r} needs pyarrow's {SCHEMES[scheme]}, which this pyarrow build lacks; "
            "install a pyarrow wheel from PyPI (it includes S3 and GCS)"
        )
    return None


def filesystem(path: str):
    """(pyarrow filesystem, path within it) for a local path or a storage URI (s3://, gs://, ...)."""
    import pyarrow.fs

    if is_uri(path):
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def normalize_storage_path(value: str) -> str:
    """The storage path to give Tune: an absolute local folder, or a cleaned `s3://`/`gs://` URI.

    Relative folders resolve against the current directory (Tune needs absolute paths);
    `file:///x` becomes `/x`. Raises UserError naming `storage_path` for anything Ray could not use.
    """
    problem = storage_problem(value)
    if problem:
        raise UserError(problem)
    value = value.strip()
    if not is_uri(value):
        return str(Path(value).expanduser().resolve())
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return str(Path(unquote(parts.path)).resolve())
    path = parts.path.rstrip("/")
    # Keep the query: e.g. endpoint_override for S3-compatible stores.
    query = f"?{parts.query}" if parts.query else ""
    return f"{scheme}://{parts.netloc}{path}{query}"


def local_storage_warning(storage: str, num_nodes: int) -> str | None:
    """A warning when a multi-node cluster writes trials to a local folder.

    Ray Train persists each delta from the node that made it and reads it back on the trial's
    node: on several machines that folder must be one shared mount (NFS), or use s3:// / gs://.
    """
    if num_nodes <= 1 or is_uri(storage):
        return None
    return (
        f"{FIELD}: {storage} is a local folder on a {num_nodes}-node cluster; it must be the same "
        "shared mount (NFS) on every node, otherwise set storage_path to s3://... or gs://..."
    )


def probe_storage(storage: str) -> None:
    """Write and delete a small file under `storage` (normalized) to fail early without access.

    Uses the pyarrow filesystem Ray will use, so missing cloud credentials show up here, before
    any R-SFT runs. Raises UserError naming `storage_path`.
    """
    import pyarrow.fs

    try:
        if is_uri(storage):
            fs, root = pyarrow.fs.FileSystem.from_uri(storage)
        else:
            fs, root = pyarrow.fs.LocalFileSystem(), storage
        fs.create_dir(root, recursive=True)
        probe = f"{root.rstrip('/')}/.mm4ke-probe-{uuid.uuid4().hex}"
        with fs.open_output_stream(probe) as out:
            out.write(b"ok")
        fs.delete_file(probe)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot write there"
        raise UserError(
            f"{FIELD}: cannot write to {storage} ({type(exc).__name__}: {exc}); "
            "check the path, its permissions or your cloud credentials"
        ) from None


def check_out_dir(out: Path, force: bool, replaces: str | None = None) -> None:
    """Refuse a file, or a non-empty directory unless `force`: nothing already there is lost.

    With `replaces` (a marker file name, e.g. an export's `mm4ke_merge.json`), `force` replaces
    only a directory that holds that marker: a mistyped --out cannot wipe unrelated files.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' is a file; give a directory")
    if problem := _unwritable(out):  # before a merge of many minutes, not after it
        raise UserError(f"--out '{out}': {problem}; choose a writable place")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        choose, what = ("a new", "replace an earlier export there") if replaces else ("an empty or new", "write into it")
        raise UserError(f"--out '{out}' is not empty; choose {choose} directory, or pass --force to {what}")
    if replaces and not (out / replaces).is_file():
        raise UserError(
            f"--out '{out}' is not empty and holds no {replaces}: it is not an earlier export, "
            "so --force will not delete it; choose another directory"
        )


def _unwritable(out: Path) -> str | None:
    """Why `out` cannot be written (its staging sibling and the final rename live in its parent)."""
    probe = out.absolute().parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        return f"'{probe}' is a file, so no folder can be made below it"
    for folder in (probe, out) if out.is_dir() else (probe,):
        if not os.access(folder, os.W_OK | os.X_OK):  # also a read-only filesystem, for root too
            return f"'{folder}' is not writable"
    return None
