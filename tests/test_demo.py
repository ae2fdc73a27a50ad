"""The demo world: generation, edit set, lm-eval tasks, pretraining and the cached build."""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import replace

import pytest
import torch

from mm4ke_ray.demo.build import DemoConfig, build_demo, demo_key, resolve_config
from mm4ke_ray.demo.lm_eval_tasks import relocate_tasks, task_documents
from mm4ke_ray.demo.pretrain import PretrainConfig, PretrainError, answer_scores
from mm4ke_ray.demo.world import (
    RELATIONS,
    WorldConfig,
    counterfactual_edits,
    generate_world,
    relation,
)

# Small enough to build in ~10 s on one busy core, big enough to learn its world.
SMALL = DemoConfig(
    world=WorldConfig(num_entities=40, num_filler=60),
    pretrain=PretrainConfig(hidden=64, layers=2, batch_size=64, steps=400),
    docs_per_task=40,
)


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-cache")
    # One thread: on 2 shared cores a second thread mostly waits (measured ~3x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        # live: the rich progress line runs too (on stderr, not a terminal here)
        assets = build_demo(root, num_edits=6, seed=1, config=SMALL, live=True)
        return root, assets, time.perf_counter() - start
    finally:
        torch.set_num_threads(threads)


def test_world_is_a_pure_function_of_its_config():
    a, b = (
        generate_world(WorldConfig(num_entities=30, seed=3)),
        generate_world(WorldConfig(num_entities=30, seed=3)),
    )
    assert a.entities == b.entities and a.facts == b.facts and a.filler == b.filler
    assert a.rephrase_trained == b.rephrase_trained and a.sentences() == b.sentences()
    other = generate_world(WorldConfig(num_entities=30, seed=4))
    assert other.facts != a.facts


def test_world_shape():
    world = generate_world(WorldConfig(num_entities=30, num_filler=20))
    assert len(set(world.entities)) == 30 and all(len(e.split()) == 2 for e in world.entities)
    assert len(world.facts) == 30 * len(RELATIONS)
    assert all(f.value in relation(f.relation).values for f in world.facts)
    assert len(world.rephrase_trained) == 15
    # statement + question for everyone, rephrase for half, then the filler
    assert len(world.sentences()) == 30 * 5 * 2 + 15 * 5 + 20
    held_out = next(e for e in world.entities if e not in world.rephrase_trained)
    assert not any(
        s.startswith(relation("city").prompt("rephrase", held_out)) for s in world.sentences()
    )


def test_edits_are_counterfactual_and_in_zsre_schema(tmp_path):
    world = generate_world(WorldConfig(num_entities=30))
    edits = counterfactual_edits(world, 8, seed=2)
    assert edits == counterfactual_edits(world, 8, seed=2)
    assert len({e["subject"] for e in edits}) == 8
    for e in edits:
        rel = next(r for r in RELATIONS if e["prompt"] == r.prompt("question", e["subject"]))
        assert world.fact(e["subject"], rel.name).value == e["ground_truth"][0] != e["target_new"]
        assert e["target_new"] in rel.values
        assert e["rephrase_prompt"] == rel.prompt("rephrase", e["subject"])
        assert e["portability"]["Subject_Aliasing"][0]["ground_truth"] == e["target_new"]
        for loc in e["locality"]["Relation_Specificity"]:
            assert not any(loc["prompt"].find(x["subject"]) >= 0 for x in edits)
    path = tmp_path / "edits.json"
    path.write_text(json.dumps(edits))
    from mm4ke_ray.data.readers import load_edit_records

    loaded = load_edit_records(path, fmt="zsre")
    assert load_edit_records(path).format == loaded.format  # detected as the same format
    first = loaded[0]
    assert (first.prompt, first.target_new, first.ground_truth) == (
        edits[0]["prompt"],
        edits[0]["target_new"],
        edits[0]["ground_truth"][0],
    )
    assert first.rephrase_prompts == (edits[0]["rephrase_prompt"],)
    assert [qa.kind for qa in first.locality] == ["Relation_Specificity"] * 2
    assert first.portability[0].answer == edits[0]["target_new"]
    with pytest.raises(ValueError, match="num_edits"):
        counterfactual_edits(world, 16)


def test_task_documents_leave_out_edited_facts():
    world = generate_world(WorldConfig(num_entities=30))
    edits = counterfactual_edits(world, 8)
    docs = task_documents(world, edits, docs_per_task=1000)
    edited = {e["prompt"] for e in edits}
    assert len(docs["demo_facts"]) == 30 * 5 - 8
    assert not edited & {d["question"] for d in docs["demo_facts"]}
    for d in docs["demo_facts"] + docs["demo_rephrase"]:
        assert len(set(d["choices"])) == 4
        assert d["choices"][d["label"]] == world.fact(d["subject"], d["relation"]).value
    assert all(d["subject"] not in world.rephrase_trained for d in docs["demo_rephrase"])


def test_small_build_learns_its_world(small_build):
    root, assets, seconds = small_build
    m = assets.manifest
    assert m["accuracy"]["trained_fact"] >= SMALL.pretrain.min_accuracy
    # every relation has 10+ values, so chance is at most 10%
    assert m["accuracy"]["rephrase_heldout"]["fact"] > 0.5
    assert m["base_on_edits"]["ground_truth"] >= 0.9 and m["base_on_edits"]["target_new"] <= 0.2
    assert assets.root.name == f"demo-{m['key']}" and assets.root.parent == root
    assert sorted(p.name for p in root.iterdir()) == [assets.root.name]  # no temporary leftovers
    print(f"small demo build: {seconds:.1f} s, pretraining {m['timings']['pretrain_s']} s")


def test_cache_hit_and_parameter_keying(small_build, tmp_path):
    root, assets, _ = small_build
    start = time.perf_counter()
    again = build_demo(root, num_edits=6, seed=1, config=SMALL)
    assert time.perf_counter() - start < 2 and again.manifest == assets.manifest
    base = resolve_config(SMALL, num_edits=6, seed=1, steps=None)
    assert demo_key(base) != demo_key(resolve_config(SMALL, num_edits=7, seed=1, steps=None))
    assert demo_key(base) != demo_key(resolve_config(SMALL, num_edits=6, seed=2, steps=None))
    assert demo_key(base) != demo_key(resolve_config(SMALL, num_edits=6, seed=1, steps=401))


def test_saved_model_and_tokenizer_round_trip(small_build):
    from mm4ke_ray.demo.tiny import build_word_tokenizer
    from mm4ke_ray.modeling import encode_example, load_model, load_tokenizer

    _, assets, _ = small_build
    world = generate_world(replace(SMALL.world, seed=1))
    tok = load_tokenizer(str(assets.model_dir))
    texts = world.vocabulary_texts()
    assert tok(texts)["input_ids"] == build_word_tokenizer(texts)(texts)["input_ids"]
    assert tok.unk_token_id not in {i for ids in tok(texts)["input_ids"] for i in ids}
    for fact in world.facts[:20]:
        for kind in ("statement", "question", "rephrase"):
            head = tok(fact.prompt(kind))["input_ids"]
            enc = encode_example(tok, fact.prompt(kind), fact.value)
            assert enc.input_ids[: len(head)] == head and enc.answer_start == len(head)
    model = load_model(str(assets.model_dir))
    pairs = [(f.prompt("question"), f.value) for f in world.facts]
    assert answer_scores(model, tok, pairs).fact == assets.manifest["accuracy"]["question"]["fact"]
    from mm4ke_ray.data.readers import load_edit_records

    edits = load_edit_records(assets.edits_path, fmt="zsre")
    assert len(edits) == 6


def test_tasks_evaluate_in_lm_eval_above_chance(small_build, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from lm_eval.evaluator import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mm4ke_ray.modeling import load_model, load_tokenizer

    _, assets, _ = small_build
    model, tok = load_model(str(assets.model_dir)), load_tokenizer(str(assets.model_dir))
    tm = TaskManager(include_path=str(assets.tasks_dir))
    out = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=8),
        tasks=list(assets.task_names),
        task_manager=tm,
        limit=30,
        bootstrap_iters=0,
    )
    for name in assets.task_names:
        assert out["results"][name]["acc,none"] > 0.6, (name, out["results"][name])  # chance: 0.25


def test_moved_cache_still_points_at_its_tasks(small_build, tmp_path):
    import yaml

    _, assets, _ = small_build
    moved = tmp_path / "moved"
    shutil.copytree(assets.tasks_dir, moved)
    assert relocate_tasks(moved, list(assets.task_names))
    config = yaml.safe_load((moved / f"{assets.task_names[0]}.yaml").read_text())
    assert config["dataset_kwargs"]["data_files"]["test"] == str(
        (moved / f"{assets.task_names[0]}.jsonl").resolve()
    )
    assert not relocate_tasks(moved, list(assets.task_names))  # idempotent


def test_undertrained_build_raises_and_caches_nothing(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    stale = root / ".demo-abc.tmp-nohost-999999999-deadbeef"
    stale.mkdir()
    with pytest.raises(PretrainError, match="fact accuracy"):
        build_demo(root, num_edits=2, config=SMALL, steps=3)
    assert list(root.iterdir()) == [stale]  # other hosts' temporaries are not touched
    own = root / f".demo-abc.tmp-{socket.gethostname()}-999999999-deadbeef"
    own.mkdir()
    with pytest.raises(PretrainError):
        build_demo(root, num_edits=2, config=SMALL, steps=3)
    assert not own.exists()


def test_llama_form_computes_what_the_trained_qwen2_computes():
    from mm4ke_ray.demo.pretrain import as_llama, build_model

    model = build_model(PretrainConfig(hidden=32, layers=2), 50, _SpecialIds())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # biases nonzero, as after training
    llama = as_llama(model)
    ids = torch.randint(4, 50, (3, 9))
    assert type(llama).__name__ == "LlamaForCausalLM"
    assert torch.equal(model(input_ids=ids).logits, llama(input_ids=ids).logits)


class _SpecialIds:
    pad_token_id, bos_token_id, eos_token_id = 0, 2, 3


def test_stop_check_stops_once_every_fact_is_known():
    from mm4ke_ray.demo.pretrain import StopCheck, build_model, encode_pairs, pretrain
    from mm4ke_ray.demo.tiny import build_word_tokenizer

    world = generate_world(WorldConfig(num_entities=10, num_filler=5))
    tok = build_word_tokenizer(world.vocabulary_texts())
    cfg = PretrainConfig(hidden=64, batch_size=32, steps=400)
    pairs = encode_pairs(tok, [(f.prompt("question"), f.value) for f in world.facts])
    seen = []
    model = build_model(cfg, len(tok), tok)
    stats = pretrain(model, tok, world.sentences(), cfg, stop=StopCheck(pairs, every=20),
                     on_step=lambda step, steps, loss: seen.append((step, steps)))
    assert stats["stopped_early"] and stats["steps"] < 400 and stats["steps"] % 20 == 0
    assert seen[-1] == (stats["steps"], 400) and len(seen) == stats["steps"]
    assert answer_scores(model, tok, [(f.prompt("question"), f.value) for f in world.facts]).fact == 1


def test_pretraining_repeats_exactly():
    from mm4ke_ray.demo.pretrain import build_model, pretrain
    from mm4ke_ray.demo.tiny import build_word_tokenizer

    world = generate_world(WorldConfig(num_entities=10, num_filler=5))
    tok = build_word_tokenizer(world.vocabulary_texts())
    cfg = PretrainConfig(hidden=32, batch_size=16, steps=5)
    runs = []
    for _ in range(2):
        model = build_model(cfg, len(tok), tok)
        pretrain(model, tok, world.sentences(), cfg)
        runs.append(model.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.slow
def test_full_default_build(tmp_path):
    start = time.perf_counter()
    assets = build_demo(tmp_path, progress=print)
    seconds = time.perf_counter() - start
    acc = assets.manifest["accuracy"]
    print(f"full demo build: {seconds:.1f} s; accuracy {json.dumps(acc)}")
    assert acc["trained_fact"] >= 0.99 and acc["rephrase_heldout"]["fact"] >= 0.9
    assert len(json.loads(assets.edits_path.read_text())) == 25
    assert assets.manifest["vocab_size"] < 400
    # Stopped once every fact was known, well before the schedule's end (600 steps).
    assert assets.manifest["pretrain"]["stopped_early"] and assets.manifest["pretrain"]["steps"] < 500
    config = json.loads((assets.model_dir / "config.json").read_text())
    assert config["model_type"] == "llama"  # see pretrain.as_llama: qwen2's tokenizer is rebuilt
