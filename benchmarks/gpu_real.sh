#!/usr/bin/env bash
# The real model on a lent GPU, in two calls of the device tool (issues 28 and 29).
#
# What must travel (wheels, SmolLM2's GGUF, the ZsRE and WikiText files) is more than one call may
# carry (64 MiB), so it travels in two halves to one warm machine:
#   gpu_real.sh stage   .gpu/whl/*.whl and .gpu/gguf.xz.a: installs the wheels into /tmp/g/site,
#                       keeps the first half of the xz-compressed GGUF, checks the imports, then runs
#                       gpu_check.py on the Qwen2.5-0.5B shape (R-SFT with capture, merge, evaluation).
#   gpu_real.sh run     .gpu2/gguf.xz.b and .gpu2/shared/: joins and verifies the GGUF (the product's
#                       pinned SHA-256), runs gpu_check.py on SmolLM2-135M-Instruct itself, then
#                       bench_stream.py (10 rounds of 20 real ZsRE edits) for what time is left.
# Results land in $OUT: gpu_check.json, gpu_check_smollm2.json, stream.partial.json, stream.json,
# stream.png, stream.log. Nothing here reaches the network.
#
# Prepare here (ignored by git through .git/info/exclude):
#   .gpu/whl:  pip download --no-deps --only-binary=:all: --python-version 3.12 --platform
#              manylinux2014_x86_64 transformers==5.24.0 pydantic pydantic_core annotated-types
#              typing-inspection typing_extensions optuna colorlog lm_eval datasets dill multiprocess gguf
#   GGUF:      xz -9 -c SmolLM2-135M-Instruct.Q4_1.gguf | split -b 32M - (first part .gpu/gguf.xz.a,
#              the rest .gpu2/gguf.xz.b)
#   .gpu2/shared/data/knowedit/ZsRE-test-all.json (the first 200 records) and
#   .gpu2/shared/data/general/wikitext-2/test.txt (its head)
set -uo pipefail
cd "$(dirname "$0")/.."
G=/tmp/g
OUT="${OUT:-$G/out}"
mkdir -p "$G" "$OUT"
export PYTHONPATH="$G/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false MM4KE_CACHE="$G/cache" MM4KE_SHARED="$G/shared"
START=$SECONDS
PY="${PYTHON:-python3}"
# A dry run here (no GPU): PYTHON=.venv/bin/python SKIP_INSTALL=1 STREAM_DEVICE=cpu GPU_CHECK_SHAPE=tiny ...

case "${1:-}" in
stage)
    if [ -z "${SKIP_INSTALL:-}" ]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$G/site" \
            .gpu/whl/*.whl || exit 3
    fi
    cp .gpu/gguf.xz.a "$G/" || exit 3
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" - <<'EOF'
import importlib, pathlib
for name in ("torch", "transformers", "pydantic", "optuna", "gguf", "datasets", "lm_eval", "mm4ke_ray.stream.run",
             "mm4ke_ray.evaluate.general"):
    try:
        m = importlib.import_module(name)
        print(f"import {name}: ok {getattr(m, '__version__', '')}")
    except Exception as exc:  # noqa: BLE001
        print(f"import {name}: FAILED {type(exc).__name__}: {exc}")
        if name in ("lm_eval", "datasets", "mm4ke_ray.evaluate.general"):
            pathlib.Path("/tmp/g/no_lm_eval").touch()
EOF
    GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-100}" timeout 170 "$PY" benchmarks/gpu_check.py "$OUT"
    echo "stage done in $((SECONDS - START)) s"
    ;;
run)
    [ -f "$G/gguf.xz.a" ] || { echo "no first half in $G: run 'stage' on this machine first"; exit 3; }
    mkdir -p "$G/cache/smollm2" "$G/shared"
    cp -r .gpu2/shared/. "$G/shared/"
    cat "$G/gguf.xz.a" .gpu2/gguf.xz.b | "$PY" -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
        > "$G/cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" || exit 3
    "$PY" -c "from mm4ke_ray.real.smollm2 import fetch_smollm2; print('GGUF verified:', fetch_smollm2(download=False))" \
        || exit 3
    GPU_CHECK_SHAPE=smollm2 GPU_CHECK_BUDGET_S="${GPU_CHECK_BUDGET_S:-90}" timeout 150 "$PY" benchmarks/gpu_check.py "$OUT"
    GENERAL=()
    if [ ! -f "$G/no_lm_eval" ]; then
        GENERAL=(--set 'evaluation.general_tasks=[wikitext]'
                 --set "evaluation.local_tasks={wikitext: {path: $G/shared/data/general/wikitext-2/test.txt, max_words: 8000}}")
    fi
    LEFT=$(( ${RUN_SECONDS:-470} - (SECONDS - START) ))
    echo "stream: $LEFT s left"
    (cd benchmarks && timeout "$LEFT" "$PY" bench_stream.py --device "${STREAM_DEVICE:-cuda}" --threads 8 --no-track --out "$G/stream" \
        --model "$G/cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --set evaluation.batch_size=64 \
        "${GENERAL[@]}" ${STREAM_ARGS:-}) 2>&1 | tee "$OUT/stream.log" | grep -v "^\s*$" | tail -60
    cp "$G"/stream/stream.partial.json "$G"/stream/stream.json "$G"/stream/stream.png "$OUT/" 2>/dev/null
    echo "run done in $((SECONDS - START)) s"
    ;;
*)
    echo "usage: $0 stage|run" >&2
    exit 2
    ;;
esac
