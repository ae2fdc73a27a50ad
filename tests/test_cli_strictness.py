"""Commands say no instead of guessing: no option prefixes, no hub model that cannot be had.

An abbreviated option used to be completed by argparse (`rsft --mode both` became `--model
both`); a hub id neither local nor cached ended in transformers' OSError traceback when the hub
could not be reached. The per-command cases with the hub offline are in tests/bad_inputs/.
"""

from __future__ import annotations

import argparse

import pytest

from mm4ke_ray.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def test_no_parser_completes_an_abbreviated_option():
    parser = build_parser()
    subs = _subparsers(parser)
    assert len(subs) >= 9
    assert not parser.allow_abbrev and not [name for name, p in subs.items() if p.allow_abbrev]


@pytest.mark.parametrize("argv", [
    ["rsft", "--mod", "x", "--data", "d.json", "--out", "o"],  # would have been --model x
    ["rsft", "--model", "m", "--mode", "both", "--data", "d.json", "--out", "o"],  # rsft has no --mode
    ["evaluate", "--model", "m", "--data", "d.json", "--out", "o", "--mod", "both"],
    ["merge", "--base", "b", "--sft", "s", "--alpha", "0.5", "--spars", "0.1", "--out", "o"],
])
def test_an_abbreviated_or_unknown_option_is_an_error(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments" in err or "required" in err
    assert argv[argv.index(next(a for a in argv if a in ("--mod", "--mode", "--spars")))] in err


def test_a_hub_id_is_refused_when_the_hub_cannot_be_reached(monkeypatch):
    # Not offline by setting, but nothing answers at the hub's address (a closed local port).
    from huggingface_hub import constants

    from mm4ke_ray.errors import UserError
    from mm4ke_ray.modeling.loading import check_model_source

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(UserError, match=r"someorg/nomodel.*cannot be reached.*hf download someorg/nomodel"):
        check_model_source("someorg/nomodel")


def test_a_cached_hub_model_passes_offline(tmp_path, monkeypatch, tiny_model_dir):
    # A model in the hub cache is usable offline: the check must not refuse it.
    import shutil

    from huggingface_hub import constants

    from mm4ke_ray.modeling.loading import check_model_source

    snapshot = tmp_path / "models--someorg--cached" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (tmp_path / "models--someorg--cached" / "refs").mkdir()
    (tmp_path / "models--someorg--cached" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_model_source("someorg/cached")
