"""Importers of real engines' load files (SGLang, TensorRT-LLM, ESFT, json/npy) and the
SGLang logical_count export: round trips, a direct count of the ESFT files, refusing
pickled code, and clear errors with no output on malformed input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from vibe.cli import main
from vibe.engines.layers import apply_moe_layers, parse_layer_spec
from vibe.errors import InputError, VibeError
from vibe.model import ExpertLoads, Placement, RoutingTrace

@pytest.fixture(scope="module")
def torch():
    """torch, for the tests that need it (they skip alone where it is not installed)."""
    return pytest.importorskip("torch")


def run(argv, capsys):
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr()


def failed(argv, capsys, out, *fragments):
    """The command exits 2 with a one-line error holding `fragments`, and writes nothing."""
    rc, cap = run(argv, capsys)
    assert rc == 2, cap
    line = cap.err.strip()
    assert line.count("\n") == 0 and all(f in line for f in fragments), line
    assert not out.exists()
    return line


def replicated_placement(loads: ExpertLoads, redundant: int = 16, gpus: int = 8, seed: int = 0) -> Placement:
    """Every expert once plus `redundant` replicas of the hottest experts, shuffled."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in loads.counts:
        row = np.concatenate([np.arange(loads.num_experts), np.argsort(-c, kind="stable")[:redundant]])
        rows.append(rng.permutation(row))
    return Placement.init_by_mapping(np.array(rows), gpus, loads.num_experts, loads.layer_ids)


def split_over_slots(counts: np.ndarray, placement: Placement) -> np.ndarray:
    """[L, E] integer counts -> [L, P] per-slot counts, as an engine splits them evenly."""
    phy = placement.physical_to_logical_map
    reps = placement.logical_count()
    L = phy.shape[0]
    base = np.take_along_axis(counts.astype(np.int64) // reps, phy, axis=1)
    rest = np.take_along_axis(counts.astype(np.int64) % reps, phy, axis=1)
    first = np.zeros_like(phy, dtype=bool)  # the remainder goes to each expert's first slot
    for l in range(L):
        _, idx = np.unique(phy[l], return_index=True)
        first[l, idx] = True
    return base + rest * first


# ---- ESFT ------------------------------------------------------------------------------
def direct_count(folder, num_experts=64, only=None):
    """Count expert ids straight from the gzip text files, independent of vibe's reader
    (layers `only`, or all)."""
    layers, rows = [], []
    for path in sorted(folder.glob("expert_weights_*.txt.gz"), key=lambda p: int(p.name.split("_")[2].split(".")[0])):
        if only is not None and int(path.name.split("_")[2].split(".")[0]) not in only:
            continue
        c = np.zeros(num_experts, np.int64)
        with gzip.open(path, "rt") as fh:
            for line in fh:
                if line.strip():
                    ids = [int(x) for x in line.split("\t\t")[0].split("\t")]
                    c += np.bincount(ids, minlength=num_experts)
        layers.append(int(path.name.split("_")[2].split(".")[0]))
        rows.append(c)
    return tuple(layers), np.array(rows)


def test_esft_import_matches_a_direct_count(esft_dir, tmp_path, capsys):
    out, trace = tmp_path / "intent.json", tmp_path / "intent.npz"
    rc, cap = run(["loads", "import", "--format", "esft", esft_dir / "intent", "--out", out, "--trace", trace], capsys)
    assert rc == 0, cap.err
    layers, counts = direct_count(esft_dir / "intent")
    loads = ExpertLoads.load(out)
    assert loads.layer_ids == layers == tuple(range(1, 27))
    assert np.array_equal(loads.counts, counts) and loads.top_k == 6
    assert np.array_equal(RoutingTrace.load(trace).counts(), counts)


def test_esft_several_domains_sum_and_moe_layers_select(esft_dir, tmp_path, capsys):
    out = tmp_path / "two.json"
    rc, cap = run(["loads", "import", "--format", "esft", esft_dir / "law", esft_dir / "summary",
                   "--moe-layers", "2-4,26", "--out", out], capsys)
    assert rc == 0, cap.err
    _, law = direct_count(esft_dir / "law", only=(2, 3, 4, 26))
    _, summary = direct_count(esft_dir / "summary", only=(2, 3, 4, 26))
    loads = ExpertLoads.load(out)
    assert loads.layer_ids == (2, 3, 4, 26)
    assert np.array_equal(loads.counts, law + summary)


def test_esft_malformed_files(tmp_path, capsys):
    folder = tmp_path / "dom"
    folder.mkdir()
    (folder / "expert_weights_1.txt").write_text("1\t2\t3\t4\t5\t6\t\t.1\t.1\t.1\t.1\t.1\t.1\n")
    (folder / "expert_weights_2.txt").write_text("1\t2\t3\t4\t5\t\t.1\t.1\t.1\t.1\t.1\n")
    out = tmp_path / "x.json"
    failed(["loads", "import", "--format", "esft", folder, "--out", out], capsys, out,
           "expert_weights_2.txt", "not a multiple of top_k=6")
    (folder / "expert_weights_2.txt").write_text("1\t2\t3\t4\t5\t99\t\t.1\t.1\t.1\t.1\t.1\t.1\n")
    failed(["loads", "import", "--format", "esft", folder, "--out", out], capsys, out, "out of range")


# ---- SGLang ----------------------------------------------------------------------------
def test_sglang_stat_dump_sums_buffer_rows_and_drops_dense_layers(torch, esft_loads, tmp_path, capsys):
    rng = np.random.default_rng(0)
    counts = esft_loads.counts.astype(np.int64)
    # A 27-row decoder axis (row 0 dense), spread over 5 forward passes plus 3 unfilled rows.
    buf = np.zeros((8, 27, 64), np.int64)
    for l in range(26):
        for e in range(64):
            buf[:5, l + 1, e] = rng.multinomial(counts[l, e], np.ones(5) / 5)
    dump = tmp_path / "expert_distribution_recorder_1700000000.0.pt"
    torch.save({"rank": 0, "logical_count": torch.from_numpy(buf).to(torch.int32),
                "average_utilization_rate_over_window": 0.93}, dump)
    out = tmp_path / "loads.json"
    rc, cap = run(["loads", "import", "--format", "sglang", dump, "--top-k", "6", "--out", out], capsys)
    assert rc == 0, cap.err
    loads = ExpertLoads.load(out)
    assert loads.layer_ids == esft_loads.layer_ids and np.array_equal(loads.counts, counts)


def test_sglang_per_pass_dumps_fold_slots_to_experts(torch, esft_loads, tmp_path, capsys):
    placement = replicated_placement(esft_loads)
    slots = split_over_slots(esft_loads.counts, placement)  # [26, 80]
    phy_full = np.tile(np.arange(80) % 64, (27, 1))
    phy_full[1:] = placement.physical_to_logical_map
    rng = np.random.default_rng(1)
    files = []
    for rank in range(2):  # each rank saw part of every forward pass
        records = []
        for fp in range(3):
            gpc = np.zeros((27, 80), np.int64)
            gpc[1:] = rng.binomial(slots // 6, 0.5) if (rank, fp) != (1, 2) else 0
            records.append({"forward_pass_id": fp, "rank": rank, "gatherer_key": "primary",
                            "global_physical_count": torch.from_numpy(gpc)})
        files.append(records)
    # Put whatever the random parts left over into the last record, so all sums are exact.
    total = sum(r["global_physical_count"].numpy() for recs in files for r in recs)
    files[1][2]["global_physical_count"] = torch.from_numpy(np.vstack([np.zeros((1, 80), np.int64), slots]) - total)
    paths = []
    for rank, records in enumerate(files):
        paths.append(tmp_path / f"expert_distribution_recorder_1700000000.0_{rank}.pt")
        torch.save({"records": records, "last_physical_to_logical_map": torch.from_numpy(phy_full)}, paths[-1])
    out = tmp_path / "loads.json"
    rc, cap = run(["loads", "import", "--format", "sglang", *paths, "--top-k", "6", "--out", out], capsys)
    assert rc == 0, cap.err
    loads = ExpertLoads.load(out)
    assert loads.layer_ids == tuple(range(1, 27)) and np.array_equal(loads.counts, esft_loads.counts)
    # The same dump twice would count its passes twice.
    failed(["loads", "import", "--format", "sglang", paths[0], paths[0], "--top-k", "6", "--out", out.with_name("d.json")],
           capsys, out.with_name("d.json"), "forward pass 0 of rank 0 also appears")


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_sglang_logical_count_export_round_trip(esft_loads, tmp_path, capsys, suffix):
    torch = pytest.importorskip("torch") if suffix == ".pt" else None
    src = tmp_path / "loads.json"
    esft_loads.save(src)
    lc = tmp_path / f"lc{suffix}"
    rc, cap = run(["loads", "export", src, "--format", "sglang", "--out", lc, "--num-hidden-layers", "27"], capsys)
    assert rc == 0, cap.err
    if suffix == ".json":
        obj = json.loads(lc.read_text())
        assert list(obj) == ["logical_count"] and np.shape(obj["logical_count"]) == (27, 64)
    else:
        obj = torch.load(lc, weights_only=True)
        assert list(obj) == ["logical_count"] and tuple(obj["logical_count"].shape) == (1, 27, 64)
    back = tmp_path / "back.json"
    rc, cap = run(["loads", "import", "--format", "sglang", lc, "--top-k", "6", "--out", back], capsys)
    assert rc == 0, cap.err
    loads = ExpertLoads.load(back)
    assert loads.layer_ids == esft_loads.layer_ids and np.array_equal(loads.counts, esft_loads.counts)


class _RunsCode:
    """Unpickling this object would create a marker file (a stand-in for any code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_code_in_a_pt_is_refused_and_never_runs(torch, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"logical_count": torch.zeros(2, 4), "payload": _RunsCode(marker)}, evil)
    out = tmp_path / "loads.json"
    failed(["loads", "import", "--format", "sglang", evil, "--top-k", "2", "--out", out], capsys, out,
           "evil.pt", "refused")
    assert not marker.exists()


def test_sglang_malformed_dumps(torch, tmp_path, capsys):
    out = tmp_path / "loads.json"
    good = tmp_path / "good.pt"
    torch.save({"logical_count": torch.ones(3, 4, 8, dtype=torch.int32)}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    failed(["loads", "import", "--format", "sglang", cut, "--top-k", "2", "--out", out], capsys, out,
           "cut.pt", "not a readable torch file")
    flat = tmp_path / "flat.pt"
    torch.save({"logical_count": torch.ones(8)}, flat)
    failed(["loads", "import", "--format", "sglang", flat, "--top-k", "2", "--out", out], capsys, out,
           "flat.pt", "[layers, experts]")
    neg = tmp_path / "neg.pt"
    torch.save({"logical_count": -torch.ones(4, 8, dtype=torch.int32)}, neg)
    failed(["loads", "import", "--format", "sglang", neg, "--top-k", "2", "--out", out], capsys, out,
           "neg.pt", "negative count")
    other = tmp_path / "other.pt"
    torch.save({"logical_count": torch.ones(5, 8, dtype=torch.int32)}, other)
    failed(["loads", "import", "--format", "sglang", good, other, "--top-k", "2", "--out", out], capsys, out,
           "other.pt", "differs from")
    failed(["loads", "import", "--format", "sglang", good, "--out", out], capsys, out, "--top-k")
    failed(["loads", "import", "--format", "sglang", tmp_path / "none.pt", "--top-k", "2", "--out", out], capsys, out,
           "none.pt", "no such file")


# ---- TensorRT-LLM ----------------------------------------------------------------------
def write_trtllm_folder(folder, per_layer_vectors, num_experts, top_k, ranks=2, iters=(100, 101, 102), seed=0):
    """EXPERT_STATISTIC_PATH as TensorRT-LLM writes it; returns the summed [L, width] counts."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    folder.mkdir()
    (folder / "meta_info.json").write_text(json.dumps({"num_experts": num_experts, "num_experts_per_token": top_k}))
    layers = sorted(per_layer_vectors)
    parts = {(r, it, l): np.zeros_like(per_layer_vectors[l]) for r in range(ranks) for it in iters for l in layers}
    for l in layers:  # split each layer's total over ranks x iterations at random, exactly
        share = rng.multinomial(1, np.ones(len(parts) // len(layers)) / (len(parts) // len(layers)),
                                size=int(per_layer_vectors[l].sum()))
        ids = np.repeat(np.arange(len(per_layer_vectors[l])), per_layer_vectors[l].astype(np.int64))
        keys = [(r, it) for r in range(ranks) for it in iters]
        for j, (r, it) in enumerate(keys):
            parts[(r, it, l)] = np.bincount(ids[share[:, j] == 1], minlength=len(per_layer_vectors[l])).astype(np.int64)
    for r in range(ranks):
        save_file({f"{it}_{l}": parts[(r, it, l)] for it in iters for l in layers}, str(folder / f"rank{r}.safetensors"))
    # Newer releases also leave raw token files beside: they must be ignored.
    save_file({"100_1": np.zeros((4, top_k), np.int32)}, str(folder / "rank0_raw.safetensors"))


def test_trtllm_statistic_folder_sums_iterations_and_ranks(esft_loads, tmp_path, capsys):
    vectors = {l: c.astype(np.int64) for l, c in zip(esft_loads.layer_ids, esft_loads.counts)}
    folder = tmp_path / "expert_statistic"
    write_trtllm_folder(folder, vectors, 64, 6)
    out = tmp_path / "loads.json"
    rc, cap = run(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys)
    assert rc == 0, cap.err
    loads = ExpertLoads.load(out)
    assert loads.top_k == 6 and loads.layer_ids == esft_loads.layer_ids
    assert np.array_equal(loads.counts, esft_loads.counts)


def test_trtllm_per_slot_counts_fold_through_a_placement(esft_loads, tmp_path, capsys):
    placement = replicated_placement(esft_loads, seed=3)
    slots = split_over_slots(esft_loads.counts, placement)
    folder = tmp_path / "stat"
    write_trtllm_folder(folder, dict(zip(esft_loads.layer_ids, slots)), 64, 6, ranks=1, iters=(7,))
    pfile = tmp_path / "placement.json"
    placement.save(pfile)
    out = tmp_path / "loads.json"
    failed(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys, out,
           "rank0.safetensors", "--placement")
    rc, cap = run(["loads", "import", "--format", "trtllm", folder, "--placement", pfile, "--out", out], capsys)
    assert rc == 0, cap.err
    assert np.array_equal(ExpertLoads.load(out).counts, esft_loads.counts)


def test_trtllm_malformed_folders(tmp_path, capsys):
    from safetensors.numpy import save_file

    out = tmp_path / "loads.json"
    folder = tmp_path / "s"
    folder.mkdir()
    failed(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys, out, "meta_info.json", "no such file")
    (folder / "meta_info.json").write_text(json.dumps({"num_experts": 4, "num_experts_per_token": 2}))
    failed(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys, out, "no rank<R>.safetensors")
    save_file({"3_1": np.array([1, 2, 3, 4])}, str(folder / "rank0.safetensors"))
    save_file({"iter3_layer1": np.array([1, 2, 3, 4])}, str(folder / "rank1.safetensors"))
    failed(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys, out, "rank1.safetensors", "iter3_layer1")
    save_file({"3_1": np.array([1, -2, 3, 4])}, str(folder / "rank1.safetensors"))
    failed(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys, out, "rank1.safetensors", "negative count")
    (folder / "rank1.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{trunc")
    failed(["loads", "import", "--format", "trtllm", folder, "--out", out], capsys, out,
           "rank1.safetensors", "not a readable safetensors")


# ---- plain json / npy, layer conventions -------------------------------------------------
def test_npy_and_json_round_trips_with_moe_layers(esft_loads, tmp_path, capsys):
    src = tmp_path / "loads.json"
    esft_loads.save(src)
    for fmt, name in (("npy", "c.npy"), ("json", "c.json")):
        path = tmp_path / name
        assert run(["loads", "export", src, "--format", fmt, "--out", path], capsys)[0] == 0
        back = tmp_path / f"back-{fmt}.json"
        args = ["loads", "import", "--format", fmt, path, "--out", back]
        if fmt == "npy":  # a bare matrix: MoE-indexed rows 0..25, relabelled to decoder ids
            args += ["--moe-layers", "1-26", "--top-k", "6"]
        rc, cap = run(args, capsys)
        assert rc == 0, cap.err
        loads = ExpertLoads.load(back)
        assert loads.layer_ids == esft_loads.layer_ids and loads.top_k == 6
        assert np.array_equal(loads.counts, esft_loads.counts)


def test_plain_malformed_inputs(tmp_path, capsys):
    out = tmp_path / "loads.json"
    ragged = tmp_path / "ragged.json"
    ragged.write_text("[[1, 2], [3]]")
    failed(["loads", "import", "--format", "json", ragged, "--top-k", "1", "--out", out], capsys, out,
           "ragged.json", "ragged")
    bad_k = tmp_path / "k.json"
    bad_k.write_text('{"counts": [[1, 2], [3, 4]], "top_k": "two"}')
    failed(["loads", "import", "--format", "json", bad_k, "--out", out], capsys, out, "k.json", "top_k")
    obj = tmp_path / "obj.npy"
    np.save(obj, np.array([[object()]], dtype=object), allow_pickle=True)
    failed(["loads", "import", "--format", "npy", obj, "--top-k", "1", "--out", out], capsys, out, "obj.npy")
    a, b = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(a, np.ones((3, 4)))
    np.save(b, np.ones((2, 4)))
    failed(["loads", "import", "--format", "npy", a, b, "--top-k", "1", "--out", out], capsys, out,
           "b.npy", "differs from")
    failed(["loads", "import", "--format", "npy", a, "--top-k", "1", "--moe-layers", "5-9", "--out", out], capsys, out,
           "a.npy", "--moe-layers")
    failed(["loads", "import", "--format", "npy", a, "--top-k", "9", "--out", out], capsys, out, "top_k=9 exceeds")


def test_layer_specs_and_mapping():
    assert parse_layer_spec("1-3,7") == (1, 2, 3, 7)
    for bad in ("", "3-1", "a", "1,1", "5,2"):
        with pytest.raises(VibeError):
            parse_layer_spec(bad)
    counts = np.arange(12.0).reshape(4, 3)
    sel, ids = apply_moe_layers(counts, (0, 1, 2, 3), (1, 3), "x")  # decoder-indexed: select
    assert ids == (1, 3) and np.array_equal(sel, counts[[1, 3]])
    rel, ids = apply_moe_layers(counts, (0, 1, 2, 3), (3, 4, 5, 6), "x")  # MoE-indexed: relabel
    assert ids == (3, 4, 5, 6) and np.array_equal(rel, counts)
    with pytest.raises(InputError):
        apply_moe_layers(counts, (0, 1, 2, 3), (3, 4), "x")


def test_torch_is_not_imported_by_the_data_model():
    import subprocess
    import sys

    code = ("import sys, vibe.model, vibe.cost, vibe.engines.sglang, vibe.engines.trtllm, vibe.loadstats; "
            "print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
