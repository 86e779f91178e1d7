"""A release's files: written into a partial directory beside the release directory and renamed
into place in one step when complete, so a release directory is whole or absent; partials that
killed runs left behind are recognised by their owner file and removed."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from .._keys import KEYS
from ..io import file_sha256
from ._preflight import ReleaseExistsError
from ._results import PER_RUN_KEY

RESULTS_FILE, LOT_FILE, REPORT_FILE = "results.json", "lot.h5ad", "report.html"
# The report's composition figure as its own file, for a LIMS record or Snakemake's report.
COMPOSITION_FILE = "composition.png"
# inside a partial directory: "<host> <pid>" of the run writing it (removed before the rename)
OWNER_FILE = ".owner"


def open_partial(out_dir: Path) -> Path:
    """A new partial directory beside ``out_dir``, owned by this process, readable as the
    release directory will be."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    (tmp / OWNER_FILE).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would hide the release from the lab
    return tmp


def png(fig) -> bytes:
    """A figure as PNG bytes (no software stamp, so the same figure gives the same bytes)."""
    import io as _io

    import matplotlib.pyplot as plt

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def write_outputs(tmp: Path, results: dict, adata, figures: dict[str, bytes]) -> dict[str, str]:
    """lot.h5ad, report.html and composition.png, then results.json (with the time the others
    took)."""
    from ._report import render_report

    start = time.perf_counter()
    adata.uns[KEYS.RELEASE] = {
        "lot_id": results["lot_id"],
        "verdict": results["verdict"],
        "run_id": results[PER_RUN_KEY]["run_id"],
    }
    adata.write_h5ad(tmp / LOT_FILE)
    (tmp / REPORT_FILE).write_text(render_report(results, figures), encoding="utf-8")
    (tmp / COMPOSITION_FILE).write_bytes(figures["composition"])
    results[PER_RUN_KEY]["timings_s"]["write"] = round(time.perf_counter() - start, 3)
    (tmp / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    names = (RESULTS_FILE, LOT_FILE, REPORT_FILE, COMPOSITION_FILE)
    return {name: file_sha256(tmp / name) for name in names}


def rename_into_place(tmp: Path, out_dir: Path) -> None:
    """The finished partial directory becomes the release directory in one rename."""
    (tmp / OWNER_FILE).unlink()
    if out_dir.exists():  # created by someone else while this run worked
        msg = f"Release directory {out_dir} appeared during the run; this run's outputs are discarded."
        raise ReleaseExistsError(msg)
    os.rename(tmp, out_dir)


def remove_stale_partials(parent: Path) -> list[Path]:
    """Remove the partial directories that runs on this host left when they were killed
    (SIGKILL, power loss): their owner file names a process that no longer exists. A partial
    of a live run, of another host, or without an owner file is left alone."""
    removed = []
    for path in sorted(parent.glob(".*.partial-*")):
        owner = path / OWNER_FILE
        try:
            host, pid = owner.read_text().split()
        except (OSError, ValueError):
            continue
        if host != socket.gethostname() or _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
