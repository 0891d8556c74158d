"""Peak resident memory of the running stage, for its summary (`peak_rss_mb`).

Why children too: a stage may do its heavy work in child processes (dataloader workers, a
launcher's ranks); `ru_maxrss` of RUSAGE_CHILDREN is the largest finished child, so the
stage's figure is the larger of the two. Linux reports ru_maxrss in KiB (macOS in bytes).
Linux keeps ru_maxrss across fork and exec: a stage started by a large process (a test runner
holding a model) reports at least that process's size; started by a shell (the loop), its own.
"""
from __future__ import annotations

import resource
import sys


def peak_rss_mb() -> float:
    """max(self, largest finished child) peak RSS in MiB, rounded to 0.1."""
    unit = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return round(peak * unit / 1024 / 1024, 1)


def peak_gpu_mb() -> float | None:
    """Peak CUDA memory allocated by this process in MiB, or None when CUDA was never used.
    Reads torch only if the stage already imported it (a CPU-only stage stays torch-free)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 1024 / 1024, 1)
