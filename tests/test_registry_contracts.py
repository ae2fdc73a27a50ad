"""Contracts every registered extension point keeps, checked for each entry of its registry (as
Optuna tests each sampler): a newly registered sparsifier or edit-data format is tested here
without a line added, except a format's example record below.

Sparsifiers (`merge.methods.SPARSIFIERS`): `fn(delta, density, generator)` keeps the shape, dtype
and device, leaves its input as it was, zeroes 1 − density of the entries (within rounding; a
sparsifier whose mask depends on the seed, as DARE's does, within 4 binomial standard deviations
of it too), leaves a zero delta zero, and gives the same result for the same seed.

Edit-data formats (`data.formats.FORMATS`): detection picks the format for a minimal record of its
own kind, and its reader turns that record into an EditRecord with a non-empty prompt and target,
alone and through `load_edit_records`.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mm4ke_ray.data import EditRecord, get_format, load_edit_records
from mm4ke_ray.data.formats import FORMATS
from mm4ke_ray.errors import UserError
from mm4ke_ray.merge.methods import SPARSIFIERS
from mm4ke_ray.named_registry import Registry

DENSITIES = (0.0, 0.3, 0.5, 1.0)
DTYPES = (torch.float32, torch.bfloat16)
SHAPE = (64, 80)  # 5120 entries: DARE's binomial sd at density 0.5 is 0.007


def _delta(dtype: torch.dtype) -> torch.Tensor:
    """A delta with no zero entry, so that every zero of a result is one the sparsifier made."""
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return (x.sign() * (x.abs() + 0.01)).to(dtype)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", SPARSIFIERS.names())
def test_sparsifier_keeps_the_tensor_and_zeroes_the_requested_fraction(name, dtype, density):
    sparsify = SPARSIFIERS.get(name)
    delta = _delta(dtype)
    before = delta.clone()
    out = sparsify(delta, density, _seeded(1))
    assert (out.shape, out.dtype, out.device) == (delta.shape, delta.dtype, delta.device)
    assert torch.equal(delta, before), f"{name} changed its input"
    n = delta.numel()
    zeroed = int((out == 0).sum()) / n
    tolerance = 1 / n  # rounding: ⌊density · n⌋ entries kept
    if not torch.equal(out, sparsify(delta, density, _seeded(2))):  # a random mask
        tolerance += 4 * math.sqrt(density * (1 - density) / n)
    assert abs(zeroed - (1 - density)) <= tolerance, (
        f"{name} zeroed {zeroed:.4f} of the entries at density {density} (expected {1 - density:.4f} ± {tolerance:.4f})")


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("name", SPARSIFIERS.names())
def test_sparsifier_leaves_a_zero_delta_zero(name, density):
    zero = torch.zeros(SHAPE)
    out = SPARSIFIERS.get(name)(zero, density, _seeded(1))
    assert out.shape == zero.shape and out.dtype == zero.dtype
    assert not out.any(), f"{name} made a zero delta nonzero at density {density}"


@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("name", SPARSIFIERS.names())
def test_sparsifier_is_deterministic_given_a_generator(name, density):
    sparsify = SPARSIFIERS.get(name)
    delta = _delta(torch.float32)
    assert torch.equal(sparsify(delta, density, _seeded(3)), sparsify(delta, density, _seeded(3)))


# One minimal record per registered format: a format registered without one fails below.
EXAMPLES = {
    "knowedit": {"prompt": "The capital of France is", "target_new": "Lyon"},
    "wikibio": {"text": "Ada Lovelace was an English", "labels": "mathematician.", "concept": "Ada Lovelace"},
    "zsre_mend": {"src": "What is the capital of France?", "alt": "Lyon"},
    "alpaca": {"instruction": "Name the capital of France.", "input": "", "output": "Lyon"},
    "counterfact_flat": {"prompt": "The capital of France is", "target_new": "Lyon", "ground_truth": "Paris",
                         "locality_prompt": "The capital of Spain is"},
    "rome_counterfact": {"requested_rewrite": {"prompt": "The capital of {} is", "subject": "France",
                                               "target_new": {"str": "Lyon"}, "target_true": {"str": "Paris"}}},
    "sharegpt": {"conversations": [{"from": "human", "value": "What is the capital of France?"},
                                   {"from": "gpt", "value": "Lyon"}]},
}


def test_every_example_is_of_a_registered_format():
    assert set(EXAMPLES) <= set(FORMATS.names()), f"examples of no format: {sorted(set(EXAMPLES) - set(FORMATS.names()))}"


def _example(name: str) -> dict:
    assert name in EXAMPLES, f"format {name!r} has no example: add a minimal record of it to EXAMPLES"
    return EXAMPLES[name]


def _read_checked(name: str, record: EditRecord) -> None:
    assert isinstance(record, EditRecord), f"{name} read {type(record).__name__}, not an EditRecord"
    assert record.prompt.strip() and record.target_new.strip(), f"{name} read an empty prompt or target: {record}"


@pytest.mark.parametrize("name", FORMATS.names())
def test_format_detects_and_reads_its_own_example(name):
    fmt, raw = get_format(name), _example(name)
    assert fmt.detect(raw), f"{name} does not claim its own example"
    detected = FORMATS.detect(raw)
    assert detected is fmt, f"{name}'s example is detected as {detected and detected.name!r}"
    _read_checked(name, fmt.read(raw))


@pytest.mark.parametrize("name", FORMATS.names())
def test_format_example_loads_as_an_edit_set(name, tmp_path):
    path = tmp_path / "edits.json"
    path.write_text(json.dumps([_example(name)]))
    data = load_edit_records(path)
    assert data.format == name and len(data.records) == 1
    _read_checked(name, data.records[0])


def test_the_generic_registry_takes_aliases_and_suggests_a_name():
    registry: Registry[int] = Registry("widget")
    registry.register("alpha", 1, aliases=("a",))
    assert registry.get("a") == registry.get("alpha") == 1 and "a" in registry and ["x"] not in registry
    assert registry.names() == ["alpha"] and registry.aliases() == {"a": "alpha"} and registry.entries() == [1]
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        registry.register("a", 2)
    with pytest.raises(UserError, match=r"unknown widget 'alpah'; did you mean 'alpha'\? \(known: alpha\)"):
        registry.get("alpah")
    with pytest.raises(UserError, match=r"unknown widget \['x'\] \(known: alpha\)"):
        registry.get(["x"])
