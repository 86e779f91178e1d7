rule release:
    """The whole locked chain for one lot (`sc-celltherapy release`): results.json, lot.h5ad,
    report.html and audit.jsonl in results/{lot}/release."""
    input:
        lot_input,
    output:
        directory(f"{OUT}/{{lot}}/release"),
    log:
        f"{OUT}/{{lot}}/logs/release.log",
    conda:
        "../envs/sc_celltherapy.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        runtime=60,
        gpu=config["gpus_per_mapping"],
    params:
        input=lot_path,
        spec=spec_args(),
        reference=config["reference"],
        operator=shlex.quote(config["operator"]),
        seed=config["seed"],
    shell:
        "sc-celltherapy release {params.input} {params.spec} --reference {params.reference}"
        " --lot-id {wildcards.lot} --operator {params.operator} --seed {params.seed}"
        " --out {output} > {log} 2>&1"
