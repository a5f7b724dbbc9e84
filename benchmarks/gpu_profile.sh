#!/usr/bin/env bash
# Profile every GPU of this machine at the DeepSeek-V3 expert shape (hidden 7168,
# intermediate 2048) in fp8 and bf16, and print each GPU's fit error, floor, slope, the
# profiling time, and the table-derived curve of the same GPU model for comparison.
#
# STATUS: written on a machine without a GPU; NOT yet run on a GPU.
#
# Needs: torch built with CUDA (or ROCm), numpy, scipy, rich, pyarrow; nvidia-ml-py
# (pynvml) or amdsmi for telemetry (optional). Run from the repository root:
#   benchmarks/gpu_profile.sh [OUT_DIR]          (PYTHON=... to pick the interpreter)
# Targets (issue 4): fit within 5% of the medians on a GPU; under 2 minutes per profile.
set -uo pipefail
OUT="${1:-${OUT:-gpu-profile-out}}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

"$PY" -c 'import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_profile.sh: torch sees no GPU")
print("torch", torch.__version__, "|", torch.cuda.device_count(), "x", torch.cuda.get_device_name(0))' || exit 1

for dtype in fp8 bf16; do
  start=$(date +%s)
  if "$PY" -m vibe profile hw --hidden 7168 --intermediate 2048 --dtype "$dtype" --devices cuda \
       --repeats 20 --out "$OUT/dsv3-$dtype.json"; then
    echo "profile $dtype: $(( $(date +%s) - start )) s wall (incl. start-up)"
  else
    echo "profile $dtype: FAILED"
  fi
done

# The measured vLLM table of the same GPU model, for comparison (when ../shared/data is there).
GPU_NAME=$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')
case "$GPU_NAME" in
  *H200*) TABLE=../shared/data/moe-latency/h200_sxm_vllm_0.24.0_moe_perf.parquet ;;
  *H100*) TABLE=../shared/data/moe-latency/h100_sxm_vllm_0.24.0_moe_perf.parquet ;;
  *) TABLE="" ;;
esac
if [ -n "$TABLE" ] && [ -f "$TABLE" ]; then
  "$PY" -m vibe profile import "$TABLE" --out "$OUT/table.json" || true
fi

"$PY" - "$OUT" <<'PYEOF'
import sys
from pathlib import Path

import numpy as np

from vibe.cost import expert_time_us
from vibe.model import Cluster

out = Path(sys.argv[1])
table = Cluster.load(out / "table.json") if (out / "table.json").exists() else None
for path in sorted(out.glob("dsv3-*.json")):
    c = Cluster.load(path)
    print(f"== {path.name}: {c.name}")
    for g in c.gpus:
        f, m = g.extra["fit"], g.extra["measured"]
        spread = np.median((np.array(g.extra["samples"]["p90_us"]) - g.extra["samples"]["p10_us"])
                           / np.array(g.extra["samples"]["median_us"]))
        line = (f"rank {g.rank} {g.name}: fit max err {f['max_rel_error']:.2%} (hinge {f['hinge_max_rel_error']:.2%}), "
                f"floor {f['floor_us']:.1f} us to {f['knee_tokens']:g} tok, slope {f['slope_us_per_token']:.4f} us/tok, "
                f"overhead {g.overhead_us:.1f} us, p10-p90 spread {spread:.1%}, {m['seconds']:.0f} s, {m['timing']}, "
                f"telemetry {g.telemetry}")
        if table is not None:
            n = np.array([1, 8, 64, 512])
            ratio = expert_time_us(c, g.rank, n) / expert_time_us(table, 0, n)
            line += f"; measured/table at n={n.tolist()}: {np.round(ratio, 2).tolist()}"
        print(line)
        ok = f["max_rel_error"] <= 0.05 and m["seconds"] < 120
        print(f"   targets (fit <= 5%, < 2 min): {'met' if ok else 'NOT met'}")
PYEOF
