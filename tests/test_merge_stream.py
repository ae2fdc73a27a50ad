"""Tensor-wise merge of a safetensors checkpoint (merge/checkpoint_merge.py) == the in-memory merge, bit for bit."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open

from mm4ke_ray.delta import save_delta
from mm4ke_ray.errors import UserError
from mm4ke_ray.merge import MERGE_INFO_FILE, build_merged, save_merged
from mm4ke_ray.merge.checkpoint_merge import (
    INDEX_FILE,
    SINGLE_FILE,
    checkpoint_shards,
    merge_checkpoint,
)
from mm4ke_ray.modeling import mlp_parameter_names


def _save(model, tokenizer, out, max_shard_size=None):
    out.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _delta(model, layers=(1,), seed=3, scale=0.05):
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    names = [n for layer in layers for n in mlp_parameter_names(model, layer)]
    return {n: torch.randn(params[n].shape, generator=g) * scale for n in names}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_model_factory, tiny_tokenizer):
    """A tiny Qwen2 saved in several shards, and a delta on layers 1 and 2's MLPs."""
    model = tiny_model_factory("qwen2", hidden=64, layers=4)
    base = _save(model, tiny_tokenizer, tmp_path_factory.mktemp("sharded") / "base", "60KB")
    assert len(checkpoint_shards(base)) >= 3
    return base, _delta(model, layers=(1, 2))


def _in_memory(base, delta, tmp_path, **kw):
    """The current path: build_merged (load the model, add in place) + save_merged."""
    delta_dir = save_delta(tmp_path / "delta", delta)
    result = build_merged(str(base), delta_dir=delta_dir, **kw)
    return save_merged(result.model, str(base), tmp_path / "in_memory", result.info)


def _all_tensors(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return {n: t.detach().clone() for n, t in model.state_dict().items()}, model.dtype


def _assert_same_weights(a, b):
    ta, dtype_a = _all_tensors(a)
    tb, dtype_b = _all_tensors(b)
    assert dtype_a == dtype_b and ta.keys() == tb.keys()
    for name in ta:
        assert ta[name].dtype == tb[name].dtype, name
        assert torch.equal(ta[name], tb[name]), name


@pytest.mark.parametrize("method,sparsity", [("magnitude", 0.5), ("magnitude", 0.0), ("dare", 0.3)])
def test_stream_equals_in_memory_merge_sharded(sharded, tmp_path, method, sparsity):
    base, delta = sharded
    out = tmp_path / "stream"
    record = merge_checkpoint(base, out, delta, alpha=0.25, sparsity=sparsity, method=method, seed=7)
    _assert_same_weights(out, _in_memory(base, delta, tmp_path, alpha=0.25, sparsity=sparsity, method=method, seed=7))
    # The merge did change the delta's tensors, and only those.
    merged, _ = _all_tensors(out)
    original, _ = _all_tensors(base)
    changed = sorted(n for n in merged if not torch.equal(merged[n], original[n]))
    assert changed == sorted(delta)
    assert record["tensors"] == sorted(delta) and record["density"] == 1 - sparsity
    assert record["total_entries"] == sum(t.numel() for t in delta.values())
    if method == "magnitude":
        assert record["kept_entries"] == sum(int(t.numel() * (1 - sparsity)) for t in delta.values())
    assert json.loads((out / MERGE_INFO_FILE).read_text())["kept_entries"] == record["kept_entries"]


def test_sharded_stays_sharded_and_side_files_are_copied(sharded, tmp_path):
    base, delta = sharded
    out = tmp_path / "stream"
    merge_checkpoint(base, out, delta, alpha=0.5, sparsity=0.2, info={"run": "abc"})
    base_index = json.loads((base / INDEX_FILE).read_text())
    out_index = json.loads((out / INDEX_FILE).read_text())
    assert out_index["weight_map"] == base_index["weight_map"]
    assert out_index["metadata"]["total_size"] == sum(
        (out / f).stat().st_size for f in set(out_index["weight_map"].values())
    ) - sum(_header_bytes(out / f) for f in set(out_index["weight_map"].values()))
    touched = {base_index["weight_map"][n] for n in delta}
    for shard in set(base_index["weight_map"].values()):
        same = (out / shard).read_bytes() == (base / shard).read_bytes()
        assert same == (shard not in touched), shard  # untouched shards: copied byte for byte
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    assert json.loads((out / MERGE_INFO_FILE).read_text())["run"] == "abc"
    assert not (out / SINGLE_FILE).exists()


def _header_bytes(path):
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def test_single_file_bf16_kept_and_converted(tmp_path, tiny_model_factory, tiny_tokenizer):
    model = tiny_model_factory("qwen2").to(torch.bfloat16)
    base = _save(model, tiny_tokenizer, tmp_path / "bf16")
    assert checkpoint_shards(base) == [base / SINGLE_FILE]
    delta = _delta(model.float(), layers=(2,))
    kept = tmp_path / "kept"
    merge_checkpoint(base, kept, delta, alpha=0.1, sparsity=0.3)  # dtype as in the checkpoint
    with safe_open(kept / SINGLE_FILE, framework="pt") as f:
        assert {f.get_tensor(n).dtype for n in f.keys()} == {torch.bfloat16}
    _assert_same_weights(kept, _in_memory(base, delta, tmp_path / "a", alpha=0.1, sparsity=0.3, dtype="bfloat16"))
    wide = tmp_path / "wide"
    merge_checkpoint(base, wide, delta, alpha=0.1, sparsity=0.3, dtype="float32")  # rewritten
    with safe_open(wide / SINGLE_FILE, framework="pt") as f:
        assert {f.get_tensor(n).dtype for n in f.keys()} == {torch.float32}
    _assert_same_weights(wide, _in_memory(base, delta, tmp_path / "b", alpha=0.1, sparsity=0.3, dtype="float32"))


def test_bad_inputs_refused_before_writing(sharded, tmp_path):
    base, delta = sharded
    out = tmp_path / "never"
    name = next(iter(delta))
    cases = [
        ({**delta, name.replace("_proj", "_prj"): torch.ones(1)}, {}, "did you mean"),
        ({name: torch.ones(3, 3)}, {}, "has shape"),
        ({name: torch.full(delta[name].shape, float("nan"))}, {}, "NaN or inf"),
        (delta, {"alpha": 1.0}, "alpha"),
        (delta, {"method": "top"}, "magnitude"),
        (delta, {"dtype": "int8"}, "dtype"),
        ({}, {}, "empty"),
    ]
    for bad_delta, kw, match in cases:
        with pytest.raises(UserError, match=match):
            merge_checkpoint(base, out, bad_delta, **{"alpha": 0.5, "sparsity": 0.2, **kw})
    with pytest.raises(UserError, match="is the base checkpoint itself"):
        merge_checkpoint(base, base, delta, alpha=0.5, sparsity=0.2)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="pytorch_model.bin"):
        merge_checkpoint(tmp_path / "bin", out, delta, alpha=0.5, sparsity=0.2)
    assert not out.exists()


_MEASURE = textwrap.dedent(
    """
    import json, sys
    import torch
    from mm4ke_ray.delta import load_delta
    from mm4ke_ray.merge.checkpoint_merge import merge_checkpoint
    import mm4ke_ray.merge.merged_model, safetensors, safetensors.torch  # every import before the baseline

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    torch.set_num_threads(1)
    # A first merge loads what is loaded once per process (lazy imports, kernels, the selection's
    # scratch buffers: ~8 MB here, whatever the model's size); the second one is measured.
    delta, _ = load_delta(sys.argv[2])
    merge_checkpoint(sys.argv[1], sys.argv[3] + "-warm-up", delta, alpha=0.5, sparsity=0.2)
    del delta
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: the imports' peak is not ours
    before = status("VmRSS")
    delta, _ = load_delta(sys.argv[2])
    merge_checkpoint(sys.argv[1], sys.argv[3], delta, alpha=0.5, sparsity=0.2)
    print(json.dumps({"before": before, "peak": status("VmHWM")}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads peak RSS from /proc (Linux)")
def test_peak_memory_is_one_shard_plus_delta(tmp_path, tiny_model_factory, tiny_tokenizer):
    """Peak RSS growth of a merge (delta load included) ≤ 1.2 × (largest shard + delta), on a
    10-shard checkpoint, measured in a fresh process after one warm-up merge."""
    model = tiny_model_factory("qwen2", hidden=256, layers=16)
    base = _save(model, tiny_tokenizer, tmp_path / "base", "4MB")
    shards = checkpoint_shards(base)
    delta = _delta(model, layers=(3,))
    delta_dir = save_delta(tmp_path / "delta", delta)
    checkpoint = sum(s.stat().st_size for s in shards)
    largest = max(s.stat().st_size for s in shards)
    delta_bytes = sum(t.numel() * t.element_size() for t in delta.values())
    assert len(shards) >= 5 and checkpoint > 3 * (largest + delta_bytes)  # the bound means something
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(base), str(delta_dir), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    rss = json.loads(run.stdout.strip().splitlines()[-1])
    growth = rss["peak"] - rss["before"]
    print(f"peak RSS growth {growth / 2**20:.1f} MiB; largest shard {largest / 2**20:.1f}, delta {delta_bytes / 2**20:.1f}, checkpoint {checkpoint / 2**20:.1f} MiB")
    assert growth <= 1.2 * (largest + delta_bytes), (growth, largest, delta_bytes, checkpoint)
    merged, _ = _all_tensors(tmp_path / "out")
    assert not torch.equal(merged[next(iter(delta))], model.state_dict()[next(iter(delta))])
