"""The workflow through a real SLURM cluster: snakemake-executor-plugin-slurm submits every job
to a single-node Slurm (``slurm_cluster.py``) with ``workflows/profiles/slurm``.

Three lots keep it short: a qualified lot drawn from the labelled CAR-T cells, the real CAR-T
product (new, compared with it), and a broken input, which must fail alone. ``sacct`` then
shows one job per rule and lot with the memory, time, CPUs and partition the rule asked for."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import yaml
from slurm_cluster import SlurmCluster, SlurmUnavailable
from test_workflow import SHEET_HEADER, WORKFLOW, _env, _snakemake, requested_resources

from sc_celltherapy.release import verify_audit

PROFILE = WORKFLOW / "profiles" / "slurm"
GOOD = ["Q1", "PRODUCT"]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.__enter__()
    except SlurmUnavailable as e:
        if os.environ.get("CI"):
            pytest.fail(f"SLURM must run in CI: {e}")
        pytest.skip(f"no SLURM cluster on this machine: {e}")
    yield cluster
    cluster.__exit__(None, None, None)


def slurm_config(folder, shared_data):
    """The test configuration's settings over a three-lot sheet, in ``folder``."""
    base = shared_data / "cart_labelled_dev.h5ad"
    product = shared_data / "cart_product_P02_M0_filtered_feature_bc_matrix.h5"
    broken = shared_data / "cart_sample_metadata.tsv"
    (folder / "samples.tsv").write_text(
        SHEET_HEADER
        + f"Q1\t\tqualified\t{base}\t600\t1\t\t\t\t\n"
        + f"PRODUCT\t{product}\tnew\t\t\t\t\t\t\t\n"
        + f"BROKEN\t{broken}\tnew\t\t\t\t\t\t\t\n"
    )
    config = yaml.safe_load((WORKFLOW / "config" / "test.yaml").read_text())
    config |= {
        "samples": str(folder / "samples.tsv"),
        "outdir": str(folder / "results"),
        "stepwise": [],
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


def slurm_command(config):
    """Snakemake's arguments for a run through the SLURM profile. The release rule is sent to
    the cluster's second partition, as a site sends it to GPU nodes."""
    return [
        "--configfile",
        str(config),
        "--profile",
        str(PROFILE),
        "--set-resources",
        "release:slurm_partition=gpu",
        "--slurm-init-seconds-before-status-checks",
        "2",  # the plugin's 40 s default is for busy clusters
    ]


def asked_resources(config, cwd) -> dict:
    """What each job asks for, from Snakemake's dry run: {(rule, lot): (mem_mb, minutes, cpus)}."""
    # --cores above every rule's threads: the dry run then shows what SLURM is asked for
    proc = _snakemake("--configfile", str(config), "-n", "--forceall", "--cores", "64", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {
        job: (r["mem_mb"], r["runtime"], r["threads"])
        for job, r in requested_resources(proc.stdout).items()
    }


@pytest.fixture(scope="module")
def slurm_run(slurm_cluster, shared_data, demo_bundle, tmp_path_factory):
    import sc_celltherapy as sct

    folder = tmp_path_factory.mktemp("slurm_workflow")
    config = slurm_config(folder, shared_data)
    asked = asked_resources(config, folder)
    env = slurm_cluster.env(_env(sct.settings.cache_dir))
    proc = _snakemake(*slurm_command(config), cwd=folder, env=env)
    return folder / "results", proc, asked, slurm_cluster.jobs()


@pytest.mark.slow
def test_each_lot_is_released_as_its_own_slurm_job_and_the_broken_one_fails_alone(slurm_run):
    out, proc, asked, jobs = slurm_run
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0, log[-3000:]  # the broken lot fails the run
    for lot in GOOD:
        results = json.loads((out / lot / "release" / "results.json").read_text())
        assert results["lot_id"] == lot and results["verdict"] == "PASS", log[-3000:]
        verify_audit(out / lot / "release" / "audit.jsonl")
    assert "error: Unsupported input 'cart_sample_metadata.tsv'" in (
        (out / "BROKEN" / "logs" / "release.log").read_text()
    )
    summary = pd.read_csv(out / "summary.tsv", sep="\t").fillna("").set_index("lot")
    assert list(summary.loc[GOOD + ["BROKEN"], "status"]) == ["released", "released", "failed"]

    releases = jobs[jobs["rule"] == "release"].set_index("lot")
    assert sorted(releases.index) == sorted(GOOD + ["BROKEN"])  # one SLURM job per lot
    assert releases["JobID"].is_unique
    assert set(releases.loc[GOOD, "State"]) == {"COMPLETED"}
    assert releases.loc["BROKEN", "State"] == "FAILED"
    # every job of the run went through SLURM: the draw, releases, comparison, MultiQC rows
    ran = sorted(zip(jobs["rule"], jobs["lot"], strict=True))
    assert ran == sorted(
        [("mix", "Q1"), ("compare", "PRODUCT")]
        + [("release", lot) for lot in GOOD + ["BROKEN"]]
        + [("multiqc_content", lot) for lot in GOOD]
    )


@pytest.mark.slow
def test_sacct_shows_the_resources_each_rule_asked_for(slurm_run):
    """Memory, time and CPUs in sacct are what the rule's resource functions computed for that
    lot (the dry run's numbers); the release rule ran on the partition the command line set."""
    _, _, asked, jobs = slurm_run
    for job in jobs.itertuples():
        mem_mb, minutes, cpus = asked[(job.rule, job.lot)]
        assert (job.req_mb, job.minutes, job.cpus) == (mem_mb, minutes, cpus), job
        assert job.Partition == ("gpu" if job.rule == "release" else "cpu")
    # the lot sizes reach SLURM: the 1,099-barcode product asks less than the default 2,000 MB
    # and the 600-cell draw less still; both over the peak the job then used
    release = jobs[jobs["rule"] == "release"].set_index("lot")
    assert release.loc["Q1", "req_mb"] < release.loc["PRODUCT", "req_mb"] < 2000
    for lot in GOOD:
        assert 0 < release.loc[lot, "peak_mb"] < release.loc[lot, "req_mb"]
