"""Benchmark — CLI start-up: `mm4ke-ray --help` and `mm4ke-ray <command> --help` against `import torch`.

Goal (issue 17, point 5): each answers in <= 0.5x the time of `import torch` on the same machine,
i.e. building the parser imports neither torch, transformers, Ray nor MLflow. Every contender is
a fresh interpreter (the same one), run interleaved with the others; ratios of medians.
"""

from __future__ import annotations

import subprocess
import sys

import common

from mm4ke_ray.cli import COMMANDS

GOAL = 0.5  # at most this fraction of `import torch`


def _run(argv: list[str]) -> None:
    subprocess.run([sys.executable, *argv], check=True, stdout=subprocess.DEVNULL, cwd=common.REPO)


def main() -> None:
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    repeats = 1 if args.smoke_test else 7
    names = [m.NAME for m in COMMANDS][:1] if args.smoke_test else [m.NAME for m in COMMANDS]
    contenders = {"import torch": lambda: _run(["-c", "import torch"]),
                  "--help": lambda: _run(["-m", "mm4ke_ray.cli", "--help"])}
    for name in names:
        contenders[f"{name} --help"] = lambda name=name: _run(["-m", "mm4ke_ray.cli", name, "--help"])
    times = common.interleaved(contenders, repeats=repeats, warmup=1)
    torch_s = common.summary(times["import torch"])["median_s"]
    shares = {k: common.summary(v)["median_s"] / torch_s for k, v in times.items() if k != "import torch"}
    worst = max(shares, key=shares.get)
    print(f"import torch: {torch_s:.2f} s (median of {repeats})")
    for k, share in shares.items():
        print(f"  {k}: {share:.2f}x import torch")
    goals = [common.goal_line(f"slowest CLI help ({worst}) / import torch", shares[worst], GOAL,
                              higher_is_better=False)]
    common.write_result("startup", args, {
        "repeats": repeats,
        "timings": {k: common.summary(v) for k, v in times.items()},
        "share_of_import_torch": shares,
        "goals": goals,
    })


if __name__ == "__main__":
    main()
