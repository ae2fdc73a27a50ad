"""Build (once) and cache the demo: a tiny pretrained base model, an edit set and lm-eval tasks.

    assets = build_demo()          # ~1-2 min the first time on 2 cores, then instant
    assets.model_dir               # HF directory: load_model / load_tokenizer
    assets.edits_path              # KnowEdit ZsRE-schema JSON: load_edit_records
    assets.tasks_dir, assets.task_names   # lm-eval TaskManager(include_path=tasks_dir)

The cache lives in `<root>/demo-<key>`, root = `cache_dir` or $MM4KE_CACHE or
~/.cache/mm4ke-ray, key = hash of the build format version and every build parameter, so changed
parameters build anew. A build happens in a temporary sibling directory that is renamed into
place only after the model passed its accuracy check and `manifest.json` is written: an
interrupted or failed build is never found as a cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mm4ke_ray import cache
from mm4ke_ray.demo.lm_eval_tasks import relocate_tasks, task_documents, write_tasks
from mm4ke_ray.demo.pretrain import (
    PretrainConfig,
    StopCheck,
    answer_scores,
    as_llama,
    build_model,
    check_pretrained,
    encode_pairs,
    pretrain,
    world_accuracy,
)
from mm4ke_ray.demo.tiny import build_word_tokenizer, save_pretrained_pair
from mm4ke_ray.demo.world import WorldConfig, counterfactual_edits, generate_world
from mm4ke_ray.modeling.tokenizer_check import check_auto_tokenizer

# Bump when generation, training or the directory layout changes: old caches are then ignored.
# 2: Llama architecture (its saved tokenizer loads through plain AutoTokenizer), early stop once
#    every fact is known, one torch thread.
DEMO_FORMAT_VERSION = 2
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DemoConfig:
    """Everything a demo build depends on (`build_demo`'s seed/steps/num_edits override it)."""

    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    num_edits: int = 25
    docs_per_task: int = 200


@dataclass(frozen=True)
class DemoAssets:
    """Paths of a finished demo build and its manifest (parameters, accuracy, timings)."""

    root: Path
    model_dir: Path
    edits_path: Path
    tasks_dir: Path
    task_names: tuple[str, ...]
    manifest: dict


def default_cache_root() -> Path:
    """$MM4KE_CACHE, else ~/.cache/mm4ke-ray (`mm4ke_ray.cache`, shared with the GGUF cache)."""
    return cache.default_cache_root()


def demo_key(config: DemoConfig) -> str:
    """Short hash of the format version and every build parameter."""
    blob = json.dumps({"version": DEMO_FORMAT_VERSION, "config": asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def resolve_config(
    config: DemoConfig | None, *, num_edits: int, seed: int, steps: int | None
) -> DemoConfig:
    """`config` (or the defaults) with the keyword overrides applied; one seed drives everything."""
    config = config or DemoConfig()
    return replace(
        config,
        world=replace(config.world, seed=seed),
        pretrain=replace(config.pretrain, seed=seed, steps=steps or config.pretrain.steps),
        num_edits=num_edits,
    )


def build_demo(
    cache_dir: Path | None = None,
    *,
    num_edits: int = 25,
    seed: int = 0,
    force: bool = False,
    steps: int | None = None,
    progress: Callable[[str], None] | None = None,
    config: DemoConfig | None = None,
    live: bool | None = None,
) -> DemoAssets:
    """The cached demo assets for these parameters, building them first if needed.

    `steps` overrides the pretraining step count, `config` the world size / model shape /
    optimizer. `force` rebuilds even if a cache entry exists. `progress` receives one-line status
    messages; `live` shows a rich progress line of the pretraining steps on stderr (default: when
    stderr is a terminal). Raises `PretrainError` (and caches nothing) if the model does not learn the world.
    """
    config = resolve_config(config, num_edits=num_edits, seed=seed, steps=steps)
    key = demo_key(config)
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / f"demo-{key}"
    say = progress or (lambda _msg: None)
    if not force and (assets := _load(final, key)) is not None:
        say(f"demo assets found in {final}")
        return assets
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(root)
    tmp = root / f".demo-{key}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with one_torch_thread():
            _build_into(tmp, final, config, key, say, _want_live(live))
        _publish(tmp, final, replace_existing=force or final.exists() and _load(final, key) is None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assets = _load(final, key)
    if assets is None:  # pragma: no cover - only if someone deletes it between rename and here
        raise RuntimeError(f"demo build in {final} vanished right after it was written")
    say(f"demo assets built in {final}")
    return assets


def _build_into(
    out: Path, final: Path, config: DemoConfig, key: str, say: Callable[[str], None], live: bool
) -> None:
    import torch
    import transformers

    timings: dict[str, float] = {}
    start = time.perf_counter()
    world = generate_world(config.world)
    tokenizer = build_word_tokenizer(world.vocabulary_texts())
    model = build_model(config.pretrain, len(tokenizer), tokenizer)
    say(
        f"pretraining the demo model ({sum(p.numel() for p in model.parameters()):,} parameters, "
        f"at most {config.pretrain.steps} steps, {len(world.facts)} facts)"
    )
    with live_steps(live) as on_step:
        stats = pretrain(
            model,
            tokenizer,
            world.sentences(),
            config.pretrain,
            # the live line shows step and loss; its own console puts other lines above it, where
            # a second console's lines were glued onto it (issue 26 §4)
            getattr(on_step, "print_above", None) or say,
            stop=_stop_check(tokenizer, world),
            on_step=on_step,
        )
    timings["pretrain_s"] = stats["seconds"]
    model_dir = save_pretrained_pair(as_llama(model), tokenizer, out / "model")
    # From here on, the model and tokenizer are the saved ones loaded as every user loads them.
    tokenizer = check_tokenizer_round_trip(tokenizer, model_dir, world)
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    accuracy = world_accuracy(model, tokenizer, world)
    say(
        f"fact accuracy of the saved model: trained templates {accuracy['trained_fact']:.1%}, "
        f"held-out template {accuracy['rephrase_heldout']['fact']:.1%}"
    )
    check_pretrained(accuracy, config.pretrain.min_accuracy)
    edits = counterfactual_edits(world, config.num_edits, config.world.seed)
    (out / "edits.json").write_text(json.dumps(edits, indent=1) + "\n")
    docs = task_documents(world, edits, config.docs_per_task, config.world.seed)
    task_names = write_tasks(out / "tasks", docs, final / "tasks")
    (out / "world.json").write_text(json.dumps(world.to_dict(), indent=1) + "\n")
    # The base model's fact accuracy on the edit prompts: it should know the truth, not the edit.
    base_on_edits = {
        "ground_truth": round(
            answer_scores(
                model, tokenizer, [(e["prompt"], e["ground_truth"][0]) for e in edits]
            ).fact,
            4,
        ),
        "target_new": round(
            answer_scores(model, tokenizer, [(e["prompt"], e["target_new"]) for e in edits]).fact, 4
        ),
    }
    timings["total_s"] = round(time.perf_counter() - start, 2)
    manifest = {
        "key": key,
        "format_version": DEMO_FORMAT_VERSION,
        "config": asdict(config),
        "files": {"model": "model", "edits": "edits.json", "tasks": "tasks", "world": "world.json"},
        "task_names": task_names,
        "task_docs": {name: len(d) for name, d in docs.items()},
        "edit_format": "zsre",
        "prompt_format": "plain",
        "vocab_size": len(tokenizer),
        # Trained as Qwen2, saved as the same network in Llama form (pretrain.as_llama).
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain": stats,
        "accuracy": accuracy,
        "base_on_edits": base_on_edits,
        "portability": "statement template of the edited fact, answered with target_new "
        "(filed under Subject_Aliasing; not multi-hop)",
        "timings": timings,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # Written last: a directory with a manifest is a complete build.
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")


def check_tokenizer_round_trip(tokenizer, model_dir: Path, world):
    """The saved tokenizer as a user gets it (plain AutoTokenizer), after checking that it
    encodes every world sentence exactly as the trained one, agrees with tokenizer.json
    (`check_auto_tokenizer`, strict) and keeps each prompt's tokens a prefix of prompt + answer.
    Fails the build otherwise."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(model_dir))
    check_auto_tokenizer(str(model_dir), strict=True, tokenizer=reloaded)
    texts = world.vocabulary_texts()
    before = tokenizer(texts)["input_ids"]
    after = reloaded(texts)["input_ids"]
    bad = [t for t, a, b in zip(texts, before, after, strict=True) if a != b]
    if bad:
        raise RuntimeError(
            f"the saved demo tokenizer ({type(reloaded).__name__}) encodes "
            f"{len(bad)} world sentences differently after reloading, e.g. {bad[0]!r}"
        )
    for fact in world.facts:
        for kind in ("statement", "question", "rephrase"):
            prompt = fact.prompt(kind)
            head = reloaded(prompt)["input_ids"]
            full = reloaded(f"{prompt} {fact.value}")["input_ids"]
            if full[: len(head)] != head or len(full) <= len(head):
                raise RuntimeError(
                    f"prompt tokens are not a prefix of prompt+answer tokens for {prompt!r}"
                )
    return reloaded


def _stop_check(tokenizer, world) -> StopCheck:
    """Stop once every trained-template fact is known and 90% of the held-out rephrasings."""
    trained = [(f.prompt(k), f.value) for f in world.facts for k in ("statement", "question")]
    heldout = [
        (f.prompt("rephrase"), f.value) for f in world.facts if f.subject not in world.rephrase_trained
    ]
    return StopCheck(encode_pairs(tokenizer, trained), encode_pairs(tokenizer, heldout))


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Pretrain on one torch thread: on 2 cores shared with anything else, a second thread mostly
    waits for the first (measured on this project's machine: 200 steps took 32 s on one thread
    and over 2 min on two while other tests ran)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _want_live(live: bool | None) -> bool:
    return sys.stderr.isatty() if live is None else live


@contextmanager
def live_steps(live: bool) -> Iterator[Callable[[int, int, float], None] | None]:
    """A rich progress line (step, loss, elapsed, time left) on stderr while pretraining runs."""
    if not live:
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("demo model: pretraining"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("pretrain", total=None, loss="-")

        def on_step(step: int, steps: int, loss: float) -> None:
            bar.update(task, completed=step, total=steps, loss=f"{loss:.3f}")

        def print_above(message: str) -> None:
            if not message.startswith("pretraining step"):  # the line itself shows step and loss
                bar.console.print(f"demo: {message}", style="dim", markup=False, highlight=False)

        on_step.print_above = print_above
        yield on_step


def _load(final: Path, key: str) -> DemoAssets | None:
    """The assets in `final` if it is a complete build for `key`, else None."""
    try:
        manifest = json.loads((final / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    files = manifest.get("files", {})
    paths = {name: final / rel for name, rel in files.items()}
    if manifest.get("key") != key or not all(p.exists() for p in paths.values()):
        return None
    names = tuple(manifest["task_names"])
    relocate_tasks(paths["tasks"], list(names))  # a copied or moved cache still works
    return DemoAssets(
        root=final,
        model_dir=paths["model"],
        edits_path=paths["edits"],
        tasks_dir=paths["tasks"],
        task_names=names,
        manifest=manifest,
    )


def _publish(tmp: Path, final: Path, replace_existing: bool) -> None:
    """Rename the finished build into place. If another process got there first, its build
    (same parameters) is kept, unless `replace_existing`."""
    if replace_existing and final.exists():
        trash = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        final.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:
        if not final.exists():
            raise


def _remove_stale_builds(root: Path) -> None:
    """Delete temporary build directories of this host whose process is gone (killed builds)."""
    host = socket.gethostname()
    for path in root.glob(".demo-*.tmp-*"):
        try:
            pid = int(path.name.split("-")[-2])
            same_host = f".tmp-{host}-{pid}-" in path.name
        except ValueError:
            continue
        if same_host and not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
