#!/usr/bin/env bash
# GPU readiness run of the worker core without Ray (workers/benchmarks/gpu.py), for a GPU machine that has Python
# with torch, torchvision, numpy, scipy, pyarrow, pillow and timm but not this project or open_clip.
#
# Run from the repository root with the wheels named in docs/benchmarks.md (section "gpu") in .whl/, and OUT set to
# a directory for the results:
#   OUT=/tmp/out bash scripts/gpu-bench.sh
# It writes $OUT/gpu.json (the figures) and $OUT/gpu.log (progress); about 5 minutes on an H100/H200.
set -euo pipefail
OUT="${OUT:?set OUT to a directory for gpu.json}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$OUT/gpu.log" || true
# a hard stop well inside the machine's time: every part prints as it finishes, and a part that fails is reported
# in gpu.json without stopping the others
timeout 420 python3 -m workers.benchmarks.gpu --json --out "$OUT/gpu.json" "$@" 2> >(tee -a "$OUT/gpu.log" >&2) \
  > "$OUT/gpu.stdout"
