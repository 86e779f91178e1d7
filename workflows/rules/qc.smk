rule qc:
    """QC one lot: metrics, low-quality and doublet flags, filter (`sc-celltherapy qc`)."""
    input:
        lot_input,
    output:
        f"{OUT}/{{lot}}/steps/qc.h5ad",
    log:
        f"{OUT}/{{lot}}/logs/qc.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 1
    resources:
        mem_mb=lot_mem_mb,
        runtime=lot_runtime,
    params:
        input=lot_path,
    shell:
        "sc-celltherapy qc {params.input} --out {output} > {log} 2>&1"
