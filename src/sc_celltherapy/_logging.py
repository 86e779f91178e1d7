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
def timed(step: str) -> Iterator[None]:
    """Log ``step`` at start and a ``finished`` line with the elapsed seconds."""
    start = time.perf_counter()
    logger.info("%s ...", step)
    yield
    logger.info("finished %s (%.2fs)", step, time.perf_counter() - start)
