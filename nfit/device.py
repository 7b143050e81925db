"""Choosing where to compute."""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nfit.errors import ConfigError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU; 'cuda' without a GPU is an error, not a fallback."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("--device", "CUDA was requested but no CUDA device is available")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError("--device", f"unknown device {name!r} (use auto, cpu or cuda)")


def flushing_denormals() -> bool:
    """Whether the CPU flushes denormal floats to zero now (there is no getter: try one)."""
    return torch.tensor([1e-39]).mul(1.0).item() == 0.0


@contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush denormal floats to zero on the CPU while nfit computes; the previous mode after.

    A fit whose loss becomes tiny fills its activations and gradients with denormals,
    and on many x86 CPUs each operation on one takes a microcode assist: a 256x256 by
    256x4096 matmul was measured at 8.0 s instead of 0.044 s. Values below 1.2e-38 carry
    nothing a field can show. The mode is processor state, so it is restored on the way
    out rather than left set for the program that called nfit. Also a decorator.
    """
    was = flushing_denormals()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def proc_bytes(path: str, key: str) -> int | None:
    """A "Key:  N kB" line of a Linux /proc file (status, meminfo) in bytes, or None where unavailable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_resident_bytes() -> int | None:
    """This process's own peak resident set (Linux VmHWM), or None where unavailable.

    Not ``ru_maxrss``: on Linux a child starts with its parent's, even across fork + exec.
    """
    return proc_bytes("/proc/self/status", "VmHWM")


def peak_memory(device: torch.device) -> int:
    """Peak bytes: allocated CUDA memory, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = peak_resident_bytes()
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports kB


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters
_INT_MAX = 2**31 - 1  # the largest trim threshold: never trim
_allocator_tuned = False


def tune_cpu_allocator(device: torch.device) -> bool:
    """Keep freed memory in the process for reuse, on glibc, for a job on ``device``: on a CPU (no
    other device's memory is glibc's); returns whether it applied.

    glibc hands every block above its mmap threshold (at most 32 MB) straight back
    to the kernel when freed, and trims the top of its heap once more than 128 kB is
    free there, so each large activation of a step is page-faulted in afresh, zeroed
    by the kernel. Keeping the memory (no mmap for large blocks, no trimming) took a
    MAML step at 64x64 on two cores from 13.6 to 7.1 s, a latent-grid fit's step at
    768x512 from 146 to 90 ms and a tiled fit of that photo from 27 to 19 s, at a
    peak resident set up to ~30% higher (heap fragmentation; BENCHMARKS.md). Set
    NFIT_MALLOC=system to opt out. Process-wide, so only long CPU jobs call it:
    fitting, evaluation, meta-training and rendering to a file.
    """
    global _allocator_tuned
    if device.type != "cpu":
        return False
    if _allocator_tuned:
        return True
    if os.environ.get("NFIT_MALLOC") == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        # mallopt takes a C int: a larger Python int is cut to its low 32 bits without a word
        # (1 << 40 became a threshold of 0, which trimmed the heap at every free)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    _allocator_tuned = ok
    return ok


def release_cpu_memory() -> None:
    """Hand the memory that a tuned allocator keeps back to the system (glibc's malloc_trim),
    between the phases of a job: what one batch of tiles freed, the next may not fit into
    (its holes are of other sizes): a 50-megapixel photo's fit peaked at 4.3 GB without this,
    3.8 GB with it, 3.5 GB as glibc leaves it (twice as slow)."""
    if _allocator_tuned:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
