rule score:
    """Identity and purity of a lot against the spec (`sc-celltherapy score`): of the mapped
    lot, or with `reference: none` of the QC'd lot from the profile's marker panels."""
    input:
        score_input,
    output:
        h5ad=f"{OUT}/{{lot}}/steps/scored.h5ad",
        report=f"{OUT}/{{lot}}/steps/purity.json",
    log:
        f"{OUT}/{{lot}}/logs/score.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 1
    resources:
        mem_mb=lot_mem_mb,
        runtime=lot_runtime,
    params:
        spec=spec_args(),
    shell:
        "sc-celltherapy score {input} {params.spec} --out {output.h5ad}"
        " --report-json {output.report} > {log} 2>&1"
