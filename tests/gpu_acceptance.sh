#!/usr/bin/env bash
# The GPU acceptance run in one go (about 7 minutes on an H200, offline): the GPU tests, the
# sampler against transformers (with a profile of the decode step), training forward+backward
# against transformers, and one whole GRPO step. Each part runs under its own time limit, so
# one failure or hang cannot eat the rest; every part's output goes to LOGS/<part>.log.
#
#     bash tests/gpu_acceptance.sh [LOGS]        # LOGS defaults to gpu-logs/
set -u
cd "$(dirname "$0")/.."
LOGS=${1:-gpu-logs}
mkdir -p "$LOGS"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

part() {   # part NAME SECONDS COMMAND...: run COMMAND under a limit, log it, note its exit status
    local name=$1 secs=$2
    shift 2
    echo "=== $name (limit ${secs} s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$secs" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$LOGS/$name.log"
    echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOGS/summary.txt"
}

{
    date -u
    git rev-parse --short HEAD 2>/dev/null
    git status --short 2>/dev/null | head -20
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__)"
} >"$LOGS/machine.txt" 2>&1
cat "$LOGS/machine.txt"

part tests 100 $PY -m pytest -q -m gpu -p no:cacheprovider
part sample 270 $PY bench.py --gpu --profile --long-budget-s 120
part train 90 $PY bench.py --train
part grpo 130 $PY bench.py --grpo
cat "$LOGS/summary.txt"
