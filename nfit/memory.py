"""How much memory one meta-training step needs, and the micro-batch that fits.

Measured rather than modelled, so that it holds for every field, strategy and
option (second-order or not, gradient checkpointing, sparse masks): one signal's
outer step (loss and backward) runs on a fraction of the grid's units, twice. A
step's memory is linear in the units it processes, because every activation it
keeps is per point (or per NeRV frame), so the two probes give a slope and an
intercept, and the step on ``m`` whole signals needs about
``fixed + m * per_signal`` bytes. Measured at 178x178 on a CPU: GradNCP ~100 kB
per pixel and signal, MAML ~90 kB (see BENCHMARKS.md).

Peak memory is CUDA's allocator peak on a GPU; on a CPU the process's resident
high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``). Where
neither can be read the estimate is None and the whole batch runs at once, as before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from nfit.config import MEMORY_FRACTION
from nfit.device import peak_resident_bytes, proc_bytes

# The first probe's share of the grid's units: small enough to be cheap and safe at
# any resolution, large enough to measure (~100 MB at 178x178 for GradNCP).
FIRST_PROBE_UNITS = 4096
FIRST_PROBE_DIVISOR = 32
# The second probe uses at most this share of the free memory, by the first one's
# (pessimistic: intercept included) cost per unit, and at most a quarter of the grid.
SECOND_PROBE_SHARE = 0.25


@dataclass(frozen=True)
class StepMemory:
    """What an outer step needs: ``fixed + m * per_signal`` bytes for ``m`` signals at once."""

    fixed: int
    per_signal: int
    available: int  # bytes free for it on the device (already times MEMORY_FRACTION)

    def need(self, signals: int) -> int:
        return self.fixed + signals * self.per_signal

    def largest_fitting(self, batch: int) -> int:
        """Signals per forward/backward, up to ``batch``, that fit (0: not even one)."""
        if self.per_signal <= 0:
            return batch
        return max(0, min(batch, (self.available - self.fixed) // self.per_signal))

    def units_fitting(self, units: int) -> int:
        """How many units one signal may have for its step to fit (of a grid of ``units`` now)."""
        per_unit = self.per_signal / max(1, units)
        return max(0, int((self.available - self.fixed) / per_unit)) if per_unit > 0 else units


def _cgroup_available() -> int | None:
    """What a cgroup v2 memory limit leaves (containers often have less than the machine)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Bytes this process may still take on ``device``, or None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    values = [v for v in (proc_bytes("/proc/meminfo", "MemAvailable"), _cgroup_available()) if v is not None]
    return min(values) if values else None


def _reset_resident_peak() -> bool:
    """Set VmHWM back to the current resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Meter:
    """Peak bytes taken since :meth:`start`. On a CPU freed memory may stay in the process
    (nfit.device.tune_cpu_allocator) and be reused by the next probe, so every probe is
    measured from the one baseline, and probes only grow."""

    def __init__(self, device: torch.device):
        self.device, self.base = device, None

    def start(self) -> bool:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            return True
        self.base = proc_bytes("/proc/self/status", "VmRSS")
        return self.base is not None and _reset_resident_peak()

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.base
        peak = peak_resident_bytes()
        return None if peak is None else max(0, peak - self.base)


def measure_step(step: Callable[[int], None], units: int, device: torch.device) -> StepMemory | None:
    """Probe ``step(n)``, one signal's outer step on its first ``n`` of ``units`` units, and
    extrapolate to whole signals. None when memory cannot be measured here."""
    available = available_bytes(device)
    if available is None:
        return None
    step(1)  # the first call's one-off allocations (thread pools, kernels) are not the step's
    meter = _Meter(device)
    if not meter.start():
        return None
    n1 = max(1, min(units // FIRST_PROBE_DIVISOR, FIRST_PROBE_UNITS))
    step(n1)
    p1 = meter.peak()
    if p1 is None:
        return None
    per_unit = max(p1, 1) / n1  # an upper bound: the intercept counted per unit
    n2 = min(units // 4, int(SECOND_PROBE_SHARE * available / per_unit))
    budget = int(available * MEMORY_FRACTION)
    if n2 <= n1:  # a tiny grid (or a huge one): the bound is the estimate
        return StepMemory(0, math.ceil(per_unit * units), budget)
    step(n2)
    p2 = meter.peak()
    if p2 is None:
        return None
    slope = max(0.0, (p2 - p1) / (n2 - n1))
    fixed = max(0, round(p1 - slope * n1))
    return StepMemory(fixed, math.ceil(slope * units), budget)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


__all__ = ["StepMemory", "available_bytes", "gib", "measure_step"]
