rule map:
    """Map a QC'd lot onto the reference bundle (`sc-celltherapy map`); asks for a GPU that a
    cluster profile can grant (the command falls back to the CPU without one)."""
    input:
        f"{OUT}/{{lot}}/steps/qc.h5ad",
    output:
        f"{OUT}/{{lot}}/steps/mapped.h5ad",
    log:
        f"{OUT}/{{lot}}/logs/map.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 2
    resources:
        mem_mb=lot_mem_mb,
        runtime=lot_runtime,
        gpu=config["gpus_per_mapping"],
    params:
        reference=config["reference"],
        seed=config["seed"],
    shell:
        "sc-celltherapy map {input} --reference {params.reference} --seed {params.seed}"
        " --out {output} > {log} 2>&1"
