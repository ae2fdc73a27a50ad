"""Edit-data readers: every shared KnowEdit file, field mapping, detection, errors, round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mm4ke_ray.data import (
    QA,
    EditFormat,
    EditRecord,
    FormatRegistry,
    known_formats,
    load_edit_records,
    write_edit_records,
)
from mm4ke_ray.data import formats as formats_module
from mm4ke_ray.errors import DataError, UserError

REPO = Path(__file__).resolve().parents[1]
KNOWEDIT = REPO.parent / "shared" / "data" / "knowedit"
ZSRE = KNOWEDIT / "ZsRE-test-all.json"
RECENT = KNOWEDIT / "benchmark_wiki_recent_recent_train.json"
CF_TEST = KNOWEDIT / "wiki_counterfact_test_cf-generate-10.json"
MEND = KNOWEDIT / "zsre_mend_eval_portability_gpt4.json"

# (file, records per SOURCES.md, detected format)
SHARED_FILES = [
    ("ZsRE-test-all.json", 1301, "knowedit"),
    ("benchmark_ZsRE_ZsRE-test-all.json", 1304, "knowedit"),
    ("benchmark_WikiBio_wikibio-test-all.json", 306, "wikibio"),
    ("benchmark_WikiBio_wikibio-train-all.json", 464, "wikibio"),
    ("benchmark_wiki_counterfact_train_cf.json", 1428, "knowedit"),
    ("wiki_counterfact_test_cf-generate-10.json", 885, "knowedit"),
    ("benchmark_wiki_recent_recent_train.json", 570, "knowedit"),
    ("zsre_mend_eval_portability_gpt4.json", 1037, "zsre_mend"),
    ("fzkuji_llamafactory/zsre_train.json", 1037, "alpaca"),
    ("fzkuji_llamafactory/zsre_eval.json", 1037, "alpaca"),
    ("fzkuji_llamafactory/zsre_eval_portability.json", 1037, "alpaca"),
    ("counterfact_500_easyedit.json", 500, "counterfact_flat"),
]


def test_every_shared_file_is_listed():
    on_disk = {str(p.relative_to(KNOWEDIT)) for p in KNOWEDIT.rglob("*.json")}
    assert on_disk == {name for name, _, _ in SHARED_FILES}


@pytest.mark.parametrize(("name", "count", "fmt"), SHARED_FILES, ids=[f[0] for f in SHARED_FILES])
def test_shared_file_loads_with_sources_md_count(name, count, fmt):
    data = load_edit_records(KNOWEDIT / name)
    assert (len(data), data.format, data.skipped) == (count, fmt, [])
    assert all(r.prompt and r.target_new and r.prompt == r.prompt.strip() for r in data)
    assert data.records[7].source == f"{KNOWEDIT / name}:7"


def test_zsre_record_0_mapping():
    r = load_edit_records(ZSRE, limit=1).records[0]
    assert r == EditRecord(
        prompt="Which family does Epaspidoceras belong to?",
        target_new="Noctuidae",
        ground_truth="Aspidoceratidae",
        subject="Epaspidoceras",
        rephrase_prompts=("What family are Epaspidoceras?",),
        portability=(
            QA(
                "What is the common name for the family Epaspidoceras belongs to?",
                "Owlet moths",
                "Reasoning",
            ),
        ),
        locality=(
            QA("The taxon rank of Epaspidoceras is", "genus", "Relation_Specificity"),
            QA("Epaspidoceras taxon rank", "genus", "Relation_Specificity"),
        ),
    )


def test_zsre_targets_with_leading_space_are_stripped():
    # the raw value is " Charity River"; the encoder adds its own space
    assert load_edit_records(ZSRE, limit=17).records[16].target_new == "Charity River"


def test_wikidata_recent_nested_aliases_and_empty_answers():
    data = load_edit_records(RECENT)
    r = data.records[0]
    assert (r.ground_truth, r.portability, r.subject) == (None, (), "Ingrīda Amantova")
    # raw answers [["Cēsis"]] and [["Soviet Union", "USSR", ...]]: the first alias
    assert [q.answer for q in r.locality[:2]] == ["Cēsis", "Soviet Union"]
    # 1946 raw locality items, 7 of them with no alias at all ([[]] or [[], []]) are left out
    assert sum(len(x.locality) for x in data) == 1939
    assert {q.kind for x in data for q in x.locality} == {"Relation_Specificity", "Forgetfulness"}


def test_counterfact_test_is_jsonl_despite_json_name():
    assert CF_TEST.read_text().lstrip()[0] == "{"
    data = load_edit_records(CF_TEST)
    r = data.records[0]
    assert (r.subject, r.target_new, r.ground_truth) == (
        "Leonardo DiCaprio",
        "Syria",
        "United States of America",
    )
    assert r.portability[0] == QA(
        "The name of the currency in the country of citizenship of Leonardo DiCaprio is",
        "Syrian pound",
        "Reasoning",
    )
    assert r.rephrase_prompts == ()  # generate_prompt (third-party LLM paraphrases) is ignored
    assert {q.kind for q in r.portability} >= {"Reasoning", "Subject_Aliasing"}


def test_wikibio_mapping():
    r = load_edit_records(KNOWEDIT / "benchmark_WikiBio_wikibio-test-all.json", limit=1).records[0]
    assert r.prompt.startswith("This is a Wikipedia passage about john russell reynolds. Sir John")
    assert r.target_new.startswith("He received general education from his father")
    assert (r.subject, r.ground_truth, r.portability) == ("john russell reynolds", None, ())
    assert r.locality[0] == QA(
        "The field of work of john russell reynolds is", "medicine", "Relation_Specificity"
    )


def test_zsre_mend_mapping():
    r = load_edit_records(MEND, limit=1).records[0]
    assert r == EditRecord(
        prompt="When was the inception of IAAF Combined Events Challenge?",
        target_new="2006",
        ground_truth="1998",
        subject="IAAF Combined Events Challenge",
        rephrase_prompts=("When was the IAAF Combined Events Challenge launched?",),
        locality=(
            QA(
                "nq question: what is the name of the last episode of spongebob", "The String", "NQ"
            ),
        ),
        portability=(
            QA(
                "What type of sports event is the IAAF Combined Events Challenge, which was established in 2006?",
                "Athletics",
                "one_hop",
            ),
        ),
    )


def test_alpaca_matches_zsre_mend_and_joins_input(tmp_path):
    train = load_edit_records(KNOWEDIT / "fzkuji_llamafactory/zsre_train.json")
    mend = load_edit_records(MEND)
    assert [(r.prompt, r.target_new) for r in train] == [(r.prompt, r.target_new) for r in mend]
    f = tmp_path / "a.json"
    f.write_text(json.dumps([{"instruction": "Translate:", "input": "chat", "output": "cat"}]))
    assert load_edit_records(f).records[0].prompt == "Translate:\nchat"


def test_counterfact_flat_has_rephrase_but_no_locality():
    r = load_edit_records(KNOWEDIT / "counterfact_500_easyedit.json", limit=1).records[0]
    assert (r.prompt, r.target_new, r.ground_truth, r.subject) == (
        "Angola is located in",
        "Antarctica",
        "Africa",
        "Angola",
    )
    assert r.rephrase_prompts[0].endswith("Angola belongs to the continent of")
    assert r.locality == ()  # locality_prompt has no answer to score


def test_rome_counterfact_format(tmp_path):
    row = {
        "case_id": 0,
        "requested_rewrite": {
            "prompt": "The mother tongue of {} is",
            "relation_id": "P103",
            "target_new": {"str": "English", "id": "Q1860"},
            "target_true": {"str": "French", "id": "Q150"},
            "subject": "Danielle Darrieux",
        },
        "paraphrase_prompts": ["Danielle Darrieux's mother tongue is"],
        "neighborhood_prompts": ["The native language of Montesquieu is"],
        "generation_prompts": [],
    }
    f = tmp_path / "cf.json"
    f.write_text(json.dumps([row]))
    data = load_edit_records(f)
    assert data.format == "rome_counterfact"
    assert data.records[0] == EditRecord(
        "The mother tongue of Danielle Darrieux is",
        "English",
        "French",
        "Danielle Darrieux",
        ("Danielle Darrieux's mother tongue is",),
        (),
        (QA("The native language of Montesquieu is", "French", "Neighborhood"),),
    )


def test_forced_format_and_aliases():
    assert load_edit_records(ZSRE, fmt="zsre", limit=2).format == "knowedit"
    with pytest.raises(DataError, match=r"record 0: field 'text'"):
        load_edit_records(ZSRE, fmt="wikibio")
    with pytest.raises(
        UserError, match=r"unknown edit-data format 'wikbio'.*Did you mean 'wikibio'.*knowedit"
    ):
        load_edit_records(ZSRE, fmt="wikbio")


def test_undetectable_format_lists_known(tmp_path):
    f = tmp_path / "x.json"
    f.write_text(json.dumps([{"question": "q", "answer": "a"}]))
    with pytest.raises(UserError, match=r"cannot tell .*\['answer', 'question'\].*zsre_mend"):
        load_edit_records(f)


def _write(tmp_path: Path, rows: list, name: str = "edits.json") -> Path:
    f = tmp_path / name
    f.write_text(json.dumps(rows))
    return f


GOOD = {"prompt": "The capital of France is", "target_new": "Lyon", "ground_truth": ["Paris"]}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"prompt": "p"}, "target_new"),
        ({"prompt": 3, "target_new": "t"}, "prompt"),
        ({"prompt": "   ", "target_new": "t"}, "prompt"),
        (
            {**GOOD, "locality": {"RS": [{"prompt": None, "ground_truth": "x"}]}},
            "locality.RS[0].prompt",
        ),
        ({**GOOD, "portability": ["not", "a", "dict"]}, "portability"),
        ({**GOOD, "ground_truth": {"a": 1}}, "ground_truth"),
    ],
)
def test_bad_record_names_file_index_and_field(tmp_path, bad, field):
    f = _write(tmp_path, [GOOD, bad])
    with pytest.raises(DataError) as info:
        load_edit_records(f)
    assert (info.value.path, info.value.index, info.value.field) == (str(f), 1, field)
    message = str(info.value)
    assert f"{f}: record 1: field '{field}'" in message and "skip_invalid" in message


def test_skip_invalid_drops_and_reports(tmp_path, caplog):
    rows = [
        GOOD,
        {"prompt": "p"},
        "not an object",
        {**GOOD, "prompt": "Another"},
        {**GOOD, "target_new": 5},
    ]
    data = load_edit_records(_write(tmp_path, rows), skip_invalid=True)
    assert [r.prompt for r in data] == ["The capital of France is", "Another"]
    assert [r.source.rsplit(":", 1)[1] for r in data] == ["0", "3"]
    assert len(data.skipped) == 3
    assert (
        "record 1: field 'target_new'" in data.skipped[0]
        and "record 4: field 'target_new'" in data.skipped[2]
    )
    assert "skipped 3 invalid" in caplog.text


def test_limit_takes_first_valid_records(tmp_path):
    rows = [{"prompt": "x"}, GOOD, {**GOOD, "prompt": "b"}, {**GOOD, "prompt": "c"}, {"bad": 1}]
    data = load_edit_records(_write(tmp_path, rows), skip_invalid=True, limit=2)
    assert [r.prompt for r in data] == ["The capital of France is", "b"]
    assert len(data.skipped) == 1  # rows after the limit are not read
    with pytest.raises(UserError, match="limit"):
        load_edit_records(ZSRE, limit=0)


def test_truncated_jsonl_names_line(tmp_path):
    lines = [json.dumps(GOOD)] * 3 + ['{"prompt": "cut of']
    f = tmp_path / "edits.json"
    f.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")  # blank line 3
    with pytest.raises(DataError, match=r"edits\.json: line 5: invalid JSON"):
        load_edit_records(f)


def test_truncated_json_array_names_line(tmp_path):
    f = tmp_path / "edits.json"
    f.write_text(json.dumps([GOOD, GOOD], indent=1)[:-20])
    with pytest.raises(DataError, match=r"line \d+, column \d+: invalid JSON"):
        load_edit_records(f)


def test_jsonl_suffix_and_pretty_single_object(tmp_path):
    f = tmp_path / "e.jsonl"
    f.write_text(json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "prompt": "Q2"}) + "\n")
    assert [r.prompt for r in load_edit_records(f)] == [GOOD["prompt"], "Q2"]
    g = tmp_path / "one.json"
    g.write_text(json.dumps(GOOD, indent=2))
    assert load_edit_records(g).records[0].target_new == "Lyon"


@pytest.mark.parametrize("content", ["", "  \n", "[]"])
def test_empty_edit_set_is_user_error(tmp_path, content):
    f = tmp_path / "empty.json"
    f.write_text(content)
    with pytest.raises(UserError, match="empty"):
        load_edit_records(f)


def test_all_invalid_with_skip_is_user_error(tmp_path):
    f = _write(
        tmp_path,
        [{"prompt": "a"}, {"prompt": "b", "target_new": ""}, {"prompt": "c", "target_new": 5}],
    )
    with pytest.raises(UserError, match="no valid edit records: all 3 were invalid"):
        load_edit_records(f, skip_invalid=True)
    # the broken first record is still named, though detection had to use a later one
    with pytest.raises(DataError, match="record 0: field 'target_new': is missing"):
        load_edit_records(f)


@pytest.mark.parametrize(
    "missing", ["data/missing-edits.json", "./nope", "/nonexistent/dir/edits.jsonl"]
)
def test_missing_local_path_is_user_error(missing):
    with pytest.raises(UserError, match="not found: no such file or directory") as info:
        load_edit_records(missing)
    assert not isinstance(info.value, DataError)


def test_hub_id_goes_through_datasets_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setattr("datasets.config.HF_HUB_OFFLINE", True)
    with pytest.raises(
        UserError, match=r"datasets\.load_dataset\('nonexistent-org-xyz/nothing'.*split='test'"
    ):
        load_edit_records("nonexistent-org-xyz/nothing:test")
    with pytest.raises(
        UserError, match=r"load_dataset\('zjunlp/KnowEdit', data_files='benchmark/ZsRE/x\.json'"
    ):
        load_edit_records("hf:zjunlp/KnowEdit/benchmark/ZsRE/x.json")


def test_local_directory_and_parquet_go_through_datasets(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    raw = json.loads(RECENT.read_text())[:30]  # nested alias lists, empty portability dicts
    (tmp_path / "dir").mkdir()
    _write(tmp_path / "dir", raw, "train.json")
    expected = load_edit_records(_write(tmp_path, raw)).records
    via_dir = load_edit_records(tmp_path / "dir")
    assert via_dir.format == "knowedit" and via_dir.records == expected
    datasets.Dataset.from_list(json.loads(ZSRE.read_text())[:20]).to_parquet(tmp_path / "z.parquet")
    assert (
        load_edit_records(tmp_path / "z.parquet").records
        == load_edit_records(ZSRE, limit=20).records
    )
    with pytest.raises(UserError, match="split='test'"):
        load_edit_records(tmp_path / "dir", split="test")


def test_write_round_trip(tmp_path):
    records = (
        load_edit_records(ZSRE, limit=40).records
        + load_edit_records(RECENT, limit=40).records
        + load_edit_records(MEND, limit=20).records
        + load_edit_records(CF_TEST, limit=10).records
    )
    records.append(
        EditRecord("p", "t", rephrase_prompts=("r1", "r2"), locality=(QA("l", "a", ""),))
    )
    out = write_edit_records(records, tmp_path / "sub" / "edits.json")
    back = load_edit_records(out)
    assert back.format == "knowedit" and back.records == records
    row = json.loads(out.read_text())[0]
    assert (
        row["ground_truth"] == ["Aspidoceratidae"]
        and row["rephrase_prompt"] == "What family are Epaspidoceras?"
    )
    assert row["locality"]["Relation_Specificity"][0] == {
        "prompt": "The taxon rank of Epaspidoceras is",
        "ground_truth": ["genus"],
    }
    with pytest.raises(UserError, match="no edit records to write"):
        write_edit_records([], tmp_path / "empty.json")


def test_registry_detection_priority_and_duplicates(tmp_path, monkeypatch):
    registry = FormatRegistry()
    generic = EditFormat(
        "generic", lambda r: "q" in r, lambda r: EditRecord(r["q"], r["a"]), "q, a"
    )
    special = EditFormat(
        "special",
        lambda r: "q" in r and "x" in r,
        lambda r: EditRecord(r["x"], r["a"]),
        "q, a, x",
        priority=5,
        aliases=("sp",),
    )
    registry.register(generic)
    registry.register(special)
    assert registry.names() == ["special", "generic"]
    assert registry.detect({"q": 1, "x": 2}) is special and registry.detect({"q": 1}) is generic
    assert registry.detect({"z": 1}) is None and registry.get("sp") is special
    with pytest.raises(ValueError, match="already registered"):
        registry.register(EditFormat("sp", generic.detect, generic.read, ""))
    # a format registered in the global registry is used by load_edit_records
    names = formats_module.FORMATS._registry
    monkeypatch.setattr(names, "_items", dict(names._items))
    monkeypatch.setattr(names, "_aliases", dict(names._aliases))
    formats_module.register_format(special)
    assert "special" in known_formats()
    data = load_edit_records(_write(tmp_path, [{"q": "a", "x": "Q?", "a": "A"}]))
    assert (data.format, data.records[0].prompt) == ("special", "Q?")
