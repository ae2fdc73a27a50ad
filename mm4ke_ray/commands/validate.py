"""`mm4ke-ray validate CONFIG`: check a sweep config without starting Ray or loading weights.

It also says which model or edit set is neither local nor in the Hugging Face cache, so would
be downloaded when the sweep starts (looked up in the cache only: nothing is downloaded).
"""

from __future__ import annotations

import sys
from pathlib import Path

from mm4ke_ray.config import DEMO, load_config
from mm4ke_ray.evaluate.precision import precision_report
from mm4ke_ray.preflight import halving_warnings, is_hub_dataset, preflight

NAME = "validate"
HELP = "Check a sweep config (every problem at once, naming the field); starts no Ray, loads no weights."


def add_arguments(p) -> None:
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="Sweep YAML file(s), e.g. search_spaces/demo.yaml.")
    p.add_argument("--offline", action="store_true", help="Check the sweep can run without the network: skip the MLflow server check and fail "
                   "when the model or edit set is neither local nor in the Hugging Face cache.")


def _in_hf_cache(name: str, repo_type: str) -> bool:
    """Whether the HF cache holds `name`: a model's config.json; a dataset's file (repo/…/file) or
    any snapshot of it (a bare repo id)."""
    from huggingface_hub import constants, try_to_load_from_cache

    parts = name.split("/")
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    if repo_type == "model":
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    if filename:
        return isinstance(try_to_load_from_cache(repo_id, filename, repo_type="dataset"), str)
    folder = Path(constants.HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}" / "snapshots"
    return folder.is_dir() and any(folder.iterdir())


def network_needs(config) -> list[str]:
    """The model / edit set this config would download: not 'demo', not a local path, not cached."""
    from mm4ke_ray.modeling.loading import looks_local  # torch-bound: not at --help time

    needs = []
    for what, name, repo_type in (("model", config.model.name, "model"), ("edits", config.data.edits, "dataset")):
        local = looks_local(name) if repo_type == "model" else not is_hub_dataset(name)
        if name == DEMO or local:
            continue  # a missing local path is preflight's to report
        if not _in_hf_cache(name, repo_type):
            needs.append(f"{what} {name!r} (hub {repo_type}, not in the Hugging Face cache)")
    return needs


def run(args) -> int:
    status = 0
    for path in args.configs:
        config = load_config(path)
        # Said before the other checks, which may stop at the first (e.g. an unreachable hub).
        needs = network_needs(config)
        if needs:
            print(f"{path}: needs the network for {'; '.join(needs)}", file=sys.stderr)
            status = 1 if args.offline else status
        preflight(config, path, check_tracking=not args.offline and not config.tracking.uri.startswith("http"))
        if config.stream is not None:  # a stream's one setting per round: refused here, not after a model loads
            from mm4ke_ray.stream.settings import check_stream_settings

            check_stream_settings(config)
        if needs and args.offline:
            continue
        for line in [*halving_warnings(config), *precision_report(config)]:
            print(f"{path}: warning: {line}", file=sys.stderr)
        print(f"{path}: ok ({config.search.num_trials} trials, sampler {config.search.sampler}, "
              f"model {config.model.name}, edits {config.data.edits})"
              + (" · downloads what is named above when it starts" if needs else ""))
    return status
