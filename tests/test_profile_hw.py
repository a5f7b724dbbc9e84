"""`vibe profile hw` on the CPU of this machine (small shapes), fits, telemetry, bad input."""

from __future__ import annotations

import json
import queue
import threading
import types

import numpy as np
import pytest

from vibe.cli import main
from vibe.errors import InputError, VibeError
from vibe.model import Cluster
from vibe.profile import hardware as hw
from vibe.profile import telemetry
from vibe.profile.compare import compare_clusters
from vibe.profile.fit import fit_curve, hinge_eval, hinge_fit, isotonic_fit

# One thread: this machine's 2 cores are shared, and a second thread spends its time
# waiting for cores other jobs hold.
SMALL = ["--hidden", "128", "--intermediate", "256", "--dtype", "fp32", "--devices", "cpu",
         "--tokens", "1,2,4,8,16,32,64", "--repeats", "7", "--warmup", "1", "--threads", "1",
         "--max-seconds", "10"]


@pytest.fixture(scope="module")
def torch():
    """torch, for the tests that need it (they skip alone where it is not installed)."""
    return pytest.importorskip("torch")


def _spec(**kw) -> hw.ProfileSpec:
    base = dict(hidden=128, intermediate=256, dtype="fp32", tokens=(1, 2, 4, 8, 16, 32, 64),
                repeats=7, warmup=1, threads=1, max_seconds=10.0)
    return hw.ProfileSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def cpu_file(torch, tmp_path_factory):
    out = tmp_path_factory.mktemp("hw") / "cpu.json"
    assert main(["profile", "hw", *SMALL, "--out", str(out)]) == 0
    return out


def test_cpu_profile_file_validates(cpu_file):
    cluster = Cluster.load(cpu_file)  # validates: ranks, monotone, positive
    raw = json.loads(cpu_file.read_text())
    assert raw["schema"] == "vibe.cluster/v1"
    assert raw["expert"] == {"hidden": 128, "intermediate": 256, "dtype": "fp32"}
    g = cluster.gpus[0]
    assert g.tokens.tolist() == [1, 2, 4, 8, 16, 32, 64]
    assert np.all(g.latency_us > 0) and np.all(np.diff(g.latency_us) >= 0)
    assert g.overhead_us > 0
    samples = np.asarray(g.extra["samples"]["samples_us"])
    assert samples.shape[0] == 7 and samples.shape[1] >= 3  # [P, R] raw samples kept
    med = np.asarray(g.extra["samples"]["median_us"])
    assert np.allclose(med, np.median(samples, axis=1))
    # The written curve is the fitted one, and it reproduces the medians (target: 15% on CPU).
    assert g.extra["fit"]["max_rel_error"] <= 0.15
    assert np.max(np.abs(g.latency_us / med - 1)) <= 0.15
    assert g.telemetry.get("source") == "procfs" and g.telemetry.get("logical_cores", 0) >= 1
    assert g.extra["measured"]["timing"] == "thread-cpu-time"


def test_cpu_curve_grows_with_tokens(cpu_file):
    g = Cluster.load(cpu_file).gpus[0]
    assert g.latency_us[-1] > 1.5 * g.latency_us[0]


def test_second_profile_agrees_within_noise(torch, cpu_file):
    """On this shared 2-core machine, repeated profiles' medians moved by up to ~30% with
    the other jobs' load, their p10 by up to ~28% and their fastest samples by less."""
    first = Cluster.load(cpu_file)
    spec = _spec(seed=1)
    second = hw.cluster_from_profiles(hw.profile_devices(spec, ["cpu"]), spec)
    (row,) = compare_clusters(first, second)
    assert abs(row["ratio"] - 1) <= 0.5, row
    # The fastest sample of each point is the least disturbed by other jobs.
    best = [np.asarray(c.gpus[0].extra["samples"]["samples_us"]).min(axis=1) for c in (first, second)]
    drift = abs(np.exp(np.mean(np.log(best[1] / best[0]))) - 1)
    print(f"repeat profile: fastest samples moved by {drift:.1%} (geometric mean over the grid)")
    assert drift <= 0.35  # seen here: 1%-20% (6 runs, quiet and loaded); p10 reached 28%


def test_multiprocess_path_on_cpu(torch):
    spec = _spec(tokens=(1, 8), repeats=3, warmup=0)
    seen = []
    (prof,) = hw.profile_devices(spec, ["cpu"], progress=lambda d, k, n: seen.append((d, k, n)),
                                 processes=True)
    assert prof["device"] == "cpu" and len(prof["median_us"]) == 2
    assert np.asarray(prof["samples_us"]).shape == (2, 3)
    assert seen and seen[-1] == ("cpu", 3, 3)


def test_worker_reports_error_and_releases_barrier(torch):
    q: queue.Queue = queue.Queue()
    barrier = threading.Barrier(2)
    hw._worker(0, ["cpu"], _spec(hidden=-1), q, barrier)
    what, rank, msg = q.get_nowait()
    assert (what, rank) == ("error", 0) and msg
    assert barrier.broken  # the other workers are not left waiting


@pytest.mark.parametrize("argv, words", [
    (["--devices", "tpu"], "unknown device 'tpu'"),
    (["--devices", "cuda:3"], "unknown device 'cuda:3'"),
    (["--hidden", "0"], "argument --hidden: must be >= 1"),
    (["--hidden", "2000000", "--intermediate", "2000000"], "impossible shape"),
    (["--dtype", "fp8"], "fp8 is not supported on cpu"),
    (["--tokens", "4,2"], "strictly increasing"),
    (["--devices", "cpu,cpu"], "listed twice"),
])
def test_bad_input_one_line_exit_2(torch, tmp_path, capsys, argv, words):
    out = tmp_path / "c.json"
    args = list(SMALL)
    for flag, value in zip(argv[::2], argv[1::2]):
        args[args.index(flag) + 1] = value
    assert main(["profile", "hw", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_hinge_fit_is_written_when_asked(torch, tmp_path):
    out = tmp_path / "h.json"
    args = [a if a != "7" else "3" for a in SMALL]  # 3 rounds are enough here
    assert main(["profile", "hw", *args, "--fit", "hinge", "--out", str(out)]) == 0
    g = Cluster.load(out).gpus[0]
    assert g.extra["fit"]["method"] == "hinge"
    assert np.allclose(g.latency_us, hinge_eval(g.extra["fit"], g.tokens))


def test_no_gpu_is_a_clear_error(torch):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match="use --devices cpu"):
        hw.resolve_devices("cuda")
    assert hw.resolve_devices("auto") == ["cpu"]


def test_import_profile_does_not_import_torch():
    import subprocess
    import sys

    code = "import vibe.profile, vibe.profile.fit, vibe.profile.tables, vibe.profile.compare, sys; " \
           "print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# ---- fits ----------------------------------------------------------------------------------
def test_isotonic_fit_is_monotone_and_keeps_monotone_data():
    rng = np.random.default_rng(7)
    tokens = np.array([1, 2, 4, 8, 16, 32, 64, 128], dtype=float)
    clean = 20 + 0.5 * tokens
    assert np.allclose(isotonic_fit(tokens, clean), clean)
    noisy = clean * rng.uniform(0.8, 1.2, size=tokens.size)
    fitted = isotonic_fit(tokens, noisy)
    assert np.all(np.diff(fitted) >= -1e-12) and np.all(fitted > 0)


def test_hinge_fit_recovers_floor_knee_slope():
    rng = np.random.default_rng(3)
    tokens = np.array([2.0**i for i in range(12)])
    truth = {"floor_us": 40.0, "slope_us_per_token": 0.25, "knee_tokens": 64.0}
    measured = hinge_eval(truth, tokens) * rng.uniform(0.98, 1.02, size=tokens.size)
    got = hinge_fit(tokens, measured)
    assert got["knee_tokens"] in (32.0, 64.0, 128.0)
    assert abs(got["floor_us"] / 40.0 - 1) < 0.05 and abs(got["slope_us_per_token"] / 0.25 - 1) < 0.1
    fitted, report = fit_curve(tokens, measured, "hinge")
    assert report["max_rel_error"] < 0.1 and np.all(np.diff(fitted) >= 0)


def test_unknown_fit_method():
    with pytest.raises(ValueError):
        fit_curve(np.array([1.0, 2.0]), np.array([1.0, 2.0]), "spline")


# ---- telemetry -----------------------------------------------------------------------------
def _fake_nvml(fail_power: bool = False):
    def power(h):
        if fail_power:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 412_000

    return types.SimpleNamespace(
        NVML_CLOCK_SM=0, NVML_CLOCK_MEM=1, NVML_TEMPERATURE_GPU=0,
        nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 8,
        nvmlDeviceGetHandleByIndex=lambda i: ("idx", i),
        nvmlDeviceGetHandleByPciBusId=lambda bus: ("bus", bus),
        nvmlDeviceGetClockInfo=lambda h, kind: 1980 if kind == 0 else 2619,
        nvmlDeviceGetMaxClockInfo=lambda h, kind: 1980,
        nvmlDeviceGetPowerManagementLimit=lambda h: 700_000,
        nvmlDeviceGetPowerUsage=power,
        nvmlDeviceGetTemperature=lambda h, kind: 61,
        nvmlDeviceGetUUID=lambda h: b"GPU-1234",
    )


def test_nvml_telemetry_fields(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", _fake_nvml())
    tel = telemetry.nvml_telemetry("00000000:1b:00.0")
    assert tel == {"source": "nvml", "sm_clock_mhz": 1980, "mem_clock_mhz": 2619, "max_sm_clock_mhz": 1980,
                   "power_limit_w": 700.0, "power_draw_w": 412.0, "temp_c": 61, "uuid": "GPU-1234"}


def test_nvml_missing_field_or_library(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(fail_power=True))
    tel = telemetry.nvml_telemetry(index=0)
    assert "power_draw_w" not in tel and tel["power_limit_w"] == 700.0
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not installed
    assert telemetry.nvml_telemetry(index=0) == {}


def test_cpu_telemetry_reads_proc_and_sys(tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "cpuinfo").write_text("model name\t: Test CPU\ncpu MHz\t\t: 2000.0\n\nmodel name\t: Test CPU\n"
                                  "cpu MHz\t\t: 3000.0\n")
    zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "temp").write_text("55000\n")
    tel = telemetry.cpu_telemetry(proc, tmp_path / "sys")
    assert tel["cpu_model"] == "Test CPU" and tel["sm_clock_mhz"] == 2500.0 and tel["temp_c"] == 55.0


def test_vibe_error_from_dead_workers_names_device(torch, monkeypatch):
    # A worker that fails inside the profile (not at validation) is reported as one line.
    spec = _spec(tokens=(1, 2), repeats=3)
    monkeypatch.setattr(hw, "check_shape", lambda spec, device: None)
    with pytest.raises(VibeError, match="^cpu: "):
        hw.profile_devices(hw.ProfileSpec(**{**spec.__dict__, "hidden": -1}), ["cpu"], processes=True)
