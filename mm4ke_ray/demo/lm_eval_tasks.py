"""General-ability tasks for the demo: local lm-eval task YAMLs over world facts not edited.

Two multiple-choice tasks, each choosing the true value among 4 values of the same relation:

- `demo_facts`: the question template, which the base model was trained on (knowledge retention);
- `demo_rephrase`: the rephrase template for people who never saw it in pretraining
  (generalization the base model has and an edit may damage).

Each task is a YAML next to its JSON Lines file, with no group, loaded by
`lm_eval.tasks.TaskManager(include_path=tasks_dir)`. The YAML holds the absolute path of its data
file; `relocate_tasks` rewrites it when the directory has moved (e.g. a copied cache).
"""

from __future__ import annotations

import random
from pathlib import Path

import yaml

from mm4ke_ray.demo.world import World, relation
from mm4ke_ray.evaluate.local_tasks import write_multiple_choice_task

TASK_NAMES = ("demo_facts", "demo_rephrase")
NUM_CHOICES = 4


def task_documents(
    world: World, edits: list[dict], docs_per_task: int, seed: int = 0
) -> dict[str, list[dict]]:
    """Documents of each task: facts not in `edits`, sampled (seeded) up to `docs_per_task`.

    A document is {"question", "choices" (4 values), "label" (index of the true value),
    "subject", "relation"}.
    """
    edited = {(r["subject"], r["prompt"]) for r in edits}
    rng = random.Random(f"tasks-{seed}")
    pools = {
        "demo_facts": [(f, "question") for f in world.facts],
        "demo_rephrase": [
            (f, "rephrase") for f in world.facts if f.subject not in world.rephrase_trained
        ],
    }
    out = {}
    for name, pool in pools.items():
        pool = [(f, kind) for f, kind in pool if (f.subject, f.prompt("question")) not in edited]
        picked = rng.sample(pool, min(docs_per_task, len(pool)))
        docs = []
        for fact, kind in picked:
            distractors = rng.sample(
                [v for v in relation(fact.relation).values if v != fact.value], NUM_CHOICES - 1
            )
            label = rng.randrange(NUM_CHOICES)
            choices = distractors[:label] + [fact.value] + distractors[label:]
            docs.append(
                {
                    "question": fact.prompt(kind),
                    "choices": choices,
                    "label": label,
                    "subject": fact.subject,
                    "relation": fact.relation,
                }
            )
        out[name] = docs
    return out


def write_tasks(
    tasks_dir: Path, documents: dict[str, list[dict]], final_dir: Path | None = None
) -> list[str]:
    """Write `<name>.yaml` + `<name>.jsonl` per task into `tasks_dir` (via the project's
    `write_multiple_choice_task`, prompt = the bare question) and return the task names.

    `final_dir` is where `tasks_dir` will be once the build is moved into place: the YAMLs name
    their data file by absolute path, so they must name the final one.
    """
    for name, docs in documents.items():
        rows = [
            {"question": d["question"], "choices": d["choices"], "answer_index": d["label"]}
            for d in docs
        ]
        write_multiple_choice_task(name, rows, tasks_dir, doc_to_text="{{question}}")
    relocate_tasks(tasks_dir, list(documents), final_dir or tasks_dir)
    return list(documents)


def relocate_tasks(tasks_dir: Path, names: list[str], final_dir: Path | None = None) -> bool:
    """Point each task YAML in `tasks_dir` at its data (and `datasets` cache) under `final_dir`
    (default: `tasks_dir`, for a cache that was moved or copied). Returns whether any changed."""
    final_dir = Path(final_dir or tasks_dir).resolve()
    changed = False
    for name in names:
        path = tasks_dir / f"{name}.yaml"
        config = yaml.safe_load(path.read_text())
        kwargs = config["dataset_kwargs"]
        wanted = {"data_files": {"test": str(final_dir / f"{name}.jsonl")}}
        if "cache_dir" in kwargs:  # keep the content-hash folder name, move its parent
            wanted["cache_dir"] = str(
                final_dir / ".datasets_cache" / Path(kwargs["cache_dir"]).name
            )
        if any(kwargs.get(k) != v for k, v in wanted.items()):
            kwargs.update(wanted)
            path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
            changed = True
    return changed
