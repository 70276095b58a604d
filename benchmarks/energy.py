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


def process_cpu_seconds() -> dict[int, float]:
    """user + system CPU seconds of this process and each of its descendants, by pid."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me] + me.children(recursive=True):
        try:
            t = proc.cpu_times()
            out[proc.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def rapl_domains() -> list[str]:
    """Readable top-level RAPL package domains (folders), or [] where none is readable."""
    found = []
    for path in sorted(glob.glob("/sys/class/powercap/intel-rapl:*")):
        if not re.search(r"intel-rapl:\d+$", path):
            continue  # sub-domains (core, uncore, dram) are inside the package
        try:
            int(open(os.path.join(path, "energy_uj")).read())
            found.append(path)
        except (OSError, ValueError):
            continue
    return found


def _rapl_read(domains: list[str]) -> list[tuple[int, int]]:
    out = []
    for d in domains:
        energy = int(open(os.path.join(d, "energy_uj")).read())
        try:
            wrap = int(open(os.path.join(d, "max_energy_range_uj")).read())
        except (OSError, ValueError):
            wrap = 2**32
        out.append((energy, wrap))
    return out


def _nvml_handles(indices: list[int]):
    import pynvml

    pynvml.nvmlInit()
    return pynvml, [pynvml.nvmlDeviceGetHandleByIndex(i) for i in indices]


@dataclass
class EnergyMeter:
    """Context manager measuring joules (and CPU-seconds) between enter and exit.

    ``gpus``: indices of the GPUs whose NVML counters to read (a GPU run); None for a CPU run,
    which uses RAPL where readable, else the estimate. Not tested on a GPU machine in this repo's
    CI (none has one); the NVML path follows nvidia-ml-py's documented API.
    """

    gpus: list[int] | None = None
    watts_per_core: float = 10.0
    method: str = ""
    joules: float = float("nan")
    cpu_seconds: float = 0.0
    seconds: float = 0.0
    note: str = ""
    _start: dict = field(default_factory=dict, repr=False)

    def __enter__(self) -> EnergyMeter:
        self._start = {"cpu": process_cpu_seconds(), "t": time.perf_counter()}
        if self.gpus:
            try:
                nvml, handles = _nvml_handles(self.gpus)
                self._start["nvml"] = (nvml, handles, [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles])
                self.method = "nvml"
            except Exception as exc:  # noqa: BLE001 - no NVML: fall back to the CPU methods
                self.note = f"NVML unavailable ({type(exc).__name__}); "
        if not self.method:
            domains = rapl_domains()
            if domains:
                self._start["rapl"] = (domains, _rapl_read(domains))
                self.method = "rapl"
            else:
                self.method = "estimate"
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self._start["t"]
        now = process_cpu_seconds()
        before = self._start["cpu"]
        self.cpu_seconds = sum(max(t - before.get(pid, 0.0), 0.0) for pid, t in now.items())
        if self.method == "nvml":
            nvml, handles, start = self._start["nvml"]
            end = [nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in handles]
            self.joules = sum(e - s for s, e in zip(start, end)) / 1000.0
            self.note += f"GPU board energy of GPU(s) {self.gpus} (NVML counter); host CPU not included"
            nvml.nvmlShutdown()
        elif self.method == "rapl":
            domains, start = self._start["rapl"]
            total = 0
            for (e0, wrap), (e1, _) in zip(start, _rapl_read(domains)):
                total += e1 - e0 if e1 >= e0 else e1 + wrap - e0
            self.joules = total / 1e6
            self.note += f"CPU package energy (RAPL, {len(domains)} package(s)) of the whole machine"
        else:
            self.joules = self.cpu_seconds * self.watts_per_core
            self.note += (f"estimate: {self.cpu_seconds:.2f} CPU-seconds of the run's processes x "
                          f"{self.watts_per_core:g} W per busy core (no NVML/RAPL counter readable here)")
