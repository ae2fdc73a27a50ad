"""How far lm-eval's own HFLM moves with its batch size, beside SharedContextHFLM's difference.

The reference for bench_general_eval.py's log-likelihood goal: the same LogiQA documents scored by
HFLM at batch size 8 and at batch size 1, and by SharedContextHFLM (batch 8), on the same model.
Prints the largest per-choice difference of each pair. Full mode only (SmolLM2, --model).

    python benchmarks/general_eval_hflm_noise.py [--docs 3]
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import bench_general_eval as bench
import common


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=bench.SMOLLM2)
    p.add_argument("--docs", type=int, default=3)
    args = p.parse_args()
    common.setup(args)
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from mm4ke_ray.evaluate.shared_context_lm import shared_context_hflm_class

    out = Path(tempfile.mkdtemp(prefix="mm4ke-hflm-noise-"))
    built = bench.build_tasks({"logiqa": args.docs, "sst2": 1, "wikitext": 10}, out)
    model, tok, _ = bench.load_model(args, built["texts"])
    tasks = TaskManager(include_path=[str(p) for p in built["paths"]], include_defaults=False).load(["logiqa"])
    lms = {"hflm_b8": HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=1024),
           "hflm_b1": HFLM(pretrained=model, tokenizer=tok, batch_size=1, max_length=1024),
           "shared_b8": shared_context_hflm_class()(pretrained=model, tokenizer=tok, batch_size=8, max_length=1024)}
    full = {n: evaluate(lm=lm, task_dict=tasks, bootstrap_iters=0, log_samples=True) for n, lm in lms.items()}
    for a, b in (("hflm_b8", "hflm_b1"), ("hflm_b8", "shared_b8"), ("hflm_b1", "shared_b8")):
        print(a, "vs", b, bench.compare(full[a], full[b], "logiqa", None))


if __name__ == "__main__":
    main()
