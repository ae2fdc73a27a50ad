"""The exported model's `README.md` model card, written from the recipe (`mm4ke_merge.json`)."""

from __future__ import annotations

import shlex

from mm4ke_ray.tracking.tables import format_cell

_METRIC_ROWS = (
    ("edit_succ", "Edit Succ. (%)"),
    ("generalization", "Generalization (%)"),
    ("portability", "Portability (%)"),
    ("locality", "Locality (% unchanged vs. base)"),
    ("fluency", "Fluency (n-gram entropy × 100)"),
    ("edit_score", "edit_score (objective, 0..1)"),
    ("general_score", "general_score (objective, 0..1)"),
    ("combined_score", "combined_score (0..1)"),
)


def _fmt(value) -> str:
    return format_cell(value, missing="–")


def _metric_table(recipe: dict) -> list[str]:
    base = recipe["compared"].get("base") or {}
    pure = recipe["compared"].get("pure_rsft") or {}
    this = recipe["recorded_metrics"]
    measured = {k: v["measured"] for k, v in recipe["verification"]["metrics"].items()}
    keys = [(k, label) for k, label in _METRIC_ROWS if k in this or k in base]
    keys += [(k, k) for k in sorted(this) if k.startswith(("general.", "retention."))]
    lines = [
        "| metric | base model | pure R-SFT, same delta (α=0, sparsity=0) | this model (sweep) | this model (re-evaluated) |",
        "|---|---|---|---|---|",
    ]
    for key, label in keys:
        lines.append(
            f"| {label} | {_fmt(base.get(key))} | {_fmt(pure.get(key))} | {_fmt(this.get(key))} | {_fmt(measured.get(key))} |"
        )
    return lines


def _reproduce(recipe: dict) -> list[str]:
    m, src = recipe["merge"], recipe["source"]
    export = [
        "mm4ke-ray",
        "export",
        "--tracking-uri",
        src["tracking_uri"],
        "--sweep",
        src["sweep_run_id"],
        "--pick",
        src["candidate_run_id"],
        "--out",
        "OUT_DIR",
    ]
    merge = [
        "mm4ke-ray",
        "merge",
        "--base",
        recipe["base_model"],
        "--delta",
        "DELTA_DIR",
        "--alpha",
        repr(m["alpha"]),
        "--sparsity",
        repr(m["sparsity"]),
        "--method",
        m["method"],
        "--seed",
        str(m["seed"]),
        "--dtype",
        m["dtype"],
        "--out",
        "OUT_DIR",
    ]
    return [
        "From the MLflow record (rebuilds, re-evaluates and checks this directory):",
        "",
        "```bash",
        shlex.join(export),
        "```",
        "",
        f"From the delta alone (download `{src['delta_artifact']}` of run `{src['sweep_run_id']}` into `DELTA_DIR`; "
        f"its sha256 is `{recipe['delta']['sha256']}`):",
        "",
        "```bash",
        shlex.join(merge),
        "```",
    ]


def model_card(recipe: dict) -> str:
    """Markdown model card: what was edited, how, how well (against base and pure R-SFT), how to redo it."""
    r, m, e, src = recipe["rsft"], recipe["merge"], recipe["edits"], recipe["source"]
    base_model = recipe["base_model"]
    front = [
        "---",
        "library_name: transformers",
        "tags:",
        "- knowledge-editing",
        "- model-merging",
        "- mm4ke-ray",
    ]
    if (
        "/" in base_model
        and not base_model.startswith((".", "/", "~"))
        and base_model.count("/") == 1
    ):
        front.append(
            f"base_model: {base_model}"
        )  # hub ids only; a local path is not a valid card field
    front.append("---")
    ver = recipe["verification"]
    lines = [
        *front,
        "",
        f"# {src['sweep_name']} · {src['candidate']}",
        "",
        f"`{base_model}` with {e['count']} knowledge edits from `{e['source']}`, made by Robust SFT (R-SFT) of one "
        "transformer block's MLP and merged back into the base model "
        "(θ = θ_base + (1 − α) · Top_p(θ_sft − θ_base); Fu et al., 2025, *Model Merging for Knowledge Editing*). "
        f"Exported by mm4ke-ray {recipe['mm4ke_ray_version']} on {recipe['exported_at']}.",
        "",
        "## Edit data",
        "",
        f"- Source: `{e['source']}` (format: {e['format'] or 'detected'}; limit: {_fmt(e['limit'])}); **{e['count']} edits**",
        f"- Evaluation protocol: **{recipe['evaluation']['protocol']}** (all edits applied, then every record evaluated)",
        f"- Prompt format: `{recipe['evaluation']['prompt_format']}` (the same in training and evaluation)",
        "",
        "## Hyperparameters",
        "",
        "| | value |",
        "|---|---|",
        f"| layer (block whose MLP was trained) | {_fmt(r.get('layer'))} |",
        f"| τ threshold (early stop on answer NLL) | {_fmt(r.get('threshold'))} |",
        f"| K steps per edit | {_fmt(r.get('steps'))} |",
        f"| E epochs | {_fmt(r.get('epochs'))} |",
        f"| learning rate η | {_fmt(r.get('lr'))} |",
        f"| optimizer | {_fmt(r.get('optimizer'))} |",
        f"| α (base weight; delta scaled by 1 − α = {m['delta_scale']:.6g}) | {m['alpha']!r} |",
        f"| sparsity (fraction of each delta tensor zeroed) | {m['sparsity']!r} |",
        f"| density (= 1 − sparsity, fraction kept) | {m['density']:.6g} |",
        f"| sparsifier | {m['method']} (seed {m['seed']}) |",
        f"| dtype | {m['dtype']} |",
        f"| edited tensors | {', '.join(f'`{t}`' for t in m['tensors'])} |",
        "",
        "## Results",
        "",
        *_metric_table(recipe),
        "",
        f"Re-evaluated after export by reloading this directory: every metric within {ver['tolerance']:g} "
        f"(absolute) of the value recorded in MLflow (largest difference {ver['max_abs_diff']:.3g}). "
        f"Weights outside the edited tensors equal the base model's bit for bit ({ver['weights']['unchanged']} tensors).",
        "",
        "## Provenance",
        "",
        f"- MLflow: `{src['tracking_uri']}`, experiment `{src['experiment_id']}`, sweep run `{src['sweep_run_id']}`, "
        f"candidate run `{src['candidate_run_id']}` (kind `{src['kind']}`, trial `{src['trial_id']}`)",
        f"- Delta artifact: `{src['delta_artifact']}` (sha256 `{recipe['delta']['sha256']}`)",
        f"- mm4ke-ray git revision of the sweep: `{src.get('git_revision') or 'unknown'}`",
        "- Files: `mm4ke_merge.json` is the full recipe; check the files with `sha256sum -c checksums.sha256`.",
        "",
        "## How to reproduce",
        "",
        *_reproduce(recipe),
        "",
    ]
    return "\n".join(lines)
