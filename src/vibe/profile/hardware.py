"""Measure each device's expert latency curve for real (torch microbenchmarks).

What is timed: ONE expert's FFN as MoE engines run it (SwiGLU): the fused gate+up GEMM
[n, H] x [H, 2I], SiLU(gate) * up, the down GEMM [n, I] x [I, H], at every token count
n of a grid that covers the memory-bound floor (few tokens: the kernel streams the
expert's weights) and the compute-bound slope (many tokens). Also timed: the fixed
per-layer cost (routing softmax + top-k and one token's gather/scatter).

How it is timed:
* warm-up calls, then `repeats` samples; median and p10/p90 spread are kept.
* Weights rotate over several copies whose total exceeds the last-level cache, so each
  call streams its weights from memory as in serving (experts of a layer do not fit in
  L2); one sample = the time of one pass over the copies / number of copies.
* GPUs (CUDA, and ROCm through torch's HIP build): device-side timing with CUDA events
  around a CUDA-graph replay (no launch gaps, like engines' graph mode; eager if the
  graph cannot be captured). CPU: the working thread's CPU time with one torch thread
  (robust to other jobs on a shared machine), else wall clock.
* Several GPUs are profiled at the same time, one process per GPU (torch.multiprocessing
  spawn), all starting together behind a barrier, so each GPU is measured under the
  node's real power and thermal load.

torch is imported inside these functions only: the data and cost models never need it.
"""

from __future__ import annotations

import math
import queue as queue_mod
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from vibe.errors import InputError, VibeError
from vibe.model import Cluster, GpuProfile
from vibe.profile.fit import fit_curve
from vibe.profile.telemetry import device_telemetry

DTYPES = ("bf16", "fp16", "fp8", "fp32")
DEFAULT_GPU_TOKENS = tuple(2**i for i in range(14))  # 1 .. 8192
DEFAULT_CPU_TOKENS = tuple(2**i for i in range(9))  # 1 .. 256: a CPU is slow at large n
# Weight copies rotate until they exceed the last-level cache: 512 MiB covers GPU L2 and
# AMD Infinity Cache; 96 MiB covers the L3 of common server CPUs.
ROTATE_BYTES = {"cuda": 512 << 20, "rocm": 512 << 20, "cpu": 96 << 20}
MAX_COPIES = 32
_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4}

ProgressFn = Callable[[str, int, int], None]  # (device, rounds done, rounds planned)


@dataclass(frozen=True)
class ProfileSpec:
    """What to measure: one expert's shape and dtype, the token grid and the sampling."""

    hidden: int
    intermediate: int
    dtype: str
    tokens: tuple[int, ...]
    warmup: int = 3
    repeats: int = 15  # rounds over the whole token grid
    max_seconds: float = 60.0  # stop the rounds after this (once 3 are done)
    num_experts: int = 256  # router width, for the fixed per-layer cost
    top_k: int = 8
    seed: int = 0
    threads: int | None = None  # CPU only: torch threads (None: torch's default)


# ---- devices and validation (run in the parent, before any process starts) ------------
def device_kind(device: str) -> str:
    """'cpu', 'cuda' or 'rocm' (a torch HIP build exposes AMD GPUs as cuda:N)."""
    if device == "cpu":
        return "cpu"
    import torch

    return "rocm" if getattr(torch.version, "hip", None) else "cuda"


def resolve_devices(text: str) -> list[str]:
    """'auto' | 'cpu' | 'cuda' (all GPUs) | comma list of cuda:N / N / cpu -> device names."""
    import torch

    num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    text = (text or "auto").strip().lower()
    if text == "auto":
        return [f"cuda:{i}" for i in range(num_gpus)] or ["cpu"]
    if text in ("cuda", "gpu", "all"):
        if not num_gpus:
            raise InputError("--devices", "no CUDA/ROCm GPU is visible to torch; use --devices cpu")
        return [f"cuda:{i}" for i in range(num_gpus)]
    devices = []
    for item in (s.strip() for s in text.split(",")):
        if item == "cpu":
            devices.append("cpu")
            continue
        index = item.removeprefix("cuda:").removeprefix("gpu:")
        if not index.isdigit():
            raise InputError("--devices", f"unknown device {item!r}; use cpu, cuda, cuda:N or a comma list")
        if int(index) >= num_gpus:
            raise InputError("--devices", f"unknown device {item!r}: torch sees {num_gpus} GPU(s)")
        devices.append(f"cuda:{int(index)}")
    if len(set(devices)) != len(devices):
        raise InputError("--devices", f"a device is listed twice: {text}")
    if "cpu" in devices and len(devices) > 1:
        raise InputError("--devices", "profile the CPU on its own: its threads would compete with the GPU workers")
    return devices


def check_dtype(device: str, dtype: str) -> None:
    """Raise InputError if `dtype` cannot run this FFN on `device`."""
    if dtype not in DTYPES:
        raise InputError("--dtype", f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    kind = device_kind(device)
    if kind == "cpu":
        if dtype == "fp8":
            raise InputError("--dtype", "fp8 is not supported on cpu (it needs FP8 tensor cores, e.g. "
                                        "H100/H200/MI300); use bf16, fp16 or fp32")
        return
    import torch

    props = torch.cuda.get_device_properties(device)
    if kind == "cuda" and dtype == "bf16" and props.major < 8:
        raise InputError("--dtype", f"bf16 is not supported on {device} ({props.name}, sm_{props.major}{props.minor})")
    if dtype == "fp8":
        arch = getattr(props, "gcnArchName", "")
        ok = (arch.startswith(("gfx94", "gfx95")) if kind == "rocm"
              else (props.major, props.minor) >= (8, 9))
        if not ok or not hasattr(torch, "_scaled_mm"):
            raise InputError("--dtype", f"fp8 is not supported on {device} ({props.name}): it needs sm_89+ "
                                        "(Ada, Hopper, Blackwell) or MI300-class GPUs")


def weight_bytes(spec: ProfileSpec) -> int:
    """Bytes of one expert's weights (gate, up and down projections)."""
    return 3 * spec.hidden * spec.intermediate * _BYTES[spec.dtype]


def num_copies(spec: ProfileSpec, kind: str) -> int:
    """Weight copies to rotate over so that their total exceeds the last-level cache."""
    return int(min(MAX_COPIES, max(1, math.ceil(ROTATE_BYTES[kind] / weight_bytes(spec)))))


def check_shape(spec: ProfileSpec, device: str) -> None:
    """Raise InputError for a shape or token grid that cannot be profiled on `device`."""
    if spec.hidden < 1 or spec.intermediate < 1:
        raise InputError("--hidden/--intermediate", f"impossible shape: hidden={spec.hidden}, "
                                                    f"intermediate={spec.intermediate} (both must be >= 1)")
    tok = np.asarray(spec.tokens)
    if tok.size < 2 or np.any(tok < 1) or np.any(np.diff(tok) <= 0):
        raise InputError("--tokens", "need at least 2 token counts, positive and strictly increasing")
    if spec.dtype == "fp8" and (spec.hidden % 16 or spec.intermediate % 16):
        raise InputError("--hidden/--intermediate", "fp8 GEMMs need hidden and intermediate divisible by 16")
    if spec.repeats < 3 or spec.warmup < 0:
        raise InputError("--repeats", "need at least 3 repeats and a non-negative warm-up")
    kind = device_kind(device)
    act = 4 * int(tok[-1]) * (spec.hidden + 3 * spec.intermediate) * 4  # fp32 worst case, a few live tensors
    need = num_copies(spec, kind) * weight_bytes(spec) + act
    free = _free_bytes(device)
    if free is not None and need > 0.8 * free:
        raise InputError("--hidden/--intermediate", f"impossible shape: needs {need / 2**30:.1f} GiB on "
                                                    f"{device}, {free / 2**30:.1f} GiB free")


def _free_bytes(device: str) -> int | None:
    if device == "cpu":
        try:
            for line in open("/proc/meminfo"):
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None
    import torch

    return int(torch.cuda.mem_get_info(device)[0])


# ---- the microbenchmark (runs on the device, in the worker) ----------------------------
def _torch_dtype(dtype: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp8": torch.bfloat16}[dtype]


def _fp8_type(device: str):
    import torch

    if device_kind(device) == "rocm" and "gfx94" in getattr(torch.cuda.get_device_properties(device), "gcnArchName", ""):
        return torch.float8_e4m3fnuz  # MI300's FP8 encoding
    return torch.float8_e4m3fn


def make_weights(spec: ProfileSpec, device: str, copies: int) -> list[tuple]:
    """`copies` random experts: (w13 [2I, H], w2 [H, I]) in the profile dtype, seeded."""
    import torch

    gen_device = "cpu" if device == "cpu" else device
    gen = torch.Generator(device=gen_device).manual_seed(spec.seed)
    store = _fp8_type(device) if spec.dtype == "fp8" else _torch_dtype(spec.dtype)
    out = []
    for _ in range(copies):
        w13 = torch.randn(2 * spec.intermediate, spec.hidden, generator=gen, device=gen_device)
        w2 = torch.randn(spec.hidden, spec.intermediate, generator=gen, device=gen_device)
        # Scale like trained weights so activations stay finite in every dtype.
        w13 = (w13 / math.sqrt(spec.hidden)).to(store)
        w2 = (w2 / math.sqrt(spec.intermediate)).to(store)
        out.append((w13, w2))
    return out


def swiglu_ffn(x, w13, w2):
    """One expert on its tokens. x [n, H], w13 [2I, H], w2 [H, I] -> [n, H]."""
    import torch.nn.functional as F

    gate, up = (x @ w13.t()).chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w2.t()


def swiglu_ffn_fp8(x, w13, w2, scale):
    """FP8 expert (per-tensor scales, as FP8 MoE kernels with unit scales): bf16 in/out."""
    import torch
    import torch.nn.functional as F

    gu = torch._scaled_mm(x.to(w13.dtype), w13.t(), scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)
    gate, up = gu.chunk(2, dim=-1)
    h = (F.silu(gate) * up).to(w2.dtype)
    return torch._scaled_mm(h, w2.t(), scale_a=scale, scale_b=scale, out_dtype=torch.bfloat16)


def _ffn_pass(spec: ProfileSpec, device: str, weights: list[tuple], tokens: int) -> Callable[[], None]:
    """A callable that runs the FFN on `tokens` tokens once per weight copy."""
    import torch

    rows = -(-tokens // 16) * 16 if spec.dtype == "fp8" else tokens  # FP8 GEMMs tile rows by 16
    x = torch.randn(rows, spec.hidden, device=device).to(_torch_dtype(spec.dtype))
    if spec.dtype == "fp8":
        scale = torch.ones((), device=device, dtype=torch.float32)
        return lambda: [swiglu_ffn_fp8(x, w13, w2, scale) for w13, w2 in weights]
    return lambda: [swiglu_ffn(x, w13, w2) for w13, w2 in weights]


def _overhead_pass(spec: ProfileSpec, device: str) -> Callable[[], None]:
    """The fixed per-layer MoE work for one token: router softmax + top-k, gather, scatter-add."""
    import torch

    dt = _torch_dtype(spec.dtype)
    logits = torch.randn(1, spec.num_experts, device=device, dtype=torch.float32)
    x = torch.randn(1, spec.hidden, device=device).to(dt)
    out = torch.zeros(1, spec.hidden, device=device, dtype=dt)
    k = min(spec.top_k, spec.num_experts)

    def layer_fixed():
        weights, ids = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
        rows = torch.zeros_like(ids[:, 0])
        picked = x.index_select(0, rows)
        out.index_add_(0, rows, picked * weights[:, :1].to(dt))

    return layer_fixed


def _as_graph(fn: Callable[[], None], device: str) -> tuple[Callable[[], None], str]:
    """Capture `fn` in a CUDA graph (replay = no launch gaps), or keep it eager."""
    import torch

    if device == "cpu":
        return fn, "thread-cpu-time" if torch.get_num_threads() == 1 else "wall-clock"
    try:
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            fn()  # warm the allocator and kernel selection outside the capture
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        return graph.replay, "cuda-graph+events"
    except Exception:  # noqa: BLE001 - some kernels cannot be captured: time them eagerly
        return fn, "cuda-events"


def _timer(device: str) -> Callable[[Callable[[], None]], float]:
    """A function timing one call of `fn` in us: CUDA events on GPUs, wall clock on CPU."""
    import torch

    if device == "cpu":
        # One torch thread: count the CPU time of the thread doing the work, so time
        # spent waiting for a core that other jobs hold is not measured. More threads:
        # wall clock (their CPU times overlap).
        clock = time.thread_time_ns if torch.get_num_threads() == 1 else time.perf_counter_ns

        def cpu(fn):
            t0 = clock()
            fn()
            return (clock() - t0) / 1000.0
        return cpu
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def events(fn):
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1000.0
    return events


def time_rounds_us(fns: list[Callable[[], None]], device: str, warmup: int, repeats: int,
                   max_seconds: float, per_call: int = 1,
                   on_round: Callable[[int], None] | None = None) -> np.ndarray:
    """[P, R] time of one call of each of P functions / `per_call`, in us.

    Rounds interleave the functions (round r times fns[0], fns[1], ... once each), so a
    burst of noise from other work on the machine spreads over all points instead of
    bending one of them. Stops after `repeats` rounds, or after `max_seconds` once 3
    rounds are done.
    """
    import torch

    for fn in fns:
        for _ in range(warmup):
            fn()
    if device != "cpu":
        torch.cuda.synchronize(device)
    timer = _timer(device)
    rounds = []
    began = time.perf_counter()
    for r in range(repeats):
        rounds.append([timer(fn) for fn in fns])
        if on_round is not None:
            on_round(r + 1)
        if r >= 2 and time.perf_counter() - began > max_seconds:
            break
    return np.asarray(rounds, dtype=np.float64).T / per_call


def device_name(device: str) -> str:
    if device == "cpu":
        import platform

        return f"CPU {device_telemetry('cpu').get('cpu_model') or platform.machine()}"
    import torch

    return torch.cuda.get_device_name(device)


def _pci_bus_id(device: str) -> str | None:
    import torch

    p = torch.cuda.get_device_properties(device)
    if not hasattr(p, "pci_bus_id"):
        return None
    return f"{getattr(p, 'pci_domain_id', 0):08X}:{p.pci_bus_id:02X}:{getattr(p, 'pci_device_id', 0):02X}.0"


def _telemetry(device: str) -> dict:
    kind = device_kind(device)
    if kind == "cpu":
        return device_telemetry("cpu")
    index = int(device.split(":")[1])
    return device_telemetry(kind, index, _pci_bus_id(device) if kind == "cuda" else None)


def profile_device(spec: ProfileSpec, device: str, progress: ProgressFn | None = None,
                   ready: Callable[[], None] | None = None) -> dict:
    """Measure the FFN latency curve and fixed per-layer cost of `device`.

    Returns a plain dict (it crosses process boundaries): tokens [P], samples_us [P][R],
    median/p10/p90 [P], overhead samples, telemetry at start and end, timing method.
    `ready()` is called once the weights are built, just before the first timed call
    (the multi-GPU barrier).
    """
    import torch

    began = time.perf_counter()
    if device != "cpu":
        torch.cuda.set_device(device)
    torch.manual_seed(spec.seed)
    if device == "cpu" and spec.threads:
        torch.set_num_threads(spec.threads)
    kind = device_kind(device)
    copies = num_copies(spec, kind)
    with torch.inference_mode():
        weights = make_weights(spec, device, copies)
        if ready is not None:
            ready()
        telemetry_start = _telemetry(device)
        graphs = [_as_graph(_ffn_pass(spec, device, weights, n), device) for n in spec.tokens]
        timing = graphs[0][1]
        report = (lambda r: progress(device, r, spec.repeats)) if progress is not None else None
        samples = time_rounds_us([fn for fn, _ in graphs], device, spec.warmup, spec.repeats,
                                 spec.max_seconds, per_call=copies, on_round=report)
        over_fn, _ = _as_graph(_overhead_pass(spec, device), device)
        overhead = time_rounds_us([over_fn], device, spec.warmup, spec.repeats, spec.max_seconds)[0]
        telemetry_end = _telemetry(device)
    stats = np.percentile(samples, [10, 50, 90], axis=1).T  # [P, 3]
    return {
        "device": device, "kind": kind, "name": device_name(device),
        "tokens": list(spec.tokens), "samples_us": samples.tolist(),
        "p10_us": [float(s[0]) for s in stats], "median_us": [float(s[1]) for s in stats],
        "p90_us": [float(s[2]) for s in stats],
        "overhead_samples_us": overhead.tolist(), "overhead_us": float(np.median(overhead)),
        "copies": copies, "timing": timing, "threads": torch.get_num_threads() if kind == "cpu" else None,
        "torch": torch.__version__, "seconds": time.perf_counter() - began,
        "telemetry_start": telemetry_start, "telemetry": telemetry_end,
    }


# ---- several devices at once: one process per GPU -------------------------------------
def _worker(rank: int, devices: list[str], spec: ProfileSpec, queue, barrier) -> None:
    """Spawned once per device: profile it, report progress and the result on `queue`."""
    device = devices[rank]
    try:
        result = profile_device(spec, device, lambda d, k, n: queue.put(("round", rank, k)),
                                ready=lambda: barrier.wait(timeout=900))
        queue.put(("done", rank, result))
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        barrier.abort()  # do not leave the other workers waiting for this one
        msg = str(exc) if isinstance(exc, VibeError) else f"{type(exc).__name__}: {exc}"
        queue.put(("error", rank, msg))


def profile_devices(spec: ProfileSpec, devices: list[str], progress: ProgressFn | None = None,
                    processes: bool | None = None) -> list[dict]:
    """Profile `devices` (validated first); several at once, one spawned process each.

    processes=None spawns only for more than one device; True forces it (tests use it
    to run the multi-process path on a CPU).
    """
    for d in devices:
        check_dtype(d, spec.dtype)
        check_shape(spec, d)
    if not (processes if processes is not None else len(devices) > 1):
        try:
            return [profile_device(spec, d, progress) for d in devices]
        except (RuntimeError, MemoryError) as exc:  # e.g. out of memory: one line, not a traceback
            raise VibeError(f"{devices[0]}: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(len(devices))
    procs = tmp.spawn(_worker, args=(devices, spec, queue, barrier), nprocs=len(devices), join=False)
    results: dict[int, dict] = {}
    errors: dict[int, str] = {}
    while len(results) + len(errors) < len(devices):
        try:
            what, rank, payload = queue.get(timeout=1.0)
        except queue_mod.Empty:
            if not any(p.is_alive() for p in procs.processes):
                break  # every worker is gone: whatever is missing died without a word
            continue
        if what == "round" and progress is not None:
            progress(devices[rank], payload, spec.repeats)
        elif what == "done":
            results[rank] = payload
        elif what == "error":
            errors[rank] = payload
    for p in procs.processes:
        p.join(timeout=30)
    if errors or len(results) < len(devices):
        first = min(errors) if errors else min(set(range(len(devices))) - set(results))
        raise VibeError(f"{devices[first]}: {errors.get(first, 'profiling process died')}")
    return [results[r] for r in range(len(devices))]


# ---- profiles -> cluster file ---------------------------------------------------------
def gpu_from_profile(rank: int, node: int, prof: dict, fit: str) -> GpuProfile:
    """One measured device -> GpuProfile whose curve is the fitted one, raw data in extra."""
    tokens = np.asarray(prof["tokens"], dtype=np.float64)
    fitted, report = fit_curve(tokens, np.asarray(prof["median_us"]), fit)
    raw = {k: prof[k] for k in ("samples_us", "median_us", "p10_us", "p90_us", "overhead_samples_us")}
    meta = {k: prof[k] for k in ("device", "kind", "copies", "timing", "threads", "torch", "seconds")}
    return GpuProfile(rank=rank, node=node, tokens=tokens, latency_us=np.asarray(fitted),
                      overhead_us=prof["overhead_us"], name=prof["name"], telemetry=prof["telemetry"],
                      extra={"samples": raw, "fit": report, "measured": meta,
                             "telemetry_start": prof["telemetry_start"]})


def cluster_from_profiles(profiles: list[dict], spec: ProfileSpec, fit: str = "isotonic",
                          name: str | None = None, node: int = 0) -> Cluster:
    """Profiles of one node's devices -> a vibe.cluster/v1 Cluster (ranks in device order)."""
    gpus = [gpu_from_profile(r, node, p, fit) for r, p in enumerate(profiles)]
    label = name or f"{len(gpus)}x{gpus[0].name}".replace(" ", "-")
    expert = {"hidden": spec.hidden, "intermediate": spec.intermediate, "dtype": spec.dtype}
    extra = {"profile": {"tool": "vibe profile hw", "spec": asdict(spec),
                         "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    return Cluster(gpus=tuple(gpus), name=label, expert=expert, extra=extra)


def relative_speed(cluster: Cluster) -> np.ndarray:
    """[G] each GPU's time over the median GPU's, geometric mean over the token grid (>1 = slower)."""
    _, us = cluster.latency_table()
    ratio = np.log(us) - np.median(np.log(us), axis=0, keepdims=True)
    return np.exp(ratio.mean(axis=1))


def default_tokens(devices: list[str]) -> tuple[int, ...]:
    return DEFAULT_CPU_TOKENS if devices == ["cpu"] else DEFAULT_GPU_TOKENS
