"""Tamper-evident audit trail: append-only JSON lines, each chained to the one before.

In the spirit of 21 CFR 11.10(e): every line records when (UTC), who (operator), what (action)
and on what (sha256 of what was read and written). Each line carries ``prev``, the sha256 of the
previous line's exact bytes, and ``hash``, the sha256 of its own content without that field, so
an edited, removed or reordered line breaks the chain; a run's last line must be ``run
finished``, ``run failed`` or ``run interrupted`` (written by the next run on a log that a
killed run left open), so a log cut short is caught too. The chain proves integrity
against edits, not against someone who rewrites the whole file: for that, record the last
line's hash (printed at the end of every release) in the lab's own system.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._checks import InputError
from .._signing import load_public_key, sign, signature_holds

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
FINAL_ACTIONS = ("run finished", "run failed", "run interrupted")


class AuditError(InputError):
    """An audit log that fails verification."""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(record: Mapping[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class AuditLog:
    """Appends chained records to a JSON-lines file (created if missing, never rewritten)."""

    def __init__(
        self, path: str | os.PathLike, *, operator: str, run_id: str, signing_key=None
    ) -> None:
        self.path = Path(path)
        self.operator = operator
        self.run_id = run_id
        self.signing_key = signing_key  # an Ed25519 private key: every record is signed
        self._prev, self._seq = GENESIS, 0
        if self.path.exists():  # continue an existing chain (a lab-wide log)
            lines = self.path.read_text().splitlines()
            if lines:
                self._prev, self._seq = _sha(lines[-1]), len(lines)
            open_run = _open_run(lines)
            if open_run is not None:  # a run killed without its last record (SIGKILL, power)
                self.append("run interrupted", run_id=open_run, noted_by_run=run_id)

    def append(
        self,
        action: str,
        *,
        run_id: str | None = None,
        read: Mapping[str, str] | None = None,
        wrote: Mapping[str, str] | None = None,
        **details: Any,
    ) -> str:
        """Write one record (of this log's run, or of ``run_id``); returns its line hash (the
        ``prev`` of the next line)."""
        record = {
            "seq": self._seq,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "run_id": run_id or self.run_id,
            "operator": self.operator,
            "action": action,
            "read": dict(read or {}),
            "wrote": dict(wrote or {}),
            "details": details,
            "prev": self._prev,
        }
        record["hash"] = _sha(_canonical(record))
        if self.signing_key is not None:
            record["sig"] = sign(self.signing_key, record["hash"])
        line = _canonical(record)
        with open(self.path, "a", encoding="ascii") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._prev, self._seq = _sha(line), self._seq + 1
        return self._prev


def _open_run(lines: list[str]) -> str | None:
    """The run a log ends inside (its ``run started`` has no final record), if any."""
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None  # not ours to judge here; verify_audit names the bad line
        if record.get("action") in FINAL_ACTIONS:
            return None
        if record.get("action") == "run started":
            return record.get("run_id")
    return None


@dataclass(frozen=True)
class AuditSummary:
    """What a verified log holds."""

    path: str
    n_records: int
    runs: list[str]
    last_hash: str
    n_signed: int = 0
    signatures_checked: bool = False


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"duplicate key(s) {repeated}")
    return dict(pairs)


def verify_audit(
    path: str | os.PathLike,
    *,
    expect_last: str | None = None,
    public_key: str | os.PathLike | None = None,
) -> AuditSummary:
    """Check every line of an audit log; raise :class:`AuditError` naming the first bad line.

    Parameters
    ----------
    path
        The audit log (a release's ``audit.jsonl`` or a lab-wide log).
    expect_last
        The last line's hash as the lab recorded it at release time.
    public_key
        The lab's Ed25519 public key (``audit keygen``).

    Returns
    -------
    An :class:`AuditSummary` (records, runs, signatures checked).

    Notes
    -----
    Detects an edited line (its own hash no longer matches, or the next line's ``prev`` does
    not), a removed or reordered line (``seq`` out of order, ``prev`` mismatch), a line with a
    repeated JSON key (two readers could see two values) and a log cut short (a run whose last
    record is not final). ``expect_last``: the last line's hash as the lab recorded it at
    release time; a log re-sealed after an edit, or extended or cut at a run boundary, no longer
    ends with it. The log of a release directory (beside its results.json) must hold exactly
    one run, and the files that run wrote must still have the hashes it recorded.

    ``public_key``: the lab's Ed25519 public key (``audit keygen``); every record must then
    carry a signature of its hash that the key verifies, so a record rewritten with its hashes
    recomputed is refused without a pinned hash. Without it, signatures are counted, not checked.

    What the chain cannot show without ``expect_last`` or ``public_key``: a log rewritten whole,
    every hash recomputed.
    """
    key = load_public_key(public_key) if public_key is not None else None
    n_signed = 0
    path = Path(path)
    if not path.is_file():
        msg = f"Audit log not found: {path}. Pass the audit.jsonl of a release directory."
        raise AuditError(msg)
    lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    if not lines:
        raise AuditError(f"Audit log {path} is empty: records were removed.")
    prev, runs, open_run, written = GENESIS, [], None, {}
    for i, line in enumerate(lines, start=1):
        where = f"{path}, line {i}"
        try:
            record = json.loads(line, object_pairs_hook=_no_duplicate_keys)
            claimed = record.pop("hash")
            signature = record.pop("sig", None)
        except (ValueError, KeyError, AttributeError) as err:
            raise AuditError(
                f"{where} is not an audit record ({err}): the log was edited."
            ) from err
        if record.get("seq") != i - 1:
            msg = f"{where} has seq {record.get('seq')}, expected {i - 1}: a line was removed, inserted or moved."
            raise AuditError(msg)
        if record.get("prev") != prev:
            msg = f"{where} does not follow line {i - 1} (prev hash mismatch): a line before it was edited, removed or moved."
            raise AuditError(msg)
        if _sha(_canonical(record)) != claimed:
            raise AuditError(f"{where} was edited after it was written (its hash does not match).")
        n_signed += signature is not None
        if key is not None and (signature is None or not signature_holds(key, claimed, signature)):
            state = (
                "carries no signature" if signature is None else "has a signature the key refuses"
            )
            msg = (
                f"{where} {state}: it was not sealed by the holder of this lab key (forged, "
                "re-sealed, or written without --sign-key)."
            )
            raise AuditError(msg)
        action, run = record.get("action"), record.get("run_id")
        if action == "run started":
            if open_run is not None:
                raise AuditError(f"{where} starts run {run} before run {open_run} ended.")
            open_run = run
            runs.append(run)
        elif run != open_run:
            raise AuditError(f"{where} belongs to run {run}, but the open run is {open_run}.")
        if action in FINAL_ACTIONS:
            open_run = None
        if action == "outputs written":
            written = record.get("wrote", {})
        prev = _sha(line)
    if open_run is not None:
        msg = (
            f"{path} ends inside run {open_run} (no 'run finished', 'run failed' or 'run "
            "interrupted'): the run is still going, was killed before it could write its last "
            "record (the next run on this log records it as interrupted), or records were "
            "removed from its end."
        )
        raise AuditError(msg)
    if expect_last is not None and prev != expect_last:
        msg = (
            f"{path} ends with hash {prev}, not the expected {expect_last}: the log was "
            "re-sealed, extended or cut after that hash was recorded."
        )
        raise AuditError(msg)
    if (path.parent / "results.json").is_file():
        _check_release_dir(path, runs, written)
    return AuditSummary(str(path), len(lines), runs, prev, n_signed, key is not None)


def _check_release_dir(path: Path, runs: list[str], written: Mapping[str, str]) -> None:
    """A release directory's own log: one run, and its written files unchanged."""
    from ..io import file_sha256

    if len(runs) != 1:
        msg = (
            f"{path} is a release's own log but holds {len(runs)} runs; a release directory "
            "records exactly one (a forged run was appended, or logs were merged)."
        )
        raise AuditError(msg)
    for name, digest in written.items():
        target = path.parent / name
        if not target.is_file() or file_sha256(target) != digest:
            msg = (
                f"{target} does not match the hash its release recorded ({digest}): the file was "
                "changed or replaced after the release was written."
            )
            raise AuditError(msg)
