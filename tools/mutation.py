"""Mutation testing of vibe's core with mutmut, one module at a time.

    python tools/mutation.py                 # every core module, then the score table
    python tools/mutation.py cost placement  # some modules (names from MODULES below)
    python tools/mutation.py --report        # only print the table of the last runs
    python tools/mutation.py --survivors cost   # list one module's surviving mutants
    python tools/mutation.py --recheck cost     # re-run its survivors against today's tests
    python tools/mutation.py --write-survivors  # docs/mutation-survivors.md from the last runs

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
    for sub in ("src", "docs"):  # some tests read the docs' examples
        shutil.rmtree(work / sub, ignore_errors=True)
        shutil.copytree(ROOT / sub, work / sub, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    _copy_tests(work)
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


def _copy_tests(work: Path) -> None:
    shutil.rmtree(work / "tests", ignore_errors=True)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    # mutmut runs each mutant's tests with -x in no set order: cheapest first stops sooner
    with open(work / "tests" / "conftest.py", "a") as conftest:
        conftest.write(_CHEAPEST_FIRST)


def run(name: str, children: int, only: list[str] | None = None) -> int:
    """mutmut over module `name` from scratch, or (only) just those mutants of the last
    run, against the tests as they are now (the mutated source must not have changed)."""
    if only is None:
        work = prepare(name)
    else:
        work = BUILD / name
        _copy_tests(work)
    env = dict(os.environ, VIBE_SHARED_DATA=str(work / "no-shared-data"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/src first; the original must not be importable
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(children),
           *(only if only is not None else MODULES[name][2] or [])]
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
        try:
            data = json.loads(meta.read_text())
        except json.JSONDecodeError:  # mutmut is writing it right now
            continue
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


def survivor_names(name: str) -> list[str]:
    eq = equivalent()
    return [k for k, s in sorted(statuses(name).items()) if s not in ("killed", "timeout", "not checked") and k not in eq]


def survivors(name: str) -> None:
    st = statuses(name)
    for k in survivor_names(name):
        print(f"{k}: {st[k]}")


SURVIVORS_DOC = ROOT / "docs" / "mutation-survivors.md"

# Why the survivors of a function were not killed, for functions with many of them: these
# are search and bookkeeping choices whose mutants still return valid results (the tests
# check validity exactly) and differ only in quality, which the tests bound with slack.
SURVIVOR_NOTES = {
    "_timebalance.x__best_swaps": "the swap search's candidates, scores and tie rules: a mutant picks another "
    "improving swap or none; local_search applies only swaps that lower the objective, so the plan stays "
    "valid and no worse than its start (tested), and only its quality moves",
    "_timebalance.x_local_search": "the local search's schedule (partner GPUs, rounds, swap budget, the full "
    "search when stuck): a mutant searches more or less; every accepted step still lowers the objective",
    "_timebalance.x__critical_gpus": "which GPUs are searched first (votes over operating points, tie-breaks "
    "by relative load): another order of the same candidates",
    "_timebalance.x_allocate_replicas": "tie-breaks and the top-2 bookkeeping of the replica allotment: "
    "another expert among near-equal ones gets the replica",
    "_timebalance.x_speed_split": "the speed split's rounds and tolerances: how far replica shares move "
    "towards equal finish times, not whether the result is a valid split",
    "_timebalance.x_layer_rows": "the node step's speed scale and rounding (groups per node): another "
    "node for a group among near-equal ones",
    "_timebalance.x_construct": "the construction's item order and tie rules: another start for the search",
    "_timebalance.x_duplicates": "the counting key's row offset and multipliers: rows are sorted one by one, "
    "so any injective key per row counts the same duplicates",
    "_timebalance.x_slot_layout": "multipliers of a sort key that only has to keep GPUs apart",
    "_timebalance.x_solve_rows": "how rows are batched and which start is kept on ties",
    "_timebalance.x_repair_duplicates": "which duplicate is moved first; every repair ends without duplicates",
    "_timebalance.x__top3": "padding of the three largest values for fewer than 4 GPUs",
    "_timebalance.x__rest_max": "padding of the largest other value",
    "_timebalance.x_solve_placement": "options plumbing whose default equals the mutated value here",
    "_timebalance.x_robust_solve": "the sample count read from another start of the same shape",
    "_timebalance.x_perturb": "the random perturbation's draw: another equally random kick",
    "_timebalance.x__apply_swaps": "bookkeeping of forced doubles, which only arise with more slots than experts",
    "recal.repair.xǁ_Stateǁ_excess": "the form of the greedy's potential (how excess over the level is "
    "weighted): another order of improving steps; each applied step is checked to lower the layer's time",
    "recal.repair.xǁ_Stateǁnext_step": "the step filters and tie weights of the greedy: another improving step",
    "recal.repair.xǁ_Stateǁheavy_slots": "which GPUs count as heavy: every test has at most HEAVY_GPUS = 8 "
    "GPUs, where all of them are",
    "recal.repair.xǁ_Stateǁswaps": "the swap mask: which swaps are scored; another improving swap",
    "recal.repair.xǁ_Stateǁsingles": "single moves' candidate filters (the double-replica branch)",
    "recal.repair.xǁ_Stateǁrefresh": "zero-division guards and the cached replica costs' form",
    "recal.repair.xǁ_Stateǁcycles": "the chain search's pruning: fewer or more chains tried, each applied one "
    "checked to lower the time",
    "recal.repair.xǁ_Stateǁnext_chain_step": "which chain is taken among improving ones",
    "recal.repair.xǁ_Stateǁnext_makespan_step": "the makespan step's tie weight (1e-9 of the potential, "
    "scaled by the level) and its comparisons at the tolerance: another step among near-equal ones",
    "recal.repair.xǁ_Stateǁforced_rehome": "which of equally good live slots takes a lost expert",
    "recal.repair.xǁ_Stateǁ_may_take": "a filter whose other branch the swap mask already excludes",
    "recal.repair.xǁ_Stateǁ__init__": "dtypes of the count arrays (small integers)",
    "recal.repair.x__layer_sequence": "when a layer's own sequence stops (cap and mode checks): a longer or "
    "shorter sequence of improving steps",
    "recal.repair.xǁ_Sequenceǁ_extend": "how far ahead a layer's steps are generated",
    "recal.repair.xǁ_Sequenceǁbest_chunk": "which prefix of a layer's steps is committed (gain per move ties)",
    "recal.repair.x__greedy_chunks": "the global greedy's order over layers: the same steps in another order",
    "recal.repair.x__beam_options": "the beam's width and pruning: other options of a layer, each a valid repair",
    "recal.repair.x__layer_options": "which of a layer's options are kept (gain per move thresholds)",
    "recal.repair.x__budgeted_layers": "the budget split's knapsack rounding",
    "bounds.x_lagrangian_lower_bounds": "the dual ascent's tuning (temperatures, iteration counts, "
    "float32 work arrays, scaling, the optimiser's options): how close the bound gets; its value is "
    "re-scored exactly, so it stays a valid bound",
    "bounds.x_replica_lagrangian_bounds": "the replica bound's ascent (step sizes, rounds, tolerances): "
    "how close it gets; the final multipliers are re-scored exactly",
    "bounds.x_replica_lagrangian_value": "the replica bound's value at given multipliers and, mostly, its "
    "ascent direction (the subgradient's soft-min spread, masses and work): the tests check the bound "
    "against brute-force and hand-derived optima and below every plan, which a weaker value or a worse "
    "direction still passes",
    "bounds.x__largest_piece": "the largest piece within a budget, used to restrict the replica bound's "
    "search: a smaller or larger restriction changes how tight the bound gets",
    "bounds.x_lp_lower_bound": "equivalent LP formulations (default bounds x >= 0 with the assignment rows "
    "capping x at 1, a scaled objective, the solver name's case, the sparse matrix's inferred shape) or "
    "dtypes of float inputs",
    "bounds.x_cheapest_slots_bound": "one of the cheap bounds under the maximum in layer_lower_bounds: its "
    "edge cases (partition index, S equal to E) never decide the maximum in the tests",
    "bounds.x_gpu_kinds": "dtypes of float inputs",
    "bounds.x_lp_bounds": "dtypes of the skip mask",
    "bounds.x_lagrangian_value": "`sum(+1)` for `sum(-1)` on [L, G] and [L, E] arrays: the same axis",
    "bounds.x__hull_pairs": "zero-width chords join points at the same x, whose values are equal: any weight "
    "there gives the same mix",
    "bounds.x__interp_rows": "clip limits that a count of points cannot pass, and the fallback of a "
    "zero-width segment, which the outer where or the clip to [0, 1] discards",
    "bounds.x_convex_minorant_lines": "a repeated point (j = 0 again, or the top when it is a grid point) "
    "is popped at once: the same hull",
    "bounds.x_slot_work_bound": "the bisection's bracket and tolerances, and branch rules that only matter "
    "when fewer slots than experts can take tokens",
}


def _categorize(old: str, new: str) -> str:
    """A reason from the shape of the change, or "" when it takes reading the function."""
    o, n = re.sub(r"\s+", "", old), re.sub(r"\s+", "", new)
    if o.lower() == n.lower() and "einsum" in o:
        return "equivalent: upper-case einsum labels, the same contraction"
    if re.sub(r"reshape\(([^)]*)-2", r"reshape(\1-1", n) == o:
        return "equivalent: numpy reads any negative reshape size as the inferred one"
    strip_kind = lambda t: re.sub(r',?kind=("[A-Za-z]*"|None)', "", t)  # noqa: E731
    if "kind=" in o and strip_kind(o).replace(",)", ")") == strip_kind(n).replace(",)", ")"):
        return "sort kind: 'STABLE' is read case-insensitively; an unstable sort differs only among equal keys"
    strip_dtype = lambda t: re.sub(r",?dtype=[\w.]+", "", re.sub(r"\.astype\([\w.]+\)", "", t))  # noqa: E731
    if strip_dtype(o).replace(",)", ")") == strip_dtype(n).replace(",)", ")"):
        return "dtype of an intermediate array (float32 / float64 / int): the same values to the tests' precision"
    strip_axis = lambda t: re.sub(r",?(axis|axes)=[-+\w]+", "", re.sub(r"\(([-+]?1)\)", "()", t))  # noqa: E731
    if strip_axis(o).replace(",)", ")") == strip_axis(n).replace(",)", ")"):
        return "the axis of a reduction, sort or gather: numpy's default (-1) is the same axis for these shapes"
    return ""


def _tolerance(old: str, new: str) -> str:
    """A reason for a change of a float tolerance (1e-9, 1e-12, ...) or of < vs <= beside one."""
    o, n = re.sub(r"\s+", "", old), re.sub(r"\s+", "", new)
    tol = r"1e-\d+|1\.0+\d+"
    if not re.search(tol, o):
        return ""
    nums = lambda t: re.sub(r"\d+(\.\d*)?(e[-+]?\d+)?", "N", t).replace("<=", "<").replace(">=", ">")  # noqa: E731
    if nums(o) == nums(n):
        return "a tie tolerance or margin (1e-9, 1e-12): moves results by about that much, below what any test resolves"
    return ""


def _mutant_lines(work: Path, name: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True).stdout
    old = " ".join(l[1:].strip() for l in out.splitlines() if l.startswith("-") and not l.startswith("---"))
    new = " ".join(l[1:].strip() for l in out.splitlines() if l.startswith("+") and not l.startswith("+++"))
    return old, new


def _kept_sections(rewritten: list[str]) -> dict[str, list[str]]:
    """Sections of the current survivors doc for modules not being rewritten: [lines]."""
    if not SURVIVORS_DOC.exists():
        return {}
    out: dict[str, list[str]] = {}
    current = None
    for line in SURVIVORS_DOC.read_text().splitlines():
        head = re.match(r"## ([\w-]+) \(", line)
        if head:
            current = head.group(1) if head.group(1) not in rewritten else None
            if current:
                out[current] = []
        if current:
            out[current].append(line)
    return out


def write_survivors_doc(names: list[str]) -> None:
    """docs/mutation-survivors.md: every survivor of the last runs that docs/testing.md
    does not list as equivalent, with its mutated line and why it was not killed."""
    lines = ["# Surviving mutants", "",
             "Written by `python tools/mutation.py --write-survivors` from the last `make mutation` runs: every",
             "mutant that survived its module's tests and is not listed as equivalent in docs/testing.md, with",
             "the line it changes and why no test kills it. The reason comes from the shape of the change",
             "where that decides it, else from the notes on its function in tools/mutation.py; these count",
             "as survivors in the scores.", ""]
    kept = _kept_sections(names)
    for name in [n for n in MODULES if n in names or n in kept]:
        if name not in names:  # not rewritten (no run here, or not asked for): as it was
            lines += kept[name]
            continue
        left = survivor_names(name)
        lines += [f"## {name} ({len(left)} survivors)", ""]
        if not left:
            lines += ["None.", ""]
            continue
        lines += ["| mutant | mutated line | why it survives |", "|---|---|---|"]
        for key in left:
            old, new = _mutant_lines(BUILD / name, key)
            func = key.split("__mutmut_")[0].removeprefix("vibe.").removeprefix("policies.")
            why = (_categorize(old, new) or SURVIVOR_NOTES.get(func)
                   or _tolerance(old, new) or "not analysed one by one: no test of the module detects this change")
            shown = new.replace("|", "\\|") if len(new) <= 110 else new[:107].replace("|", "\\|") + "..."
            lines.append(f"| `{key.split('.', 1)[1]}` | `{shown}` | {why} |")
        lines.append("")
    tmp = SURVIVORS_DOC.with_suffix(".tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(SURVIVORS_DOC)
    print(f"wrote {SURVIVORS_DOC.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help=f"some of: {', '.join(MODULES)} (default: all)")
    ap.add_argument("--report", action="store_true", help="only print the scores of the last runs")
    ap.add_argument("--survivors", action="store_true", help="list surviving mutants of the modules")
    ap.add_argument("--write-survivors", action="store_true", help=f"write {SURVIVORS_DOC.name} from the last runs")
    ap.add_argument("--recheck", action="store_true",
                    help="re-run the last run's survivors (not listed as equivalent) against the current tests")
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
    if args.write_survivors:
        write_survivors_doc([n for n in names if statuses(n)])
        return 0
    if args.recheck:
        for n in names:
            left = survivor_names(n)
            if left and run(n, args.children, only=left) != 0:
                print(f"mutmut exited non-zero re-checking {n}", file=sys.stderr)
    elif not args.report:
        for n in names:
            rc = run(n, args.children)
            if rc not in (0,):
                print(f"mutmut exited {rc} for {n}", file=sys.stderr)
    return 0 if report(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
