"""Mutation testing of vibe's core with mutmut, one module at a time.

    python tools/mutation.py                 # every core module, then the score table
    python tools/mutation.py cost placement  # some modules (names from MODULES below)
    python tools/mutation.py --report        # only print the table of the last runs
    python tools/mutation.py --survivors cost   # list one module's surviving mutants

Each module runs in its own scratch folder build/mutation/<name>/ (a copy of src/,
tests/ and pyproject.toml whose [tool.mutmut] section names that module and its fast
test files), so one module's tests never pay for another's; each run starts from scratch and its
results stay there for --report and --survivors. Tests run
with VIBE_SHARED_DATA pointing nowhere: the score counts only tests that run on any
clone, and the real-data tests would make a run take hours on a small machine.

Score = killed / (mutants run - those listed as equivalent in docs/testing.md); a
timeout counts as killed (the mutant made the tests hang), "no tests" as survived, and
mutants not run yet (an interrupted run) are shown apart.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutation"
EQUIVALENT_DOC = ROOT / "docs" / "testing.md"
TARGET = 0.85

# module name -> (source files to mutate, the fast test files that check them, and the
# functions to mutate as mutmut name patterns: None for all of them)
_COST_MODEL = ["expert_time_us", "expert_cost_matrix", "slot_tokens", "gpu_times_from_slot_tokens", "gpu_times",
               "default_weights", "normalize_weights", "metrics_from_gpu_times", "evaluate", "weighted_moe_time",
               "xǁPointMetricsǁ*"]


def _names(module: str, functions: list[str]) -> list[str]:
    return [f"{module}.{f}__mutmut_*" if f.startswith("x") else f"{module}.x_{f}__mutmut_*" for f in functions]


MODULES: dict[str, tuple[list[str], list[str], list[str] | None]] = {
    "cost": (["src/vibe/cost.py"], ["tests/test_cost.py", "tests/test_worked_examples.py"],
             _names("vibe.cost", _COST_MODEL)),
    "bounds": (["src/vibe/bounds.py"], ["tests/test_cost.py", "tests/test_worked_examples.py",
                                        "tests/test_bounds.py", "tests/test_bounds_examples.py"], None),
    "placement": (["src/vibe/model/placement.py"], ["tests/test_model.py", "tests/test_worked_examples.py"], None),
    "cluster": (["src/vibe/model/cluster.py"], ["tests/test_model.py", "tests/test_model_messages.py",
                                                "tests/test_worked_examples.py"], None),
    "loads": (["src/vibe/model/loads.py"], ["tests/test_model.py", "tests/test_model_messages.py"], None),
    "traces": (["src/vibe/model/traces.py"], ["tests/test_model.py", "tests/test_model_messages.py",
                                              "tests/test_traces.py"], None),
    "sim-engine": (["src/vibe/sim/engine.py"], ["tests/test_worked_examples.py", "tests/test_sim_engine.py"], None),
    "sim-scheduler": (["src/vibe/sim/scheduler.py"], ["tests/test_sim_scheduler.py", "tests/test_worked_examples.py"],
                      None),
    "sim-predictor": (["src/vibe/sim/predictor.py"], ["tests/test_sim_predictor.py", "tests/test_worked_examples.py"],
                      None),
    "policies": (["src/vibe/policies/base.py", "src/vibe/policies/_packing.py", "src/vibe/policies/linear.py",
                  "src/vibe/policies/round_robin.py", "src/vibe/policies/token_balanced.py",
                  "src/vibe/policies/eplb.py"], ["tests/test_policies.py", "tests/test_policies_examples.py"], None),
    "timebalance": (["src/vibe/policies/_timebalance.py", "src/vibe/policies/vibe.py"],
                    ["tests/test_timebalance_examples.py", "tests/test_worked_examples.py", "tests/test_vibe_policy.py",
                     "tests/test_robust.py"], None),
    "exact": (["src/vibe/policies/exact.py"], ["tests/test_exact.py", "tests/test_exact_examples.py"], None),
    "recal-drift": (["src/vibe/recal/drift.py"], ["tests/test_recal_drift.py", "tests/test_recal_drift_examples.py"],
                    None),
    "recal-repair": (["src/vibe/recal/repair.py"], ["tests/test_recal.py", "tests/test_recal_examples.py",
                                                     "tests/test_recal_repair_examples.py"], None),
}


_CHEAPEST_FIRST = '''

# ---- added by tools/mutation.py in its scratch copy: cheapest tests first (mutmut's -x
# then stops at the first, cheapest failure), by the durations of mutmut's stats run
def pytest_collection_modifyitems(session, config, items):
    import json
    from pathlib import Path

    stats = Path("mutmut-stats.json")
    if stats.exists():
        took = json.loads(stats.read_text()).get("duration_by_test", {})
        items.sort(key=lambda item: took.get(item.nodeid, float("inf")))
'''


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def prepare(name: str) -> Path:
    """build/mutation/<name>/ with fresh copies of src/ and tests/ and its mutmut config."""
    files, tests, _ = MODULES[name]
    work = BUILD / name
    work.mkdir(parents=True, exist_ok=True)
    # mutmut keeps verdicts per function and would not re-run a survivor after the tests
    # changed: start each run from scratch
    shutil.rmtree(work / "mutants", ignore_errors=True)
    for sub in ("src", "tests", "docs"):  # some tests read the docs' examples
        shutil.rmtree(work / sub, ignore_errors=True)
        shutil.copytree(ROOT / sub, work / sub, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    # mutmut runs each mutant's tests with -x in no set order: cheapest first stops sooner
    with open(work / "tests" / "conftest.py", "a") as conftest:
        conftest.write(_CHEAPEST_FIRST)
    base = (ROOT / "pyproject.toml").read_text()
    base = base.split("\n[tool.mutmut]")[0]  # the repo's own section, if any, is replaced
    (work / "pyproject.toml").write_text(base.rstrip() + "\n\n[tool.mutmut]\n"
                                         f"source_paths = [\"src\"]\n"
                                         f"also_copy = [\"docs\"]\n"
                                         f"only_mutate = {_toml_list(files)}\n"
                                         f"pytest_add_cli_args = [\"-p\", \"no:cacheprovider\", \"-p\", \"no:randomly\"]\n"
                                         f"pytest_add_cli_args_test_selection = {_toml_list(tests)}\n"
                                         "use_git_change_detection = false\n")
    return work


def run(name: str, children: int) -> int:
    work = prepare(name)
    env = dict(os.environ, VIBE_SHARED_DATA=str(work / "no-shared-data"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/src first; the original must not be importable
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children), *(MODULES[name][2] or [])]
    print(f"== {name}: mutmut on {', '.join(MODULES[name][0])} with {', '.join(MODULES[name][1])}", flush=True)
    return subprocess.call(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL if not os.environ.get("VERBOSE") else None)


def statuses(name: str) -> dict[str, str]:
    """mutant name -> status, from mutmut's per-file .meta files of module `name`."""
    from mutmut.stats import status_by_exit_code

    import fnmatch

    out: dict[str, str] = {}
    patterns = MODULES[name][2]
    for f in MODULES[name][0]:
        meta = BUILD / name / "mutants" / (f + ".meta")
        if not meta.exists():
            continue
        data = json.loads(meta.read_text())
        for key, code in data.get("exit_code_by_key", {}).items():
            if patterns is None or any(fnmatch.fnmatch(key, p) for p in patterns):
                out[key] = status_by_exit_code[code]
    return out


def equivalent() -> dict[str, str]:
    """Mutants documented as equivalent in docs/testing.md: lines '| `mutant` | reason |'."""
    if not EQUIVALENT_DOC.exists():
        return {}
    rows = re.findall(r"^\|\s*`([\w.]+__mutmut_\d+)`\s*\|\s*(.+?)\s*\|\s*$", EQUIVALENT_DOC.read_text(), re.M)
    return dict(rows)


def report(names: list[str]) -> bool:
    eq = equivalent()
    ok = True
    print(f"\n{'module':<15}{'mutants':>8}{'unrun':>7}{'killed':>8}{'timeout':>8}{'equiv.':>8}{'survived':>9}"
          f"{'score':>8}")
    for name in names:
        st = statuses(name)
        if not st:
            print(f"{name:<15}{'(not run)':>8}")
            ok = False
            continue
        unrun = sum(s == "not checked" for s in st.values())
        killed = sum(s == "killed" for s in st.values())
        timeout = sum(s == "timeout" for s in st.values())
        equiv = sum(1 for k, s in st.items() if k in eq and s not in ("killed", "timeout", "not checked"))
        survived = len(st) - unrun - killed - timeout - equiv
        score = (killed + timeout) / max(len(st) - unrun - equiv, 1)
        ok &= score >= TARGET and unrun == 0
        print(f"{name:<15}{len(st):>8}{unrun:>7}{killed:>8}{timeout:>8}{equiv:>8}{survived:>9}{100 * score:>7.1f}%")
    print(f"target: {100 * TARGET:.0f}% killed per module, of the mutants run (equivalent ones, listed in "
          "docs/testing.md, left out)")
    return ok


def survivors(name: str) -> None:
    eq = equivalent()
    for k, s in sorted(statuses(name).items()):
        if s not in ("killed", "timeout", "not checked") and k not in eq:
            print(f"{k}: {s}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)} (default: all)")
    ap.add_argument("--report", action="store_true", help="only print the scores of the last runs")
    ap.add_argument("--survivors", action="store_true", help="list surviving mutants of the modules")
    ap.add_argument("--children", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    args = ap.parse_args(argv)
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    if args.survivors:
        for n in names:
            survivors(n)
        return 0
    if not args.report:
        for n in names:
            rc = run(n, args.children)
            if rc not in (0,):
                print(f"mutmut exited {rc} for {n}", file=sys.stderr)
    return 0 if report(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
