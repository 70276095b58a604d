"""Energy used in a timed window: NVML on GPUs, RAPL where readable, else a labelled estimate.

- ``nvml``: the total-energy counter of each GPU used (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules, via nvidia-ml-py): the GPU boards only, not the host CPU.
- ``rapl``: the CPU package counters of the Linux powercap interface
  (``/sys/class/powercap/intel-rapl:N/energy_uj``; often readable by root only).
- ``estimate``: CPU-seconds (user + system) of this process and all its children (the LocalCluster
  workers) in the window x a stated power per busy core (``watts_per_core``). Labelled "estimate"
  wherever it is reported.
"""

from __future__ import annotations

import glob
import os
import re
import time
from dataclasses import dataclass, field

import psutil


def process_cpu_seconds() -> dict[int, float]:
    """user + system CPU seconds of this process and each of its descendants, by pid."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read())


def rapl_domains() -> list[str]:
    """Readable top-level RAPL package domains (folders), or [] where none is readable."""
    found = []
    for path in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
        if not re.search(r"intel-rapl:\d+$", path):
            continue  # sub-domains (core, uncore, dram) are inside the package
        try:
            _read_int(os.path.join(path, "energy_uj"))
            found.append(path)
        except (OSError, ValueError):
            continue
    return found


def _rapl_read(domains: list[str]) -> list[tuple[int, int]]:
    out = []
    for d in domains:
        energy = _read_int(os.path.join(d, "energy_uj"))
        try:
            wrap = _read_int(os.path.join(d, "max_energy_range_uj"))
        except (OSError, ValueError):
            wrap = 2**32
        out.append((energy, wrap))
    return out


def _nvml_handles(indices: list[int]):
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]
    except Exception:
        pynvml.nvmlShutdown()
        raise


@dataclass
class EnergyMeter:
    """Context manager measuring joules (and CPU-seconds) between enter and exit.

    The host is always metered: RAPL where readable, else the estimate (``host_method``,
    ``host_joules``). ``gpus``: NVML indices of the GPUs used (a GPU run); their board energy is
    then ``joules`` with ``method`` ``nvml`` (the GPU's own counter, as issue 4 defines it), and
    ``total_joules`` adds the host's, which did the reading, preprocessing and writing. Where NVML
    cannot be read (no library or driver, a counter the GPU lacks) ``method`` is the host's, with
    a note. Not run on a GPU machine by this repo's sessions (none had one); the NVML path follows
    nvidia-ml-py's documented API.
    """

    gpus: list[int] | None = None
    watts_per_core: float = 10.0
    method: str = ""
    joules: float = float("nan")
    host_method: str = ""
    host_joules: float = float("nan")
    total_joules: float = float("nan")
    cpu_seconds: float = 0.0
    seconds: float = 0.0
    note: str = ""
    _start: dict = field(default_factory=dict, repr=False)

    def __enter__(self) -> EnergyMeter:
        self._start = {"cpu": process_cpu_seconds(), "t": time.perf_counter()}
        if self.gpus:
            try:
                nvml, handles = _nvml_handles(self.gpus)
            except Exception as exc:
                self.note = f"NVML unavailable ({type(exc).__name__}); "
            else:
                try:
                    self._start["nvml"] = (
                        nvml,
                        handles,
                        [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles],
                    )
                except Exception as exc:
                    nvml.nvmlShutdown()
                    self.note = f"NVML energy counter unreadable ({type(exc).__name__}); "
        domains = rapl_domains()
        try:
            self._start["rapl"] = (domains, _rapl_read(domains)) if domains else None
        except (OSError, ValueError):  # readable a moment ago, not now
            self._start["rapl"] = None
        self.host_method = "rapl" if self._start["rapl"] else "estimate"
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start["t"]
        now = process_cpu_seconds()
        before = self._start["cpu"]
        self.cpu_seconds = sum(max(t - before.get(pid, 0.0), 0.0) for pid, t in now.items())
        host_note = self._read_host()
        gpu_joules = self._read_gpus()
        if gpu_joules is not None:
            self.method, self.joules = "nvml", gpu_joules
            self.total_joules = gpu_joules + self.host_joules
            self.note += f"GPU board energy of GPU(s) {self.gpus} (NVML counter); host, in total_joules: " + host_note
        else:
            self.method, self.joules = self.host_method, self.host_joules
            self.total_joules = self.host_joules
            self.note += host_note

    def _read_host(self) -> str:
        """``host_joules`` of the window (RAPL, else the estimate); returns how it was measured."""
        if self.host_method == "rapl":
            domains, start = self._start["rapl"]
            try:
                end = _rapl_read(domains)
            except (OSError, ValueError):
                self.host_method = "estimate"
                self.note += "RAPL unreadable at the end; "
            else:
                total = 0
                for (e0, wrap), (e1, _) in zip(start, end):
                    total += e1 - e0 if e1 >= e0 else e1 + wrap - e0
                self.host_joules = total / 1e6
                return f"CPU package energy (RAPL, {len(domains)} package(s)) of the whole machine"
        self.host_joules = self.cpu_seconds * self.watts_per_core
        return (
            f"estimate: {self.cpu_seconds:.2f} CPU-seconds of the run's processes x "
            f"{self.watts_per_core:g} W per busy core (no RAPL counter readable)"
        )

    def _read_gpus(self) -> float | None:
        """Joules of the GPUs' boards in the window (NVML counters, millijoules), or None; NVML is
        shut down either way."""
        if "nvml" not in self._start:
            return None
        nvml, handles, start = self._start["nvml"]
        try:
            end = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
            return sum(e - s for s, e in zip(start, end)) / 1000.0
        except Exception as exc:
            self.note += f"NVML energy counter unreadable at the end ({type(exc).__name__}); "
            return None
        finally:
            nvml.nvmlShutdown()
