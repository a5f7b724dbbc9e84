"""Device telemetry captured with each profile: clocks, power, temperature.

NVIDIA GPUs through pynvml (package nvidia-ml-py), AMD GPUs through amdsmi, the CPU
through /proc and /sys. Every reader is optional: a missing library or a field the
driver does not expose is left out, never an error, because a profile without
telemetry is still a valid profile. Libraries are imported lazily, inside the readers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def _try(read: Callable[[], Any]) -> Any:
    """Value of `read()`, or None when the driver does not expose it."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - any driver error only means "not available"
        return None


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None}


def nvml_telemetry(pci_bus_id: str | None = None, index: int | None = None) -> dict:
    """Clocks, power and temperature of one NVIDIA GPU via pynvml ({} if unavailable).

    The GPU is found by PCI bus id when given (robust to CUDA_VISIBLE_DEVICES
    renumbering), else by NVML index.
    """
    try:
        import pynvml
    except ImportError:
        return {}
    _try(pynvml.nvmlInit)  # returns None either way; the probe below says if it worked
    if _try(pynvml.nvmlDeviceGetCount) is None:
        return {}
    try:
        handle = (pynvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id) if pci_bus_id
                  else pynvml.nvmlDeviceGetHandleByIndex(index or 0))
    except Exception:  # noqa: BLE001
        return {}
    milli = lambda f: (lambda: f(handle) / 1000.0)  # noqa: E731 - NVML reports mW
    return _drop_none({
        "source": "nvml",
        "sm_clock_mhz": _try(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "mem_clock_mhz": _try(lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
        "max_sm_clock_mhz": _try(lambda: pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "power_limit_w": _try(milli(pynvml.nvmlDeviceGetPowerManagementLimit)),
        "power_draw_w": _try(milli(pynvml.nvmlDeviceGetPowerUsage)),
        "temp_c": _try(lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)),
        "uuid": _try(lambda: _text(pynvml.nvmlDeviceGetUUID(handle))),
    })


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def amdsmi_telemetry(index: int = 0) -> dict:
    """Clocks, power and temperature of one AMD GPU via amdsmi ({} if unavailable)."""
    try:
        import amdsmi
    except ImportError:
        return {}
    _try(amdsmi.amdsmi_init)
    handles = _try(amdsmi.amdsmi_get_processor_handles) or []
    if index >= len(handles):
        return {}
    h = handles[index]
    clock = lambda kind: _try(lambda: amdsmi.amdsmi_get_clock_info(h, kind)["clk"])  # noqa: E731
    power = _try(lambda: amdsmi.amdsmi_get_power_info(h)) or {}
    return _drop_none({
        "source": "amdsmi",
        "sm_clock_mhz": clock(amdsmi.AmdSmiClkType.GFX),
        "mem_clock_mhz": clock(amdsmi.AmdSmiClkType.MEM),
        "power_limit_w": _number(power.get("power_limit")),
        "power_draw_w": _number(power.get("current_socket_power", power.get("average_socket_power"))),
        "temp_c": _try(lambda: amdsmi.amdsmi_get_temp_metric(
            h, amdsmi.AmdSmiTemperatureType.EDGE, amdsmi.AmdSmiTemperatureMetric.CURRENT)),
    })


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def cpu_telemetry(proc: Path = Path("/proc"), sys_root: Path = Path("/sys")) -> dict:
    """Mean current core clock, core count and the warmest thermal zone of this machine."""
    mhz = []
    model = None
    cpuinfo = _try(lambda: (proc / "cpuinfo").read_text()) or ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "cpu MHz":
            mhz.append(_number(value.strip()))
        elif key.strip() == "model name" and model is None:
            model = value.strip()
    temps = []
    for zone in sorted((sys_root / "class" / "thermal").glob("thermal_zone*/temp")):
        t = _number(_try(zone.read_text))
        if t is not None:
            temps.append(t / 1000.0)
    mhz = [m for m in mhz if m is not None]
    return _drop_none({
        "source": "procfs",
        "cpu_model": model,
        "logical_cores": os.cpu_count(),
        "sm_clock_mhz": round(sum(mhz) / len(mhz), 1) if mhz else None,
        "temp_c": max(temps) if temps else None,
    })


def device_telemetry(kind: str, index: int = 0, pci_bus_id: str | None = None) -> dict:
    """Telemetry of a device of `kind` ('cpu', 'cuda' or 'rocm'); {} when unavailable."""
    if kind == "cuda":
        return nvml_telemetry(pci_bus_id, index)
    if kind == "rocm":
        return amdsmi_telemetry(index)
    return cpu_telemetry()
