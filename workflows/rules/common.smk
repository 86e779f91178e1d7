# Helpers that turn the sample sheet into file names (wiring only).

import functools


wildcard_constraints:
    lot="[A-Za-z0-9_][A-Za-z0-9_.-]*",


def lot_path(wildcards):
    """The lot's counts: its `input` column, or the lot the `mix` rule draws for it."""
    row = SAMPLES.loc[wildcards.lot]
    return row["input"] if row["input"] else f"{OUT}/{wildcards.lot}/input.h5ad"


def lot_input(wildcards):
    """The lot's counts as a job input, or none when a listed file is missing: then only that
    lot's jobs fail (the command names the missing file) and --keep-going releases the rest,
    instead of Snakemake refusing the whole sheet."""
    path = lot_path(wildcards)
    row = SAMPLES.loc[wildcards.lot]
    return [] if row["input"] and not Path(path).exists() else path


def mix_args(lot):
    row = SAMPLES.loc[lot]
    args = f"{row['base']} --n-cells {row['n_cells']} --seed {row['seed'] or 0}"
    if row["spike"]:
        args += f" --spike {row['spike']} --fraction {row['fraction']}"
        args += f" --spike-markers '{row['spike_markers']}' --spike-exclude '{row['spike_exclude']}'"
    return args


def history_of(lot):
    """Qualified lots listed before `lot` in the sample sheet."""
    lots = list(SAMPLES["lot"])
    before = lots[: lots.index(lot)]
    return [x for x in before if SAMPLES.loc[x, "role"] == "qualified"]


def new_lots():
    return [
        x for x in SAMPLES["lot"] if SAMPLES.loc[x, "role"] == "new" and history_of(x)
    ]


def stepwise_lots():
    chosen = config.get("stepwise", [])
    return list(SAMPLES["lot"]) if chosen == "all" else list(chosen)


def no_reference():
    """`reference: none`: identities from the product profile's marker panels, nothing mapped."""
    return str(config["reference"]).lower() == "none"


def score_input(wildcards):
    step = "qc" if no_reference() else "mapped"
    return f"{OUT}/{wildcards.lot}/steps/{step}.h5ad"


def spec_args():
    args = f"--product {config['product']}"
    if config.get("spec"):
        args += f" --spec {config['spec']}"
    return args


def all_targets():
    targets = [f"{OUT}/{lot}/release" for lot in SAMPLES["lot"]]
    targets += [f"{OUT}/{lot}/compare.json" for lot in new_lots()]
    targets += [f"{OUT}/{lot}/steps/scored.h5ad" for lot in stepwise_lots()]
    targets += [f"{OUT}/multiqc/multiqc_report.html"]
    return targets


def multiqc_command(paths):
    """MultiQC over the given content files, offline (no version check, no AI toolbox)."""
    return (
        f"multiqc {paths} --outdir {OUT}/multiqc --filename multiqc_report.html --force"
        f" --no-version-check --no-ai --quiet > {OUT}/logs/multiqc.log 2>&1"
    )


def multiqc_after_failure():
    """After a failed run, the MultiQC report over the lots that were released, when MultiQC is
    installed (the core still sees every good lot)."""
    made = f"{OUT}/*/multiqc/*_sct_mqc.yaml"
    return (
        f"mkdir -p {OUT}/logs; if command -v multiqc >/dev/null && ls {made} >/dev/null 2>&1;"
        f" then {multiqc_command(made)} || true; fi"
    )


def summary_command():
    lots = " ".join(SAMPLES["lot"])
    return (
        f"sc-celltherapy summary --outdir {OUT} --lots {lots} --out {OUT}/summary.tsv"
    )


def check_profile_file(path):
    """A lab's own profile file is validated once here, not found invalid in every lot's job.
    Where Snakemake runs without the package (its jobs in their own environment), each job's
    pre-flight still refuses it."""
    try:
        from sc_celltherapy import InputError
        from sc_celltherapy.atlas import load_profile
    except ImportError:
        return
    try:
        load_profile(path)
    except InputError as err:
        raise ValueError(
            f"config product {path!r} is not a valid profile: {err}"
        ) from None


def check_product_and_spec():
    """Refuse an unknown product or a missing spec file at start-up, not in every lot's job."""
    shipped = Path(workflow.basedir).parent / "reference_atlases" / "profiles"
    names = sorted(p.stem for p in shipped.glob("*.yaml"))
    product = str(config["product"])
    if product not in names and not Path(product).is_file():
        raise ValueError(
            f"config product {product!r} is neither a shipped product profile ({names}) nor a "
            "profile YAML file. Fix `product:` in the config (a name, or the path of your "
            "profile)."
        )
    if product not in names:
        check_profile_file(product)
    spec = config.get("spec")
    if spec and not Path(spec).is_file():
        raise ValueError(
            f"config spec {spec!r} not found (relative paths start at {Path.cwd()}). Fix "
            "`spec:` in the config, or set it to null for the profile's example spec."
        )


# Memory and time of a lot's jobs grow with its cells. Measured per rule through SLURM by
# benchmarks/workflow.py (benchmarks/results/workflow.json; 2-core CPU, sacct's MaxRSS of each
# job): the release, the largest of the rules, peaked at 1,114 / 1,542 / 5,556 MB in 39 / 50 /
# 190 s at 2,000 / 10,000 / 50,000 cells. A lot goes through the workflow as one channel, so its
# doublet scoring holds the whole lot (steeper than benchmarks/scale.py's pooled channels). The
# lines below pass through the 2k and 50k points and above the 10k one; jobs ask for 1.5 times
# them, and at least MIN_RUNTIME_MINUTES (a fresh process on a slower node also pays imports and
# numba compilation). The stepwise rules (qc, map, score) each do part of a release, so the
# release's line bounds them. Sites with other hardware re-run the benchmark and change these
# numbers.
MEM_MB_BASE, MEM_MB_PER_1000_CELLS = 930, 92.5
MINUTES_BASE, MINUTES_PER_1000_CELLS = 0.55, 0.053
RESOURCE_HEADROOM = 1.5
MIN_RUNTIME_MINUTES = 10
# when a lot's file cannot be read (the job will fail on it anyway): the resources of this size
UNREADABLE_LOT_CELLS = 20_000


@functools.cache  # asked by every job of the lot and by each comparison: read the header once
def lot_cells(lot):
    """Barcodes in a lot, from its file's header (no matrix is read): a 10x .h5, an .h5ad or a
    10x folder; a lot drawn by the mix rule has its sheet's n_cells."""
    row = SAMPLES.loc[lot]
    if not row["input"]:
        return int(row["n_cells"])
    path = Path(row["input"])
    try:
        if path.is_dir():
            import gzip

            barcodes = next(path.glob("barcodes.tsv*"))
            opener = gzip.open if barcodes.suffix == ".gz" else open
            with opener(barcodes, "rt") as f:
                return sum(1 for _ in f)
        import h5py

        with h5py.File(path, "r") as f:
            if "matrix" in f:  # 10x HDF5: shape is (features, barcodes)
                return int(f["matrix"]["shape"][1])
            obs = f["obs"]
            index = obs.attrs.get("_index", "_index")
            return int(obs[index].shape[0])
    except (OSError, KeyError, StopIteration, ValueError):
        return UNREADABLE_LOT_CELLS


def _mem_mb(cells):
    return int(RESOURCE_HEADROOM * (MEM_MB_BASE + MEM_MB_PER_1000_CELLS * cells / 1000))


def _runtime(cells):
    minutes = RESOURCE_HEADROOM * (MINUTES_BASE + MINUTES_PER_1000_CELLS * cells / 1000)
    return max(MIN_RUNTIME_MINUTES, int(minutes) + 1)


def lot_mem_mb(wildcards):
    """Memory (MB) to ask for a lot's job: the measured line at its cells, with headroom."""
    return _mem_mb(lot_cells(wildcards.lot))


def lot_runtime(wildcards):
    """Minutes to ask for a lot's job: the measured line at its cells, with headroom."""
    return _runtime(lot_cells(wildcards.lot))


def compare_mem_mb(wildcards):
    """A comparison reads the new lot and its history: the line at all their cells."""
    lots = [wildcards.lot, *history_of(wildcards.lot)]
    return _mem_mb(sum(lot_cells(x) for x in lots))


def released_outputs(wildcards):
    """What the lots released so far wrote (release folders and comparisons): the `released`
    rule's input, so that `snakemake --report` also reports a run in which some lots failed.
    """
    made = [f"{OUT}/{lot}/release" for lot in SAMPLES["lot"]]
    made += [f"{OUT}/{lot}/compare.json" for lot in new_lots()]
    return [path for path in made if Path(path).exists()]
