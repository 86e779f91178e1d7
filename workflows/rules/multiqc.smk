rule multiqc_content:
    """A released lot's row of the core's MultiQC table: custom content read from its
    results.json (`sc-celltherapy multiqc-content`), never recomputed."""
    input:
        f"{OUT}/{{lot}}/release",
    output:
        f"{OUT}/{{lot}}/multiqc/{{lot}}_sct_mqc.yaml",
    log:
        f"{OUT}/{{lot}}/logs/multiqc_content.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 1
    resources:
        mem_mb=1000,  # measured through SLURM: 500 MB with Snakemake's job process
        runtime=5,
    shell:
        "sc-celltherapy multiqc-content {input}/results.json --out {output} > {log} 2>&1"


rule multiqc:
    """The sequencing core's MultiQC report: one table row per released lot. When a lot fails
    (--keep-going), this rule cannot run; the workflow's error handler then builds the same
    report over the lots that were released."""
    input:
        expand(f"{OUT}/{{lot}}/multiqc/{{lot}}_sct_mqc.yaml", lot=SAMPLES["lot"]),
    output:
        f"{OUT}/multiqc/multiqc_report.html",
    log:
        f"{OUT}/logs/multiqc.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        multiqc_command("{input}")
