"""What a result records of where it came from: package versions, the hardware, peak memory.
One definition for results.json and the benchmarks."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
from typing import Any

from ._version import __version__

DISTRIBUTIONS = ("scanpy", "anndata", "scvi-tools", "torch", "numpy", "scipy", "scikit-learn")


def versions() -> dict[str, str]:
    """This package's, Python's and the numerical stack's versions."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"sc_celltherapy": __version__, "python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    """Machine, system, CPU count and the GPU when torch sees one."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
    }
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["cuda"] = False
    return info


def peak_memory_mb() -> float:
    """Peak resident memory of this process (VmHWM on Linux: unlike ru_maxrss, which Linux
    carries over exec from the parent, it counts this program alone; ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
