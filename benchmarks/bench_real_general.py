"""The real general tasks (sst2, logiqa, boolq, rte, wikitext) from local files on a real model.

Per task: score, SE, chance floor, documents, seconds, and whether the noise guard accepts the
base score at this limit. Usage (SmolLM2 from its GGUF; any HF folder works with --model):

    python benchmarks/bench_real_general.py --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data ../shared/data/general --limit 100 --max-words 16000 --max-length 2048

`--smoke-test`: a tiny random model, 3 documents per task, 1,500 words of WikiText.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import common

from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.general import GeneralEvaluator
from mm4ke_ray.evaluate.real_tasks import LocalTaskSpec, build_local_task, read_documents
from mm4ke_ray.evaluate.scores import check_task_noise

FILES = {"sst2": "test-SentimentAnalysis.tsv", "logiqa": "logiqa/Test.txt", "boolq": "test-ClosedDomainQA.jsonl",
         "rte": "test-NLI.tsv", "wikitext": "wikitext-2/test.txt"}


def _spec(name: str, args) -> LocalTaskSpec:
    return LocalTaskSpec(name, str(Path(args.data) / FILES[name]), limit=None if name == "wikitext" else args.limit,
                         max_words=args.max_words if name == "wikitext" else None)


def _load(args, names: list[str]):
    """The model and tokenizer: the GGUF, an HF folder, or (smoke test) a tiny random Qwen2 over a
    word tokenizer of the tasks' own documents."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.gguf:
        gguf = Path(args.gguf)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval(), tok
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model).eval(), AutoTokenizer.from_pretrained(args.model)
    from mm4ke_ray.demo.tiny import build_tiny_model, build_word_tokenizer

    texts = [str(v) for n in names for d in read_documents(_spec(n, args)) for v in d.values()]
    tok = build_word_tokenizer(texts + ["Question: Answer: positive negative True False yes no A. B. C. D."])
    return build_tiny_model("qwen2", len(tok), hidden=32, layers=2, seed=0), tok


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--gguf")
    p.add_argument("--model")
    shared = os.environ.get("MM4KE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared"
    p.add_argument("--data", default=str(Path(shared) / "data" / "general"))
    p.add_argument("--tasks", default="sst2,logiqa,boolq,rte,wikitext")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--max-words", type=int, default=16000)
    p.add_argument("--max-length", type=int, default=2048, help="lm-eval's context window (rolling windows)")
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    common.setup(args)
    if args.smoke_test:
        args.limit, args.max_words = 3, 1500
    elif not (args.gguf or args.model):
        raise SystemExit("give --gguf or --model (or --smoke-test for a tiny random model)")
    names = args.tasks.split(",")
    model, tok = _load(args, names)
    cache = tempfile.mkdtemp(prefix="real-general-")
    rows = {}
    for name in names:
        folder = build_local_task(_spec(name, args), cache)
        ev = GeneralEvaluator(model, tok, [name], include_path=[folder], max_length=args.max_length,
                              batch_size=1 if name == "wikitext" else args.batch_size)
        start = time.perf_counter()
        r = ev.evaluate_result()
        seconds = time.perf_counter() - start
        try:
            check_task_noise(r.scores, r.stderr, r.chance, r.n_docs, r.higher_is_better, r.metrics, scale=r.scale)
            verdict = "accepted"
        except UserError:
            verdict = "refused"
        rows[name] = {"metric": r.metrics[name], "score": r.scores[name], "stderr": r.stderr[name],
                      "floor": r.chance[name], "docs": r.n_docs[name], "seconds": round(seconds, 1),
                      "noise_guard": verdict}
        print(json.dumps({name: rows[name]}), flush=True)
    goals = [common.goal_line("tasks evaluated", float(len(rows)), float(len(names)))]
    if "wikitext" in rows:
        goals.append(common.goal_line("wikitext perplexity finite", float(math.isfinite(rows["wikitext"]["score"])),
                                      1.0))
    common.write_result("real_general", args, {"model": args.gguf or args.model or "tiny random qwen2",
                                               "limit": args.limit, "max_words": args.max_words,
                                               "max_length": args.max_length, "tasks": rows, "goals": goals})


if __name__ == "__main__":
    main()
