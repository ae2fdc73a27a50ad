"""The real general tasks (sst2, logiqa, boolq, rte, wikitext) built from the shared files and run
through lm-eval on a tiny model: lm-eval's own prompts, per-document values, a finite perplexity,
lower-is-better retention, and bad input named by file and line before any model work."""

from __future__ import annotations

import math
import re

import pytest
import torch

pytest.importorskip("lm_eval")

from conftest import SHARED  # noqa: E402

from mm4ke_ray.config import validate_config  # noqa: E402
from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer  # noqa: E402
from mm4ke_ray.errors import ConfigError, DataError, UserError  # noqa: E402
from mm4ke_ray.evaluate.general import GeneralEvaluator, general_score, retention  # noqa: E402
from mm4ke_ray.evaluate.real_tasks import (  # noqa: E402
    LocalTaskSpec,
    build_local_task,
    build_local_tasks,
    read_documents,
)
from mm4ke_ray.preflight import local_task_folders  # noqa: E402

GENERAL = SHARED / "data" / "general"
FILES = {"sst2": GENERAL / "test-SentimentAnalysis.tsv", "logiqa": GENERAL / "logiqa" / "Test.txt",
         "boolq": GENERAL / "test-ClosedDomainQA.jsonl", "rte": GENERAL / "test-NLI.tsv",
         "wikitext": GENERAL / "wikitext-2" / "test.txt"}
N_DOCS = 4
WORDS = 1500  # the first article (1,091 words) and part of the second


def specs() -> list[LocalTaskSpec]:
    return [LocalTaskSpec(name, str(path), limit=None if name == "wikitext" else N_DOCS,
                          max_words=WORDS if name == "wikitext" else None) for name, path in FILES.items()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The five tasks built into a cache folder, a word tokenizer over their documents, a tiny Qwen2."""
    cache = tmp_path_factory.mktemp("task_cache")
    folders = build_local_tasks(specs(), cache)
    texts = []
    for spec in specs():
        for doc in read_documents(spec):
            texts += [str(v) for v in doc.values()] + [str(o) for o in doc.get("options", [])]
    texts.append("Question: Is this sentence positive or negative? Answer: True or False? Passage: Choices: "
                 "A. B. C. D. yes no")
    tok = build_word_tokenizer(texts)
    model = build_tiny_model("qwen2", len(tok), hidden=32, layers=2, seed=0)
    ev = GeneralEvaluator(model, tok, list(FILES), include_path=folders)
    return {"cache": cache, "folders": folders, "tok": tok, "model": model, "ev": ev}


def test_files_convert_to_the_hub_datasets_fields():
    counts = {name: len(read_documents(LocalTaskSpec(name, str(path)))) for name, path in FILES.items()}
    assert counts == {"sst2": 872, "logiqa": 651, "boolq": 3267, "rte": 2489, "wikitext": 62}
    sst2 = read_documents(LocalTaskSpec("sst2", str(FILES["sst2"]), limit=2))
    assert sst2 == [{"sentence": "it 's a charming and often affecting journey .", "label": 1, "idx": 0},
                    {"sentence": "unflinchingly bleak and desperate", "label": 0, "idx": 1}]
    rte = read_documents(LocalTaskSpec("rte", str(FILES["rte"]), limit=2))
    assert [d["label"] for d in rte] == [1, 0]  # not_entailment, entailment: GLUE's indices
    boolq = read_documents(LocalTaskSpec("boolq", str(FILES["boolq"]), limit=1))[0]
    assert boolq["label"] == 0 and boolq["question"].startswith("does ethanol")
    logiqa = read_documents(LocalTaskSpec("logiqa", str(FILES["logiqa"])))
    assert logiqa[0]["label"] == "a" and len(logiqa[0]["options"]) == 4
    assert logiqa[0]["options"][0] == "Civic Park is north of the administrative service area"
    assert "park. These" in logiqa[0]["context"]  # the loader's space after a period
    wiki = read_documents(LocalTaskSpec("wikitext", str(FILES["wikitext"])))
    assert wiki[0]["page"].startswith(" = Robert <unk> = \n")
    assert sum(len(d["page"].split()) for d in wiki) == len(FILES["wikitext"].read_text().split())
    budget = read_documents(LocalTaskSpec("wikitext", str(FILES["wikitext"]), max_words=WORDS))
    assert sum(len(d["page"].split()) for d in budget) == WORDS


def test_prompts_and_choices_are_lm_evals_own(world):
    tasks = world["ev"].task_dict["tasks"]
    sst2 = tasks["sst2"]
    doc = sst2.eval_docs[0]
    assert sst2.doc_to_text(doc) == f"{doc['sentence']}\nQuestion: Is this sentence positive or negative?\nAnswer:"
    assert sst2.doc_to_choice(doc) == ["negative", "positive"] and sst2.doc_to_target(doc) == 1
    rte = tasks["rte"]
    assert rte.doc_to_choice(rte.eval_docs[0]) == ["True", "False"]
    boolq = tasks["boolq"]
    assert boolq.doc_to_text(boolq.eval_docs[0]).endswith("?\nAnswer:")
    logiqa = tasks["logiqa"]
    text = logiqa.doc_to_text(logiqa.eval_docs[0])
    assert text.startswith("Passage: ") and "\nChoices:\nA. Civic Park" in text and text.endswith("Answer:")
    assert logiqa.doc_to_target(logiqa.eval_docs[0]) == 0
    assert tasks["wikitext"].OUTPUT_TYPE == "loglikelihood_rolling"


def test_every_task_runs_through_lm_eval_with_scores_floors_and_per_document_values(world):
    got = world["ev"].evaluate_result()
    assert got.n_docs == {"sst2": N_DOCS, "logiqa": N_DOCS, "boolq": N_DOCS, "rte": N_DOCS,
                          "wikitext": got.n_docs["wikitext"]}
    assert got.chance == {"sst2": 0.5, "logiqa": 0.25, "boolq": 0.5, "rte": 0.5, "wikitext": None}
    assert got.metrics["wikitext"] == "word_perplexity" and got.higher_is_better["wikitext"] is False
    for task in ("sst2", "logiqa", "boolq", "rte"):
        assert 0.0 <= got.scores[task] <= 1.0 and len(got.per_doc[task]) == N_DOCS
        assert got.scores[task] == pytest.approx(sum(got.per_doc[task]) / N_DOCS)
    ppl, nll, words = got.scores["wikitext"], got.per_doc["wikitext"], got.doc_weights["wikitext"]
    assert math.isfinite(ppl) and ppl > 1.0 and got.n_docs["wikitext"] >= 2
    assert ppl == pytest.approx(math.exp(sum(nll) / sum(words)), rel=1e-9)  # lm-eval's weighted_perplexity
    docs = world["ev"].task_dict["tasks"]["wikitext"].eval_docs
    assert words == [len(re.split(r"\s+", d["page"])) for d in docs]  # lm-eval's own word count
    assert got.stderr["wikitext"] > 0 and math.isfinite(got.stderr["wikitext"])
    assert "general.wikitext.stderr" in got.flat()


def test_perplexity_retention_is_base_over_candidate(world):
    """A damaged candidate has a higher perplexity; its retention is base / candidate (< 1), and
    the weights restored give the base's perplexity back exactly."""
    ev, model = world["ev"], world["model"]
    base = ev.evaluate_result()
    weight = model.model.layers[0].mlp.down_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.add_(torch.randn_like(weight, generator=torch.Generator().manual_seed(0)) * 2.0)
    try:
        cand = ev.evaluate_result()
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    hib = ev.higher_is_better
    kept = retention(cand.scores, base.scores, hib, base.chance)
    assert cand.scores["wikitext"] != base.scores["wikitext"]
    assert kept["wikitext"] == pytest.approx(base.scores["wikitext"] / cand.scores["wikitext"])
    one = general_score({"wikitext": cand.scores["wikitext"]}, {"wikitext": base.scores["wikitext"]}, hib)
    assert one == min(1.0, kept["wikitext"])
    assert ev.evaluate_result().scores == base.scores


def test_cache_folder_is_reused_and_follows_the_file(tmp_path):
    src = tmp_path / "sst2.tsv"
    src.write_text("sentence\tlabel\ngood film\t1\nbad film\t0\n")
    spec = LocalTaskSpec("sst2", str(src))
    first = build_local_task(spec, tmp_path / "cache")
    assert build_local_task(spec, tmp_path / "cache") == first
    assert (first / "sst2.yaml").is_file() and (first / "sst2.jsonl").read_text().count("\n") == 2
    src.write_text("sentence\tlabel\ngood film\t1\n")
    assert build_local_task(spec, tmp_path / "cache") != first  # an edited file: a new conversion


@pytest.mark.parametrize("name, text, where", [
    ("sst2", "sentence\tlabel\ngood\t1\nbad\tx\n", "line 3: label must be 0 or 1"),
    ("sst2", "text\tlabel\ngood\t1\n", "line 1 must be the header"),
    ("rte", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n", "line 2: label must be entailment"),
    ("boolq", '{"question": "q", "passage": "p", "answer": true}\n{"question": "q"}\n', "line 2: field 'passage'"),
    ("logiqa", "\na\nctx\nq\nA.x\nB.y\nC.z\n\nb\nctx\nq\nA.x\nB.y\nC.z\nD.w\n", "line 2: a question block needs 7"),
])
def test_bad_files_are_named_by_line(tmp_path, name, text, where):
    src = tmp_path / "data.txt"
    src.write_text(text)
    with pytest.raises(DataError, match=re.escape(where)) as err:
        read_documents(LocalTaskSpec(name, str(src)))
    assert str(src) in str(err.value)


def test_config_names_local_tasks_and_preflight_reports_their_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("MM4KE_CACHE", str(tmp_path / "cache"))
    good = {"general_tasks": ["sst2", "wikitext"],
            "local_tasks": {"sst2": str(FILES["sst2"]), "wikitext": {"path": str(FILES["wikitext"]), "max_words": 500}}}
    config = validate_config({"evaluation": good})
    folders, problems = local_task_folders(config)
    assert problems == [] and [f.name.split("-")[0] for f in folders] == ["sst2", "wikitext"]
    assert all(str(f).startswith(str(tmp_path / "cache")) for f in folders)  # the cache, never the repo
    moved = config.with_overrides(**{"evaluation.local_tasks.sst2": str(tmp_path / "missing.tsv")})
    _, problems = local_task_folders(moved)
    assert problems == [f"evaluation.local_tasks.sst2: file {str(tmp_path / 'missing.tsv')!r} does not exist"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\nfine\t3\n")
    _, problems = local_task_folders(config.with_overrides(**{"evaluation.local_tasks.sst2.path": str(bad)}))
    assert len(problems) == 1 and "line 2: label must be 0 or 1" in problems[0] and str(bad) in problems[0]
    for evaluation, says in (
        ({"general_tasks": ["rte"], "local_tasks": {"sst2": "x.tsv"}}, "local_tasks names ['sst2'], not in general_tasks"),
        ({"general_tasks": ["sst3"], "local_tasks": {"sst3": "x"}}, "'boolq', 'logiqa', 'rte', 'sst2' or 'wikitext'"),
        ({"general_tasks": ["sst2"], "local_tasks": {"sst2": {"path": "x", "max_words": 5}}}, "wikitext only"),
        ({"general_tasks": ["sst2"], "local_tasks": {"sst2": {"path": "x", "limit": 0}}}, "local_tasks.sst2.limit"),
    ):
        with pytest.raises(ConfigError, match=re.escape(says)):
            validate_config({"evaluation": evaluation})


def test_unknown_builder_and_misplaced_budget_are_refused(tmp_path):
    with pytest.raises(UserError, match="known: boolq, logiqa, rte, sst2, wikitext"):
        read_documents(LocalTaskSpec("squad", str(FILES["sst2"])))
    with pytest.raises(UserError, match="max_words applies to wikitext only"):
        read_documents(LocalTaskSpec("sst2", str(FILES["sst2"]), max_words=10))


def test_max_length_sets_the_perplexity_window(world):
    """`evaluation.general_max_length` reaches lm-eval: shorter rolling windows score each token
    with less context, so the perplexity changes (and their memory is bounded)."""
    short = GeneralEvaluator(world["model"], world["tok"], ["wikitext"], include_path=world["folders"],
                             max_length=32)
    assert short.lm.max_length == 32 and short.settings["general.max_length"] == 32
    full = world["ev"].evaluate_result().scores["wikitext"]
    assert short.evaluate_result().scores["wikitext"] != pytest.approx(full, rel=1e-6)
    config = validate_config({"evaluation": {"general_tasks": ["wikitext"], "general_max_length": 512}})
    from mm4ke_ray.evaluate.candidate import eval_settings

    assert eval_settings(config, "cpu").general_max_length == 512


def test_validate_warns_on_the_stored_base_measurement_with_the_limit_that_meets_it(
        tmp_path, tiny_model_dir, capsys, monkeypatch):
    import yaml
    from conftest import ZSRE

    from mm4ke_ray.cli import main
    from mm4ke_ray.evaluate.general import GeneralResult
    from mm4ke_ray.evaluate.precision import save_base_measurement

    monkeypatch.setenv("MM4KE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "name": "real", "model": {"name": str(tiny_model_dir)}, "data": {"edits": str(ZSRE)},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}, "search": {"space": {"layer": {"choices": [1]}}},
        "evaluation": {"general_tasks": ["sst2"], "general_limit": 100,
                       "local_tasks": {"sst2": str(FILES["sst2"])}}}))
    assert main(["validate", "--offline", str(path)]) == 0
    assert "no base measurement on this machine yet" in capsys.readouterr().err
    config = validate_config(yaml.safe_load(path.read_text()))
    save_base_measurement(config, GeneralResult({"sst2": 0.62}, {"sst2": 0.0488}, {"sst2": 0.5}, {"sst2": 100},
                                                {"sst2": "acc"}, {"sst2": True}))
    assert main(["validate", "--offline", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: general task 'sst2': retention SE 0.407 on 100 documents exceeds 0.05" in err
    assert "about 6,616 documents would meet it" in err  # 100 · (0.4067 / 0.05)²
