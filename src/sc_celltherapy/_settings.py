"""One settings object for the whole package (like ``scanpy.settings``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

_ACCELERATORS = ("auto", "cpu", "gpu")


def _default_cache_dir() -> Path:
    env = os.environ.get("SCT_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "sc_celltherapy" if xdg else Path.home() / ".cache" / "sc_celltherapy"


def _interactive() -> bool:
    """A notebook kernel, or a terminal on stderr (where progress bars are drawn)."""
    import sys

    if "ipykernel" in sys.modules:
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


@dataclass
class Settings:
    """Package-wide settings.

    Attributes
    ----------
    verbosity
        Level name of the ``sc_celltherapy`` logger (``"error"``, ``"warning"``, ``"info"``,
        ``"debug"``). It also governs progress bars (:attr:`progress_bar`) and the training
        libraries' own lines (lightning's banners appear at ``"debug"`` only).
    accelerator
        ``"auto"`` uses a GPU when one is present, ``"cpu"`` never does, ``"gpu"`` requires one.
    cache_dir
        Where built reference bundles are cached (env ``SCT_CACHE_DIR`` overrides the default).
    """

    _verbosity: str = "warning"
    _accelerator: str = "auto"
    cache_dir: Path = field(default_factory=_default_cache_dir)

    @property
    def verbosity(self) -> str:
        return self._verbosity

    @verbosity.setter
    def verbosity(self, level: str) -> None:
        level = str(level).lower()
        if level not in ("error", "warning", "info", "debug"):
            msg = f"verbosity must be one of error/warning/info/debug, got {level!r}."
            raise ValueError(msg)
        self._verbosity = level
        logging.getLogger("sc_celltherapy").setLevel(level.upper())

    @property
    def progress_bar(self) -> bool:
        """Whether model training shows a progress bar: at ``"info"`` and ``"debug"`` always;
        at the default ``"warning"`` when someone is watching (a terminal or a notebook), not
        in a log file (Snakemake, SLURM); never at ``"error"``."""
        if self._verbosity == "error":
            return False
        return self._verbosity in ("info", "debug") or _interactive()

    @property
    def accelerator(self) -> str:
        return self._accelerator

    @accelerator.setter
    def accelerator(self, value: str) -> None:
        if value not in _ACCELERATORS:
            msg = f"accelerator must be one of {_ACCELERATORS}, got {value!r}."
            raise ValueError(msg)
        self._accelerator = value


settings = Settings()
