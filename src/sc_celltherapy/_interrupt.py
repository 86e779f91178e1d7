"""A stop request that survives where Python drops an interrupt.

A signal handler's KeyboardInterrupt is lost when it lands inside a finaliser or a weakref
callback ("Exception ignored in ..."); the run would then go on and write its release. The
handler therefore also sets :data:`STOP`, and long runs call :func:`check` between steps.
"""

from __future__ import annotations

import signal
import threading

STOP = threading.Event()


def check() -> None:
    """Raise KeyboardInterrupt when a stop was requested (by SIGINT or SIGTERM)."""
    if STOP.is_set():
        raise KeyboardInterrupt("stop requested")


def _handler(signum, frame):
    STOP.set()
    raise KeyboardInterrupt(signal.Signals(signum).name)


def install() -> dict | None:
    """Route SIGINT and SIGTERM to a stop request; returns the previous handlers (``None``
    off the main thread, where none can be set). :func:`restore` puts them back."""
    if threading.current_thread() is not threading.main_thread():
        return None
    STOP.clear()
    return {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}


def restore(previous: dict | None) -> None:
    for sig, handler in (previous or {}).items():
        signal.signal(sig, handler)
