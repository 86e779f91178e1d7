rule mix:
    """Draw a validation lot (base cells, optional marker-selected spike-in) for sheet rows
    with a `base` instead of an `input` (`sc-celltherapy mix`)."""
    output:
        f"{OUT}/{{lot}}/input.h5ad",
    log:
        f"{OUT}/{{lot}}/logs/mix.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 1
    resources:
        mem_mb=lot_mem_mb,
        runtime=lot_runtime,
    params:
        args=lambda w: mix_args(w.lot),
    shell:
        "sc-celltherapy mix {params.args} --out {output} > {log} 2>&1"
