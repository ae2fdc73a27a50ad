"""SharedContextHFLM gives lm-eval's HFLM per-document results while running each context once.

Real lm-eval (local tasks from real LogiQA and WikiText-2), tiny models built from a config.
"""

from __future__ import annotations

import re

import pytest
import torch
import yaml

pytest.importorskip("lm_eval")

from lm_eval.evaluator import evaluate  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import get_rolling_token_windows  # noqa: E402

from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer  # noqa: E402
from mm4ke_ray.evaluate.general import GeneralEvaluator  # noqa: E402
from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task  # noqa: E402
from mm4ke_ray.evaluate.shared_context_lm import shared_context_hflm_class  # noqa: E402
from mm4ke_ray.modeling.layers import decoder_layers  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

LOGIQA = SHARED / "data" / "general" / "logiqa" / "Test.txt"
WIKITEXT = SHARED / "data" / "general" / "wikitext-2" / "test.txt"
MAX_LENGTH = 512  # the tiny model's rotary positions have no hard limit; HFLM truncates above this


def logiqa_docs(n: int) -> list[dict]:
    """LogiQA as lm-eval's `logiqa` asks it: passage, question, lettered options; each option's
    text is a choice, scored after the long shared prompt."""
    text = LOGIQA.read_text(encoding="utf-8").replace("\r\n", "\n")
    docs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if len(lines) != 7 or not all(re.match(r"^[A-D]\b", ln) for ln in lines[3:]):
            continue
        options = [re.sub(r"^[A-D][.\s]?\s*", "", ln) for ln in lines[3:]]
        listing = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", options, strict=True))
        docs.append({"question": f"Passage: {lines[1]}\nQuestion: {lines[2]}\nChoices:\n{listing}",
                     "choices": options, "answer_index": "abcd".index(lines[0])})
    return docs[:n]


def wikitext_articles(n: int) -> list[str]:
    """The first `n` WikiText-2 test articles (split at their ` = Title = ` headings)."""
    parts = re.split(r"\n \n (?== [^=])", WIKITEXT.read_text(encoding="utf-8"))
    return [p.strip() for p in parts if p.strip()][:n]


def write_rolling_task(name: str, pages: list[str], out) -> str:
    """An lm-eval perplexity task (`loglikelihood_rolling` over each page), as lm-eval's wikitext."""
    import json

    (out / f"{name}.jsonl").write_text("".join(json.dumps({"page": p}) + "\n" for p in pages))
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(out / f"{name}.jsonl")}},
              "output_type": "loglikelihood_rolling", "test_split": "test", "doc_to_text": "",
              "doc_to_target": "{{page}}", "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}],
              "metadata": {"version": 1.0}}
    (out / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return name


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("shared_context_tasks")
    docs, pages = logiqa_docs(8), wikitext_articles(2)
    write_multiple_choice_task("logiqa8", docs, out, doc_to_text="{{question}}\nAnswer:", metrics=("acc", "acc_norm"))
    write_rolling_task("wiki2", pages, out)
    tok = build_word_tokenizer([d["question"] + " " + " ".join(d["choices"]) for d in docs] + pages)
    manager = TaskManager(include_path=str(out), include_defaults=False)
    return {"tok": tok, "tasks": manager.load(["logiqa8", "wiki2"]), "logiqa": manager.load(["logiqa8"]),
            "wiki": manager.load(["wiki2"])}


def _model(tok, arch: str = "qwen2"):
    return build_tiny_model(arch, len(tok), hidden=64, layers=4, seed=1)


def _run(lm, task_dict) -> dict:
    return evaluate(lm=lm, task_dict=task_dict, bootstrap_iters=0, log_samples=True)


def _responses(full, task: str) -> list:
    """Per document, lm-eval's raw response to each of its requests, in document order."""
    return [[r[0] for r in s["resps"]] for s in sorted(full["samples"][task], key=lambda s: s["doc_id"])]


# Log-likelihoods agree within 1e-5, or within two units in the last place of a float32 sum where
# that is coarser (a sum of magnitude >= 128, as a random tiny model gives, has a step of 1.5e-5).
ULP2 = 2.0**-22


def _assert_same_per_document(got: dict, want: dict, tol: float = 1e-5) -> None:
    for (g_doc, w_doc) in zip(_responses(got, "logiqa8"), _responses(want, "logiqa8"), strict=True):
        assert [ll for ll, _ in g_doc] == pytest.approx([ll for ll, _ in w_doc], rel=ULP2, abs=tol)
        assert [greedy for _, greedy in g_doc] == [greedy for _, greedy in w_doc]
        assert max(range(4), key=lambda i: g_doc[i][0]) == max(range(4), key=lambda i: w_doc[i][0])
    for g_doc, w_doc in zip(_responses(got, "wiki2"), _responses(want, "wiki2"), strict=True):
        assert g_doc == pytest.approx(w_doc, rel=ULP2, abs=tol)
    for task in ("logiqa8", "wiki2"):
        for metric, value in want["results"][task].items():
            if isinstance(value, float):
                assert got["results"][task][metric] == pytest.approx(value, rel=1e-6), (task, metric)


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_same_per_document_results_as_hflm_with_each_context_run_once(world, arch):
    model = _model(world["tok"], arch)
    plain = HFLM(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    shared = shared_context_hflm_class()(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    want, got = _run(plain, world["tasks"]), _run(shared, world["tasks"])
    _assert_same_per_document(got, want)
    # One row per distinct context: the 8 LogiQA prompts (HFLM runs 8 x 4 sequences).
    shared.rows_run = 0
    _run(shared, world["logiqa"])
    assert shared.rows_run == 8


def test_requests_hflm_truncates_take_its_own_path(world):
    # At max_length 64 every LogiQA prompt is truncated from the left by HFLM: the same must happen here.
    model = _model(world["tok"])
    plain = HFLM(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=64)
    shared = shared_context_hflm_class()(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=64)
    _assert_same_per_document(_run(shared, world["tasks"]), _run(plain, world["tasks"]))
    shared.rows_run = 0
    _run(shared, world["logiqa"])
    assert shared.rows_run == 0  # none was packed
    # Rolling windows: one row each (windows with the same one-token context are not packed
    # together beyond the model's length).
    shared.rows_run = 0
    full = _run(shared, world["wiki"])
    assert shared.rows_run == sum(len(list(get_rolling_token_windows(
        token_list=shared.tok_encode(s["doc"]["page"]), prefix_token=shared.prefix_token_id, max_seq_len=64,
        context_len=1))) for s in full["samples"]["wiki2"])


def _scale_block_(model, block: int, factor: float) -> dict:
    """Scale one block's MLP weights in place (a stand-in merge candidate); return the originals."""
    params = {n: p for n, p in decoder_layers(model)[block].named_parameters() if "mlp" in n}
    saved = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for p in params.values():
            p.mul_(factor)
    return saved


def _restore_block_(model, block: int, saved: dict) -> None:
    with torch.no_grad():
        for n, p in decoder_layers(model)[block].named_parameters():
            if n in saved:
                p.copy_(saved[n])


def test_layers_below_l_are_reused_across_candidates_with_identical_results(world):
    model, layer = _model(world["tok"]), 2
    plain = HFLM(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    shared = shared_context_hflm_class()(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    with shared.layers_below_unchanged(layer):
        _run(shared, world["tasks"])  # the base: captures the states entering block 2
    misses = shared.prefix_cache.misses
    for factor in (1.5, 0.5):  # two candidates of a delta on block 2
        saved = _scale_block_(model, layer, factor)
        try:
            with shared.layers_below_unchanged(layer):
                got = _run(shared, world["tasks"])
            want = _run(plain, world["tasks"])
        finally:
            _restore_block_(model, layer, saved)
        _assert_same_per_document(got, want)
    assert shared.prefix_cache.misses == misses and shared.prefix_cache.hits >= 2 * misses > 0
    assert shared.first_layer is None  # the context manager ends the reuse


def test_reuse_really_skips_the_blocks_below_l(world):
    # A change below L is not seen while reuse is declared (the caller's promise is broken on
    # purpose): the cached states are what run, so the results are the unchanged model's.
    model = _model(world["tok"])
    shared = shared_context_hflm_class()(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    with shared.layers_below_unchanged(2):
        before = _responses(_run(shared, world["tasks"]), "logiqa8")
    saved = _scale_block_(model, 0, 3.0)
    try:
        with shared.layers_below_unchanged(2):
            reused = _responses(_run(shared, world["tasks"]), "logiqa8")
        fresh = _responses(_run(shared, world["tasks"]), "logiqa8")
    finally:
        _restore_block_(model, 0, saved)
    assert reused == before and fresh != before


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_layers_below_unchanged_refuses_a_bad_layer(world, bad):
    shared = shared_context_hflm_class()(pretrained=_model(world["tok"]), tokenizer=world["tok"], batch_size=4)
    with pytest.raises(ValueError, match="layer must be an int >= 0"), shared.layers_below_unchanged(bad):
        pass


def test_general_evaluator_uses_it_by_default_and_records_it(world, tmp_path):
    # Documents whose prompt and four options fit in one row of the tiny model's 256 positions.
    docs = [d for d in logiqa_docs(20) if len(world["tok"](d["question"] + " ".join(d["choices"])).input_ids) < 200][:6]
    write_multiple_choice_task("logiqa6", docs, tmp_path, doc_to_text="{{question}}\nAnswer:")
    model = _model(world["tok"])
    on = GeneralEvaluator(model, world["tok"], ["logiqa6"], include_path=tmp_path)
    off = GeneralEvaluator(model, world["tok"], ["logiqa6"], include_path=tmp_path, shared_context=False)
    assert on.settings["general.shared_context"] is True and off.settings["general.shared_context"] is False
    assert not hasattr(off.lm, "rows_run")
    got, want = on.evaluate_result(), off.evaluate_result()
    assert got.scores == want.scores and got.per_doc == want.per_doc
    assert len(docs) == 6 and on.lm.rows_run == 6
    saved = _scale_block_(model, 3, 2.0)
    try:
        with on.layers_below_unchanged(3), off.layers_below_unchanged(3):
            assert on.evaluate_result().per_doc == off.evaluate_result().per_doc
    finally:
        _restore_block_(model, 3, saved)


def test_one_token_choices_share_the_context_row_without_a_mask(world, tmp_path):
    # Letter choices (one token each) add no tokens to the row: one plain causal row per document.
    docs = [{**d, "choices": ["A", "B", "C", "D"]} for d in logiqa_docs(8)]
    write_multiple_choice_task("letters8", docs, tmp_path, doc_to_text="{{question}}\nAnswer:")
    tasks = TaskManager(include_path=str(tmp_path), include_defaults=False).load(["letters8"])
    model = _model(world["tok"])
    plain = HFLM(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    shared = shared_context_hflm_class()(pretrained=model, tokenizer=world["tok"], batch_size=4, max_length=MAX_LENGTH)
    got, want = _responses(_run(shared, tasks), "letters8"), _responses(_run(plain, tasks), "letters8")
    for g_doc, w_doc in zip(got, want, strict=True):
        assert [ll for ll, _ in g_doc] == pytest.approx([ll for ll, _ in w_doc], rel=ULP2, abs=1e-5)
        assert [greedy for _, greedy in g_doc] == [greedy for _, greedy in w_doc]
    assert shared.rows_run == 8
