"""The real general tasks (sst2, logiqa, boolq, rte, wikitext) from local files on a real model.

Per task: score, SE, chance floor, documents, seconds, and whether the noise guard accepts the
base score at this limit. Usage (SmolLM2 from its GGUF; any HF folder works with --model):

    python benchmarks/bench_real_general.py --gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf \
        --data ../shared/data/general --limit 100 --max-words 16000

`--smoke-test`: 3 documents per task, 300 words of WikiText.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from mm4ke_ray.errors import UserError
from mm4ke_ray.evaluate.general import GeneralEvaluator
from mm4ke_ray.evaluate.real_tasks import LocalTaskSpec, build_local_task
from mm4ke_ray.evaluate.scores import check_task_noise

FILES = {"sst2": "test-SentimentAnalysis.tsv", "logiqa": "logiqa/Test.txt", "boolq": "test-ClosedDomainQA.jsonl",
         "rte": "test-NLI.tsv", "wikitext": "wikitext-2/test.txt"}


def _load(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.gguf:
        gguf = Path(args.gguf)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    else:
        tok, model = AutoTokenizer.from_pretrained(args.model), AutoModelForCausalLM.from_pretrained(args.model)
    return model.eval(), tok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf")
    p.add_argument("--model")
    shared = os.environ.get("MM4KE_SHARED") or Path(__file__).resolve().parents[1].parent / "shared"
    p.add_argument("--data", default=str(Path(shared) / "data" / "general"))
    p.add_argument("--tasks", default="sst2,logiqa,boolq,rte,wikitext")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--max-words", type=int, default=16000)
    p.add_argument("--max-length", type=int, default=2048, help="lm-eval's context window (rolling windows)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--smoke-test", action="store_true")
    p.add_argument("--out")
    args = p.parse_args()
    if args.smoke_test:
        args.limit, args.max_words = 3, 300
    if not (args.gguf or args.model):
        raise SystemExit("give --gguf or --model")
    model, tok = _load(args)
    cache = tempfile.mkdtemp(prefix="real-general-")
    rows = {}
    for name in args.tasks.split(","):
        spec = LocalTaskSpec(name, str(Path(args.data) / FILES[name]),
                             limit=None if name == "wikitext" else args.limit,
                             max_words=args.max_words if name == "wikitext" else None)
        folder = build_local_task(spec, cache)
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
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
