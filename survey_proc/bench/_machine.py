"""What a benchmark ran on: CPU, cores, memory, GPUs and driver, library versions, machine load."""

from __future__ import annotations

import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where it exists)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[dict]:
    """Name, memory, driver and UUID of each NVIDIA GPU (NVML via nvidia-ml-py, else torch), or [].

    Indices are NVML's (PCI bus order), which CUDA's default order need not follow: select a GPU for
    CUDA by its ``uuid``. GPUs hidden by an inherited ``CUDA_VISIBLE_DEVICES`` are left out."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            visible = _visible_devices()
            out = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                uuid = _text(pynvml.nvmlDeviceGetUUID(h))  # CUDA_VISIBLE_DEVICES takes it
                if visible is not None and not _is_visible(i, uuid, visible):
                    continue
                out.append(
                    {
                        "index": i,
                        "name": _text(pynvml.nvmlDeviceGetName(h)),
                        "driver": _text(driver),
                        "memory_gb": round(pynvml.nvmlDeviceGetMemoryInfo(h).total / 2**30, 1),
                        "uuid": uuid,
                    }
                )
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    try:
        import torch

        return [
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "driver": "",
                "memory_gb": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
            }
            for i in range(torch.cuda.device_count())
        ]
    except Exception:
        return []


def _visible_devices() -> set[str] | None:
    """The GPUs an inherited ``CUDA_VISIBLE_DEVICES`` names (indices or UUIDs), or None when unset."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _is_visible(index: int, uuid: str, visible: set[str]) -> bool:
    """Whether an inherited ``CUDA_VISIBLE_DEVICES`` names this GPU: by UUID (or a UUID's prefix, as
    CUDA accepts), or by index. An index is taken as NVML's, which is CUDA's only with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (batch systems' usual setting); UUIDs are exact."""
    return any(v == str(index) or (v.startswith("GPU-") and uuid.startswith(v)) for v in visible)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return ""


def machine_info() -> dict:
    """Everything a result needs to be read against (recorded with every benchmark)."""
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }
    info["gpu"] = ", ".join(g["name"] for g in info["gpus"]) or None
    info["driver"] = info["gpus"][0]["driver"] if info["gpus"] else None
    info["versions"] = {
        p: _version(p)
        for p in ("survey-proc", "numpy", "torch", "dask", "distributed", "zarr", "xarray", "ppxf", "nvidia-ml-py")
    }
    return info
