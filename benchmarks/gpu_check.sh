#!/usr/bin/env bash
# GPU check (at most ~8 minutes, one GPU): R-SFT steps/s (eager and captured: CUDA graphs), merge ms per candidate, evaluation
# tokens/s and peak GPU memory on a Qwen2.5-0.5B-shaped random-init model in bf16.
# Writes gpu_check.json to $OUT if set (the device tool copies that folder back), else to
# benchmarks/results/. Installs nothing from the network: if pydantic is missing, wheels in .whl/
# (transformers, pydantic and its needs; see benchmarks/README.md) are installed to /tmp/site.
# GPU_CHECK_SHAPE=tiny runs a tiny model instead (works on a CPU, for testing this script;
# add GPU_CHECK_COMPILE_BACKEND=aot_eager to check the captured R-SFT path without C++ codegen).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c "import pydantic" 2>/dev/null; then
    if ls .whl/*.whl >/dev/null 2>&1; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
        export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "pydantic is not installed and no wheels in .whl/: see benchmarks/README.md" >&2
        exit 2
    fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
exec "$PY" benchmarks/gpu_check.py "${OUT:-benchmarks/results}"
