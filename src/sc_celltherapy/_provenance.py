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
    """Machine, system, CPU model and count, the GPU when torch sees one, and the kernels the
    numerical libraries chose for this CPU: a model trained with the same seed on two CPUs
    whose kernels differ (torch's vector width, MKL's vendor branch, OpenBLAS's core type)
    reaches slightly different weights, so a rerun is bit-identical only where these match."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": _cpu_model(),
        "system": f"{platform.system()} {platform.release()}",
        "cpu_count": os.cpu_count(),
        "blas": _blas_cores(),
    }
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["cuda"] = False
    return info


def _cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo; the processor string elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _blas_cores() -> list[str]:
    """The BLAS libraries loaded in this process and the kernel each chose (threadpoolctl,
    scikit-learn's dependency); MKL statically linked into torch is not listed."""
    from threadpoolctl import threadpool_info

    return sorted(
        {
            f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture', '')}".strip()
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        }
    )


def peak_memory_mb() -> float:
    """Peak resident memory of this process (VmHWM on Linux: unlike ru_maxrss, which Linux
    carries over exec from the parent, it counts this program alone; ru_maxrss elsewhere)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
