"""Shared fixtures: the real sample data in ../shared/data and tiny models built from configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MM4KE_SHARED", REPO.parent / "shared"))
KNOWEDIT = SHARED / "data" / "knowedit"
ZSRE = KNOWEDIT / "ZsRE-test-all.json"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run several times faster on one thread than on two contended ones."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _record_texts(records: list[dict]) -> list[str]:
    texts = []
    for r in records:
        texts += [r["prompt"], r["target_new"], r.get("rephrase_prompt", ""), *r.get("ground_truth", [])]
        for items in (r.get("locality") or {}).values():
            for it in items:
                gt = it["ground_truth"]
                texts += [it["prompt"], gt if isinstance(gt, str) else " ".join(map(str, gt))]
        for items in (r.get("portability") or {}).values():
            for it in items:
                gt = it["ground_truth"]
                texts += [it["prompt"], gt if isinstance(gt, str) else " ".join(map(str, gt))]
    return texts


@pytest.fixture(scope="session")
def zsre_raw() -> list[dict]:
    """The first 50 real ZsRE records (KnowEdit test file)."""
    return json.loads(ZSRE.read_text())[:50]


@pytest.fixture(scope="session")
def tiny_tokenizer(zsre_raw):
    """A word-level tokenizer that knows every word of the first 50 ZsRE records."""
    from mm4ke_ray.demo.tiny import build_word_tokenizer

    return build_word_tokenizer(_record_texts(zsre_raw))


@pytest.fixture(scope="session")
def tiny_model_factory(tiny_tokenizer):
    """Build a fresh tiny model: factory(arch='qwen2'|'llama'|'gpt2', hidden=64, layers=4, seed=0)."""
    from mm4ke_ray.demo.tiny import build_tiny_model

    def make(arch: str = "qwen2", hidden: int = 64, layers: int = 4, seed: int = 0):
        return build_tiny_model(arch, len(tiny_tokenizer), hidden=hidden, layers=layers, seed=seed)

    return make


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer, tiny_model_factory) -> Path:
    """A saved tiny Qwen2 (safetensors + tokenizer) as a local Hugging Face directory."""
    from mm4ke_ray.demo.tiny import save_pretrained_pair

    return save_pretrained_pair(tiny_model_factory("qwen2"), tiny_tokenizer, tmp_path_factory.mktemp("tiny") / "qwen2")


# CI runs the suite on two pytest-xdist workers, whole files at a time (`--dist loadfile`: a file's
# module fixtures, e.g. one sweep shared by its tests, run once). Most of the time is a few files
# of real Ray sweeps that wait on process start-up as much as they compute, so they start first,
# longest first, and the many quick files fill the other worker around them.
SLOW_FILES_FIRST = (
    "test_cluster.py",
    "test_sweep.py",
    "test_faults.py",
    "test_benchmarks_smoke.py",
    "test_smollm2.py",
    "test_gguf_sweep.py",
    "test_concurrent_sweeps.py",
    "test_resume.py",
    "test_quiet.py",
    "test_node_loss.py",
    "test_pareto_export.py",
    "test_export_atomic.py",
    "test_sweep_eval_modes.py",
    "test_determinism.py",
    "test_loopback.py",
    "test_planner.py",
    "test_demo.py",
    "test_user_loading.py",
    "test_mlflow_layout.py",
    "test_warm_start.py",
    "test_halving_sweep.py",
    "test_spool.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept within


@pytest.fixture(scope="module")
def ray_2_cpus():
    """A local Ray of 2 CPUs for one test module, started as the sweep starts its own (loopback,
    a second try when Ray's start times out on a busy machine); modules with other needs define
    their own (test_faults.py: the workers' TMPDIR)."""
    import tempfile

    import ray

    from mm4ke_ray.search.local_ray import init_local_ray

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths are length-limited
    init_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp)
    yield
    ray.shutdown()
