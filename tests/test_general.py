"""General ability through lm-eval on a resident tiny model, with local tasks built from real LogiQA."""

from __future__ import annotations

import math
import os
import re
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from conftest import SHARED  # noqa: E402

from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer  # noqa: E402
from mm4ke_ray.errors import DataError, UserError  # noqa: E402
from mm4ke_ray.evaluate.fluency import generate_for_fluency  # noqa: E402
from mm4ke_ray.evaluate.general import (  # noqa: E402
    GeneralEvaluator,
    general_score,
    primary_scores,
    retention,
    validate_tasks,
)
from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task  # noqa: E402

LOGIQA = SHARED / "data" / "general" / "logiqa" / "Test.txt"
LETTERS = ["A", "B", "C", "D"]


def logiqa_docs(n: int, start: int = 0) -> list[dict]:
    """LogiQA blocks (answer letter, context, question, 4 options) as letter-choice docs."""
    text = LOGIQA.read_text(encoding="utf-8").replace("\r\n", "\n")
    docs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if len(lines) != 7 or not all(re.match(r"^[A-D]\b", ln) for ln in lines[3:]):
            continue  # a few blocks have mangled option labels
        options = [re.sub(r"^[A-D][.\s]?\s*", "", ln) for ln in lines[3:]]
        listing = "\n".join(f"{L}. {o}" for L, o in zip(LETTERS, options, strict=True))
        question = f"{lines[1]}\n{lines[2]}\n{listing}"
        docs.append(
            {"question": question, "choices": LETTERS, "answer_index": "abcd".index(lines[0])}
        )
    return docs[start : start + n]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two 20-doc LogiQA tasks (one with 2-shot prompts), a word tokenizer over them, a tiny Qwen2."""
    out = tmp_path_factory.mktemp("general_tasks")
    docs, docs2 = logiqa_docs(20), logiqa_docs(20, start=20)
    write_multiple_choice_task("logiqa20", docs, out)
    write_multiple_choice_task("logiqa20_fewshot", docs2, out, num_fewshot=2)
    write_multiple_choice_task("logiqa20_norm", docs, out, metrics=("acc", "acc_norm"))
    texts = [d["question"] for d in docs + docs2] + ["Question : Answer : A B C D"]
    tok = build_word_tokenizer(texts)
    model = build_tiny_model("qwen2", len(tok), hidden=32, layers=2, seed=0)
    return {"dir": out, "docs": docs, "tok": tok, "model": model}


@pytest.fixture(scope="module")
def evaluator(world):
    return GeneralEvaluator(world["model"], world["tok"], ["logiqa20"], include_path=world["dir"])


def test_logiqa_parsing_reads_real_items():
    docs = logiqa_docs(20)
    assert len(docs) == 20 and all(len(d["choices"]) == 4 for d in docs)
    assert docs[0]["answer_index"] == 0 and docs[0]["question"].count("\n") == 5


def test_task_dict_built_once_and_calls_repeat_exactly(evaluator):
    task = evaluator.task_dict["tasks"]["logiqa20"]
    dataset = task.dataset
    first = evaluator.evaluate()
    starts = time.perf_counter()
    second = evaluator.evaluate()
    seconds = time.perf_counter() - starts
    assert list(first) == ["logiqa20"] and 0.0 <= first["logiqa20"] <= 1.0
    assert second == first
    # Same Task object, and its requests are rebuilt rather than appended to (20 docs x 4 choices).
    assert evaluator.task_dict["tasks"]["logiqa20"] is task and task.dataset is dataset
    assert len(task.instances) == 80
    # No timing assertion: on a shared 2-core machine one call takes 0.1-2 s; reported, not gated.
    print(f"evaluate() per call: {seconds:.3f} s")


def _lls(full) -> list[list[float]]:
    """Per doc, the log-likelihood of each choice (lm-eval's per-sample responses)."""
    return [[r[0][0] for r in s["resps"]] for s in full["samples"]["logiqa20"]]


def test_in_place_weight_change_is_seen_and_restore_is_exact(evaluator, world):
    model, tok, docs = evaluator.model, world["tok"], world["docs"]
    base_full = evaluator.evaluate_full()
    base = primary_scores(base_full, evaluator.outputs)
    c, d = tok.convert_tokens_to_ids(["C", "D"])
    saved = model.lm_head.weight.detach().clone()
    with torch.no_grad():  # swap the output rows of tokens C and D: their log-probs trade places
        model.lm_head.weight[[c, d]] = saved[[d, c]]
    try:
        swapped_full = evaluator.evaluate_full()
    finally:
        with torch.no_grad():
            model.lm_head.weight.copy_(saved)
    expected_lls = [[a, b, dd, cc] for a, b, cc, dd in _lls(base_full)]
    flat = [x for row in _lls(swapped_full) for x in row]
    assert flat == pytest.approx([x for row in expected_lls for x in row], abs=1e-5)
    picks = [max(range(4), key=lambda i, row=row: row[i]) for row in expected_lls]
    expected = sum(p == doc["answer_index"] for p, doc in zip(picks, docs, strict=True)) / len(docs)
    swapped = primary_scores(swapped_full, evaluator.outputs)
    assert swapped["logiqa20"] == pytest.approx(expected)
    assert swapped["logiqa20"] != base["logiqa20"]  # this model mostly picks C; after the swap, D
    restored_full = evaluator.evaluate_full()
    assert primary_scores(restored_full, evaluator.outputs) == base
    assert _lls(restored_full) == _lls(base_full)  # exact, not approximately


def test_limit_int_and_fraction(world):
    for limit in (5, 0.25):
        ev = GeneralEvaluator(
            world["model"], world["tok"], ["logiqa20"], include_path=world["dir"], limit=limit
        )
        full = ev.evaluate_full()
        assert full["n-samples"]["logiqa20"] == {"original": 20, "effective": 5}
        assert len(full["samples"]["logiqa20"]) == 5
    whole = GeneralEvaluator(
        world["model"], world["tok"], ["logiqa20"], include_path=world["dir"], limit=1.0
    )
    assert whole.limit is None  # lm-eval would read 1.0 as "one document"
    with pytest.raises(UserError, match="limit"):
        GeneralEvaluator(
            world["model"], world["tok"], ["logiqa20"], include_path=world["dir"], limit=0
        )


def test_chat_template_reaches_the_prompts(world):
    ev = GeneralEvaluator(
        world["model"],
        world["tok"],
        ["logiqa20"],
        include_path=world["dir"],
        limit=2,
        apply_chat_template=True,
    )
    prompts = [s["arguments"][0][0] for s in ev.evaluate_full()["samples"]["logiqa20"]]
    assert len(prompts) == 2 and all(p.startswith("user : Question:") for p in prompts)


def test_fewshot_prompts_are_seeded(world):
    def prompts(seed):
        ev = GeneralEvaluator(
            world["model"],
            world["tok"],
            ["logiqa20_fewshot"],
            include_path=world["dir"],
            seed=seed,
            limit=4,
        )
        first = [s["arguments"][0][0] for s in ev.evaluate_full()["samples"]["logiqa20_fewshot"]]
        again = [s["arguments"][0][0] for s in ev.evaluate_full()["samples"]["logiqa20_fewshot"]]
        assert first == again  # the sampler's RNG is reset every call, not consumed across calls
        return first

    p0 = prompts(0)
    assert all(p.count("Answer:") == 3 for p in p0)  # 2 examples + the question itself
    assert prompts(0) == p0
    assert prompts(1) != p0


def test_group_and_rewritten_task_in_one_process(world, tmp_path):
    docs = logiqa_docs(10)
    write_multiple_choice_task("mc_a", docs, tmp_path)
    write_multiple_choice_task("mc_b", docs[:6], tmp_path)
    (tmp_path / "mc_group.yaml").write_text(
        "group: mc_group\ntask: [mc_a, mc_b]\naggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    )
    ev = GeneralEvaluator(world["model"], world["tok"], ["mc_group"], include_path=tmp_path)
    full = ev.evaluate_full()
    scores = ev.evaluate()
    assert list(scores) == ["mc_group"] and ev.higher_is_better == {"mc_group": True}
    r = full["results"]
    assert scores["mc_group"] == pytest.approx(
        (r["mc_a"]["acc,none"] * 10 + r["mc_b"]["acc,none"] * 6) / 16
    )
    # Rewriting a task's data under the same name is seen by a new evaluator (no stale datasets cache).
    write_multiple_choice_task("mc_b", docs[:3], tmp_path)
    ev2 = GeneralEvaluator(world["model"], world["tok"], ["mc_b"], include_path=tmp_path)
    assert ev2.evaluate_full()["n-samples"]["mc_b"]["original"] == 3


def test_unknown_task_names_suggest_close_matches(world):
    validate_tasks(["logiqa20"], world["dir"])  # local: no built-in index needed
    validate_tasks(
        ["logiqa"], world["dir"]
    )  # built-in name; offline, so passing proves no data is loaded
    with pytest.raises(UserError, match=r"'logiqa20_tset': did you mean: .*logiqa20"):
        validate_tasks(["logiqa20_tset"], world["dir"])
    with pytest.raises(UserError, match=r"'logiqaa': did you mean: .*logiqa"):
        validate_tasks(["logiqaa"], world["dir"])
    with pytest.raises(UserError, match="did you mean"):
        GeneralEvaluator(world["model"], world["tok"], ["logiqa21"], include_path=world["dir"])
    with pytest.raises(UserError, match="more than once"):
        validate_tasks(["logiqa20", "logiqa20"], world["dir"])
    with pytest.raises(UserError, match="does not exist"):
        validate_tasks(["logiqa20"], world["dir"] / "missing")


def test_write_task_rejects_bad_docs(tmp_path):
    with pytest.raises(DataError, match="record 1: field 'answer_index'"):
        write_multiple_choice_task(
            "t",
            [
                {"question": "q", "choices": ["a", "b"], "answer_index": 0},
                {"question": "q", "choices": ["a", "b"], "answer_index": 2},
            ],
            tmp_path,
        )
    with pytest.raises(DataError, match="field 'choices'"):
        write_multiple_choice_task(
            "t", [{"question": "q", "choices": ["a"], "answer_index": 0}], tmp_path
        )
    with pytest.raises(UserError, match="task name"):
        write_multiple_choice_task(
            "bad name", [{"question": "q", "choices": ["a", "b"], "answer_index": 0}], tmp_path
        )


def test_offline_by_default_unless_the_user_chose(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    from mm4ke_ray.evaluate import general

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    general.use_offline_defaults()
    assert os.environ["HF_HUB_OFFLINE"] == os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert (
        datasets.config.HF_HUB_OFFLINE is True and huggingface_hub.constants.HF_HUB_OFFLINE is True
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    general.use_offline_defaults()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ
    assert datasets.config.HF_HUB_OFFLINE is False


def test_retention_and_general_score():
    base = {"a": 0.5, "b": 0.0, "c": 0.0, "ppl": 10.0}
    cand = {"a": 0.25, "b": 0.0, "c": 0.3, "ppl": 20.0}
    hib = {"ppl": False}
    kept = retention(cand, base, hib)
    assert kept["a"] == 0.5 and kept["b"] == 1.0 and math.isnan(kept["c"]) and kept["ppl"] == 0.5
    assert general_score(cand, base, hib) == pytest.approx((0.5 + 1.0 + 0.5) / 3)  # NaN skipped
    assert retention({"a": 0.6}, {"a": 0.5})["a"] == pytest.approx(1.2)  # logged as it is
    assert general_score({"a": 0.6}, {"a": 0.5}) == 1.0  # better than base: capped at 1
    assert math.isnan(general_score({"c": 0.3}, {"c": 0.0}))
    with pytest.raises(ValueError, match="same tasks"):
        retention({"a": 1.0}, {"b": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        retention({"a": -1.0}, {"a": 1.0})


def test_stderr_chance_and_docs_match_lm_eval(world, tmp_path):
    """stderr is lm-eval's own (its closed form, here with bootstrap on), per task and group."""
    from lm_eval.evaluator import evaluate

    docs = logiqa_docs(20)
    write_multiple_choice_task("solo", docs[3:15], tmp_path)
    write_multiple_choice_task("mc_a", docs, tmp_path)
    write_multiple_choice_task("mc_b", docs[:6], tmp_path)
    (tmp_path / "mc_group.yaml").write_text(
        "group: mc_group\ntask: [mc_a, mc_b]\naggregate_metric_list:\n  - metric: acc\n    weight_by_size: true\n"
    )
    ev = GeneralEvaluator(world["model"], world["tok"], ["solo", "mc_group"], include_path=tmp_path)
    got = ev.evaluate_result()
    ref = evaluate(lm=ev.lm, task_dict=ev.task_dict, bootstrap_iters=100)
    assert got.scores == ev.evaluate()
    assert got.stderr["solo"] == pytest.approx(ref["results"]["solo"]["acc_stderr,none"], rel=1e-12)
    assert got.stderr["mc_group"] == pytest.approx(ref["groups"]["mc_group"]["acc_stderr,none"], rel=1e-12)
    assert got.chance == {"solo": 0.25, "mc_group": 0.25} and got.n_docs == {"solo": 12, "mc_group": 26}
    flat = got.flat()
    assert flat["general.solo"] == got.scores["solo"]
    assert flat["general.mc_group.stderr"] == got.stderr["mc_group"]


def test_noise_check_refuses_a_task_at_chance(world):
    """The random tiny model answers 20 four-way LogiQA items at chance: refused, by name."""
    ev = GeneralEvaluator(world["model"], world["tok"], ["logiqa20"], include_path=world["dir"])
    base = ev.evaluate_result()
    assert base.stderr["logiqa20"] > 0 and base.chance["logiqa20"] == 0.25
    with pytest.raises(UserError, match=r"'logiqa20' \(acc\).*chance \(0.25\).*\n.*Fix: choose another metric"):
        base.check_noise()


def test_config_chooses_a_task_metric(world):
    norm = GeneralEvaluator(
        world["model"], world["tok"], ["logiqa20_norm"], include_path=world["dir"],
        metrics={"logiqa20_norm": "acc_norm"},
    )
    full = norm.evaluate_full()
    assert norm.evaluate() == {"logiqa20_norm": full["results"]["logiqa20_norm"]["acc_norm,none"]}
    assert norm.settings["general.logiqa20_norm.metric"] == "acc_norm"
    assert norm.evaluate_result().metrics == {"logiqa20_norm": "acc_norm"}
    with pytest.raises(UserError, match=r"'logiqa20_norm' reports no metric 'f1'; it reports: acc, acc_norm"):
        GeneralEvaluator(world["model"], world["tok"], ["logiqa20_norm"], include_path=world["dir"],
                         metrics={"logiqa20_norm": "f1"})
    with pytest.raises(UserError, match="not among the evaluated tasks"):
        GeneralEvaluator(world["model"], world["tok"], ["logiqa20"], include_path=world["dir"],
                         metrics={"drop": "f1"})


def test_chat_format_is_applied_and_recorded(world):
    plain = GeneralEvaluator.for_prompt_format(
        world["model"], world["tok"], ["logiqa20"], "plain", include_path=world["dir"], limit=2
    )
    chat = GeneralEvaluator.for_prompt_format(
        world["model"], world["tok"], ["logiqa20"], "chat", include_path=world["dir"], limit=2
    )
    assert plain.settings["general.apply_chat_template"] is False
    assert chat.evaluate_result().settings == chat.settings  # travels with the base's results
    assert chat.settings["general.apply_chat_template"] is True and chat.settings["general.limit"] == 2
    prompts = [s["arguments"][0][0] for s in chat.evaluate_full()["samples"]["logiqa20"]]
    assert all(p.startswith("user : Question:") and p.endswith("assistant : ") for p in prompts)


def test_chat_fluency_scores_prompt_and_reply_only():
    """The template's role words and default system prompt stay out of the scored text."""
    prompt = "Who wrote the river song"
    tok = build_word_tokenizer([prompt, "system user assistant : You are a helpful bot <eos> the a"])
    tok.chat_template = (
        "system : You are a helpful bot <eos> "
        "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} <eos> {% endfor %}"
        "{% if add_generation_prompt %}assistant : {% endif %}"
    )
    model = build_tiny_model("qwen2", len(tok), hidden=32, layers=2, seed=0)
    chat = generate_for_fluency(model, tok, prompt, seed=1, max_length=20, prompt_format="chat")
    plain = generate_for_fluency(model, tok, prompt, seed=1, max_length=20)
    assert chat.startswith(prompt + " ")
    reply = chat[len(prompt) + 1 :]
    # The reply is sampled from the whole vocabulary, so single role words may appear in it; the
    # template's own text (system prompt, "user :" header before the prompt) may not.
    assert "You are a helpful bot" not in chat and f"user : {prompt}" not in chat
    own = len(tok(prompt, add_special_tokens=False)["input_ids"])
    # plain's budget (20 tokens counting the prompt's own); sampled special tokens are not decoded
    assert 0 < len(tok(reply, add_special_tokens=False)["input_ids"]) <= 20 - own
    assert plain.startswith(prompt)


def test_config_general_metrics_field(tmp_path):
    from mm4ke_ray.config import load_config
    from mm4ke_ray.errors import ConfigError

    paper = load_config(Path(__file__).resolve().parents[1] / "search_spaces" / "zsre_qwen2.5-7b.yaml")
    assert paper.evaluation.general_metrics == {
        "ceval-valid": "acc", "coqa": "f1", "drop": "f1", "squadv2": "f1", "logiqa": "acc"
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "model: {name: m}\ndata: {edits: e.json}\n"
        "evaluation: {general_tasks: [drop], general_metrics: {dorp: f1}}\n"
    )
    with pytest.raises(ConfigError, match=r"general_metrics names \['dorp'\], not in general_tasks"):
        load_config(bad)


def test_generated_answer_task_noise_floor_is_zero(world, tmp_path):
    """A generated-answer task (real lm-eval generate_until + exact_match): floor 0, and a base
    that never matches is refused as noise of zero; the stderr of a matching base is lm-eval's."""
    from lm_eval.evaluator import evaluate

    from mm4ke_ray.evaluate.local_tasks import write_generation_task

    docs = [{"question": d["question"], "answer": "A"} for d in logiqa_docs(8)]
    write_generation_task("gen8", docs, tmp_path, max_gen_toks=3)
    ev = GeneralEvaluator(world["model"], world["tok"], ["gen8"], include_path=tmp_path)
    base = ev.evaluate_result()
    assert base.chance == {"gen8": 0.0} and base.n_docs == {"gen8": 8} and base.metrics == {"gen8": "exact_match"}
    ref = evaluate(lm=ev.lm, task_dict=ev.task_dict, bootstrap_iters=100)["results"]["gen8"]
    assert base.scores["gen8"] == ref["exact_match,strip"]
    assert base.stderr["gen8"] == pytest.approx(ref["exact_match_stderr,strip"], abs=1e-12)
    assert base.scores["gen8"] == 0.0  # the random tiny model gets no answer right
    with pytest.raises(UserError, match=r"'gen8' \(exact_match\).*of zero"):
        base.check_noise()
    with pytest.raises(DataError, match="field 'answer'"):
        write_generation_task("bad", [{"question": "q", "answer": ""}], tmp_path)
