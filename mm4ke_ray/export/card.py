"""The exported model's `README.md` model card, written from the recipe (`mm4ke_merge.json`)."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from mm4ke_ray.schema import GEN_PREFIX
from mm4ke_ray.tracking.tables import format_cell

_TAGS = ("knowledge-editing", "model-merging", "mm4ke-ray")
_DEMO_FILES = ("manifest.json", "world.json")
SNIPPET_PATH = "."  # the snippet runs as pasted from inside the exported directory (issue 26 §3)
_FALLBACK_PROMPT = "The author of Dracula is"  # a recipe without edit examples (older exports)

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


_MORE_ROWS = (GEN_PREFIX, "portability.", "locality.", "general.", "retention.")
_TF_EDIT_ROWS = ("edit_succ", "generalization", "portability", "locality")
_ROW_NAMES = dict(_METRIC_ROWS)


def _family_label(key: str) -> str:
    """An edit metric's row name with its family (issue 23): teacher-forced or generated (WILD)."""
    generated = key.startswith(GEN_PREFIX)
    bare = key[len(GEN_PREFIX):] if generated else key
    if not (bare in _TF_EDIT_ROWS or bare.startswith(("portability.", "locality."))):
        return key
    name = _ROW_NAMES.get(bare, bare)
    return f"{name}, generated (WILD)" if generated else f"{name}, teacher-forced"


def _row_order(key: str, at: int) -> tuple:
    """Edit metrics first, each generated (WILD) row right under its teacher-forced one and the
    per-kind means under their metric (issue 26 §3); the other rows as listed."""
    bare = key.removeprefix(GEN_PREFIX)
    head = bare.split(".")[0]
    if head not in _TF_EDIT_ROWS:
        return (1, at)
    return (0, _TF_EDIT_ROWS.index(head), bare != head, bare, key != bare)


def _definitions(ev: dict) -> list[str]:
    """Which definitions produced the edit numbers: families, the objective's, aggregation, rules."""
    lines = ["- Edit metrics: *teacher-forced* = EasyEdit token accuracy (the paper's tables); *generated "
             "(WILD)* = the model's greedy answer judged whole"]
    if ev.get("edit_mode"):
        lines.append(f"- The edit objective was computed from the **{ev['edit_mode']}** metrics")
    lines.append(f"- Aggregation (portability, locality): {ev.get('aggregation', 'unknown')} "
                 f"(definitions version {ev.get('edit_definitions', '1')})")
    if ev.get("mode", "teacher-forced") != "teacher-forced":
        # A sweep from before issue 23 recorded neither stop nor budget: its rule was the newline.
        stop = ev.get("generation_stop") or "newline"
        rule = ev.get("generation_stop_rule") or "not recorded: a sweep from before issue 23"
        budget = [f"up to {ev['generation_max_new_tokens']} new tokens"] if ev.get("generation_max_new_tokens") else []
        if ev.get("generation_extra_tokens") is not None:
            budget.append(f"at most the target's tokens + {ev['generation_extra_tokens']}")
        lines.append(f"- Generated answers: match `{ev.get('generation_match', 'starts_with')}`, stop `{stop}` "
                     f"({rule}), {', '.join(budget) or 'budget not recorded'}")
    return lines


def _fmt(value) -> str:
    return format_cell(value, missing="–")


def _metric_table(recipe: dict) -> list[str]:
    base = recipe["compared"].get("base") or {}
    pure = recipe["compared"].get("pure_rsft") or {}
    this = recipe["recorded_metrics"]
    measured = {k: v["measured"] for k, v in recipe["verification"]["metrics"].items()}
    keys = [(k, label) for k, label in _METRIC_ROWS if k in this or k in base]
    # Both metric families (generation behind GEN_PREFIX) and the per-kind means, when recorded.
    shown = {k for k, _ in keys}
    keys += [(k, _family_label(k)) for k in sorted(this) if k not in shown and k.startswith(_MORE_ROWS)]
    keys = [(k, _family_label(k) if k in _TF_EDIT_ROWS else label) for k, label in keys]
    keys = [kl for _, kl in sorted(enumerate(keys), key=lambda ik: _row_order(ik[1][0], ik[0]))]
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


def hub_id(base_model: str) -> str | None:
    """The Hugging Face hub id of the base: itself when it names one, or read off an HF cache path."""
    parts = Path(base_model).parts
    for part in parts:  # .../hub/models--Qwen--Qwen2.5-7B/snapshots/<sha>
        if part.startswith("models--") and "snapshots" in parts:
            return part[len("models--"):].replace("--", "/")
    looks_like_id = base_model.count("/") == 1 and not base_model.startswith((".", "/", "~"))
    return base_model if looks_like_id and not Path(base_model).exists() else None


def is_demo_model(base_model: str) -> bool:
    """True for the demo's toy model (a `model` folder beside the demo build's manifest and world)."""
    folder = Path(base_model).expanduser()
    return folder.name == "model" and all((folder.parent / f).is_file() for f in _DEMO_FILES)


def _front_matter(recipe: dict) -> list[str]:
    base_model = recipe["base_model"]
    hub = hub_id(base_model)
    data = {"library_name": "transformers", "tags": list(_TAGS)}
    if hub:
        data.update(base_model=hub, base_model_relation="merge")
    if licence := base_licence(base_model):
        data["license"] = licence
    edits = recipe["edits"]["source"]
    if hub_id(edits) and not Path(edits).exists():
        data["datasets"] = [edits]
    text = yaml.safe_dump(data, sort_keys=False).rstrip("\n")
    note = [] if hub else [
        "# base_model left out: the base is a local path, not a hub id "
        f"({'the demo' + chr(39) + 's toy model' if is_demo_model(base_model) else 'set it by hand after uploading'})"
    ]
    return ["---", text, *note, "---"]


def _how_to_use(recipe: dict) -> list[str]:
    """A snippet that runs as pasted from inside this directory, asking one edited fact."""
    chat = recipe["evaluation"].get("prompt_format") == "chat"
    examples = recipe["edits"].get("examples") or []
    question = examples[0]["prompt"] if examples else _FALLBACK_PROMPT
    prompt = (
        f'text = tokenizer.apply_chat_template([{{"role": "user", "content": {question!r}}}],\n'
        "                                     tokenize=False, add_generation_prompt=True)"
        if chat else f"text = {question!r}"
    )
    expected = ([f"# an edited fact: the edit's answer is {examples[0]['target']!r}; "
                 f"this model answered {examples[0]['generated']!r} at export"] if examples else [])
    return [
        "## How to use",
        "",
        "Run it from inside this directory (or put the directory's path, or its hub id once uploaded, in `model_dir`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model_dir = "{SNIPPET_PATH}"',
        "tokenizer = AutoTokenizer.from_pretrained(model_dir)",
        "model = AutoModelForCausalLM.from_pretrained(model_dir)",
        *expected,
        prompt,
        'inputs = tokenizer(text, return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=16, do_sample=False)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
    ]


def _gguf_note(recipe: dict) -> list[str]:
    """For a GGUF base: which quantized file it was, and that this export is no GGUF."""
    g = recipe.get("base_gguf")
    if not g:
        return []
    return [f"> **Base from GGUF:** `{g['file']}` (architecture `{g['architecture']}`, quantized "
            f"**{g['quantization']}**, sha256 `{g['sha256']}`), dequantized to {g['dequantized_to']} by "
            "transformers before editing. This export is a normal Hugging Face folder (safetensors, "
            f"{g['dequantized_to']}), not a GGUF: its unedited weights are the dequantized {g['quantization']} "
            "values, not the original unquantized model's.", ""]
def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _edit_examples(recipe: dict) -> list[str]:
    """What was edited, by example: the first edits with this model's greedy answer at export."""
    examples = recipe["edits"].get("examples") or []
    if not examples:
        return []
    lines = [f"The first {len(examples)} of the {recipe['edits']['count']} edits, with this model's greedy answer "
             "at export (exact match after normalising, as the generation metrics count it):", "",
             "| prompt | edited answer | this model answers | match |", "|---|---|---|---|"]
    lines += [f"| {_cell(x['prompt'])} | {_cell(x['target'])} | {_cell(x['generated'])} | {'yes' if x['matches'] else 'no'} |"
              for x in examples]
    return [*lines, ""]


def base_licence(base_model: str) -> str | None:
    """The base's licence as its own model card states it (`license:` in README.md's front
    matter of a local or cached Hugging Face directory); None where not known."""
    readme = Path(base_model).expanduser() / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
        meta = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
    except (OSError, yaml.YAMLError, IndexError):
        return None
    licence = meta.get("license") if isinstance(meta, dict) else None
    return str(licence) if licence else None


def _licence_lines(recipe: dict) -> list[str]:
    licence = base_licence(recipe["base_model"])
    if licence:
        text = f"`{licence}`, as the base model's card states it"
    elif is_demo_model(recipe["base_model"]):
        text = "the demo's toy model was built by `mm4ke-ray demo` (the project's licence, Apache-2.0)"
    else:
        text = "not known here (the base model's directory states none): check it before sharing this model"
    return [f"- Licence of the base model: {text}; a merge is a derivative of its base."]


def model_card(recipe: dict) -> str:
    """Markdown model card: what was edited, how, how well (against base and pure R-SFT), how to redo it."""
    r, m, e, src = recipe["rsft"], recipe["merge"], recipe["edits"], recipe["source"]
    base_model = recipe["base_model"]
    front = _front_matter(recipe)
    demo = (["> **Note:** the base is the demo's toy model (a small model trained by `mm4ke-ray demo` on a "
             "generated world), for trying the tools; it is no general-purpose language model.", ""]
            if is_demo_model(base_model) else [])
    experiment = src.get("experiment_name")
    experiment = f"experiment `{experiment}` (id {src['experiment_id']})" if experiment else \
        f"experiment `{src['experiment_id']}`"
    ver = recipe["verification"]
    lines = [
        *front,
        "",
        f"# {src['sweep_name']} · {src['candidate']}",
        "",
        *demo,
        *_gguf_note(recipe),
        f"`{base_model}` with {e['count']} knowledge edits from `{e['source']}`, made by Robust SFT (R-SFT) of one "
        "transformer block's MLP and merged back into the base model "
        "(θ = θ_base + (1 − α) · Top_p(θ_sft − θ_base); Fu et al., 2025, *Model Merging for Knowledge Editing*). "
        f"Exported by mm4ke-ray {recipe['mm4ke_ray_version']} on {recipe['exported_at']}.",
        "",
        *_how_to_use(recipe),
        "",
        "## Edit data",
        "",
        *_edit_examples(recipe),
        f"- Source: `{e['source']}` (format: {e['format'] or 'detected'}; limit: {_fmt(e['limit'])}); **{e['count']} edits**",
        *_licence_lines(recipe),
        f"- Evaluation protocol: **{recipe['evaluation']['protocol']}** (all edits applied, then every record evaluated)",
        f"- Prompt format: `{recipe['evaluation']['prompt_format']}` (the same in training and evaluation)",
        *_definitions(recipe["evaluation"]),
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
        f"- MLflow: `{src['tracking_uri']}`, {experiment}, sweep run `{src['sweep_run_id']}`, "
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
