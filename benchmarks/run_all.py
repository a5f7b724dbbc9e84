"""Run every benchmark in turn (`make bench`); each prints its own markdown tables.

Timings on a shared 2-core machine are noisy: compare ratios measured in one run.
bench_sim.py takes about 10 minutes; pass --skip sim to leave it out.
bench_recal_sim.py (online policies under drift in the simulator) takes 1.5-3 minutes;
bench_comm.py (the comm-aware objective, placement grid only) about 3 minutes;
bench_robust.py (per-step noise in the simulator, real ESFT routing) about 4.5 minutes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["foundation", "solver", "scale", "comm", "workload", "profile", "engines", "recal", "recal_sim", "robust", "sim"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", nargs="*", default=[], choices=BENCHES, help="benchmarks to leave out")
    args = ap.parse_args()
    failed = []
    for name in BENCHES:
        if name in args.skip:
            continue
        print(f"\n## bench_{name}.py\n", flush=True)
        rc = subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")])
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed or missed a target: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
