"""A real single-node SLURM cluster for the workflow's SLURM test and benchmark.

Debian's ``slurm-wlm``, ``slurmdbd``, ``munge`` and ``mariadb-server`` (``.ci/run`` installs
them), started in a private folder on free ports with their own munge key and socket, so
nothing of the machine's own services is touched: munged, MariaDB, slurmdbd (accounting, so
``sacct`` shows what each job asked for and used), slurmctld and slurmd. Process tracking is
``proctrack/linuxproc`` and tasks are not confined (no cgroups needed). The node offers this
machine's CPUs and 80% of its memory in two partitions, ``cpu`` and ``gpu``, the names
``workflows/profiles/slurm`` routes jobs to. Everything is stopped on exit.

Usage::

    with SlurmCluster(folder) as cluster:
        subprocess.run([...], env=cluster.env())  # SLURM_CONF points at this cluster
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "sacct", "sacctmgr", "scontrol", "sinfo")
CLUSTER, ACCOUNT = "sct-test", "core"
START_TIMEOUT_S = 60


class SlurmUnavailable(RuntimeError):
    """SLURM cannot run here; the message says what is missing and how to install it."""


def program(name: str) -> str | None:
    """A program's path; daemons live in /usr/sbin, which a non-root PATH may lack."""
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def missing_programs() -> list[str]:
    return [p for p in DAEMONS + CLIENTS if program(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, ready, log: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if ready():
            return
        time.sleep(0.5)
    tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
    raise SlurmUnavailable(f"{what} did not start within {START_TIMEOUT_S} s.\n{tail}")


def _mem_total_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("/proc/meminfo has no MemTotal: the test cluster needs Linux")


class SlurmCluster:
    """Start the cluster in ``folder`` on ``__enter__``, stop it on ``__exit__``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.user = getpass.getuser()
        self.conf = self.folder / "slurm.conf"
        self.logs = self.folder / "log"
        self._started: list[str] = []

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: this process's environment) for a command on this cluster: SLURM_CONF, and first on PATH an
        ``srun`` that sets it again. A site's slurm.conf sits where every command finds it
        (/etc/slurm, or served by slurmctld); this one lives in the cluster's folder, and the
        executor's job step drops SLURM_* variables before it calls srun inside a job."""
        base = dict(os.environ if base is None else base)
        path = f"{self.folder / 'bin'}{os.pathsep}{base.get('PATH', '')}"
        return {**base, "SLURM_CONF": str(self.conf), "PATH": path}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        proc = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def jobs(self):
        """Every job the cluster ran, from ``sacct``: rule and lot (parsed from the Snakemake
        plugin's job comment), partition, state, elapsed seconds, requested memory (MB), time
        limit (minutes), CPUs, and the largest peak resident memory of its steps (MB, sampled
        each second by jobacct_gather/linux)."""
        import pandas as pd

        fields = "JobID,Comment,Partition,State,ElapsedRaw,ReqMem,Timelimit,ReqCPUS,MaxRSS"
        out = self.run("sacct", "-a", "-n", "-P", f"--format={fields}").stdout
        rows = [line.split("|") for line in out.strip().splitlines()]
        jobs = pd.DataFrame(rows, columns=fields.split(","))
        # a job's steps: the batch script (Snakemake's job wrapper) and the srun step it runs
        # the rule in; each has its own peak, the largest is what the job needed at once
        steps = jobs[jobs["JobID"].str.contains(".", regex=False)]
        peak = (
            steps["MaxRSS"].map(_mb).groupby(steps["JobID"].str.split(".").str[0]).max().to_dict()
        )
        jobs = jobs[~jobs["JobID"].str.contains(".", regex=False)].copy()
        parsed = jobs["Comment"].str.extract(r"^rule_(?P<rule>.+?)_wildcards_(?P<lot>.+)$")
        jobs = pd.concat([jobs, parsed], axis=1)
        jobs["seconds"] = jobs["ElapsedRaw"].astype(int)
        jobs["req_mb"] = jobs["ReqMem"].map(_mb)
        jobs["minutes"] = [_minutes(t) for t in jobs["Timelimit"]]
        jobs["cpus"] = jobs["ReqCPUS"].astype(int)
        jobs["peak_mb"] = jobs["JobID"].map(peak)
        return jobs.reset_index(drop=True)

    def __enter__(self) -> SlurmCluster:
        missing = missing_programs()
        if missing:
            raise SlurmUnavailable(
                f"SLURM programs not installed: {', '.join(missing)}. Install Debian's "
                "slurm-wlm slurmdbd munge mariadb-server (as .ci/run does)."
            )
        for sub in ("log", "spool", "state", "mysql", "bin"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        srun = self.folder / "bin" / "srun"
        srun.write_text(f'#!/bin/sh\nSLURM_CONF="{self.conf}" exec {program("srun")} "$@"\n')
        srun.chmod(0o755)
        self.folder.chmod(0o700)  # munged refuses a key or socket others could reach
        try:
            self._start_munge()
            self._start_mariadb()
            self._start_slurm()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_munge(self) -> None:
        key, self.munge_socket = self.folder / "munge.key", self.folder / "munge.sock"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        subprocess.run(
            [
                program("munged"),
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.folder / 'munged.pid'}",
                f"--log-file={self.logs / 'munged.log'}",
                f"--seed-file={self.folder / 'munged.seed'}",
            ],
            check=True,
            capture_output=True,
        )
        self._started.append("munge")
        _wait("munged", self.munge_socket.exists, self.logs / "munged.log")

    def _start_mariadb(self) -> None:
        data, self.db_socket = self.folder / "mysql", self.folder / "mysql.sock"
        self.db_port = _free_port()
        subprocess.run(
            [
                program("mariadb-install-db"),
                "--no-defaults",  # never the machine's /etc/mysql settings
                f"--datadir={data}",
                f"--user={self.user}",
                "--auth-root-authentication-method=normal",
            ],
            check=True,
            capture_output=True,
        )
        log = self.logs / "mariadb.log"
        self._mariadb = subprocess.Popen(
            [
                program("mariadbd"),
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={self.db_socket}",
                f"--port={self.db_port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.folder / 'mariadb.pid'}",
                f"--log-error={log}",
                f"--user={self.user}",
                "--innodb-buffer-pool-size=128M",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._started.append("mariadb")
        _wait("MariaDB", lambda: self._mariadb_admin("ping").returncode == 0, log)

    def _mariadb_admin(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["mariadb-admin", "--no-defaults", f"--socket={self.db_socket}", "-uroot", command],
            capture_output=True,
            text=True,
        )

    def _start_slurm(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctld_port, slurmd_port, dbd_port = _free_port(), _free_port(), _free_port()
        auth = f"AuthType=auth/munge\nAuthInfo=socket={self.munge_socket}\n"
        dbd_conf = self.folder / "slurmdbd.conf"  # slurmdbd reads it beside SLURM_CONF
        dbd_conf.write_text(
            auth
            + f"DbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\n"
            + f"SlurmUser={self.user}\nPidFile={self.folder / 'slurmdbd.pid'}\n"
            + f"LogFile={self.logs / 'slurmdbd.log'}\n"
            + "StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n"
            + f"StoragePort={self.db_port}\nStorageUser=root\nStorageLoc=slurm_acct_db\n"
        )
        dbd_conf.chmod(0o600)
        memory = int(0.8 * _mem_total_mb())
        self.conf.write_text(
            auth
            + f"ClusterName={CLUSTER}\nSlurmctldHost={host}(127.0.0.1)\n"
            + f"SlurmctldPort={ctld_port}\nSlurmdPort={slurmd_port}\n"
            + f"SlurmUser={self.user}\nSlurmdUser={self.user}\n"
            + "ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\nMpiDefault=none\n"
            + "ReturnToService=2\nSchedulerType=sched/backfill\n"
            + "SelectType=select/cons_tres\nSelectTypeParameters=CR_Core_Memory\n"
            + "AccountingStorageType=accounting_storage/slurmdbd\n"
            + f"AccountingStorageHost=localhost\nAccountingStoragePort={dbd_port}\n"
            + f"AccountingStoragePass={self.munge_socket}\n"  # munge socket for slurmdbd
            + "AccountingStoreFlags=job_comment\n"
            + "JobAcctGatherType=jobacct_gather/linux\nJobAcctGatherFrequency=task=1\n"
            + "JobCompType=jobcomp/none\nMinJobAge=600\n"
            + f"SlurmctldPidFile={self.folder / 'slurmctld.pid'}\n"
            + f"SlurmdPidFile={self.folder / 'slurmd.pid'}\n"
            + f"SlurmdSpoolDir={self.folder / 'spool'}\n"
            + f"StateSaveLocation={self.folder / 'state'}\n"
            + f"SlurmctldLogFile={self.logs / 'slurmctld.log'}\n"
            + f"SlurmdLogFile={self.logs / 'slurmd.log'}\n"
            + f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
            + f"RealMemory={memory} State=UNKNOWN\n"
            + "PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP\n"
            + "PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP\n"
        )
        env = self.env()
        subprocess.run([program("slurmdbd")], env=env, check=True, capture_output=True)
        self._started.append("slurmdbd")
        _wait("slurmdbd", lambda: _listening(dbd_port), self.logs / "slurmdbd.log")
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([program(daemon), "-f", str(self.conf)], env=env, check=True)
            self._started.append(daemon)
        _wait(
            "slurmctld and slurmd (node idle)",
            lambda: self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle",
            self.logs / "slurmctld.log",
        )
        # the account the executor plugin finds as this user's default
        self.run("sacctmgr", "-i", "add", "account", ACCOUNT)
        self.run("sacctmgr", "-i", "add", "user", self.user, f"account={ACCOUNT}")

    def __exit__(self, *exc) -> None:
        if "slurmctld" in self._started:
            self.run("scontrol", "shutdown", check=False)  # slurmctld and slurmd
        if "slurmdbd" in self._started:
            _kill(self.folder / "slurmdbd.pid")
        if "mariadb" in self._started:
            self._mariadb_admin("shutdown")
            try:
                self._mariadb.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._mariadb.kill()
                self._mariadb.wait()
        if "munge" in self._started:
            _kill(self.folder / "munged.pid")
        for name in ("slurmctld", "slurmd", "slurmdbd", "mariadb", "munged"):
            _wait_gone(self.folder / f"{name}.pid")
        self._started.clear()


def _mb(value: str) -> float:
    """sacct's memory (``1363M``, ``2G``, ``812344K``, bytes without a unit) in MB."""
    if not value:
        return float("nan")
    units = {"K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}
    return float(value[:-1]) * units[value[-1]] if value[-1] in units else float(value) / 2**20


def _minutes(limit: str) -> int:
    """sacct's time limit (``00:10:00``, ``1-02:00:00``) in minutes."""
    days, _, clock = limit.rpartition("-")
    hours, minutes, _ = clock.split(":")
    return int(days or 0) * 1440 + int(hours) * 60 + int(minutes)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_gone(pid_file: Path, timeout_s: float = 20) -> None:
    """Wait for a daemon to exit, so its folder can be removed and its ports reused."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.2)


def _kill(pid_file: Path) -> None:
    try:
        os.kill(int(pid_file.read_text().strip()), 15)
    except (OSError, ValueError):
        pass  # already gone
