"""The package logger: named, not propagated, with timed "finished" lines."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger("sc_celltherapy")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
    logger.addHandler(_handler)
    # Our own handler; do not double-print through the root logger of a notebook.
    logger.propagate = False
    logger.setLevel(logging.WARNING)


@contextmanager
def timed(step: str, *, record: dict | None = None, key: str | None = None) -> Iterator[None]:
    """Log ``step`` at start and a ``finished`` line with the elapsed seconds; with ``record``,
    also store them (rounded to ms) as ``record[key]`` (the release's per-step timings)."""
    start = time.perf_counter()
    logger.info("%s ...", step)
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        if record is not None:
            record[key or step] = round(elapsed, 3)
    logger.info("finished %s (%.2fs)", step, elapsed)
