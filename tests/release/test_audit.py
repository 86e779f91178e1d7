"""The audit chain: a run killed without its last record is closed by the next run."""

from __future__ import annotations

import json

import pytest

from sc_celltherapy.release import AuditError, AuditLog, verify_audit


def test_a_killed_run_is_recorded_as_interrupted_by_the_next_run(tmp_path):
    lab = tmp_path / "lab.jsonl"
    first = AuditLog(lab, operator="a", run_id="run-1")
    first.append("run started")
    first.append("run finished")
    killed = AuditLog(lab, operator="a", run_id="run-2")
    killed.append("run started")
    killed.append("qc")  # then SIGKILL: no final record
    with pytest.raises(AuditError, match="was killed before it could write its last record"):
        verify_audit(lab)

    nxt = AuditLog(lab, operator="b", run_id="run-3")
    nxt.append("run started")
    nxt.append("run finished")
    summary = verify_audit(lab)
    assert summary.runs == ["run-1", "run-2", "run-3"] and summary.n_records == 7
    records = [json.loads(line) for line in lab.read_text().splitlines()]
    closing = records[4]
    assert closing["action"] == "run interrupted" and closing["run_id"] == "run-2"
    assert closing["operator"] == "b" and closing["details"] == {"noted_by_run": "run-3"}
    # closing it once is enough: the next log on the file adds nothing for run-2
    AuditLog(lab, operator="b", run_id="run-4")
    assert verify_audit(lab).n_records == 7


def test_editing_the_interrupted_record_breaks_the_chain(tmp_path):
    lab = tmp_path / "lab.jsonl"
    run = AuditLog(lab, operator="a", run_id="run-1")
    run.append("run started")
    AuditLog(lab, operator="b", run_id="run-2")  # closes run-1
    lines = lab.read_text().splitlines()
    lines[1] = lines[1].replace('"run interrupted"', '"run finished"')
    lab.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditError, match="line 2 was edited"):
        verify_audit(lab)


@pytest.mark.parametrize(("sig", "step"), [("SIGTERM", "[2/8]"), ("SIGINT", "[3/8]")])
def test_a_signalled_release_records_its_failure_and_leaves_nothing(
    small_lot, demo_bundle, demo_spec, tmp_path, sig, step
):
    """What a scheduler does to a job over its time: SIGTERM during QC, Ctrl-C during mapping.
    The lab log records the run as failed and still verifies, nothing is left beside --out,
    and the next release on the same log succeeds."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "sc-celltherapy")
    lab = tmp_path / "lab.jsonl"

    def command(out):
        return [
            exe, "release", str(small_lot[0]), "--spec", str(demo_spec),
            "--reference", str(demo_bundle.path), "--lot-id", "K1", "--operator", "tester",
            "--audit-log", str(lab), "--out", str(out),
        ]  # fmt: skip

    env = {**os.environ, "SCT_CACHE_DIR": str(demo_bundle.path.parent.parent)}
    seen = []
    with subprocess.Popen(
        command(tmp_path / "killed"), stderr=subprocess.PIPE, text=True, env=env
    ) as proc:
        for line in proc.stderr:
            seen.append(line)
            if line.startswith(step):
                time.sleep(0.5)
                proc.send_signal(getattr(signal, sig))
                break
        rest = proc.stderr.read()
        code = proc.wait(timeout=300)
    assert code == 130, "".join(seen) + rest  # interrupted, not crashed
    assert not (tmp_path / "killed").exists()
    assert not list(tmp_path.glob(".killed.*")), "a partial directory was left"
    records = [json.loads(x) for x in lab.read_text().splitlines()]
    assert records[-1]["action"] == "run failed"
    verify_audit(lab)

    done = subprocess.run(command(tmp_path / "rerun"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(verify_audit(lab).runs) == 2


def test_a_duplicate_key_and_an_unexpected_last_hash_are_refused(tmp_path):
    lab = tmp_path / "lab.jsonl"
    run = AuditLog(lab, operator="a", run_id="run-1")
    run.append("run started")
    last = run.append("run finished", verdict="PASS")
    assert verify_audit(lab, expect_last=last).last_hash == last
    # a whole run appended and chained correctly still passes the chain, not the pinned hash
    forged = AuditLog(lab, operator="a", run_id="run-2")
    forged.append("run started")
    forged.append("run finished", verdict="PASS")
    verify_audit(lab)
    with pytest.raises(AuditError, match="not the expected"):
        verify_audit(lab, expect_last=last)
    # a line whose JSON says "verdict" twice reads differently to different parsers
    lines = lab.read_text().splitlines()
    lines[-1] = lines[-1].replace('"verdict":"PASS"', '"verdict":"PASS","verdict":"FAIL"')
    lab.write_text("\n".join(lines) + "\n")
    with pytest.raises(AuditError, match=r"duplicate key\(s\) \['verdict'\]"):
        verify_audit(lab)


def test_signed_records_refuse_a_resealed_forgery(tmp_path):
    """With the lab's key, every record is signed; a record rewritten and re-hashed, and every
    later line re-chained, keeps an intact chain but fails the signature check."""
    import hashlib

    from sc_celltherapy.release import generate_key
    from sc_celltherapy.release._audit import _canonical

    private, public = generate_key(tmp_path / "lab.key")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    from sc_celltherapy._signing import load_private_key

    lab = tmp_path / "lab.jsonl"
    run = AuditLog(lab, operator="a", run_id="run-1", signing_key=load_private_key(private))
    run.append("run started")
    run.append("purity", verdict="FAIL")
    run.append("run finished", verdict="FAIL")
    summary = verify_audit(lab, public_key=public)
    assert summary.signatures_checked and summary.n_signed == 3

    # the forger flips both verdicts, recomputes each hash and re-chains, keeping the old sigs
    records = [json.loads(x) for x in lab.read_text().splitlines()]
    prev, lines = "0" * 64, []
    for r in records:
        r["details"] = {k: "PASS" if v == "FAIL" else v for k, v in r["details"].items()}
        r["prev"] = prev
        body = {k: v for k, v in r.items() if k not in ("hash", "sig")}
        r["hash"] = hashlib.sha256(_canonical(body).encode()).hexdigest()
        line = _canonical(r)
        lines.append(line)
        prev = hashlib.sha256(line.encode()).hexdigest()
    lab.write_text("\n".join(lines) + "\n")
    verify_audit(lab)  # the chain alone cannot tell
    with pytest.raises(AuditError, match="line 2 has a signature the key refuses"):
        verify_audit(lab, public_key=public)
    # and an unsigned log is refused when a key is given
    plain = tmp_path / "plain.jsonl"
    AuditLog(plain, operator="a", run_id="r").append("run started")
    with pytest.raises(AuditError, match="line 1 carries no signature"):
        verify_audit(plain, public_key=public)


def test_stale_partials_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    import socket
    import subprocess
    import sys

    from sc_celltherapy.release._outputs import OWNER_FILE, remove_stale_partials

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    owners = {
        ".a.partial-1": f"{socket.gethostname()} {dead.stdout.strip()}",  # killed: goes
        ".b.partial-2": f"{socket.gethostname()} {__import__('os').getpid()}",  # alive: stays
        ".c.partial-3": f"another-host {dead.stdout.strip()}",  # not ours to judge: stays
    }
    for name, owner in owners.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / OWNER_FILE).write_text(owner + "\n")
    (tmp_path / ".d.partial-4").mkdir()  # no owner file (an older version's): stays
    assert remove_stale_partials(tmp_path) == [tmp_path / ".a.partial-1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".b.partial-2",
        ".c.partial-3",
        ".d.partial-4",
    ]
